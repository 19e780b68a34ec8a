"""Saved voices: the voice prompt file format, the voice name rule and the default library folder.

Every front door (Python API, `q3tts voices`, the server's VoiceLibrary, the web UI) reads and
writes voices through this module, so a voice saved by one is found by all the others.

A voice file is `NAME.safetensors`: tensors `ref_spk_embedding` [hidden] float32 and, for an
in-context voice, `ref_code` [frames, 16] int64; metadata `format=q3tts-voice-prompt`,
`version`, `x_vector_only_mode`, `icl_mode`, `ref_text` (JSON) and `hidden_size`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .errors import InputError

VOICE_FORMAT = "q3tts-voice-prompt"
VOICE_SUFFIX = ".safetensors"
# No path separators, no leading dot (no hidden files, no '..'), at most 100 characters.
VOICE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
FRAME_SECONDS = 0.08  # one 12.5 Hz codec frame


class BadVoiceName(InputError):
    """A voice name that the name rule refuses."""


def check_voice_name(name: str) -> str:
    """`name` if it is a valid library name, else BadVoiceName saying what is allowed."""
    if isinstance(name, str) and name.endswith(VOICE_SUFFIX):
        raise BadVoiceName(f"bad voice name '{name}': give the name without '{VOICE_SUFFIX}'")
    if not isinstance(name, str) or not VOICE_NAME.fullmatch(name):
        raise BadVoiceName(
            f"bad voice name {name!r}: use 1-100 letters, digits, '-', '_' and '.', not starting with '.'"
        )
    return name


def default_voices_dir(override: str | os.PathLike | None = None) -> Path:
    """The voice library folder: `override`, else $Q3TTS_VOICES_DIR, else
    ${XDG_DATA_HOME:-~/.local/share}/q3tts/voices."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("Q3TTS_VOICES_DIR"):
        return Path(os.environ["Q3TTS_VOICES_DIR"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(data).expanduser() / "q3tts" / "voices"


def voice_path(folder: str | os.PathLike, name: str) -> Path:
    return Path(folder) / f"{check_voice_name(name)}{VOICE_SUFFIX}"


@dataclass
class VoiceClonePromptItem:
    """A reusable cloned voice: the x-vector, plus reference codes and transcript in ICL mode."""

    ref_code: Optional[torch.Tensor]  # [T, 16] int64, None in x-vector-only mode
    ref_spk_embedding: torch.Tensor  # [hidden]
    x_vector_only_mode: bool
    icl_mode: bool
    ref_text: Optional[str] = None

    def _tensors_and_metadata(self) -> tuple[dict, dict]:
        tensors = {"ref_spk_embedding": self.ref_spk_embedding.detach().float().cpu().contiguous()}
        if self.ref_code is not None:
            tensors["ref_code"] = self.ref_code.detach().long().cpu().contiguous()
        meta = {
            "format": VOICE_FORMAT,
            "version": "1",
            "x_vector_only_mode": json.dumps(self.x_vector_only_mode),
            "icl_mode": json.dumps(self.icl_mode),
            "ref_text": json.dumps(self.ref_text),
            "hidden_size": str(self.ref_spk_embedding.shape[-1]),
        }
        return tensors, meta

    def save(self, path: str | Path) -> None:
        """Write a `.safetensors` voice file (tensors + metadata), atomically."""
        from safetensors.torch import save_file

        tensors, meta = self._tensors_and_metadata()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    def to_bytes(self) -> bytes:
        """The voice file's bytes (what `save` writes), for stores that are not folders."""
        from safetensors.torch import save

        tensors, meta = self._tensors_and_metadata()
        return save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "voice prompt") -> "VoiceClonePromptItem":
        """A voice from a voice file's bytes (`to_bytes`); `origin` names it in errors."""
        from safetensors.torch import load

        try:
            header_size = int.from_bytes(data[:8], "little")  # safetensors: u64 header size, JSON header
            meta = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
            return cls._parse(meta, load(data), origin)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{origin}: not a readable voice prompt ({str(e).splitlines()[0]})") from None

    @classmethod
    def _parse(cls, meta: dict, tensors: dict, origin: str) -> "VoiceClonePromptItem":
        if meta.get("format") != VOICE_FORMAT:
            raise InputError(f"{origin}: not a q3tts voice prompt file")
        return cls(
            ref_code=tensors.get("ref_code"),
            ref_spk_embedding=tensors["ref_spk_embedding"],
            x_vector_only_mode=json.loads(meta["x_vector_only_mode"]),
            icl_mode=json.loads(meta["icl_mode"]),
            ref_text=json.loads(meta["ref_text"]),
        )

    @classmethod
    def load(cls, path: str | Path) -> "VoiceClonePromptItem":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != VOICE_FORMAT:
                    raise InputError(f"{path}: not a q3tts voice prompt file")
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
            return cls._parse(meta, tensors, str(path))
        except InputError:
            raise
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except Exception as e:
            raise InputError(f"{path}: not a readable voice prompt ({str(e).splitlines()[0]})") from None


@dataclass
class VoiceHeader:
    """What a voice file says about itself, read from its header only (no tensor is loaded)."""

    name: str
    mode: str  # "icl" (reference codes + transcript) or "x_vector"
    ref_text: Optional[str]
    duration: Optional[float]  # seconds of reference audio (None for x-vector voices)
    hidden_size: Optional[int]


def read_voice_header(path: str | os.PathLike) -> Optional[VoiceHeader]:
    """The header of a voice file, or None if it is not a readable q3tts voice prompt."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != VOICE_FORMAT:
                return None
            frames = f.get_slice("ref_code").get_shape()[0] if "ref_code" in f.keys() else None  # noqa: SIM118
        x_vector = json.loads(meta.get("x_vector_only_mode", "false"))
        name = path.name[: -len(VOICE_SUFFIX)] if path.name.endswith(VOICE_SUFFIX) else path.stem
        return VoiceHeader(
            name,
            "x_vector" if x_vector else "icl",
            json.loads(meta.get("ref_text", "null")),
            frames * FRAME_SECONDS if frames else None,
            int(meta["hidden_size"]) if "hidden_size" in meta else None,
        )
    except Exception:
        return None


def list_voice_files(folder: str | os.PathLike) -> list[Path]:
    """The voice files of a library folder, by name (hidden and temporary files left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.glob(f"*{VOICE_SUFFIX}")
        if not p.name.startswith(".") and VOICE_NAME.fullmatch(p.name[: -len(VOICE_SUFFIX)])
    )
