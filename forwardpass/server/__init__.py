"""The real-time server: one data plane (dataplane.py) behind HTTP (http.py) and gRPC (grpc.py), composed in app.py.

Nothing is imported here, so `import forwardpass.server.types` stays cheap for clients.
"""
