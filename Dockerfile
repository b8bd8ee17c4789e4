# forwardpass: the V2 inference server (HTTP 8000, gRPC 8001) with the bundled models, as a non-root user.
#
#   make models                                   # build the bundled models into models/ first (once)
#   docker build -t forwardpass .
#   docker build -t forwardpass:ray --build-arg EXTRAS=ray .     # with Ray (serve --ray, batch --ray)
#   docker run --rm -e FORWARDPASS_AUTH_TOKEN="$(openssl rand -hex 16)" -p 8000:8000 -p 8001:8001 forwardpass
#   docker run --rm -e FORWARDPASS_AUTH_TOKEN=... -v /srv/models:/models:ro -p 8000:8000 forwardpass  # your models
#
# It listens on every interface, so it refuses to start without a token (FORWARDPASS_AUTH_TOKEN, or a file named by
# FORWARDPASS_AUTH_TOKEN_FILE) unless FORWARDPASS_ALLOW_UNAUTHENTICATED=1 says the network is trusted. The repository
# API (load, unload, index) is off unless FORWARDPASS_ADMIN_TOKEN (or _FILE) sets a second token it alone accepts,
# or FORWARDPASS_ALLOW_UNAUTHENTICATED=1. Decision models write their audit log to /var/lib/forwardpass (mount a
# volume there to keep it).
#   docker run --rm -v "$PWD":/work forwardpass batch mobilenet_v2 /work/photos /work/scores
#
# Only the package and its runtime dependencies are installed (no torch, no build tools): serving needs ONNX Runtime.
FROM python:3.11-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FORWARDPASS_REPOSITORY=/models \
    FORWARDPASS_HOST=0.0.0.0 \
    FORWARDPASS_HTTP_PORT=8000 \
    FORWARDPASS_GRPC_PORT=8001 \
    FORWARDPASS_AUDIT_LOG=/var/lib/forwardpass/audit.sqlite \
    HOME=/home/forwardpass

RUN useradd --create-home --home-dir /home/forwardpass --uid 10001 --user-group --shell /usr/sbin/nologin forwardpass \
    && install -d -o 10001 -g 10001 /var/lib/forwardpass

# The package from source; EXTRAS (e.g. "ray") adds optional extras. The sources are removed after installing.
COPY pyproject.toml README.md /tmp/forwardpass/
COPY forwardpass /tmp/forwardpass/forwardpass
RUN pip install --no-cache-dir "/tmp/forwardpass${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /tmp/forwardpass

# The bundled models, owned by root: the server only reads them.
COPY models /models

USER 10001:10001
WORKDIR /home/forwardpass
EXPOSE 8000 8001

# Ready = every model of the repository is loaded (KServe V2 readiness); the port follows FORWARDPASS_HTTP_PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('FORWARDPASS_HTTP_PORT', '8000'), timeout=2)"]

ENTRYPOINT ["forwardpass"]
CMD ["serve"]
