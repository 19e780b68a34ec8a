"""The OpenAPI document (/openapi.json) as this server really answers: every status a route returns,
its content types, and the request fields narrowed to what the loaded model takes (its speakers,
languages, saved voices, the served model's names), so a schema-valid request is an accepted one
wherever a schema can say so. It is rebuilt on each request: saved voices come and go."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..voices import VOICE_NAME
from .encoders import MEDIA_TYPES
from .protocol import OPENAI_MODEL_NAMES, ErrorResponse

ERROR_TEXT = {
    400: "invalid input (the message says which field and why), or a Host that is not served",
    401: "a missing or wrong API key",
    403: "a web page on another origin (browser Origin check)",
    404: "an unknown model, voice or route",
    409: "a voice with that name exists",
    413: "a body or reference file that is too large",
    429: "the queue is full",
    503: "the model is loading or the server is shutting down",
    504: "generation passed --request-timeout before any audio",
}


def errors(*statuses: int) -> dict:
    """`responses=` entries for these error statuses, in the server's JSON error shape."""
    return {s: {"model": ErrorResponse, "description": ERROR_TEXT[s]} for s in statuses}


def audio_responses() -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    content = {media: binary for media in dict.fromkeys(MEDIA_TYPES.values())}
    # stream_format="sse": each event (as OpenAPI tools read an event stream) is an event name and
    # its JSON data line: speech.audio.delta / speech.audio.done / speech.audio.error
    content["text/event-stream"] = {"schema": {"type": "object", "required": ["data"],
                                               "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}  # fmt: skip
    return {200: {"description": "the audio, sent while it is generated (or SSE events)", "content": content}}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)  # validation errors are our 400s
        schemas = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        router = app.state.router
        if router is not None:
            _narrow(schema, router.schema_view())
        return schema

    app.openapi = openapi


def _narrow(schema: dict, service) -> None:
    """Request fields as the default model takes them (`service`: ModelRouter.schema_view())."""
    schemas = schema["components"]["schemas"]
    settings, task = service.settings, service.task
    models = sorted({*service.names, *OPENAI_MODEL_NAMES})
    languages = service.languages
    if service.several:  # several models served: a request's voice fields depend on its model
        task = None
    if task == "CustomVoice":
        voices = list(service.speakers)
    elif task == "Base":
        voices = [v.name for v in service.voices.list()]
    else:
        voices = None  # VoiceDesign ignores `voice`
    for name in ("SpeechRequest", "StreamSessionConfig"):
        props = schemas.get(name, {}).get("properties", {})
        if not props:
            continue
        if "model" in props:
            props["model"] = {"anyOf": [{"enum": models}, {"type": "null"}], "title": "Model"}
        if "input" in props:
            props["input"].update(maxLength=settings.max_text_chars, pattern=r"\S")  # not only whitespace
        if task is not None:
            props["language"] = {"anyOf": [{"enum": languages}, {"type": "null"}], "title": "Language"}
        props["task_type"] = {"anyOf": [{"enum": service.tasks}, {"type": "null"}], "title": "Task Type"}
        if settings.max_new_tokens is not None:
            for field in ("max_new_tokens", "min_new_tokens"):
                props[field] = {"anyOf": [{"type": "integer", "minimum": 0 if field == "min_new_tokens" else 2,
                                           "maximum": settings.max_new_tokens}, {"type": "null"}], "title": field}  # fmt: skip
        if "speed" in props:
            props["speed"] = {"type": "number", "minimum": 0.25, "maximum": 4.0, "default": 1.0, "title": "Speed"}
        if voices is not None:
            named = {"enum": voices} if voices else {"not": {}}
            props["voice"] = {"anyOf": [named, {"type": "object", "properties": {"id": named}, "required": ["id"]},
                                        {"type": "null"}], "title": "Voice"}  # fmt: skip
        if task == "CustomVoice" and service.size == "0b6":
            props["instructions"] = {"type": "null", "title": "Instructions"}  # the 0.6B takes none
        if task not in ("Base", None):  # only Base models clone: the reference fields are not read
            for field in ("ref_audio", "ref_text", "x_vector_only_mode"):
                props.pop(field, None)
    paths = schema.get("paths", {})
    if task not in ("Base", None):  # only a Base model saves cloned voices
        paths.get("/v1/audio/voices", {}).pop("post", None)
    for operation in paths.get("/v1/audio/voices/{name}", {}).values():
        for param in operation.get("parameters", []):
            if param.get("name") == "name":
                param["schema"] = {"type": "string", "pattern": f"^{VOICE_NAME.pattern}$", "title": "Name"}
