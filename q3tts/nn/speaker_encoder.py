"""ECAPA-TDNN speaker encoder: a 128-bin log-mel of reference audio -> one x-vector.

The x-vector is injected into the talker as one codec-track position, so `enc_dim` equals the
talker hidden size. This variant differs from SpeechBrain's ECAPA: there is no BatchNorm, every
conv has a bias, and 'same' padding reflects the signal instead of zero-filling it.

Module names mirror the official checkpoint so `state_dict()` keys equal the keys under
`speaker_encoder.` in `model.safetensors` (e.g. `blocks.1.res2net_block.blocks.0.conv.weight`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import SpeakerEncoderConfig

STATS_EPS = 1e-12  # variance floor before sqrt in the statistics pooling


def reflect_conv(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Conv1d:
    # Reflect padding keeps the frame count and avoids the artificial silence zero-padding
    # would add at both ends of the (short) reference clip. A 1-wide kernel pads nothing, and
    # the "zeros" mode then skips the copy that the reflect mode always makes.
    mode = "reflect" if kernel > 1 else "zeros"
    return nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation, padding="same", padding_mode=mode)


class TDNN(nn.Module):
    """Dilated 1-D conv + ReLU (a time-delay layer)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = reflect_conv(in_ch, out_ch, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, C', T]
        return torch.relu(self.conv(x))


class Res2Net(nn.Module):
    """Split channels into `scale` groups; group i>0 is convolved after adding group i-1's output,
    so later groups see a growing receptive field. Group 0 passes through unchanged."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int):
        super().__init__()
        assert channels % scale == 0, f"channels {channels} not divisible by res2net scale {scale}"
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNN(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        groups = x.chunk(self.scale, dim=1)
        outputs = [groups[0]]
        carry = None
        for group, block in zip(groups[1:], self.blocks):
            carry = block(group if carry is None else group + carry)
            outputs.append(carry)
        return torch.cat(outputs, dim=1)


class SqueezeExcite(nn.Module):
    """Channel gate computed from the utterance mean."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.conv1 = reflect_conv(channels, bottleneck)
        self.conv2 = reflect_conv(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        gate = torch.sigmoid(self.conv2(torch.relu(self.conv1(x.mean(dim=2, keepdim=True)))))  # [B, C, 1]
        return x * gate


class SERes2NetBlock(nn.Module):
    """TDNN(k1) -> Res2Net -> TDNN(k1) -> squeeze-excite, plus a residual."""

    def __init__(self, in_ch: int, out_ch: int, scale: int, se_ch: int, kernel: int, dilation: int):
        super().__init__()
        assert in_ch == out_ch, "the residual add needs equal in/out channels"
        self.tdnn1 = TDNN(in_ch, out_ch)
        self.res2net_block = Res2Net(out_ch, scale, kernel, dilation)
        self.tdnn2 = TDNN(out_ch, out_ch)
        self.se_block = SqueezeExcite(out_ch, se_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def weighted_stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over time. x: [B, C, T]; weights: [B, C|1, T] summing to 1 over T -> 2 x [B, C]."""
    mean = (weights * x).sum(dim=2)
    var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=STATS_EPS).sqrt()


class AttentiveStatsPool(nn.Module):
    """Per-channel attention over time; returns the attention-weighted mean and std.

    The attention also sees the plain utterance mean/std ("global context"), so it can weight
    frames by how typical they are of the whole clip.
    """

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TDNN(channels * 3, attention_channels)
        self.conv = reflect_conv(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, 2C, 1]
        T = x.shape[2]
        # Uniform weights 1/T (not x.mean) to sum in the same order as the reference.
        uniform = torch.full((1, 1, T), 1.0 / T, device=x.device, dtype=x.dtype)
        mean, std = weighted_stats(x, uniform)
        context = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, T), std.unsqueeze(2).expand(-1, -1, T)], dim=1)
        attention = self.conv(torch.tanh(self.tdnn(context))).softmax(dim=2)  # [B, C, T]
        mean, std = weighted_stats(x, attention)
        return torch.cat([mean, std], dim=1).unsqueeze(2)


class SpeakerEncoder(nn.Module):
    def __init__(self, cfg: SpeakerEncoderConfig):
        super().__init__()
        chans, kernels, dils = cfg.enc_channels, cfg.enc_kernel_sizes, cfg.enc_dilations
        assert len(chans) == len(kernels) == len(dils) >= 3, "enc_channels/kernel_sizes/dilations must align"
        # The MFA conv's input is the SE-Res2Net outputs concatenated, but its width is declared
        # as enc_channels[-1] (3 x 512 = 1536 in the releases); the two must agree.
        assert sum(chans[1:-1]) == chans[-1], f"sum of enc_channels[1:-1] must equal enc_channels[-1]: {chans}"
        self.cfg = cfg
        self.blocks = nn.ModuleList([TDNN(cfg.mel_dim, chans[0], kernels[0], dils[0])])
        for i in range(1, len(chans) - 1):
            self.blocks.append(
                SERes2NetBlock(chans[i - 1], chans[i], cfg.enc_res2net_scale, cfg.enc_se_channels, kernels[i], dils[i])
            )
        # Multi-layer feature aggregation over the concatenated SE-Res2Net outputs.
        self.mfa = TDNN(chans[-1], chans[-1], kernels[-1], dils[-1])
        self.asp = AttentiveStatsPool(chans[-1], cfg.enc_attention_channels)
        self.fc = reflect_conv(chans[-1] * 2, cfg.enc_dim)

    @property
    def min_frames(self) -> int:
        """Shortest mel the reflect padding accepts: each side's pad must be < T."""
        convs = [m for m in self.modules() if isinstance(m, nn.Conv1d)]
        return 1 + max((m.dilation[0] * (m.kernel_size[0] - 1) + 1) // 2 for m in convs)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: [B, T, mel_dim] log-mel (see `audio.mel_spectrogram`) -> x-vectors [B, enc_dim].

        Every row is pooled over all T frames, so batch only clips of equal length.
        """
        n_mels = self.cfg.mel_dim
        assert mel.ndim == 3 and mel.shape[2] == n_mels, f"expected [B, T, {n_mels}], got {tuple(mel.shape)}"
        assert mel.shape[1] >= self.min_frames, f"need at least {self.min_frames} mel frames, got {mel.shape[1]}"
        x = mel.to(self.fc.weight.dtype).transpose(1, 2)  # [B, mel_dim, T]
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        x = self.mfa(torch.cat(features[1:], dim=1))  # block 0 is the stem, not aggregated
        return self.fc(self.asp(x)).squeeze(2)  # [B, enc_dim]


@torch.no_grad()
def random_init_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Fill every Conv1d with seeded random weights that keep activations O(1) through the
    network (He-style scale for the ReLU stack), and biases that are small but non-zero, so
    parity tests exercise every parameter. Returns `module`."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv1d):
            fan_in = conv.in_channels // conv.groups * conv.kernel_size[0]
            w = torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in)
            conv.weight.copy_(w)
            if conv.bias is not None:
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
    return module
