"""The trained module: the checkpoint's networks set up for a mode, and the loss forward pass.

Modes (what trains; everything else is frozen):
  full    every talker / code-predictor tensor except the `freeze` prefixes (by default the
          311 M-parameter text embedding table, whose rows a fine-tune barely touches)
  lora    LoRA adapters on the talker's attention and MLP linears (see lora.py)
  layers  the last `layers.replace` talker layers, re-initialised, plus `layers.add` new ones
`also_train` prefixes are unfrozen on top of any mode. The speaker encoder is never trained:
speaker embeddings are computed once, in `prepare`, and stay fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..checkpoint import resolve
from ..config import ModelConfig
from ..model import TTSNetworks, load_networks
from ..nn.layers import rope_tables
from ..text import TextTokenizer
from . import lora
from .config import ConfigError, TrainConfig
from .data import Example
from .layer_swap import replace_layers
from .layout import build_sequence, pad_right, utterance
from .loss import LossParts, cross_entropy_sum, predictor_inputs, predictor_logits, talker_targets
from .speakers import Speakers, speaker_of


@dataclass
class Base:
    folder: Path
    config: ModelConfig
    tokenizer: TextTokenizer
    networks: TTSNetworks


def load_base(model: str) -> Base:
    """The checkpoint's networks in float32 on the CPU (mixed precision autocasts from there)."""
    folder = resolve(model)
    config = ModelConfig.from_file(folder / "config.json")
    tokenizer = TextTokenizer.from_dir(folder)
    networks = load_networks(folder, config, "cpu", torch.float32)
    networks.speaker_encoder = None  # embeddings were computed in prepare; it never trains
    return Base(folder, config, tokenizer, networks)


def setup_mode(networks: TTSNetworks, config: ModelConfig, tc: TrainConfig) -> dict[int, str]:
    """Set what trains; returns the talker layers that layer replacement made: {index: "replaced" | "new"}."""
    networks.requires_grad_(False)
    roles: dict[int, str] = {}
    if tc.layers.replace or tc.layers.add:
        n = len(networks.talker.model.layers)
        trainable = replace_layers(networks.talker, config, tc.layers, tc.seed)
        roles = {i: "replaced" if i < n else "new" for i in trainable}
    if tc.mode == "full" or (tc.mode == "layers" and not tc.layers.freeze_rest):
        for name, p in networks.named_parameters():
            p.requires_grad_(not name.startswith(tuple(tc.freeze)))
    elif tc.mode == "lora":
        lora.inject(networks, tc.lora)
    for name, p in networks.named_parameters():
        if tc.also_train and name.startswith(tuple(tc.also_train)):
            p.requires_grad_(True)
    if not any(p.requires_grad for p in networks.parameters()):
        raise ConfigError("nothing to train: every parameter is frozen")
    return roles


def run_blocks(layers: nn.ModuleList, norm: nn.Module, x: torch.Tensor, rope, ckpt: bool) -> torch.Tensor:
    """Causal pass over `layers` (no padding mask: sequences are right-padded)."""
    for layer in layers:
        if ckpt and torch.is_grad_enabled():
            x = checkpoint(layer, x, rope, None, use_reentrant=False)
        else:
            x = layer(x, rope, None)
    return norm(x)


class TrainModule(nn.Module):
    def __init__(self, base: Base, speakers: Speakers, tc: TrainConfig):
        super().__init__()
        self.networks = base.networks
        self.cfg, self.tokenizer, self.speakers = base.config, base.tokenizer, speakers
        self.default_speaker = tc.speaker_name.lower()
        self.cp_weight, self.non_streaming, self.ckpt = (
            tc.cp_loss_weight,
            tc.non_streaming_mode,
            tc.gradient_checkpointing,
        )
        self.compute: Optional[str] = None  # e.g. "autocast on (bfloat16), talker logits in bfloat16"
        self.names = sorted(speakers.new)
        table = torch.stack([speakers.new[n] for n in self.names]) if self.names else torch.zeros(0)
        self.register_buffer("speaker_table", table, persistent=False)  # [S, H] float32, fixed

    def utterance(self, e: Example):
        name = speaker_of(e, self.default_speaker)
        if name in self.speakers.new:
            vec = self.speaker_table[self.names.index(name)]
            return utterance(e.text, e.language, xvector=vec, dialect=self.speakers.dialects.get(name) or None,
                             non_streaming_mode=self.non_streaming)  # fmt: skip
        return utterance(e.text, e.language, speaker=name, non_streaming_mode=self.non_streaming)

    def forward(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        """Summed losses and counts of a batch (see LossParts)."""
        talker = self.networks.talker
        tc = talker.cfg
        device = talker.codec_head.weight.device
        codes = [e.codes.to(device) for e in batch]
        frames = talker.embed_frame(torch.cat(codes)).split([c.shape[0] for c in codes])
        seqs = [build_sequence(talker, self.cfg, self.tokenizer, self.utterance(e), c, f)
                for e, c, f in zip(batch, codes, frames)]  # fmt: skip
        x = pad_right(seqs)  # [B, L, H]
        positions = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        hidden = run_blocks(talker.model.layers, talker.model.norm, x,
                            rope_tables(positions, tc.head_dim, tc.rope_theta), self.ckpt)  # fmt: skip
        h_lab, labels, h_cp = [], [], []
        for b, s in enumerate(seqs):
            pos, lab = talker_targets(s.prefill_len, s.codes, tc.codec_eos_token_id)
            h_lab.append(hidden[b, pos])
            labels.append(lab)
            h_cp.append(hidden[b, pos[:-1]])  # the states that produced each frame's codebook 0
        codes = torch.cat(codes)  # [N, G]
        logits = talker.codec_head(torch.cat(h_lab))
        if self.compute is None:  # what mixed precision really did, seen from inside a step
            kind = device.type
            on = torch.is_autocast_enabled(kind)
            self.compute = (f"autocast {'on (' + str(torch.get_autocast_dtype(kind)).removeprefix('torch.') + ')' if on else 'off'}, "
                            f"talker logits in {str(logits.dtype).removeprefix('torch.')}")  # fmt: skip
        talker_sum = cross_entropy_sum(logits, torch.cat(labels))
        cp_sum = cross_entropy_sum(self.predictor_logits(torch.cat(h_cp), codes), codes[:, 1:])
        n_talker = torch.tensor(float(codes.shape[0] + len(seqs)), device=x.device)  # every frame + one EOS per row
        n_cp = torch.tensor(float(codes[:, 1:].numel()), device=x.device)
        return dict(talker_sum=talker_sum, talker_n=n_talker, cp_sum=cp_sum, cp_n=n_cp)

    def predictor_logits(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        talker = self.networks.talker
        cp = talker.code_predictor
        x = cp.small_to_mtp_projection(predictor_inputs(talker, hidden, codes))  # [N, G, h]
        positions = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        states = run_blocks(cp.model.layers, cp.model.norm, x, rope_tables(positions, cp.cfg.head_dim, cp.cfg.rope_theta),
                            self.ckpt)  # fmt: skip
        return predictor_logits(cp, states)

    def losses(self, batch: list[Example]) -> LossParts:
        return LossParts(**self(batch))


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold: the trainable ones (all else is rebuilt from the base)."""
    return {n: p.detach().float().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}
