"""Server settings: defaults here, overridden by `Q3TTS_*` environment variables or `q3tts serve` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..voices import default_voices_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="Q3TTS_", extra="ignore")

    model: str = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"  # checkpoint folder or Hugging Face repo id
    served_model_name: Optional[str] = None  # the id /v1/models lists; default: `model` as given
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    dtype: str = "auto"
    quantize: Optional[Literal["none", "int8"]] = None  # "int8": int8 talker/code-predictor weights (CPU only)
    # Saved (cloned) voices, kept across restarts: the folder `q3tts voices` uses
    # (q3tts/voices.py: $Q3TTS_VOICES_DIR, else $XDG_DATA_HOME/q3tts/voices, else ~/.local/share/q3tts/voices).
    voices_dir: Path = Field(default_factory=default_voices_dir)
    # Keys accepted as `Authorization: Bearer KEY` on /v1/*; empty = open. The environment
    # variable takes a comma-separated list: Q3TTS_API_KEYS=key1,key2
    api_keys: Annotated[list[str], NoDecode] = []
    max_batch: int = Field(16, ge=1)  # requests generated together (continuous batching)
    max_queue: int = Field(64, ge=0)  # requests waiting for a batch slot before 429
    max_text_chars: int = Field(5000, ge=1)  # per request (and per WebSocket sentence buffer)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)  # one reference audio file
    max_reference_seconds: float = Field(60.0, gt=0, le=60.0)  # the model takes 1-60 s references
    request_timeout: float = Field(600.0, gt=0)  # seconds a request may generate before it is cut
    chunk_frames: int = Field(4, ge=1)  # codec frames (80 ms each) per streamed audio chunk
    first_chunk_frames: int = Field(1, ge=1)  # a small first chunk: earliest audio
    warmup: bool = True  # one short synthesis before /ready says yes
    ui: bool = True  # the web UI at /ui (needs the `ui` extra: gradio)
    # More checkpoints the UI can load and switch between, as NAME=PATH (e.g. a 1.7B beside the
    # served 0.6B, or a Base model for Design -> Clone). Q3TTS_UI_MODELS takes a comma-separated list.
    ui_models: Annotated[list[str], NoDecode] = []
    ssl_certfile: Optional[str] = None  # HTTPS (browsers only allow the microphone on secure pages)
    ssl_keyfile: Optional[str] = None

    @field_validator("api_keys", "ui_models", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def model_id(self) -> str:
        return self.served_model_name or self.model
