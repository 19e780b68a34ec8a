"""The FastAPI app: `create_app(settings)` builds it; the model loads and warms up in the lifespan.

/health answers as soon as the process is up; /ready (and /v1/*) once the model is loaded and has
generated one short utterance. Tests pass a loaded `tts` (and optionally a `scheduler`)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Callable, Optional

import numpy as np
from fastapi import FastAPI

from ..api import Qwen3TTS
from ..audio import SAMPLE_RATE
from ..serving import SpeechScheduler
from .errors import install_handlers
from .metrics import Metrics, RequestMiddleware
from .openapi import install_openapi
from .routes import ops, v1
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
            if app.state.scheduler is not None:
                await asyncio.to_thread(app.state.scheduler.close)
            if app.state.voice_library is not None:
                await asyncio.to_thread(app.state.voice_library.close)

    app = FastAPI(title="q3tts", summary="Qwen3-TTS speech server (OpenAI-compatible)", lifespan=lifespan)
    app.state.settings = settings
    app.state.service = None  # set once loaded and warmed up
    app.state.scheduler = None
    app.state.load_error = None
    app.state.voice_library = None  # the voice store (voicestore.py), opened with the UI or the model
    app.state.started = time.time()
    app.state.metrics = Metrics(lambda: app.state.scheduler.stats() if app.state.scheduler else None)
    install_handlers(app)
    app.include_router(v1)
    app.include_router(ops)
    install_openapi(app)
    app.add_middleware(RequestMiddleware, metrics=app.state.metrics,
                       max_body=settings.max_upload_bytes * 4 // 3 + (1 << 20))  # base64 + form overhead  # fmt: skip
    app.state.models = _mount_ui(app, settings, tts) if settings.ui else None
    # Outermost: a foreign Host or browser Origin is refused before any route (the UI's too) runs.
    policy = HostPolicy(settings.host, settings.allowed_hosts, settings.allowed_origins)
    app.add_middleware(GuardMiddleware, policy=policy, max_headers=settings.max_headers)
    install_log_redaction()
    return app


def _mount_ui(app: FastAPI, settings: Settings, tts: Optional[Qwen3TTS]):
    """The web UI at /ui over a ModelManager that shares the served model (adopted once loaded)
    and can load `ui_models` too. Without gradio, or when it cannot be set up, the API runs alone."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        log.info("web UI off: install the `ui` extra (gradio) for /ui")
        return None
    from .models import ModelManager, parse_model_specs
    from .ui import mount_ui

    try:
        specs = parse_model_specs(settings.ui_models)
        if tts is None:  # configured now (configs only), so the UI knows the served model's speakers
            specs = {settings.model_id: settings.model, **specs}
        models = ModelManager(specs, device=settings.device, dtype=settings.dtype, max_batch=settings.max_batch,
                              max_queue=settings.max_queue, quantize=settings.quantize)  # fmt: skip
        keys = list(settings.api_keys)
        # With API keys set, the UI asks for one too (as the password; any user name).
        auth = (lambda _user, password: key_matches(keys, password)) if keys else None
        # The UI writes voices through the same crash-safe, indexed library the API serves.
        app.state.voice_library = open_voice_store_of(settings)
        mount_ui(app, models, app.state.voice_library, auth=auth)
    except Exception as e:  # the API must come up even if the UI cannot
        log.warning("web UI off: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    return models


async def _load(app: FastAPI, settings: Settings, tts, scheduler, on_fatal) -> None:
    try:
        if tts is None:
            log.info("loading %s", settings.model)
            tts = await asyncio.to_thread(Qwen3TTS.from_pretrained, settings.model, device=settings.device,
                                          dtype=settings.dtype, quantize=settings.quantize)  # fmt: skip
        if app.state.voice_library is None:
            app.state.voice_library = await asyncio.to_thread(open_voice_store_of, settings)
        voices = app.state.voice_library
        if scheduler is None:
            scheduler = SpeechScheduler(tts, max_batch=settings.max_batch, max_queue=settings.max_queue)
        app.state.scheduler = scheduler.start()
        if app.state.models is not None:
            app.state.models.adopt(settings.model_id, tts, scheduler)
        service = SpeechService(settings, tts, scheduler, voices, app.state.metrics)
        if settings.warmup:
            await asyncio.to_thread(_warm_up, service)
        app.state.service = service
        log.info("ready: %s (%s) on %s", settings.model_id, service.task, tts.device)
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
