"""Layer replacement: re-initialise the last N talker layers, append M new ones, freeze the rest.

Fresh layers start as the identity: random q/k/v/gate/up projections (std 0.02, the Qwen
initializer range), unit norms, and zero output projections (o_proj, down_proj), so both
residual branches add nothing until training moves them. Appended layers therefore leave the
model's outputs unchanged at step 0; replaced ones remove what the old layers did. The init
uses its own seeded generator, so a resumed run rebuilds the same model before loading weights.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..nn.layers import Block
from ..nn.talker import Talker
from .config import ConfigError, LayerOptions

INIT_STD = 0.02


@torch.no_grad()
def fresh_block(talker: Talker, generator: torch.Generator) -> Block:
    c = talker.cfg
    w = talker.codec_head.weight
    block = Block(c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                  c.rms_norm_eps).to(device=w.device, dtype=w.dtype)  # fmt: skip
    for name, p in block.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            p.zero_()
        elif "norm" in name:
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=generator) * INIT_STD)
    return block


def replace_layers(talker: Talker, cfg: ModelConfig, opts: LayerOptions, seed: int) -> list[int]:
    """Swap/append layers in place, update the config's layer count; returns the trainable indices."""
    layers = talker.model.layers
    n = len(layers)
    if not 0 <= opts.replace <= n or opts.add < 0:
        raise ConfigError(f"layers.replace must be in [0, {n}] and layers.add >= 0")
    gen = torch.Generator().manual_seed(seed)
    for i in range(n - opts.replace, n):
        layers[i] = fresh_block(talker, gen)
    for _ in range(opts.add):
        layers.append(fresh_block(talker, gen))
    cfg.talker.num_hidden_layers = len(layers)
    trainable = list(range(n - opts.replace, len(layers)))
    talker.requires_grad_(False)
    for i in trainable:
        layers[i].requires_grad_(True)
    return trainable
