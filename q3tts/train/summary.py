"""The per-part summary a run prints at its start: what is frozen, trainable, replaced or new.

    part                               tensors       params    trainable  status
    talker.model.text_embedding              1   311,164,928           0  frozen
    talker.model.layers.0-25               286   ...                   0  frozen
    talker.model.layers.26-27               22   ...             ...      replaced, trainable
    talker.model.layers.28                  11   ...             ...      new, trainable
    ...
    total                                  ...   ...             ... (x.xx %)

A talker layer's part is its index; runs of layers with the same status are merged.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

LAYERS = "talker.model.layers."


@dataclass
class Part:
    name: str
    tensors: int = 0
    params: int = 0
    trainable: int = 0
    trainable_tensors: int = 0
    role: str = ""  # replaced | new | "" (layer replacement)
    lora: bool = False

    @property
    def status(self) -> str:
        if self.lora:
            base = "LoRA adapters trainable"
        elif self.trainable == 0:
            base = "frozen"
        elif self.trainable == self.params:
            base = "trainable"
        else:
            base = f"partly trainable ({self.trainable_tensors} of {self.tensors} tensors)"
        return f"{self.role}, {base}" if self.role else base


def part_of(name: str) -> tuple[str, int]:
    """("talker.model.layers.", index) for a talker layer's tensor, else (its part name, -1)."""
    if name.startswith(LAYERS):
        return LAYERS, int(name[len(LAYERS) :].split(".", 1)[0])
    head = name.split(".")
    depth = 3 if head[:2] == ["talker", "model"] else 2  # talker.model.norm, talker.codec_head, ...
    return ".".join(head[:depth]), -1


def parts(networks: nn.Module, roles: dict[int, str]) -> list[Part]:
    found: dict[tuple[str, int], Part] = {}
    for name, p in networks.named_parameters():
        key = part_of(name.replace(".base_layer.", "."))  # peft wraps a linear as base_layer + adapters
        part = found.setdefault(key, Part(key[0] if key[1] < 0 else f"{LAYERS}{key[1]}", role=roles.get(key[1], "")))
        part.lora |= ".lora_" in name and p.requires_grad
        part.tensors += 1
        part.params += p.numel()
        if p.requires_grad:
            part.trainable += p.numel()
            part.trainable_tensors += 1
    return merge_layer_runs(list(found.values()))


def merge_layer_runs(items: list[Part]) -> list[Part]:
    """Consecutive talker layers with the same status -> one row "talker.model.layers.a-b"."""
    out: list[Part] = []
    first: dict[int, int] = {}
    for part in items:
        prev = out[-1] if out else None
        if prev is not None and prev.name.startswith(LAYERS) and part.name.startswith(LAYERS) \
                and (prev.status, prev.tensors > 0) == (part.status, part.tensors > 0):  # fmt: skip
            start = first[id(prev)]
            end = int(part.name[len(LAYERS) :])
            merged = Part(f"{LAYERS}{start}-{end}", prev.tensors + part.tensors, prev.params + part.params,
                          prev.trainable + part.trainable, prev.trainable_tensors + part.trainable_tensors,
                          prev.role, prev.lora)  # fmt: skip
            out[-1] = merged
            first[id(merged)] = start
            continue
        out.append(part)
        if part.name.startswith(LAYERS):
            first[id(part)] = int(part.name[len(LAYERS) :])
    return out


def summary_lines(networks: nn.Module, roles: dict[int, str]) -> list[str]:
    rows = parts(networks, roles)
    total = sum(r.params for r in rows)
    trainable = sum(r.trainable for r in rows)
    width = max(len(r.name) for r in rows) + 2
    lines = [f"{'part':<{width}}{'tensors':>8}{'params':>14}{'trainable':>14}  status"]
    for r in rows:
        lines.append(f"{r.name:<{width}}{r.tensors:>8}{r.params:>14,}{r.trainable:>14,}  {r.status}")
    lines.append(f"{'total':<{width}}{sum(r.tensors for r in rows):>8}{total:>14,}{trainable:>14,}  "
                 f"{100 * trainable / max(1, total):.2f} % trainable")  # fmt: skip
    lines.append("speaker_encoder: not trained (speaker embeddings were computed once, in prepare)")
    return lines
