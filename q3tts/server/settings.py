"""Server settings: defaults here, overridden by `Q3TTS_*` environment variables or `q3tts serve` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..generate.codec_stream import DEFAULT_CHUNK_FRAMES
from ..nn.quant import QuantizationError, parse_quantize
from ..voices import default_voices_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="Q3TTS_", extra="ignore")

    model: str = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"  # checkpoint folder or Hugging Face repo id
    served_model_name: Optional[str] = None  # the id /v1/models lists; default: `model` as given
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Host names served besides the bound host, localhost and this machine's names (IP literals are
    # always served): `*.example.com` for a domain, `*` for any (behind a proxy that checks Host).
    allowed_hosts: Annotated[list[str], NoDecode] = []
    # Web pages (origins) allowed to make state-changing requests and open the WebSocket, besides
    # the server's own pages: `https://app.example.com`, or `*` for any.
    allowed_origins: Annotated[list[str], NoDecode] = []
    device: str = "auto"
    dtype: str = "auto"
    # CPU only: "int8", "q8", "int4" or per network ("talker=int4,predictor=q8"); see nn/quant.py
    quantize: Optional[str] = None
    # Saved (cloned) voices, kept across restarts: the folder `q3tts voices` uses
    # (q3tts/voices.py: $Q3TTS_VOICES_DIR, else $XDG_DATA_HOME/q3tts/voices, else ~/.local/share/q3tts/voices).
    voices_dir: Path = Field(default_factory=default_voices_dir)
    # Keys accepted as `Authorization: Bearer KEY` on /v1/*; empty = open. The environment
    # variable takes a comma-separated list: Q3TTS_API_KEYS=key1,key2
    api_keys: Annotated[list[str], NoDecode] = []
    api_key_file: Optional[Path] = None  # more keys, one per line (keeps them out of the process list)
    max_batch: int = Field(16, ge=1)  # requests generated together (continuous batching)
    max_queue: int = Field(64, ge=0)  # requests waiting for a batch slot before 429
    max_text_chars: int = Field(5000, ge=1)  # per request (and per WebSocket sentence buffer)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)  # one reference audio file
    max_reference_seconds: float = Field(60.0, gt=0, le=60.0)  # the model takes 1-60 s references
    # The most codec frames (+1) one request may generate, and the length cap of requests that set
    # none; None: the checkpoint's own default (2048), up to 8192 on request.
    max_new_tokens: Optional[int] = Field(None, ge=2, le=8192)
    request_timeout: float = Field(600.0, gt=0)  # seconds a request may generate before it is cut
    chunk_frames: int = Field(DEFAULT_CHUNK_FRAMES, ge=1)  # codec frames (80 ms each) per streamed chunk
    first_chunk_frames: int = Field(1, ge=1)  # a small first chunk: earliest audio
    warmup: bool = True  # one short synthesis before /ready says yes
    ui: bool = True  # the web UI at /ui (needs the `ui` extra: gradio)
    # More checkpoints the UI can load and switch between, as NAME=PATH (e.g. a 1.7B beside the
    # served 0.6B, or a Base model for Design -> Clone); the API serves them too (as `models`).
    # Q3TTS_UI_MODELS takes a comma-separated list.
    ui_models: Annotated[list[str], NoDecode] = []
    ssl_certfile: Optional[str] = None  # HTTPS (browsers only allow the microphone on secure pages)
    ssl_keyfile: Optional[str] = None
    # Connection limits (measured in docs/server.md): a request head larger than this is refused
    # with 431 and its connection closed, so held-open headers cost at most this much each.
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    max_headers: int = Field(100, ge=8, le=10000)  # header lines per request (431 beyond)
    header_timeout: float = Field(10.0, gt=0)  # seconds to send a whole request head (slow clients are cut)
    keep_alive_timeout: int = Field(5, ge=1)  # seconds an idle keep-alive connection stays open
    max_connections: int = Field(1024, ge=1)  # open connections before new requests get 503
    # -- many models, operations (docs/server.md "Many models" and "Operations") --
    # Checkpoints served together, as NAME=PATH (`--model` repeated); when given, they replace
    # `model`, the first is the default of requests that name none. Q3TTS_MODELS takes a comma list.
    models: Annotated[list[str], NoDecode] = []
    max_loaded_models: Optional[int] = Field(None, ge=1)  # models loaded at once (least recently used unloads)
    # The most weight bytes loaded at once: a number of bytes, or with a unit (512MiB, 4GiB, 2GB).
    memory_budget: Optional[int] = None
    drain_timeout: float = Field(30.0, ge=0)  # seconds in-flight requests may run on after SIGTERM
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per log line (with request_id)
    # `ref_audio` given as an http(s) URL is fetched only from these hosts (`cdn.example.com`,
    # `*.example.com`, `*` for any), and only where they resolve to public addresses (url_fetch.py);
    # empty, the default: URLs are refused. Q3TTS_REF_AUDIO_URL_HOSTS takes a comma-separated list.
    ref_audio_url_hosts: Annotated[list[str], NoDecode] = []
    ref_audio_url_timeout: float = Field(10.0, gt=0, le=120.0)  # seconds for one ref_audio download
    # -- replicas (issue 14): the shared voice store, consent, Ray Serve -------------------------
    # Where saved voices live: a PostgreSQL URL (postgresql://user:pass@host/db, shared by replicas
    # on many machines) or a folder; unset: `voices_dir`. Keep a password out of the process list
    # with Q3TTS_VOICE_STORE or libpq's PGPASSWORD / ~/.pgpass.
    voice_store: Optional[str] = None
    voice_store_timeout: float = Field(5.0, gt=0, le=120)  # seconds a voice call waits for the database (then 503)
    # POST /v1/audio/voices needs `consent` (the statement) and `consent_by` (who gave it); both are
    # stored with the voice, with the time, and shown by GET /v1/audio/voices.
    require_consent: bool = False
    # Ray Serve (`q3tts serve --ray`, q3tts/server/ray.py): replicas of this app, each with its own model.
    replicas: int = Field(1, ge=1)  # replicas at start (and the minimum when autoscaling)
    max_replicas: Optional[int] = Field(None, ge=1)  # above `replicas`: autoscale on ongoing requests
    target_ongoing_requests: float = Field(4.0, gt=0)  # per replica, the autoscaler's target
    replica_cpus: float = Field(1.0, ge=0)  # Ray resources reserved per replica
    replica_gpus: float = Field(0.0, ge=0)  # e.g. 1 (a GPU each) or 0.5 (two replicas per GPU)

    # Seconds a reference clip uploaded or recorded in the web UI stays on disk unused (used clips are
    # deleted once decoded, and every clip of a page when it is closed): ui_files.py.
    ui_upload_max_age: float = Field(600.0, gt=0)

    @field_validator("ref_audio_url_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value):
        return [h.strip() for h in value.split(",") if h.strip()] if isinstance(value, str) else value

    @field_validator("quantize")
    @classmethod
    def _check_quantize(cls, value):
        if value is None:
            return None
        try:
            spec = parse_quantize(value)
        except QuantizationError as e:
            raise ValueError(str(e)) from None
        return None if spec is None else str(spec)

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _parse_bytes(cls, value):
        return parse_bytes(value) if isinstance(value, str) else value

    @field_validator("api_keys", "ui_models", "allowed_hosts", "allowed_origins", "models", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _read_key_file(self):
        if self.api_key_file is not None:
            try:
                text = Path(self.api_key_file).expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"cannot read the API key file {self.api_key_file}: {e.__class__.__name__}") from None
            keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            if not keys:
                raise ValueError(f"the API key file {self.api_key_file} holds no key")
            self.api_keys = [*self.api_keys, *(k for k in keys if k not in self.api_keys)]
        return self

    @property
    def model_id(self) -> str:
        """The default model's name: the first of `models`, else `served_model_name` or `model`."""
        return next(iter(self.served_models())) if self.models else (self.served_model_name or self.model)

    def served_models(self) -> dict[str, str]:
        """name -> checkpoint of every model the API serves (the default first), then the UI's extras."""
        from .models import parse_model_specs

        served = parse_model_specs(self.models) if self.models else {self.served_model_name or self.model: self.model}
        extra = {k: v for k, v in parse_model_specs(self.ui_models).items() if k not in served}
        return {**served, **extra}

    @property
    def voice_store_spec(self) -> str | Path:
        """The voice store to open: `voice_store` if set, else the `voices_dir` folder."""
        return self.voice_store or self.voices_dir


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}  # fmt: skip


def parse_bytes(text: str) -> int:
    """Bytes from "4GiB", "512 MB" or "1000000"."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"'{text}' is not a size: give bytes, or a number with KiB/MiB/GiB/KB/MB/GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
