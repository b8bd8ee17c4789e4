"""`forwardpass serve --ray`: the same KServe V2 HTTP API, served by Ray Serve replicas instead of one process.

Each replica is what `forwardpass serve` runs in one process: a ModelRegistry of the repository's models (each with
its own dynamic batcher), the DataPlane, and the starlette app of `server.http`, mounted as the deployment's ASGI
ingress. So routes, payloads, errors and batching are the same code, and a stock Triton/KServe client cannot tell
the difference. Ray Serve adds what one process lacks: replicas on any node of the cluster, its router spreading
requests over them, and autoscaling between `replicas` and `max_replicas` on the requests in flight.

Each replica loads the repository itself, and a request reaches one replica: a repository API load or unload would
change that one alone, and a replica started later would not know of it. So replicas follow the repository only:
at start and, with `--poll-interval`, as it changes; load and unload requests are refused (403).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from forwardpass.errors import MissingExtraError
from forwardpass.registry import ModelRegistry
from forwardpass.repository import Repository
from forwardpass.server.app import asgi_app
from forwardpass.server.dataplane import DataPlane
from forwardpass.server.generate import Generators
from forwardpass.server.settings import ServerSettings

__all__ = ["APP_NAME", "V2Replica", "deploy", "serve_on_ray"]

APP_NAME = "forwardpass"
LOADS_REFUSED = (
    "the repository API's load and unload are off on Ray Serve: each replica loads the repository itself and a "
    "request reaches one of them; change the repository (replicas pick changes up with --poll-interval) or redeploy"
)


class V2Replica:
    """One Ray Serve replica: the repository's models behind the V2 HTTP app (built once the replica starts)."""

    def __init__(self, settings: ServerSettings, cores: int) -> None:
        self.settings = settings
        repository = Repository(settings.repository)
        self.registry = ModelRegistry(
            repository, cores=cores, trust_pickle=settings.trust_pickle, loads_refused=LOADS_REFUSED
        )
        self.dataplane = DataPlane(self.registry, settings)
        self.generators = Generators(self.registry)

    async def __serve_build_asgi_app__(self) -> Any:
        """Ray Serve calls this on the replica's event loop: models load there, beside the batchers that use them.
        The app is `forwardpass serve`'s own: V2, TF Serving, generation, OpenAI and WebSocket routes, one guard."""
        await self.registry.load_all()
        if self.settings.poll_interval_s:
            self.registry.watch(self.settings.poll_interval_s)
        return asgi_app(self.registry, self.dataplane, self.generators, self.settings)


def deploy(
    settings: ServerSettings, *, replicas: int = 1, max_replicas: int | None = None, replica_cpus: float = 1.0
) -> None:
    """Run the V2 app on the Ray Serve this process is connected to (`serve.start` done), at route "/"; returns
    once every replica is ready."""
    from ray import serve

    scaling: dict[str, Any] = {"num_replicas": replicas}
    if max_replicas is not None and max_replicas > replicas:
        scaling = {"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas}}
    deployment = serve.deployment(
        name=APP_NAME,
        ray_actor_options={"num_cpus": replica_cpus},
        max_ongoing_requests=settings.max_concurrent_requests,
        **scaling,
    )(serve.ingress(None)(V2Replica))
    cores = max(1, round(replica_cpus))  # ONNX Runtime threads per replica: its share of the CPUs, no more
    serve.run(deployment.bind(settings, cores), name=APP_NAME, route_prefix="/")


def serve_on_ray(
    settings: ServerSettings,
    *,
    address: str | None = None,
    replicas: int = 1,
    max_replicas: int | None = None,
    replica_cpus: float = 1.0,
) -> None:
    """Start (or join, with `address`) Ray, deploy, serve until SIGTERM or Ctrl-C, then take the deployment down."""
    settings = settings.checked()
    try:
        import ray
        from ray import serve
    except ImportError:
        raise MissingExtraError("ray[serve]", "ray") from None
    ray.init(address=address, logging_level=logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs handlers of its own
        signal.signal(signum, lambda *_: stop.set())
    try:
        # one HTTP proxy, on the head: on a one-machine cluster a proxy per node would fight over the port
        serve.start(http_options={"host": settings.host, "port": settings.http_port}, proxy_location="HeadOnly")
        deploy(settings, replicas=replicas, max_replicas=max_replicas, replica_cpus=replica_cpus)
        print(
            f"forwardpass serving {settings.repository} on Ray Serve\n"
            f"  HTTP  http://{settings.host}:{settings.http_port}  (KServe V2)  replicas: {replicas}"
            + (f" to {max_replicas} (autoscaling)" if max_replicas and max_replicas > replicas else ""),
            flush=True,
        )
        stop.wait()
        print("forwardpass: stopping Ray Serve", flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
