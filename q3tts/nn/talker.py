"""The talker: a Qwen3 decoder that predicts codebook 0 of the 12 Hz codec, one frame per step.

Each input position is the sum of a text-track vector (text embedding -> 2-layer MLP) and a
codec-track vector (codec embedding); the code predictor for codebooks 1..15 lives inside it
because the official weights nest it under `talker.code_predictor`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TalkerConfig
from .code_predictor import CodePredictor
from .layers import Block, KVCache, RMSNorm, causal_mask, rope_tables


class TextProjection(nn.Module):
    """text_hidden_size -> hidden, with biases (`Qwen3TTSTalkerResizeMLP` in the official names)."""

    def __init__(self, text_hidden: int, hidden: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(text_hidden, text_hidden, bias=True)
        self.linear_fc2 = nn.Linear(text_hidden, hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class TalkerBody(nn.Module):
    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.codec_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)
        self.layers = nn.ModuleList(
            Block(
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim,
                cfg.rms_norm_eps,
            )
            for _ in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        if cfg.hidden_act != "silu":
            raise ValueError(f"talker hidden_act '{cfg.hidden_act}' is not supported (only silu)")
        self.cfg = cfg
        self.model = TalkerBody(cfg)
        self.text_projection = TextProjection(cfg.text_hidden_size, cfg.hidden_size)
        self.codec_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg.code_predictor, cfg.hidden_size)
        # Set by lowbit.use_stack_kernels_ when every layer's linears are low-bit: decode steps and
        # prefills over a cache then run as one kernel call (lowbit.StackKernel); calls without a
        # cache (training, tests) stay on the modules.
        self.stack_kernel = None

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [..., T] -> text-track vectors [..., T, hidden]. The table may be stored narrower
        than the model (see model.LOOKUP_TABLES): its rows are widened as they are looked up."""
        return self.text_projection(self.model.text_embedding(ids).to(self.codec_head.weight.dtype))

    def embed_codec(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.codec_embedding(ids).to(self.codec_head.weight.dtype)  # a narrow table: see embed_text

    def embed_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., G] (all codebooks of a frame) -> the summed codec-track vector [..., hidden]."""
        out = self.embed_codec(codes[..., 0])
        for k in range(1, self.cfg.num_code_groups):
            out = out + self.code_predictor.embed_code(k, codes[..., k])  # each row widened before the sum
        return out

    def forward(
        self,
        embeds: torch.Tensor,  # [B, T, hidden]
        positions: torch.Tensor,  # [B, T] RoPE positions (left-padded rows start later)
        mask: Optional[torch.Tensor] = None,  # bool [B, 1, T, S]; None = causal, no padding
        caches: Optional[list[KVCache]] = None,
        input_pos: Optional[torch.Tensor] = None,  # [T] cache slots
    ) -> torch.Tensor:
        """Returns the final normed hidden states [B, T, hidden]; `codec_head` turns them into logits."""
        if self.stack_kernel is not None and caches is not None and input_pos is not None and mask is not None:
            # Decode steps (each row writes its own slot) and prefills (every row writes slots
            # `input_pos`): each token sees the cache slots its mask row allows.
            B, T, _ = embeds.shape
            slots = input_pos[:, 0] if input_pos.dim() == 2 else input_pos.repeat(B)
            visible = mask[:, 0].expand(B, T, mask.shape[-1]).reshape(B * T, mask.shape[-1])
            x = self.stack_kernel(embeds.reshape(B * T, -1), [c.k for c in caches], [c.v for c in caches], slots,
                                  positions.expand(B, T).reshape(-1), visible, mask.shape[-1], T)  # fmt: skip
            return self.model.norm(x.to(embeds.dtype)).reshape(B, T, -1)
        rope = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        x = embeds
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, mask, caches[i] if caches is not None else None, input_pos)
        return self.model.norm(x)

    def new_caches(self, batch: int, length: int, device=None, dtype=None) -> list[KVCache]:
        w = self.codec_head.weight
        return [
            KVCache.empty(
                batch, self.cfg.num_key_value_heads, length, self.cfg.head_dim, device or w.device, dtype or w.dtype
            )
            for _ in self.model.layers
        ]


@torch.no_grad()
def random_init_(talker: Talker, generator: torch.Generator) -> None:
    """Random weights whose greedy outputs are varied (for test and benchmark checkpoints):
    unit-variance embeddings, fan-in-scaled linears, norms near 1."""
    for name, p in talker.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
        elif name.endswith("bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=generator))
        elif "embedding" in name:
            p.copy_(torch.randn(p.shape, generator=generator))
        else:
            p.copy_(torch.randn(p.shape, generator=generator) / p.shape[-1] ** 0.5)


def left_padded_inputs(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE positions [B, T] and attention mask [B, 1, T, T] for a left-padded prefill.

    Real tokens count from 0 at the first non-pad; pads get position 1, as in the official
    code (their values never reach a real token because the mask hides them)."""
    valid = attention_mask.bool()
    positions = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 1)
    slots = torch.arange(valid.shape[1], device=valid.device)
    return positions, causal_mask(slots, slots, key_valid=valid)
