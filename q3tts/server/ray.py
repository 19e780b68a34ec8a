"""Ray Serve: replicas of the same FastAPI app (app.py), each with its own model and scheduler.

    serve run q3tts.server.ray:app            # settings from the Q3TTS_* environment
    q3tts serve --ray --replicas 2 ...        # the same, from flags (run_ray)

Replicas share saved voices through a PostgreSQL voice store (`--voice-store postgresql://...`);
with a folder store they must share one disk. `--max-replicas` above `--replicas` autoscales on
ongoing requests (`--target-ongoing-requests` per replica); `--replica-cpus` / `--replica-gpus`
reserve Ray resources for each. A replica loads its model in its constructor and takes traffic
only once it has warmed up (the first health check waits for /ready), so a replica that Ray starts
in place of a dead one never answers "loading". Every response names its replica in
`X-Q3TTS-Replica`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from typing import Optional

from ray import serve

from ..api import Qwen3TTS
from .app import create_app
from .settings import Settings

log = logging.getLogger("q3tts.server")
READY_TIMEOUT_S = 600.0  # a replica's first health check waits this long for its warm-up
REPLICA_HEADER = "X-Q3TTS-Replica"


@serve.ingress()  # the app is built in each replica (__serve_build_asgi_app__), not pickled
class Q3TTSReplica:
    def __init__(self, settings: dict):
        self.settings = Settings(**settings)
        self.replica = f"{serve.get_replica_context().replica_id.unique_id}@{os.getpid()}"
        s = self.settings
        self.tts = Qwen3TTS.from_pretrained(s.model, device=s.device, dtype=s.dtype, quantize=s.quantize)
        self.fastapi_app = None  # (`app` is the ingress wrapper's)

    def __serve_build_asgi_app__(self):
        self.fastapi_app = create_app(self.settings, tts=self.tts)
        replica = self.replica

        @self.fastapi_app.middleware("http")
        async def name_the_replica(request, call_next):
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = replica
            return response

        return self.fastapi_app

    async def check_health(self) -> None:
        """Ray's health check: the first waits until the model has warmed up; a failed load fails it."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        state = self.fastapi_app.state
        while state.router is None:
            if state.load_error:
                raise RuntimeError(f"the model failed to load: {state.load_error}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {READY_TIMEOUT_S:g} s")
            await asyncio.sleep(0.05)


def deployment_options(settings: Settings) -> dict:
    """Ray Serve options from the settings: replicas (or autoscaling), resources, health checks."""
    options: dict = {
        "ray_actor_options": {"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        "health_check_timeout_s": READY_TIMEOUT_S + 30,
        "health_check_period_s": 5,
        # A replica takes as many requests as its scheduler holds; the rest wait in Ray's queue.
        "max_ongoing_requests": settings.max_batch + settings.max_queue,
    }
    if settings.max_replicas and settings.max_replicas > settings.replicas:
        options["autoscaling_config"] = {"min_replicas": settings.replicas, "max_replicas": settings.max_replicas,
                                         "initial_replicas": settings.replicas,
                                         "target_ongoing_requests": settings.target_ongoing_requests}  # fmt: skip
    else:
        options["num_replicas"] = settings.replicas
    return options


def build_app(settings: Optional[Settings] = None):
    """The Ray Serve application (a bound deployment) of `settings` (default: from the environment)."""
    settings = settings or Settings()
    deployment = serve.deployment(Q3TTSReplica, name="q3tts", **deployment_options(settings))
    return deployment.bind(settings.model_dump(mode="json"))


def run_ray(settings: Settings, log_level: str = "info") -> int:
    """`q3tts serve --ray`: start (or join, with RAY_ADDRESS) a Ray instance and serve on host:port
    until SIGINT or SIGTERM, then remove the application (and the Ray instance it started)."""
    import ray

    if settings.ssl_certfile:
        log.error("--ray: Ray Serve's proxy does not take --ssl-certfile; terminate TLS in front of it")
        return 2
    ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level=log_level.upper())
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings), name="q3tts", route_prefix="/")
    log.info("serving %s on Ray Serve at http://%s:%d", settings.model_id, settings.host, settings.port)
    # Both signals, set explicitly: a process started in the background by a shell ignores SIGINT.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping the Ray Serve application")
    serve.shutdown()
    ray.shutdown()
    return 0


def __getattr__(name: str):
    # `serve run q3tts.server.ray:app` reads `app`; built on first access, so importing this
    # module (for build_app) reads no settings.
    if name == "app":
        return build_app()
    raise AttributeError(name)
