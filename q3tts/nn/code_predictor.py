"""The code predictor (sub-talker): codebooks 1..G-1 of one frame, one after another.

Per frame its sequence is [talker hidden state, embedding of codebook 0, embedding of codebook 1,
...]; head k reads position k+1 and predicts codebook k+1. Positions restart at 0 every frame,
so its cache has a fixed length of G+1 and can be reused frame after frame.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import CodePredictorConfig
from .layers import Block, KVCache, RMSNorm, rope_tables


class CodePredictorBody(nn.Module):
    def __init__(self, cfg: CodePredictorConfig, talker_hidden: int):
        super().__init__()
        groups = cfg.num_code_groups - 1
        # The official tables have the *talker* width; the projection below maps them down.
        self.codec_embedding = nn.ModuleList(nn.Embedding(cfg.vocab_size, talker_hidden) for _ in range(groups))
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


class CodePredictor(nn.Module):
    def __init__(self, cfg: CodePredictorConfig, talker_hidden: int):
        super().__init__()
        if cfg.hidden_act != "silu":
            raise ValueError(f"code predictor hidden_act '{cfg.hidden_act}' is not supported (only silu)")
        self.cfg = cfg
        self.model = CodePredictorBody(cfg, talker_hidden)
        self.lm_head = nn.ModuleList(
            nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_code_groups - 1)
        )
        if cfg.hidden_size != talker_hidden:
            self.small_to_mtp_projection = nn.Linear(talker_hidden, cfg.hidden_size, bias=True)
        else:
            self.small_to_mtp_projection = nn.Identity()
        self.stack_kernel = None  # see Talker.stack_kernel

    def embed_code(self, codebook: int, ids: torch.Tensor) -> torch.Tensor:
        """Embedding (talker width) of ids of `codebook` (1..G-1). The table may be stored narrower
        than the model (model.LOOKUP_TABLES): rows are widened to the norms' dtype as looked up."""
        return self.model.codec_embedding[codebook - 1](ids).to(self.model.norm.weight.dtype)

    def forward(
        self,
        embeds: torch.Tensor,  # [B, T, talker_hidden]
        positions: torch.Tensor,  # [B, T] or [T]
        caches: Optional[list[KVCache]] = None,
        input_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Final normed hidden states [B, T, hidden]; `lm_head[k]` on position k+1 gives codebook k+1."""
        if self.stack_kernel is not None and caches is not None and input_pos is not None and input_pos.dim() == 1:
            x = self._stack_step(embeds, positions, caches, input_pos)
            return self.model.norm(x.to(embeds.dtype)).reshape(*embeds.shape[:2], -1)
        if positions.dim() == 1:
            positions = positions[None].expand(embeds.shape[0], -1)
        rope = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.small_to_mtp_projection(embeds)
        mask = None
        if caches is not None and input_pos is not None:
            slots = torch.arange(caches[0].k.shape[2], device=x.device)
            mask = (slots[None, :] <= input_pos[:, None])[None, None]
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, mask, caches[i] if caches is not None else None, input_pos)
        return self.model.norm(x)

    def head_logits(
        self, embeds: torch.Tensor, positions: torch.Tensor, caches: list[KVCache], head: int
    ) -> torch.Tensor:
        """Logits [B, V] of `lm_head[head]` on the last of `embeds`' positions (one pass of a frame,
        cache slots = positions). With the stack kernel the norm and the head run inside it."""
        if self.stack_kernel is not None and self.stack_kernel.takes_head(self.lm_head[head]):
            return self._stack_step(embeds, positions, caches, positions, head=self.lm_head[head])
        return self.lm_head[head](self(embeds, positions, caches, positions)[:, -1])

    def _stack_step(self, embeds, positions, caches, slots, head=None) -> torch.Tensor:
        """The stack kernel over rows (b, t): every row writes cache slots `slots` [T] and sees the
        slots up to each token's own. Its output [B*T, hidden], or with `head` the head's logits on
        each row's last token [B, V] (the final norm applied inside)."""
        B, T, _ = embeds.shape
        x = self.small_to_mtp_projection(embeds).reshape(B * T, -1)
        slots = slots if B == 1 else slots.repeat(B)
        pos = (positions if positions.dim() == 2 else positions[None].expand(B, -1)).reshape(-1)
        extra = () if head is None else (self.model.norm.weight, head)
        return self.stack_kernel(x, [c.k for c in caches], [c.v for c in caches], slots, pos, None, 0, T, *extra)

    def new_caches(self, batch: int, device=None, dtype=None) -> list[KVCache]:
        w = self.model.norm.weight  # never quantised: the cache's device and dtype
        length = self.cfg.num_code_groups + 1
        return [
            KVCache.empty(
                batch, self.cfg.num_key_value_heads, length, self.cfg.head_dim, device or w.device, dtype or w.dtype
            )
            for _ in self.model.layers
        ]
