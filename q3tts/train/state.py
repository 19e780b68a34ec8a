"""Resumable training checkpoints, written atomically.

    output_dir/checkpoint-000500/
        trainable.safetensors   the trainable tensors only (the frozen rest is rebuilt from the base)
        speakers.safetensors    new speakers' embeddings
        optimizer.pt, scheduler.pt, [scaler.pt]
        rng_state_<rank>.pt     python / numpy / torch (/ cuda) generators of every process, as
                                tensors, ints and lists only
        trainer_state.json      step, best validation, log window, speaker ids, the full config

A checkpoint is written into a hidden temporary folder and renamed into place, so a crash
mid-save never leaves a half checkpoint under a real name (the previous ones stay intact).
The data position is the step itself: the batch order is a function of (seed, epoch).

Every `.pt` file is read with `torch.load(weights_only=True)`: tensors, numbers, strings and
containers only, never arbitrary pickled objects, so a checkpoint folder from elsewhere cannot
run code when it is resumed. What does not fit (numpy's generator state) is stored as tensors.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .config import ConfigError

PREFIX = "checkpoint-"
STATE = "trainer_state.json"


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an existing one (the old one is removed
    only after the new one is in place)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def rng_state() -> dict:
    """Every generator's state as tensors, ints, floats and lists (what weights_only loading takes)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },  # fmt: skip
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_pt(path: Path):
    """A `.pt` state file: weights_only (no code runs); a file that needs more is refused in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: holds more than tensors and plain values, so it is not loaded ({first}); "
                          "was it written by this version of q3tts?") from None  # fmt: skip


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / f"{PREFIX}{step:06d}"


def list_checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob(f"{PREFIX}*") if p.is_dir() and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest(out: Path) -> Optional[Path]:
    found = list_checkpoints(out)
    return found[-1] if found else None


def rotate(out: Path, keep: int) -> None:
    if keep > 0:
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def write_main(tmp: Path, trainable: dict, speakers: dict, optimizer, scheduler, scaler, trainer_state: dict) -> None:
    """The process-independent part (written by the main process)."""
    from safetensors.torch import save_file

    save_file(trainable, str(tmp / "trainable.safetensors"))
    save_file(speakers, str(tmp / "speakers.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / STATE).write_text(json.dumps(trainer_state, indent=1), encoding="utf-8")


def write_rng(tmp: Path, rank: int) -> None:
    torch.save(rng_state(), tmp / f"rng_state_{rank}.pt")


def read_trainer_state(path: Path) -> dict:
    return json.loads((path / STATE).read_text(encoding="utf-8"))


def load_into(path: Path, module: torch.nn.Module, optimizer, scheduler, scaler, rank: int) -> dict:
    """Restore a checkpoint into freshly built objects; returns the trainer state."""
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    params = dict(module.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(saved) != expected:
        diff = sorted(set(saved) ^ expected)
        raise ConfigError(f"{path}: trainable tensors differ from this run's set-up (e.g. {diff[0]}); same config?")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    optimizer.load_state_dict(load_pt(path / "optimizer.pt"))
    scheduler.load_state_dict(load_pt(path / "scheduler.pt"))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(load_pt(path / "scaler.pt"))
    rng = path / f"rng_state_{rank}.pt"
    if rng.exists():
        set_rng_state(load_pt(rng))
    return read_trainer_state(path)


def load_speakers(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "speakers.safetensors"))
