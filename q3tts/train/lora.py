"""LoRA on the talker's attention and MLP linears, via peft, and merged weights for export.

`peft.inject_adapter_in_model` swaps each targeted nn.Linear for a LoRA layer in place (the
frozen weight moves to `<name>.base_layer.weight`, the adapters to `<name>.lora_A/B.default`);
it needs no Hugging Face model class. Export folds W + scale * B @ A back into `<name>.weight`.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from . import require
from .config import ConfigError, LoraOptions

ADAPTER = "default"


def target_pattern(targets: list[str]) -> str:
    for t in targets:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t):
            raise ConfigError(f"LoRA target {t!r} is not a module name such as q_proj")
    return rf"talker\.model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(targets)})"


def inject(networks: nn.Module, opts: LoraOptions) -> list[str]:
    """Add LoRA adapters; returns the names of the adapted modules. Only the adapters train."""
    peft = require("peft", "mode: lora")
    config = peft.LoraConfig(r=int(opts.rank), lora_alpha=float(opts.alpha), lora_dropout=float(opts.dropout),
                             target_modules=target_pattern(list(opts.targets)), bias="none")  # fmt: skip
    peft.inject_adapter_in_model(config, networks, adapter_name=ADAPTER)
    adapted = [name for name, m in networks.named_modules() if _is_lora(m)]
    if not adapted:
        raise ConfigError(f"LoRA matched no talker linear (targets {opts.targets})")
    networks.requires_grad_(False)
    for name, p in networks.named_parameters():
        if ".lora_" in name:
            p.requires_grad_(True)
    return adapted


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


@torch.no_grad()
def merged_state_dict(networks: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every adapter folded into its base weight, under the plain names."""
    merged = {}
    for name, m in networks.named_modules():
        if _is_lora(m) and ADAPTER in m.lora_A:
            w = m.base_layer.weight
            merged[f"{name}.weight"] = (w.float() + m.get_delta_weight(ADAPTER).float()).to(w.dtype)
    out = {}
    for key, t in networks.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged.get(key, t)
    return out
