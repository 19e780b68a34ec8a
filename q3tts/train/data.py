"""Prepared shards -> training examples, and the order they are visited in.

The order is a pure function of (seed, epoch), so a resumed run visits exactly the batches an
uninterrupted one would: the data position saved in a checkpoint is just (epoch, step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .dataset import INDEX, read_index


@dataclass
class Example:
    id: str
    text: str
    codes: torch.Tensor  # [T, G] int64
    speaker: Optional[str]  # None: the run's default speaker name
    language: str  # "auto" or a key of codec_language_id
    xvector: Optional[torch.Tensor] = None  # [H] float32 speaker embedding of this item (or its ref_audio)


def load_prepared(folder: str | Path) -> list[Example]:
    """Every kept item of a prepared folder (codes are small: an hour is ~1.4 MB as int16)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = read_index(folder)
    if not index:
        raise FileNotFoundError(f"{folder}: no prepared items ({INDEX} missing or empty); run "
                                "`python -m q3tts.train.dataset prepare` first")  # fmt: skip
    shards: dict[str, dict] = {}
    out = []
    for x in index:
        if x["shard"] not in shards:
            shards[x["shard"]] = load_file(str(folder / x["shard"]))
        s = shards[x["shard"]]
        lo, hi = int(s["offsets"][x["row"]]), int(s["offsets"][x["row"] + 1])
        xv = s["xvectors"][x["row"]] if "xvectors" in s else None
        out.append(
            Example(x["id"], x["text"], s["codes"][lo:hi].long(), x.get("speaker"), x.get("language", "auto"), xv)
        )
    return out


def split_examples(examples: list[Example], folder: str | Path) -> tuple[list[Example], list[Example]]:
    splits = {x["id"]: x["split"] for x in read_index(Path(folder))}
    train = [e for e in examples if splits[e.id] == "train"]
    return train, [e for e in examples if splits[e.id] != "train"]


class BatchPlan:
    """Micro-batches of `batch_size` example indices. Each epoch is a fresh permutation (seed +
    epoch), cut into batches and padded by cycling to a multiple of accum x world, so every
    optimizer step has `accum` micro-batches on every process and no example is dropped."""

    def __init__(self, n: int, batch_size: int, accum: int = 1, world: int = 1, seed: int = 0, shuffle: bool = True):
        assert n > 0, "no training examples"
        self.n, self.batch_size, self.accum, self.world = n, batch_size, accum, world
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = math.ceil(math.ceil(n / batch_size) / (accum * world))

    def batches(self, epoch: int) -> list[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(self.n))
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        need = self.steps_per_epoch * self.accum * self.world
        return [batches[i % len(batches)] for i in range(need)]

    def step(self, epoch: int, step_in_epoch: int, rank: int = 0) -> list[list[int]]:
        """The `accum` micro-batches process `rank` runs for one optimizer step."""
        batches = self.batches(epoch)
        first = step_in_epoch * self.accum * self.world
        return [batches[first + m * self.world + rank] for m in range(self.accum)]


def eval_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Validation batches of this process (in order, no padding: every example counted once)."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batches[rank::world]
