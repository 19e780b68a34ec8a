"""The FastAPI app: `create_app(settings)` builds it; the default model loads and warms up in the lifespan.

/health answers as soon as the process is up; /ready (and /v1/*) once the default model is loaded and
has generated one short utterance. The served models (`--model NAME=PATH`, repeated; the UI's
`--ui-model`s too) live in one ModelManager that the API (routing.py) and the web UI share: the
others load on first use, each with its own scheduler. Tests pass a loaded `tts` (and optionally
a `scheduler`): it is served as `settings.model_id` and never unloaded."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Callable, Optional

import numpy as np
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from ..api import Qwen3TTS
from ..audio import SAMPLE_RATE
from ..generate.openmp import releasing_workers
from ..serving import SpeechScheduler
from .errors import install_handlers
from .metrics import Metrics, RequestMiddleware
from .models import ModelManager
from .openapi import install_openapi
from .ops import OpsMiddleware, OpsState
from .routes import ops, v1
from .routing import ModelRouter
from .security import GuardMiddleware, HostPolicy, install_log_redaction, key_matches
from .settings import Settings
from .speech import SpeechService
from .voicestore import open_voice_store

log = logging.getLogger("q3tts.server")


def create_app(settings: Optional[Settings] = None, tts: Optional[Qwen3TTS] = None,
               scheduler: Optional[SpeechScheduler] = None,
               on_fatal: Optional[Callable[[], None]] = None) -> FastAPI:  # fmt: skip
    """`on_fatal` is called if the model fails to load (the CLI uses it to stop the server)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Every streaming response waits for audio in a worker thread: the default pool (a few
        # threads) would cap concurrent streams, so size it for a full batch plus the queue.
        workers = settings.max_batch + settings.max_queue + 8
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, thread_name_prefix="q3tts-io"))
        loading = asyncio.create_task(_load(app, settings, tts, scheduler, on_fatal))
        try:
            yield
        finally:
            loading.cancel()
            if app.state.models is not None:
                await asyncio.to_thread(app.state.models.close)
            if app.state.scheduler is not None:  # a given (pinned) model's: the manager leaves it
                await asyncio.to_thread(app.state.scheduler.close)
            if app.state.voice_library is not None:
                await asyncio.to_thread(app.state.voice_library.close)

    app = FastAPI(title="q3tts", summary="Qwen3-TTS speech server (OpenAI-compatible)", lifespan=lifespan)
    app.state.settings = settings
    app.state.router = None  # set once the default model is loaded and warmed up
    app.state.scheduler = None
    app.state.load_error = None
    app.state.voice_library = None  # the voice store (voicestore.py), opened with the UI or the model
    app.state.started = time.time()
    app.state.ops = OpsState()
    app.state.models = _model_manager(app, settings, given=tts is not None)
    app.state.metrics = Metrics(lambda: {n: s.stats() for n, s in app.state.models.schedulers().items()}
                                if app.state.models is not None else None)  # fmt: skip
    install_handlers(app)
    app.include_router(v1)
    app.include_router(ops)
    install_openapi(app)
    app.add_middleware(RequestMiddleware, metrics=app.state.metrics,
                       max_body=settings.max_upload_bytes * 4 // 3 + (1 << 20))  # base64 + form overhead  # fmt: skip
    if settings.ui and app.state.models is not None and _mount_ui(app, settings, app.state.models):
        # the page people open first: `/` shows the UI, as `q3tts demo` does
        app.get("/", include_in_schema=False)(lambda: RedirectResponse("ui/"))
    # Outer: a foreign Host or browser Origin is refused before any route (the UI's too) runs.
    policy = HostPolicy(settings.host, settings.allowed_hosts, settings.allowed_origins)
    app.add_middleware(GuardMiddleware, policy=policy, max_headers=settings.max_headers)
    # Outermost: every response (refusals too) carries a request id; draining refuses here.
    app.add_middleware(OpsMiddleware, state=app.state.ops)
    install_log_redaction()
    return app


def _model_manager(app: FastAPI, settings: Settings, given: bool) -> Optional[ModelManager]:
    """The served models (configs only, nothing loads here). A given `tts` is adopted at load as
    `model_id`, so it is left out here. None (and the load error set) if a checkpoint is unusable."""
    try:
        specs = settings.served_models()
        if given:
            specs.pop(settings.model_id, None)
        return ModelManager(specs, device=settings.device, dtype=settings.dtype, max_batch=settings.max_batch,
                            max_queue=settings.max_queue, quantize=settings.quantize,
                            max_loaded=settings.max_loaded_models, memory_budget=settings.memory_budget)  # fmt: skip
    except Exception as e:  # reported by the lifespan, which stops the server (on_fatal)
        app.state.load_error = f"{type(e).__name__}: {e}"
        return None


def _mount_ui(app: FastAPI, settings: Settings, models: ModelManager) -> bool:
    """The web UI at /ui over the API's own ModelManager: a model loaded or switched there is the
    one the API serves. Without gradio, or when it cannot be set up, the API runs alone (False)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        log.info("web UI off: install the `ui` extra (gradio) for /ui")
        return False
    from .ui import mount_ui

    try:
        keys = list(settings.api_keys)
        # With API keys set, the UI asks for one too (as the password; any user name).
        auth = (lambda _user, password: key_matches(keys, password)) if keys else None
        # The UI writes voices through the same crash-safe, indexed library the API serves.
        app.state.voice_library = open_voice_store_of(settings)
        mount_ui(app, models, app.state.voice_library, auth=auth, upload_max_age=settings.ui_upload_max_age)
    except Exception as e:  # the API must come up even if the UI cannot
        log.warning("web UI off: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return False
    return True


async def _load(app: FastAPI, settings: Settings, tts, scheduler, on_fatal) -> None:
    try:
        models: Optional[ModelManager] = app.state.models
        if models is None:
            raise RuntimeError(app.state.load_error or "no model is configured")
        default = settings.model_id
        if tts is None:
            log.info("loading %s (%s)", default, settings.served_models()[default])
            tts, scheduler = await asyncio.to_thread(releasing_workers(models.load), default)
        else:
            scheduler = (scheduler or SpeechScheduler(tts, max_batch=settings.max_batch,
                                                      max_queue=settings.max_queue)).start()  # fmt: skip
            models.adopt(default, tts, scheduler)
        app.state.scheduler = scheduler
        if app.state.voice_library is None:
            app.state.voice_library = await asyncio.to_thread(open_voice_store_of, settings)
        voices = app.state.voice_library
        router = ModelRouter(settings, models, voices, app.state.metrics, default)
        service = SpeechService(settings, tts, scheduler, voices, app.state.metrics, name=default)
        if settings.warmup:
            await asyncio.to_thread(releasing_workers(_warm_up), service)
        app.state.router = router
        others = [n for n in models.names if n != default]
        log.info("ready: %s (%s) on %s%s", default, service.task, tts.device,
                 f"; also served, loaded on first use: {', '.join(others)}" if others else "")  # fmt: skip
    except asyncio.CancelledError:
        raise
    except Exception as e:
        app.state.load_error = f"{type(e).__name__}: {e}"
        log.error("the model failed to load: %s", app.state.load_error)
        log.debug("traceback", exc_info=e)
        if on_fatal is not None:
            on_fatal()


def open_voice_store_of(settings: Settings):
    return open_voice_store(settings.voice_store_spec, require_consent=settings.require_consent,
                            timeout=settings.voice_store_timeout)  # fmt: skip


def _warm_up(service: SpeechService) -> None:
    """One short generation through the scheduler and codec, so the first request pays no first-call costs."""
    tts = service.tts
    kwargs: dict = {}
    if service.task == "CustomVoice":
        kwargs["speaker"] = service.speakers[0]
    elif service.task == "Base":  # an x-vector voice from a little noise
        noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE * 2) * 0.1).astype(np.float32)
        kwargs["voice_clone_prompt"] = tts.create_voice_clone_prompt((noise, SAMPLE_RATE), x_vector_only_mode=True)
    (utt,) = tts.utterances("Warm-up.", **kwargs)
    for _ in service.scheduler.submit(utt, max_new_tokens=4).chunks():
        pass
