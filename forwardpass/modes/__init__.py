"""Ways to run a model over many inputs: batch jobs (local or on Ray Data), streams, and serving on Ray Serve."""
