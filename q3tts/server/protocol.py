"""Request bodies: OpenAI's speech fields plus the Qwen3-TTS extensions other servers use."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, Field, field_validator

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
TaskType = Literal["CustomVoice", "VoiceDesign", "Base"]
TASK_OF_KIND = {"custom_voice": "CustomVoice", "voice_design": "VoiceDesign", "base": "Base"}
OPENAI_MODEL_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # accepted as aliases of the served model
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0..2**64-1 (larger: OverflowError)


def unicode_problem(text: str) -> Optional[str]:
    """Why `text` cannot be encoded as UTF-8 (a lone surrogate, which JSON's \\ud800 escapes can carry), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"a lone surrogate (U+{ord(text[e.start]):04X}) at character {e.start} is not text"
    return None


class VoiceOptions(BaseModel):
    """What a voice is made of; shared by the HTTP request and the WebSocket session config."""

    voice: Union[str, dict, None] = None  # a built-in speaker, a saved voice, or OpenAI's {"id": ...}
    instructions: Optional[str] = Field(None, max_length=2000)  # style (CustomVoice) / voice description (VoiceDesign)
    language: Optional[str] = None  # "auto", a language name or code (en, zh-CN): q3tts/languages.py
    task_type: Optional[TaskType] = None  # must match the loaded checkpoint when given
    ref_audio: Optional[str] = None  # base64, a data: URL, or an http(s) URL on an allowed host (Base)
    ref_text: Optional[str] = None  # transcript of ref_audio (in-context cloning)
    # Numbers and flags as JSON Schema reads them: true is not 1 and "3" is not 3 (400), 3.0 is 3.
    x_vector_only_mode: bool = False  # clone from the speaker embedding only (no transcript needed)
    # generation
    max_new_tokens: Optional[int] = Field(None, ge=2, le=8192)  # codec frames (+1), 12.5 per second
    min_new_tokens: Optional[int] = Field(None, ge=0, le=8192)  # no end of speech before this many steps
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_k: Optional[int] = Field(None, ge=0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0, le=2.0)
    initial_codec_chunk_frames: Optional[int] = Field(None, ge=1, le=100)  # frames in the first audio chunk
    # OpenAI's speaking rate: the audio is time-scaled as it streams, pitch kept (q3tts/timescale.py)
    speed: float = Field(1.0, ge=0.25, le=4.0)

    @field_validator("max_new_tokens", "min_new_tokens", "seed", "temperature", "top_k", "top_p",
                     "repetition_penalty", "initial_codec_chunk_frames", "speed", mode="before")  # fmt: skip
    @classmethod
    def _json_number(cls, value):  # lax mode would read true as 1 and "3" as 3: a client's mistake
        if isinstance(value, (bool, str)):
            raise ValueError("must be a JSON number")
        return value

    @field_validator("x_vector_only_mode", mode="before")
    @classmethod
    def _json_bool(cls, value):
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value

    @field_validator("voice")
    @classmethod
    def _voice_id(cls, value):
        if isinstance(value, dict):
            if not isinstance(value.get("id"), str):
                raise ValueError('a voice object needs a string "id"')
            return value["id"]
        return value

    @field_validator("max_new_tokens", "min_new_tokens", "seed", "temperature", "top_k", "top_p", "repetition_penalty",
                     "initial_codec_chunk_frames", "speed", mode="before")  # fmt: skip
    @classmethod
    def _not_a_bool(cls, value):
        # pydantic's lax mode reads true as 1; the OpenAPI document says number, so a bool is a 400
        if isinstance(value, bool):
            raise ValueError("a number is required, not true/false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value):
        if isinstance(value, str) and (problem := unicode_problem(value)):
            raise ValueError(problem)
        return value

    def generation_kwargs(self) -> dict:
        names = ("max_new_tokens", "min_new_tokens", "seed", "temperature", "top_k", "top_p", "repetition_penalty")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class SpeechRequest(VoiceOptions):
    model: Optional[str] = None
    input: str = Field(min_length=1)
    response_format: ResponseFormat = "mp3"  # OpenAI's default
    stream_format: Literal["audio", "sse"] = "audio"


class StreamSessionConfig(VoiceOptions):
    """WebSocket `session.config`: audio goes back as pcm (s16le) or wav chunks."""

    type: Literal["session.config"] = "session.config"
    model: Optional[str] = None  # a served model's name (as `model` of /v1/audio/speech)
    response_format: Literal["pcm", "wav"] = "pcm"


# -- responses (for the OpenAPI document; the routes return plain dicts in these shapes) ------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ConsentRecord(BaseModel):
    by: str  # who gave the consent
    text: str  # the statement
    at: float  # unix time it was recorded


class SavedVoice(BaseModel):
    name: str
    created: float  # unix time
    mode: Literal["icl", "x_vector"]
    ref_text: Optional[str] = None
    duration: Optional[float] = None  # seconds of reference audio
    consent: Optional[ConsentRecord] = None  # the statement it was saved under (--require-consent)


class VoiceList(BaseModel):
    voices: list[str]  # what `voice` takes on this server
    builtin_voices: list[str]
    uploaded_voices: list[SavedVoice]


class VoiceCreated(BaseModel):
    success: bool
    voice: SavedVoice


class VoiceDeleted(BaseModel):
    id: str
    object: Literal["voice"]
    deleted: bool


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: Optional[TaskType] = None
    size: Optional[str] = None  # the checkpoint's size label ("0b6", "1b7", "tiny")
    loaded: Optional[bool] = None
    weights_bytes: Optional[int] = None  # measured while loaded, estimated from the files before
    default: Optional[bool] = None  # serves requests that name no model


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    model: Optional[str] = None
    kind: Optional[TaskType] = None
    uptime_s: Optional[float] = None
    reason: Optional[str] = None
