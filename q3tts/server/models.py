"""Named checkpoints for the web UI and the server, loaded on first use.

    models = ModelManager({"0.6B": "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
                           "1.7B": "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice",
                           "clone": "/models/0.6B-Base"}, device="cpu")
    models.entries()                 # [{name, kind, size, path, active, loaded}, ...] without loading weights
    with models.use("custom_voice") as (tts, scheduler):   # a kind or a name; loads it if needed
        job = scheduler.submit(tts.utterances("Hi", speaker="vivian")[0])
    models.switch("1.7B")            # make 1.7B the active custom_voice model, unloading 0.6B
    models.load(name); models.unload(name); models.memory(); models.close()

Each kind (custom_voice, voice_design, base) has one *active* model: the first configured one of
that kind until `switch` picks another. A request for a kind uses the active model. Models of
different kinds stay loaded together (Design -> Clone needs a voice_design and a base model), while
`switch` frees the model it replaces, so a small machine can flip between sizes in one process.
A loaded model has its own SpeechScheduler (continuous batching); unloading closes it and waits
for the requests still reading audio from it before the weights are freed.

Errors: `ModelUnavailable` (a LookupError) when nothing of that kind or name is configured.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..languages import model_languages

KINDS = {"custom_voice": "CustomVoice", "voice_design": "VoiceDesign", "base": "Base"}
UNLOAD_WAIT_SECONDS = 10.0  # how long unload waits for requests still decoding audio


class ModelUnavailable(LookupError):
    """No configured model has that name or kind."""


@dataclass
class _Entry:
    name: str
    source: str
    kind: str
    size: Optional[str]
    speakers: list[str]
    languages: list[str]
    tts: object = None  # Qwen3TTS while loaded
    scheduler: object = None  # SpeechScheduler while loaded
    pinned: bool = False  # owned by the API server: the UI uses it but never unloads it
    users: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition)


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """["NAME=PATH", ...] (or a bare PATH, named after its folder) -> {name: path}."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name, spec
        if not name or not path:
            raise ValueError(f"bad model spec '{spec}': expected NAME=PATH")
        if name in out:
            raise ValueError(f"model name '{name}' is given twice")
        out[name] = path
    return out


def _read_config(source: str):
    from ..checkpoint import resolve
    from ..config import ModelConfig

    return ModelConfig.from_file(resolve(source) / "config.json")


class ModelManager:
    def __init__(self, checkpoints: dict[str, str | os.PathLike], device: str = "auto", dtype: str = "auto",
                 max_batch: int = 8, max_queue: int = 32, quantize: Optional[str] = None):  # fmt: skip
        """`checkpoints`: name -> folder or Hugging Face repo id. Only the configs are read here."""
        self.device, self.dtype, self.quantize = device, dtype, quantize
        self.max_batch, self.max_queue = max_batch, max_queue
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._active: dict[str, str] = {}
        for name, source in checkpoints.items():
            cfg = _read_config(str(source))
            t = cfg.talker
            self._entries[name] = _Entry(
                name, str(source), cfg.tts_model_type, cfg.tts_model_size,
                speakers=sorted(s.lower() for s in t.spk_id) if t.spk_id else [],
                languages=model_languages(t.codec_language_id),
            )  # fmt: skip
            self._active.setdefault(cfg.tts_model_type, name)

    # -- what is configured ---------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[dict]:
        return [self.info(name) for name in self._entries]

    def info(self, key: str) -> dict:
        """name, kind, size, path, speakers, languages, active, loaded of a name or a kind's active model."""
        e = self._entry(key)
        return {"name": e.name, "kind": e.kind, "size": e.size, "path": e.source, "speakers": e.speakers,
                "languages": e.languages, "active": self._active.get(e.kind) == e.name,
                "loaded": e.tts is not None and e.tts.loaded}  # fmt: skip

    def has(self, key: str) -> bool:
        return key in self._entries or key in self._active

    def _entry(self, key: str) -> _Entry:
        if key in self._entries:
            return self._entries[key]
        if key in self._active:
            return self._entries[self._active[key]]
        if key in KINDS:
            raise ModelUnavailable(f"no {KINDS[key]} model is configured (add one with --model NAME=PATH)")
        raise ModelUnavailable(f"no model named '{key}'; configured: {', '.join(self._entries) or 'none'}")

    # -- loading ---------------------------------------------------------------------------------
    def adopt(self, name: str, tts, scheduler) -> None:
        """Use a model loaded elsewhere (the API server's) under `name`; it stays loaded."""
        with self._lock:
            if name not in self._entries:
                cfg = tts.checkpoint.config
                self._entries[name] = _Entry(name, str(tts.source), cfg.tts_model_type, cfg.tts_model_size,
                                             speakers=tts.get_supported_speakers() or [],
                                             languages=tts.get_supported_languages())  # fmt: skip
                self._active.setdefault(cfg.tts_model_type, name)
            e = self._entries[name]
            e.tts, e.scheduler, e.pinned = tts, scheduler, True

    def load(self, key: str):
        """Load a model (a name, or a kind's active model) and start its scheduler -> (tts, scheduler)."""
        from ..api import Qwen3TTS
        from ..serving import SpeechScheduler

        with self._lock:
            e = self._entry(key)
            if e.scheduler is None:
                tts = Qwen3TTS.from_pretrained(
                    e.source, device=self.device, dtype=self.dtype, quantize=self.quantize, lazy=True
                ).load()
                e.tts, e.scheduler = tts, SpeechScheduler(tts, self.max_batch, self.max_queue).start()
            return e.tts, e.scheduler

    def unload(self, key: str) -> bool:
        """Stop a model's scheduler (its requests end with an error) and free its weights."""
        with self._lock:
            e = self._entry(key)
            if e.scheduler is None:
                return False
            if e.pinned:
                raise ModelUnavailable(f"'{e.name}' is the API server's model; it stays loaded")
            e.scheduler.close()
            with e.idle:  # requests still decoding their last frames read the model's codec
                e.idle.wait_for(lambda: e.users == 0, timeout=UNLOAD_WAIT_SECONDS)
            e.tts.unload()
            e.tts = e.scheduler = None
            return True

    def switch(self, name: str):
        """Make `name` the active model of its kind, unload the one it replaces, load `name`."""
        with self._lock:
            e = self._entry(name)
            if e.name != name:
                raise ModelUnavailable(f"no model named '{name}'")
            previous = self._active.get(e.kind)
            self._active[e.kind] = name
            if previous and previous != name:
                self.unload(previous)
            return self.load(name)

    @contextmanager
    def use(self, key: str) -> Iterator[tuple]:
        """(tts, scheduler) of a name or a kind's active model, loaded if needed; while inside, an
        unload waits for this user to finish reading audio."""
        tts, scheduler = self.load(key)
        e = self._entry(key)
        with e.idle:
            e.users += 1
        try:
            yield tts, scheduler
        finally:
            with e.idle:
                e.users -= 1
                e.idle.notify_all()

    def close(self) -> None:
        for name in self.names:
            if not self._entries[name].pinned:
                self.unload(name)

    # -- memory -----------------------------------------------------------------------------------
    @staticmethod
    def memory() -> dict:
        """Resident memory of this process, and CUDA memory when CUDA is in use (bytes)."""
        out: dict = {"rss_bytes": _rss_bytes()}
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                out["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
                out["cuda_reserved_bytes"] = torch.cuda.memory_reserved()
                out["cuda_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
        except Exception:  # memory reporting never fails a page
            pass
        return out


def _rss_bytes() -> Optional[int]:
    try:  # Linux: current resident set size
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:  # elsewhere: the peak (ru_maxrss is KiB on Linux, bytes on macOS)
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except Exception:
        return None


def format_bytes(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
