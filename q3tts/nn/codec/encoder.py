"""Speech-tokenizer encoder: 24 kHz audio -> 12.5 Hz codes, the reference-audio prompt of voice cloning.

The network is Mimi's encoding half (SEANet conv encoder -> causal transformer -> stride-2
downsample -> split residual VQ), with module names that match the official
`speech_tokenizer/model.safetensors` keys under `encoder.`.

Codes must be *identical* to the reference's, and an argmin over codebook distances flips on
the last bit of a near-tie. So every op mirrors the reference's op sequence (same padding calls,
same `torch.cdist`, same tensor layouts), not just its maths. Deviations are only those that
cannot change a value: we stop the RVQ after the codebooks that are kept.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config import CodecEncoderConfig
from ..layers import Attention, rope_tables

SAMPLE_RATE = 24000  # Hz, the only rate the encoder accepts
HOP_LENGTH = 1920  # samples per code frame: SEANet 8*6*5*4 = 960, then the stride-2 downsample

# Modules a full transformers MimiModel dump would also hold; the reference deletes them (it only
# encodes), and the official files carry none, but a file that does must still load.
UNUSED_KEY_PREFIXES = ("upsample.", "decoder_transformer.", "decoder.")


class CausalConv1d(nn.Module):
    """Conv1d with all `kernel - stride` padding on the left, plus right padding that completes
    the last stride, so the output has ceil(L / stride) steps and never looks ahead."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 bias: bool = True, pad_mode: str = "constant"):  # fmt: skip
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride, dilation=dilation, bias=bias)
        self.stride, self.pad_mode = stride, pad_mode
        self.left_pad = (kernel - 1) * dilation + 1 - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, L] -> [B, C', ceil(L / stride)]
        right_pad = -x.shape[-1] % self.stride
        return self.conv(F.pad(x, (self.left_pad, right_pad), mode=self.pad_mode))


class ResidualUnit(nn.Module):
    """SEANet residual block: x + conv1(ELU(conv_k(ELU(x)))). `block` keeps the ELUs as entries
    so the conv indices (block.1, block.3) match the checkpoint."""

    def __init__(self, dim: int, hidden: int, kernel: int, dilation: int, conv_shortcut: bool):
        super().__init__()
        self.block = nn.ModuleList(
            [nn.ELU(), CausalConv1d(dim, hidden, kernel, dilation=dilation), nn.ELU(), CausalConv1d(hidden, dim, 1)]
        )
        self.shortcut = CausalConv1d(dim, dim, 1) if conv_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.block:
            y = layer(y)
        return self.shortcut(x) + y


class SEANetEncoder(nn.Module):
    """Waveform [B, 1, N] -> latent [B, hidden, ceil(N / 960)]; channels double at each stride."""

    def __init__(self, cfg: CodecEncoderConfig):
        super().__init__()
        ch = cfg.num_filters
        layers: list[nn.Module] = [CausalConv1d(cfg.audio_channels, ch, cfg.kernel_size)]
        for ratio in reversed(cfg.upsampling_ratios):  # the config lists decoder order; encoding runs it backwards
            for j in range(cfg.num_residual_layers):
                dilation = cfg.dilation_growth_rate**j
                hidden = ch // cfg.compress
                layers.append(ResidualUnit(ch, hidden, cfg.residual_kernel_size, dilation, cfg.use_conv_shortcut))
            layers += [nn.ELU(), CausalConv1d(ch, 2 * ch, kernel=2 * ratio, stride=ratio)]
            ch *= 2
        layers += [nn.ELU(), CausalConv1d(ch, cfg.hidden_size, cfg.last_kernel_size)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate, bias=False)
        self.fc2 = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as transformers' "gelu"


class TransformerLayer(nn.Module):
    """Pre-LayerNorm block with a layer scale on both residual branches."""

    def __init__(self, cfg: CodecEncoderConfig):
        super().__init__()
        h = cfg.hidden_size
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.self_attn = Attention(h, heads, kv_heads, cfg.head_dim, qk_norm=False, bias=cfg.attention_bias)
        self.mlp = MLP(h, cfg.intermediate_size)
        self.input_layernorm = nn.LayerNorm(h, eps=cfg.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(h, eps=cfg.norm_eps)
        self.self_attn_layer_scale = LayerScale(h, cfg.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(h, cfg.layer_scale_initial_scale)

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        # mask=None means plain causal attention over the whole clip. The config's sliding_window
        # (250) is NOT applied: transformers 4.57.3's Mimi builds its mask with create_causal_mask,
        # which ignores it, and parity with that reference is what we promise.
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), rope, mask=None))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig):
        super().__init__()
        self.head_dim, self.rope_theta = cfg.head_dim, cfg.rope_theta
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, hidden]
        positions = torch.arange(x.shape[1], device=x.device)[None]  # [1, T], shared by the batch
        rope = rope_tables(positions, self.head_dim, self.rope_theta)
        for layer in self.layers:
            x = layer(x, rope)
        return x


class Codebook(nn.Module):
    """Euclidean codebook; entries are running sums over usage counts (EMA training leftovers),
    all three stored as buffers in the checkpoint."""

    def __init__(self, size: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("initialized", torch.ones(1))
        self.register_buffer("cluster_usage", torch.ones(size))
        self.register_buffer("embed_sum", torch.zeros(size, dim))

    def embed(self) -> torch.Tensor:  # [size, dim]
        return self.embed_sum / self.cluster_usage.clamp(min=self.eps)[:, None]

    def nearest(self, x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """x: [B, dim, T] -> ids [B, T]. torch.cdist (not squared distances) on a [B*T, dim] matrix,
        exactly as the reference, so rounding and hence argmin ties come out the same."""
        b, d, t = x.shape
        flat = x.permute(0, 2, 1).reshape(-1, d)
        dists = torch.cdist(flat[None].float(), embed[None].float(), p=2)[0]  # [B*T, size]
        return dists.argmin(dim=-1).view(b, t)


class _VQLayer(nn.Module):
    """Holder that only exists so the weights sit at `layers.{i}.codebook.*` as in the checkpoint."""

    def __init__(self, cfg: CodecEncoderConfig):
        super().__init__()
        self.codebook = Codebook(cfg.codebook_size, cfg.codebook_dim)


class ResidualVQ(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(_VQLayer(cfg) for _ in range(n_layers))
        self.input_proj = self.output_proj = None
        vq_dim = cfg.vector_quantization_hidden_dimension
        if vq_dim != cfg.hidden_size:
            self.input_proj = nn.Conv1d(cfg.hidden_size, vq_dim, 1, bias=False)
            self.output_proj = nn.Conv1d(vq_dim, cfg.hidden_size, 1, bias=False)  # decode-only; kept for the keys

    def encode(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """x: [B, hidden, T] -> codes [B, n, T] from the first n codebooks (residual, so the first n
        of a longer run are the same)."""
        if self.input_proj is not None:
            x = self.input_proj(x)
        residual, codes = x, []
        for layer in self.layers[:n]:
            embed = layer.codebook.embed()
            ids = layer.codebook.nearest(residual, embed)
            residual = residual - F.embedding(ids, embed).permute(0, 2, 1)
            codes.append(ids)
        return torch.stack(codes, dim=1)


class SplitResidualVQ(nn.Module):
    """A "semantic" RVQ and an "acoustic" RVQ, both fed the same latent (not chained); their codes
    are concatenated, semantic first."""

    def __init__(self, cfg: CodecEncoderConfig):
        super().__init__()
        self.n_semantic = cfg.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = ResidualVQ(cfg, self.n_semantic)
        self.acoustic_residual_vector_quantizer = ResidualVQ(cfg, cfg.num_quantizers - self.n_semantic)

    def encode(self, x: torch.Tensor, n: int) -> torch.Tensor:  # [B, hidden, T] -> [B, n, T]
        codes = self.semantic_residual_vector_quantizer.encode(x, self.n_semantic)
        if n > self.n_semantic:
            acoustic = self.acoustic_residual_vector_quantizer.encode(x, n - self.n_semantic)
            codes = torch.cat([codes, acoustic], dim=1)
        return codes


class CodecEncoder(nn.Module):
    """Mimi encoder keeping the first `valid_quantizers` codebooks (16 in every release).

    The weights of all `cfg.num_quantizers` codebooks are held so that state_dict() matches the
    official file key for key, but only the kept ones are ever computed."""

    def __init__(self, cfg: CodecEncoderConfig, valid_quantizers: int):
        super().__init__()
        assert cfg.num_semantic_quantizers <= valid_quantizers <= cfg.num_quantizers, (
            f"valid_quantizers {valid_quantizers} must lie in [{cfg.num_semantic_quantizers}, {cfg.num_quantizers}]"
        )
        assert cfg.sampling_rate == SAMPLE_RATE, f"the encoder runs at {SAMPLE_RATE} Hz, not {cfg.sampling_rate}"
        assert cfg.use_causal_conv and cfg.pad_mode == "constant" and cfg.audio_channels == 1, (
            "only the released Mimi layout is supported: causal convs, zero padding, mono"
        )
        self.cfg, self.valid_quantizers = cfg, valid_quantizers
        self.encoder = SEANetEncoder(cfg)
        self.encoder_transformer = Transformer(cfg)
        seanet_rate = math.ceil(cfg.sampling_rate / math.prod(cfg.upsampling_ratios))  # 25 Hz
        assert seanet_rate / cfg.frame_rate == 2, f"expected a stride-2 downsample to {cfg.frame_rate} Hz"
        # 'replicate' (not zeros) pads this one conv: the reference's choice, it changes the last frame.
        self.downsample = CausalConv1d(cfg.hidden_size, cfg.hidden_size, kernel=4, stride=2, bias=False,
                                       pad_mode="replicate")  # fmt: skip
        self.quantizer = SplitResidualVQ(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.downsample.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.downsample.conv.weight.device

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, 1, N] float at 24 kHz -> codes [B, valid_quantizers, ceil(N / 1920)] (int64).

        Every row is N samples long; for clips of different lengths use `encode_batch`, which
        pads them as the reference does."""
        assert wav.dim() == 3 and wav.shape[1] == 1, f"expected [B, 1, N] mono audio, got {list(wav.shape)}"
        x = self.encoder(wav.to(self.device, self.dtype))  # [B, hidden, ceil(N / 960)]
        x = self.encoder_transformer(x.transpose(1, 2)).transpose(1, 2)
        x = self.downsample(x)  # [B, hidden, T]
        return self.quantizer.encode(x, self.valid_quantizers)

    def encode_batch(self, wavs: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        """Encode 1-D 24 kHz clips of any lengths in one batch -> list of [T_i, valid_quantizers]
        codes, T_i = ceil(N_i / 1920).

        Reproduces the reference batch exactly: clips are right-padded with zeros to the longest
        (as its EncodecFeatureExtractor does), encoded together, then cut to their own frames.
        As in the reference, a clip's codes can then differ from encoding it alone: its last frame
        sees the padding through the convs' right padding, and (rarely, at full size) a near-tie
        elsewhere flips because the batch shape changes float rounding."""
        clips = [torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in wavs]
        assert clips and all(c.dim() == 1 and c.numel() > 0 for c in clips), "expected non-empty 1-D clips"
        longest = max(c.numel() for c in clips)
        batch = torch.stack([F.pad(c, (0, longest - c.numel())) for c in clips])[:, None]  # [B, 1, N_max]
        codes = self.encode(batch)  # [B, K, T_max]
        return [row[:, : -(-c.numel() // HOP_LENGTH)].T.contiguous() for row, c in zip(codes, clips)]


@torch.no_grad()
def random_init_(encoder: CodecEncoder, generator: torch.Generator) -> None:
    """Fill every tensor with non-trivial random values (for tests and `make-checkpoint`):
    unit-gain weights so activations stay O(1) through the stack, layer scales near 1 (the
    0.01 initial value would leave the transformer almost silent), and unit-normal
    codebooks with usage ~1 so the nearest entry actually depends on the audio."""

    def randn(t: torch.Tensor, std: float, mean: float = 0.0) -> torch.Tensor:
        return (mean + std * torch.randn(t.shape, generator=generator)).to(t.dtype)

    for name, t in encoder.state_dict(keep_vars=True).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "embed_sum":
            t.copy_(randn(t, 1.0))
        elif leaf == "cluster_usage":  # divides embed_sum: keep it positive, around 1
            t.copy_((0.8 + 0.4 * torch.rand(t.shape, generator=generator)).to(t.dtype))
        elif leaf == "initialized":
            t.fill_(1.0)
        elif leaf == "scale" or (leaf == "weight" and t.dim() == 1):  # layer scales, LayerNorm gains
            t.copy_(randn(t, 0.1, mean=1.0))
        elif leaf == "bias":
            t.copy_(randn(t, 0.05))
        else:  # Linear / Conv weights: std 1/sqrt(fan_in)
            t.copy_(randn(t, 1.0 / math.sqrt(t[0].numel())))
