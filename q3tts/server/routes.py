"""HTTP and WebSocket routes: thin; the work is in SpeechService (speech.py) and StreamSession (stream.py),
on the model ModelRouter (routing.py) picks for each request."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Optional

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask

from ..voices import VOICE_NAME
from .errors import APIError
from .models import KINDS
from .openapi import audio_responses, errors
from .protocol import Health, ModelList, Readiness, SpeechRequest, VoiceCreated, VoiceDeleted, VoiceList
from .routing import ModelRouter
from .security import key_matches
from .speech import delete_saved_voice
from .stream import StreamSession


def key_ok(app_state, authorization: Optional[str], query_key: Optional[str] = None) -> bool:
    keys = app_state.settings.api_keys
    if not keys:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else None
    return key_matches(keys, given or query_key)


def require_key(request: Request) -> None:
    if not key_ok(request.app.state, request.headers.get("authorization")):
        raise APIError(401, "missing or invalid API key: send `Authorization: Bearer <key>`", "invalid_api_key")


def router(request: Request) -> ModelRouter:
    r = request.app.state.router
    if r is None:
        raise APIError(503, "the model is still loading; see /ready", "not_ready")
    return r


# Every /v1 route can answer 401 (keys configured) and 503 (loading); state-changing ones 403 (Origin).
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=errors(401, 503))
ops = APIRouter()
NAME_FIELD = {"pattern": f"^{VOICE_NAME.pattern}$", "maxLength": 100}


@v1.post("/audio/speech", response_class=StreamingResponse,
         responses={**audio_responses(), **errors(400, 403, 404, 413, 429, 504)})  # fmt: skip
async def create_speech(body: SpeechRequest, models: ModelRouter = Depends(router)):
    svc = await models.open(body.model, body.task_type)
    try:
        stream, media_type, headers = await svc.speech(body)
    except BaseException:
        svc.release()
        raise
    # The model's lease ends with the body, or after the response if the body never started.
    return StreamingResponse(svc.released_after(stream), media_type=media_type, headers=headers,
                             background=BackgroundTask(svc.release))  # fmt: skip


@v1.get("/audio/voices", response_model=VoiceList)
async def list_voices(models: ModelRouter = Depends(router)):
    return await asyncio.to_thread(models.list_voices)  # the store may wait on its database


@v1.post("/audio/voices", status_code=201, response_model=VoiceCreated, responses=errors(400, 403, 409, 413))
async def create_voice(
    name: Annotated[str, Form(description="the voice's name", json_schema_extra=NAME_FIELD)],
    audio_sample: Annotated[Optional[UploadFile], File(description="reference audio, 1-60 s")] = None,
    audio: Annotated[Optional[UploadFile], File(description="another name for audio_sample")] = None,
    ref_text: Annotated[Optional[str], Form(description="its transcript: in-context cloning")] = None,
    x_vector_only_mode: Annotated[bool, Form(description="clone the timbre only")] = False,
    consent: Annotated[Optional[str], Form(description="the speaker's consent statement (--require-consent)")] = None,
    consent_by: Annotated[Optional[str], Form(description="who gave the consent")] = None,
    models: ModelRouter = Depends(router),
):
    """multipart/form-data: name, audio_sample (or audio) file, optional ref_text, x_vector_only_mode,
    consent and consent_by (required when the server runs with --require-consent). The voice is made
    by the served Base model (loaded if needed)."""
    upload = audio_sample or audio
    if upload is None:
        raise APIError(400, "send multipart/form-data with `name` and an `audio_sample` file", "missing_field")
    data = await upload.read(models.settings.max_upload_bytes + 1)
    svc = await models.open_kind("base")
    try:
        voice = await svc.create_voice(name, data, ref_text, x_vector_only_mode, consent, consent_by)
    finally:
        svc.release()
    return {"success": True, "voice": voice}


@v1.delete("/audio/voices/{name}", response_model=VoiceDeleted, responses=errors(403, 404))
async def delete_voice(name: str, models: ModelRouter = Depends(router)):
    return await asyncio.to_thread(delete_saved_voice, models.voices, name)


@v1.get("/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(request: Request):
    """Every served model: its kind, size label, whether it is loaded, and its weight bytes."""
    st = request.app.state
    if st.router is None:
        model = {"id": st.settings.model_id, "object": "model", "created": int(st.started), "owned_by": "q3tts"}
        return {"object": "list", "data": [model]}
    return {"object": "list", "data": st.router.model_cards(int(st.started))}


@ops.websocket("/v1/audio/speech/stream")
async def speech_stream(ws: WebSocket):
    st = ws.app.state
    await ws.accept()
    if not key_ok(st, ws.headers.get("authorization"), ws.query_params.get("api_key")):
        await ws.send_json({"type": "error", "message": "missing or invalid API key", "code": "invalid_api_key"})
        return await ws.close(code=1008)
    if st.router is None:
        await ws.send_json({"type": "error", "message": "the model is still loading", "code": "not_ready"})
        return await ws.close(code=1013)
    await StreamSession(ws, st.router).run()


@ops.get("/health", response_model=Health)
async def health():
    return {"status": "ok"}


@ops.get("/ready", response_model=Readiness, response_model_exclude_none=True,
         responses={503: {"model": Readiness, "description": "loading, or the model failed to load"}})  # fmt: skip
async def ready(request: Request):
    st = request.app.state
    if st.ops.draining:  # load balancers stop sending here; requests in flight finish
        return JSONResponse({"status": "not_ready", "reason": "draining"}, status_code=503)
    if st.router is None:
        reason = f"model failed to load: {st.load_error}" if st.load_error else "loading"
        return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
    info = st.router.models.info(st.router.default)
    return {"status": "ready", "model": st.router.default, "kind": KINDS[info["kind"]],
            "uptime_s": round(time.time() - st.started, 1)}  # fmt: skip


@ops.get("/metrics", response_class=PlainTextResponse,
         responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                          "description": "Prometheus text format"}})  # fmt: skip
async def metrics(request: Request):
    return PlainTextResponse(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
