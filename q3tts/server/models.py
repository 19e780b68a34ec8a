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

With `max_loaded` (a count) or `memory_budget` (bytes of weights), loading one more model first
unloads the least recently used idle ones; a model still in use (a lease held: a request streaming)
is never unloaded to make room, so when every loaded model is busy the load is refused
(`ModelsBusy`). A model's weight bytes are estimated from its files before it loads (stored bytes,
times 2 when bf16 files are widened to float32) and measured once loaded.

`switch` refuses before changing anything when the model it would leave is busy or is the API
server's own (pinned) model: the kind's active model and what is loaded stay as they were.

Errors: `ModelUnavailable` (a LookupError) when nothing of that kind or name is configured;
`ModelsBusy` (a RuntimeError) when a model cannot be loaded or switched away from right now.
"""

from __future__ import annotations

import os
import threading
import time
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


class ModelsBusy(RuntimeError):
    """The model cannot be loaded (or left) now: the others it would unload are serving requests."""


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
    last_used: float = 0.0  # time.monotonic() of the last acquire: the least recent is unloaded first
    weights_bytes: Optional[int] = None  # measured once loaded; estimated from the files before


class Lease:
    """A model held in use: it is not unloaded until `release()` (idempotent)."""

    def __init__(self, manager: "ModelManager", entry: _Entry):
        self.name, self.tts, self.scheduler = entry.name, entry.tts, entry.scheduler
        self._manager, self._entry, self._released = manager, entry, False

    def release(self) -> None:
        with self._entry.idle:
            if self._released:
                return
            self._released = True
            self._entry.users -= 1
            self._entry.idle.notify_all()
        self.tts = self.scheduler = None  # a lease kept around must not keep an unloaded model alive


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


def _estimate_bytes(source: str, device: str, dtype: str) -> Optional[int]:
    """Weight bytes a checkpoint will take once loaded: its safetensors files' bytes, doubled when
    the (bf16) files are widened to a 4-byte dtype (float32 on CPU by default)."""
    from ..api import resolve_device, resolve_dtype
    from ..checkpoint import resolve

    try:
        stored = sum(f.stat().st_size for f in resolve(source).rglob("*.safetensors"))
        itemsize = resolve_dtype(dtype, resolve_device(device)).itemsize
    except Exception:  # an estimate only: a model whose files cannot be read fails at load instead
        return None
    return stored * max(1, itemsize // 2)


def _loaded_bytes(tts) -> int:
    """Bytes of every parameter and buffer of a loaded model (talker, code predictor, codec ...)."""
    ck = tts.checkpoint
    seen, total = set(), 0
    for module in (ck.networks, ck.speech_tokenizer):
        for t in (*module.parameters(), *module.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


class ModelManager:
    def __init__(self, checkpoints: dict[str, str | os.PathLike], device: str = "auto", dtype: str = "auto",
                 max_batch: int = 8, max_queue: int = 32, quantize: Optional[str] = None,
                 max_loaded: Optional[int] = None, memory_budget: Optional[int] = None):  # fmt: skip
        """`checkpoints`: name -> folder or Hugging Face repo id. Only the configs are read here.
        `max_loaded`: the most models loaded at once; `memory_budget`: the most weight bytes."""
        if max_loaded is not None and max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.device, self.dtype, self.quantize = device, dtype, quantize
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_loaded, self.memory_budget = max_loaded, memory_budget
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
                weights_bytes=_estimate_bytes(str(source), device, dtype),
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
                "loaded": e.tts is not None and e.tts.loaded, "weights_bytes": e.weights_bytes,
                "in_use": e.users}  # fmt: skip

    def loaded_names(self) -> list[str]:
        return [n for n, e in self._entries.items() if e.scheduler is not None]

    def schedulers(self) -> dict[str, object]:
        """name -> SpeechScheduler of every loaded model (for metrics)."""
        return {n: e.scheduler for n, e in list(self._entries.items()) if e.scheduler is not None}

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
            e.weights_bytes, e.last_used = _loaded_bytes(tts), time.monotonic()

    def load(self, key: str):
        """Load a model (a name, or a kind's active model) and start its scheduler -> (tts, scheduler).
        Unloads the least recently used idle models first when over `max_loaded` / `memory_budget`."""
        with self._lock:
            e = self._entry(key)
            self._load_entry(e)
            e.last_used = time.monotonic()
            return e.tts, e.scheduler

    def acquire(self, key: str) -> Lease:
        """Load if needed and hold the model until `lease.release()`: it is not unloaded meanwhile."""
        with self._lock:  # with the eviction check under the same lock: a leased model is never chosen
            e = self._entry(key)
            self._load_entry(e)
            e.last_used = time.monotonic()
            with e.idle:
                e.users += 1
            return Lease(self, e)

    def _load_entry(self, e: _Entry) -> None:
        from ..api import Qwen3TTS
        from ..serving import SpeechScheduler

        if e.scheduler is not None:
            return
        self._make_room(e)
        tts = Qwen3TTS.from_pretrained(e.source, device=self.device, dtype=self.dtype, quantize=self.quantize,
                                       lazy=True).load()  # fmt: skip
        e.tts, e.scheduler = tts, SpeechScheduler(tts, self.max_batch, self.max_queue).start()
        e.weights_bytes = _loaded_bytes(tts)

    def _make_room(self, e: _Entry) -> None:
        """Unload least recently used idle models until `e` fits the count and the memory budget."""
        need = e.weights_bytes or 0
        if self.memory_budget is not None and need > self.memory_budget:
            raise ModelsBusy(f"model '{e.name}' needs about {format_bytes(need)}, more than the whole memory "
                             f"budget ({format_bytes(self.memory_budget)})")  # fmt: skip
        while True:
            loaded = [x for x in self._entries.values() if x.scheduler is not None and x is not e]
            over_count = self.max_loaded is not None and len(loaded) + 1 > self.max_loaded
            used = sum(x.weights_bytes or 0 for x in loaded)
            over_memory = self.memory_budget is not None and used + need > self.memory_budget
            if not (over_count or over_memory):
                return
            idle = [x for x in loaded if not x.pinned and x.users == 0]
            if not idle:
                busy = ", ".join(x.name for x in loaded)
                raise ModelsBusy(f"cannot load '{e.name}' now: the loaded models ({busy}) are all serving requests "
                                 "or pinned; try again shortly")  # fmt: skip
            self._unload_entry(min(idle, key=lambda x: x.last_used))

    def unload(self, key: str) -> bool:
        """Stop a model's scheduler (its requests end with an error) and free its weights."""
        with self._lock:
            e = self._entry(key)
            if e.scheduler is None:
                return False
            if e.pinned:
                raise ModelUnavailable(f"'{e.name}' is the API server's model; it stays loaded")
            self._unload_entry(e)
            return True

    def _unload_entry(self, e: _Entry) -> None:
        e.scheduler.close()
        with e.idle:  # requests still decoding their last frames read the model's codec
            e.idle.wait_for(lambda: e.users == 0, timeout=UNLOAD_WAIT_SECONDS)
        tts, e.tts, e.scheduler = e.tts, None, None
        tts.unload()

    def switch(self, name: str):
        """Make `name` the active model of its kind, unload the one it replaces, load `name`.
        Refuses (ModelUnavailable / ModelsBusy) before changing anything when the model it replaces
        is pinned or serving requests, so the two are never left loaded side by side."""
        with self._lock:
            e = self._entry(name)
            if e.name != name:
                raise ModelUnavailable(f"no model named '{name}'")
            previous = self._entries.get(self._active.get(e.kind, ""))
            leaving = previous is not None and previous is not e and previous.scheduler is not None
            if leaving and previous.pinned:
                raise ModelUnavailable(f"'{previous.name}' is the API server's model and stays loaded; "
                                       f"start the server with --model {name}=PATH to serve '{name}' instead")  # fmt: skip
            if leaving and previous.users:
                raise ModelsBusy(f"'{previous.name}' is serving {previous.users} request(s); switch when it is idle")
            if leaving:
                self._unload_entry(previous)
            self._active[e.kind] = name
            return self.load(name)

    @contextmanager
    def use(self, key: str) -> Iterator[tuple]:
        """(tts, scheduler) of a name or a kind's active model, loaded if needed; while inside, an
        unload waits for this user to finish reading audio."""
        lease = self.acquire(key)
        try:
            yield lease.tts, lease.scheduler
        finally:
            lease.release()

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
