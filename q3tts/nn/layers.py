"""Transformer parts shared by the talker, the code predictor and the codec transformers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused kernel, same order
        # Normalise in fp32, cast back, *then* scale: the official order, which matters in bf16.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """RoPE's inverse frequencies [head_dim / 2], fp32."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for rotate-half RoPE. positions: [B, T] (int) -> two [B, T, head_dim] fp32 tensors."""
    inv_freq = rope_inv_freq(head_dim, theta, positions.device)
    freqs = positions.float()[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, T, D]. NeoX pairing (dims i and i + D/2)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@dataclass
class KVCache:
    """Static per-layer cache written by position: k, v are [B, H_kv, S_max, D]."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, batch: int, heads: int, length: int, head_dim: int, device, dtype) -> "KVCache":
        shape = (batch, heads, length, head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, H, T, D] at cache slots `input_pos`: [T] for every row alike, or [B, 1] for
        one step whose slot differs per row (continuous batching). Returns the whole cache."""
        if input_pos.dim() == 2:
            rows = torch.arange(k.shape[0], device=k.device)
            self.k[rows, :, input_pos[:, 0]] = k[:, :, 0]
            self.v[rows, :, input_pos[:, 0]] = v[:, :, 0]
            return self.k, self.v
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class Attention(nn.Module):
    """Multi-head attention with GQA, optional per-head q/k RMSNorm (Qwen3) and RoPE."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        qk_norm: bool,
        eps: float = 1e-6,
        bias: bool = False,
    ):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=bias)
        if qk_norm:
            self.q_norm = RMSNorm(head_dim, eps)
            self.k_norm = RMSNorm(head_dim, eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,  # [B, T, hidden]
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: Optional[torch.Tensor],  # bool [B or 1, 1, T, S<=cache length], True = may attend; None = causal
        cache: Optional[KVCache] = None,
        input_pos: Optional[torch.Tensor] = None,  # [T] cache slots, required with a cache
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(input_pos, k, v)
            if mask is not None:  # attend only over the slots the mask covers (the filled prefix)
                k, v = k[:, :, : mask.shape[-1]], v[:, :, : mask.shape[-1]]
        # GQA inside SDPA: no repeated copy of the whole K/V cache per layer and step (bit-identical
        # to repeat_interleave, 2x faster for a decode step on CPU).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1,
                                             enable_gqa=self.heads != self.kv_heads)  # fmt: skip
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm Qwen3 decoder layer (weight names follow the official checkpoints)."""

    def __init__(self, hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.self_attn = Attention(hidden, heads, kv_heads, head_dim, qk_norm=True, eps=eps)
        self.mlp = SwiGLU(hidden, intermediate)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(self, x, rope, mask, cache=None, input_pos=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, input_pos)
        return x + self.mlp(self.post_attention_layernorm(x))


def causal_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, key_valid: Optional[torch.Tensor] = None, window: Optional[int] = None
) -> torch.Tensor:
    """Bool mask [B or 1, 1, Tq, Tk]: key j visible to query i iff k_pos[j] <= q_pos[i] (within
    `window` positions when given) and key_valid[b, j]. q_pos: [Tq], k_pos: [Tk] (cache slots)."""
    m = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        m = m & (k_pos[None, :] > q_pos[:, None] - window)
    m = m[None, None]
    if key_valid is not None:
        # A padding query would see no key at all and SDPA would return NaN for it, which then
        # leaks through 0-weighted values; letting it see itself keeps its garbage finite.
        m = (m & key_valid[:, None, None, :]) | (k_pos[None, :] == q_pos[:, None])[None, None]
    return m
