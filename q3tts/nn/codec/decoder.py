"""The 12 Hz speech-tokenizer decoder: 16 codebooks x T frames -> 24 kHz audio, 1920 samples a frame.

quantizer (sum of codebook vectors) -> causal conv -> sliding-window transformer -> 2 x (causal
transposed conv x2 + ConvNeXt) -> causal conv -> 4 x (SnakeBeta, causal transposed conv, 3 dilated
residual units) -> SnakeBeta -> causal conv -> clamp to [-1, 1].

Every layer is causal, so the decoder streams *exactly*: `decode_chunk` takes any number of new
frames and returns their final samples, carrying in a `DecoderStream` what later frames need (the
last inputs of each conv, the pending overlap of each transposed conv, the last window-1 keys and
values of each attention layer, and the frame position). `forward` is the same code on a fresh
stream. In float32 on CPU the chunks concatenate to the offline decode bit for bit, whatever the
chunk sizes, because every op below computes a sample the same way however many samples come with
it (see `linear`, `conv1d` and `CausalConv.forward_time_major` for the ones that needed care).

Positions, unlike the official `chunked_decode` (300-frame windows with 25 frames of context and
RoPE positions restarting in each window), run 0..T-1 over the whole stream, so beyond 300 frames
our exact decode intentionally differs from the official one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...config import CodecDecoderConfig
from ..layers import RMSNorm, apply_rope, rope_tables

OFFLINE_BLOCK_FRAMES = 50  # `forward` decodes in blocks this long (4 s) to bound activation memory


@dataclass
class DecoderStream:
    """What a streaming decode carries between chunks; one per concurrent stream, never on the model."""

    batch: int
    frames: int | torch.Tensor = 0  # frames decoded so far = RoPE position of the next frame ([B] when stacked)
    history: dict[Hashable, torch.Tensor] = field(default_factory=dict)  # per layer: its last inputs

    @staticmethod
    def stack(streams: list["DecoderStream"]) -> "DecoderStream":
        """One stream over the rows of several, which may be at different frames: decode their next
        chunks (of equal length) in one call, then `unstack` the result back into them."""
        rows = [torch.full((s.batch,), int(s.frames)) for s in streams]
        out = DecoderStream(sum(s.batch for s in streams), torch.cat(rows))
        for key in {k for s in streams for k in s.history}:
            like = next(s.history[key] for s in streams if key in s.history)
            out.history[key] = torch.cat([s.history[key] if key in s.history else  # a fresh stream: zeros
                                          like.new_zeros((s.batch, *like.shape[1:])) for s in streams])  # fmt: skip
        return out

    def unstack(self, streams: list["DecoderStream"]) -> None:
        """Write this stacked stream's state back into the streams it was made from."""
        row = 0
        for s in streams:
            s.frames = int(self.frames[row])
            for key, value in self.history.items():
                s.history[key] = value[row : row + s.batch]
            row += s.batch


def _with_history(stream: DecoderStream, key: Hashable, x: torch.Tensor, n: int, dim: int = -1) -> torch.Tensor:
    """Prepend the last n entries (along dim) seen under `key` in earlier chunks, zeros at the start of
    the stream, which is exactly the left zero padding of the offline computation; remember the new last n."""
    if n == 0:
        return x
    past = stream.history.get(key)
    if past is None:
        shape = list(x.shape)
        shape[dim] = n
        past = x.new_zeros(shape)
    x = torch.cat([past, x], dim)
    stream.history[key] = x.narrow(dim, x.shape[dim] - n, n).clone()  # clone: don't pin the whole chunk
    return x


# The steady chunk (frames) that the low-rate layers' blocks are sized for: a layer at r rows a
# frame runs in blocks of r * 8 rows, so a steady chunk is one call that reads the weights once,
# with no padding. Measured against 16-row blocks (2 threads, weights from DRAM): the transformer's
# 512x1024 weights in 147 against 262 us at 8 rows; at 4 rows a frame, one 32-row call 8.3 against
# 2 x 6.6 ms for the 1536 -> 768 transposed conv, 4.9 against 2 x 3.7 for the first conv (a 1-frame
# chunk pays 1.7 and 1.3 ms more). Every such block shape rounds a row the same wherever it sits,
# beside zeros or data (measured for every low-rate shape, 8, 16 and 32 rows). The codec stream's
# default chunk is this one (generate/codec_stream.py).
STEADY_CHUNK_FRAMES = 8
ONE_CALL_ROWS_PER_FRAME = 32


def block_rows_for(rows_per_frame: int) -> Optional[int]:
    """`linear`'s block for a layer fed rows_per_frame rows a frame (None: one call)."""
    return rows_per_frame * STEADY_CHUNK_FRAMES if rows_per_frame < ONE_CALL_ROWS_PER_FRAME else None


ONE_ROW_BLOCK = block_rows_for(1)  # the quantizer projection and the transformer: a row a frame


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
           block_rows: Optional[int]) -> torch.Tensor:  # fmt: skip
    """F.linear over the last dim, with each row's result independent of how many rows come along.

    MKL's sgemm picks its kernel and how it splits the sum over threads from the call's row count, so
    a row can round differently alone than among others (measured, MKL 2024.2 on AVX-512, 2 threads:
    any count under 16, and for 1024-wide inputs up to 128 rows, against the same rows of a 512-row
    call). Calls of one fixed shape round a row the same way wherever it sits in the block (measured
    for every low-rate shape of this decoder at 1, 2 and 4 threads), so rows go in zero-padded blocks
    of `block_rows` (None: one call, for layers that always get many rows)."""
    if block_rows is None:
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    rows = x.shape[0]
    if rows % block_rows:
        x = F.pad(x, (0, 0, 0, -rows % block_rows))
    blocks = [F.linear(block, weight, bias) for block in x.split(block_rows)]
    out = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
    return out[:rows].view(*lead, -1)


def conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int = 1, groups: int = 1):
    """Unpadded conv1d. On CPU, F.conv1d switches between oneDNN and an im2col+gemm kernel depending on
    the input size, which round differently; oneDNN alone gives the same value for a sample whatever
    the input length (measured), which exact streaming needs."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available():
        return torch.mkldnn_convolution(x, weight, bias, [0], [1], [dilation], groups)
    return F.conv1d(x, weight, bias, dilation=dilation, groups=groups)


# --------------------------------------------------------------------------------------
# Convolutions and activations
# --------------------------------------------------------------------------------------


def shifted_matmuls(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    """A causal conv on a time-major signal whose first (k-1)*dilation steps are its context:
    x [B, ctx+T, Cin], taps [k, Cin, Cout] -> [B, T, Cout], one batched matmul per tap (GPUs)."""
    t = x.shape[1] - (taps.shape[0] - 1) * dilation
    out = torch.matmul(x[:, :t], taps[0]) + bias
    for j in range(1, taps.shape[0]):
        out += torch.matmul(x[:, j * dilation : j * dilation + t], taps[j])
    return out


class CausalConv(nn.Module):
    """Conv1d with (k-1)*dilation zeros on the left (stride 1), so output t sees inputs <= t; a stream
    keeps those last inputs instead of the zeros."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1, groups: int = 1, gemm: bool = False,
                 rows_per_frame: int = 1):  # fmt: skip
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, groups=groups)
        self.block_rows = block_rows_for(rows_per_frame)
        self.context = (kernel - 1) * dilation
        # gemm: im2col + one matmul with the weight as stored. For the big convs at low frame rates, where
        # few samples meet many weights, oneDNN's per-call weight reorder would cost more than the conv.
        self.gemm = gemm and groups == 1

    def forward(self, x: torch.Tensor, stream: DecoderStream, time_major_out: bool = False) -> torch.Tensor:
        """[B, Cin, T] -> [B, Cout, T] ([B, T, Cout] with time_major_out, gemm convs only)."""
        x = _with_history(stream, self, x, self.context)
        if self.gemm:
            cols = x.unfold(2, self.context + 1, 1)[..., :: self.conv.dilation[0]]  # [B, Cin, T, k]
            out = linear(
                cols.transpose(1, 2).flatten(2), self.conv.weight.flatten(1), self.conv.bias, block_rows=self.block_rows
            )
            return out if time_major_out else out.transpose(1, 2)
        assert not time_major_out, "only gemm convs write time-major"
        return conv1d(x, self.conv.weight, self.conv.bias, self.conv.dilation[0], self.conv.groups)

    def taps(self) -> torch.Tensor:
        """The weight as [k, Cin, Cout]: tap j's matrix for `forward_time_major`. After `relayout_`
        this is the weight's own storage (no copy)."""
        return self.conv.weight.permute(2, 1, 0).contiguous()

    def relayout_(self) -> None:
        """Store the weight tap-major, so `taps` is a view; the parameter keeps its official shape
        (a strided view of that storage), so state_dict and every other reader are unchanged."""
        w = self.conv.weight
        w.data = w.detach().permute(2, 1, 0).contiguous().permute(2, 1, 0)

    def forward_time_major(self, x: torch.Tensor, stream: DecoderStream) -> torch.Tensor:  # [B, T, Cin] -> [B, T, Cout]
        """The same conv on time-major signals, as k shifted matmuls summed in tap order.

        Measured against oneDNN's conv on these layers (2 threads, 8-frame chunks): 110-123 against
        89-97 GMAC/s for the dilated 7-tap convs. MKL's sgemm gives a row the same value for any row
        count of 2 or more at these widths (<= 768 inputs; measured 2 to 4096 rows), and every call
        here has at least 32 rows, so streaming stays exact. Rows of a batch go one matmul each:
        a row's result never depends on the others."""
        assert self.conv.groups == 1
        x = _with_history(stream, self, x, self.context, dim=1)
        taps = self.taps()
        b, t = x.shape[0], x.shape[1] - self.context
        d = self.conv.dilation[0]
        if x.device.type != "cpu":  # a row per call would cost a kernel launch per row
            return shifted_matmuls(x, taps, self.conv.bias, d)
        out = x.new_empty(b, t, taps.shape[-1])
        for i in range(b):
            xi, yi = x[i], out[i]
            torch.addmm(self.conv.bias, xi[:t], taps[0], out=yi)
            for j in range(1, taps.shape[0]):
                yi.addmm_(xi[j * d : j * d + t], taps[j])
        return out


class CausalConvTranspose(nn.Module):
    """ConvTranspose1d(kernel = m * stride) with its last kernel - stride samples cut (no look-ahead).

    Computed as col2im: one matmul gives each input frame's `kernel` output samples, then output block t
    (stride samples) adds the parts that frames t, t-1, .., t-m+1 put there. The parts of the last m-1
    frames still to be added are the stream state. One matmul with the official weight layout is also
    cheaper than oneDNN's per-call weight reorder for these weight-heavy, low-rate layers.

    time_major: input [B, T, Cin] and output [B, T * stride, Cout]; the weight is then stored with the
    output channel last (`relayout_`), so the matmul's columns are already in output order."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, rows_per_frame: int = 1,
                 time_major: bool = False):  # fmt: skip
        super().__init__()
        self.block_rows = block_rows_for(rows_per_frame)
        if kernel % stride:
            raise ValueError(f"transposed conv kernel {kernel} must be a multiple of its stride {stride}")
        self.conv = nn.ConvTranspose1d(cin, cout, kernel, stride=stride)
        self.stride, self.taps = stride, kernel // stride
        self.time_major = time_major

    def _columns(self) -> torch.Tensor:
        """The weight as the matmul's [Cin, columns]: (Cout, tap, sample), or (tap, sample, Cout) time-major."""
        w = self.conv.weight  # [Cin, Cout, kernel]
        if not self.time_major:
            return w.view(w.shape[0], -1)
        return w.permute(0, 2, 1).reshape(w.shape[0], -1)  # a view after relayout_

    def relayout_(self) -> None:
        if self.time_major:
            w = self.conv.weight
            w.data = w.detach().permute(0, 2, 1).contiguous().permute(0, 2, 1)

    def forward(self, x: torch.Tensor, stream: DecoderStream) -> torch.Tensor:
        # [B, Cin, T] -> [B, Cout, T*stride]; time-major [B, T, Cin] -> [B, T*stride, Cout]
        rows = x if self.time_major else x.transpose(1, 2)
        b, t, cin = rows.shape
        cout, s, m = self.conv.weight.shape[1], self.stride, self.taps
        parts = linear(rows, self._columns().t(), block_rows=self.block_rows)  # [B, T, columns]
        shape = (b, t, m, s, cout) if self.time_major else (b, t, cout, m, s)
        tap = 2 if self.time_major else 3
        parts = _with_history(stream, self, parts.view(shape), m - 1, dim=1)  # [B, m-1+T, ...]
        out = parts[:, m - 1 :].select(tap, 0)
        for j in range(1, m):  # frame t - j's j-th block of s samples lands in block t
            out = out + parts[:, m - 1 - j : m - 1 - j + t].select(tap, j)
        if self.time_major:  # [B, T, s, Cout]
            return (out + self.conv.bias).view(b, t * s, cout)
        out = out + self.conv.bias[:, None]  # [B, T, Cout, s]
        return out.permute(0, 2, 1, 3).reshape(b, cout, t * s)


class SnakeBeta(nn.Module):
    """x + sin^2(x * e^alpha) / e^beta, per channel (the last dim: time-major); alpha and beta are stored as logs."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.fused = None  # the CPU kernels' one-pass op (CodecDecoder.use_kernels_), else torch's ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        alpha = self.alpha.exp()
        inv_beta = 1.0 / (self.beta.exp() + 1e-9)
        if self.fused is not None and x.dtype == torch.float32 and x.device.type == "cpu":
            return self.fused(x, alpha, inv_beta)
        # In place on one temporary: 3x faster than the plain expression on these long signals, same bits.
        return torch.mul(x, alpha).sin_().square_().mul_(inv_beta).add_(x)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, rows_per_frame: int = 1):
        super().__init__()
        self.block_rows = block_rows_for(rows_per_frame)
        self.dwconv = CausalConv(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor, stream: DecoderStream) -> torch.Tensor:  # [B, C, T]
        h = self.norm(self.dwconv(x, stream).transpose(1, 2))  # [B, T, C]
        h = F.gelu(linear(h, self.pwconv1.weight, self.pwconv1.bias, block_rows=self.block_rows))
        h = linear(h, self.pwconv2.weight, self.pwconv2.bias, block_rows=self.block_rows)
        return x + (self.gamma * h).transpose(1, 2)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv(dim, dim, 1)

    def forward(self, x: torch.Tensor, stream: DecoderStream) -> torch.Tensor:  # [B, T, C]
        h = self.conv1.forward_time_major(self.act1(x), stream)
        return self.conv2.forward_time_major(self.act2(h), stream).add_(x)


class DecoderBlock(nn.Module):
    """SnakeBeta, x`rate` causal transposed conv halving the channels, residual units with dilations 1, 3, 9."""

    def __init__(self, cin: int, cout: int, rate: int, rows_per_frame: int):
        super().__init__()
        units = [ResidualUnit(cout, d) for d in (1, 3, 9)]
        up = CausalConvTranspose(cin, cout, 2 * rate, rate, rows_per_frame, time_major=True)
        self.block = nn.ModuleList([SnakeBeta(cin), up, *units])

    def forward(self, x: torch.Tensor, stream: DecoderStream) -> torch.Tensor:  # [B, T, Cin] -> [B, T*rate, Cout]
        x = self.block[1](self.block[0](x), stream)
        for unit in self.block[2:]:
            x = unit(x, stream)
        return x


# --------------------------------------------------------------------------------------
# Quantizer (decode side only)
# --------------------------------------------------------------------------------------


class Codebook(nn.Module):
    """Entry i = embedding_sum[i] / cluster_usage[i] (EMA statistics kept as checkpoint parameters)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embedding_sum = nn.Parameter(torch.zeros(size, dim))
        self.cluster_usage = nn.Parameter(torch.ones(size))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, dim]
        # Gather, then divide: the same per-entry values as dividing the whole table, 1/T-th of the work.
        usage = F.embedding(codes, self.cluster_usage[:, None]).clamp(min=1e-5)
        return F.embedding(codes, self.embedding_sum) / usage


class ResidualVQ(nn.Module):
    """Codebooks whose vectors are summed, then projected by a 1x1 conv (no bias)."""

    def __init__(self, n_codebooks: int, size: int, dim: int, out_dim: int):
        super().__init__()
        self.input_proj = nn.Conv1d(out_dim, dim, 1, bias=False)  # encoder side; decoding never uses it
        self.output_proj = nn.Conv1d(dim, out_dim, 1, bias=False)
        # Checkpoint nesting: vq.layers.{i}._codebook.{embedding_sum, cluster_usage}.
        layers = [nn.ModuleDict({"_codebook": Codebook(size, dim)}) for _ in range(n_codebooks)]
        self.vq = nn.ModuleDict({"layers": nn.ModuleList(layers)})

    def forward(self, codes: torch.Tensor) -> torch.Tensor:  # [B, n, T] -> [B, T, out_dim]
        summed = 0
        for i, layer in enumerate(self.vq["layers"]):
            summed = summed + layer["_codebook"](codes[:, i])
        return linear(summed, self.output_proj.weight[:, :, 0], block_rows=ONE_ROW_BLOCK)


class SplitQuantizer(nn.Module):
    """Codebook 0 (semantic) and codebooks 1.. (acoustic) have separate output projections."""

    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        dim = cfg.codebook_dim // 2
        self.rvq_first = ResidualVQ(1, cfg.codebook_size, dim, cfg.codebook_dim)
        self.rvq_rest = ResidualVQ(cfg.num_quantizers - 1, cfg.codebook_size, dim, cfg.codebook_dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:  # [B, G, T] -> [B, T, codebook_dim]
        return self.rvq_first(codes[:, :1]) + self.rvq_rest(codes[:, 1:])


# --------------------------------------------------------------------------------------
# Transformer with sliding-window attention
# --------------------------------------------------------------------------------------


class WindowAttention(nn.Module):
    """Causal attention over the last `window` positions (self included); no q/k norm.

    Each query gets its own [window] slice of keys, and scores are an elementwise product summed over
    head_dim: a query's numbers then never depend on which other queries share the call, which a
    matmul over the chunk would not guarantee (a batched matmul with one entry per query measured
    different at 1-frame chunks). The chunk's keys follow the window-1 previous ones."""

    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.window = cfg.sliding_window
        inner, kv_inner = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, inner, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_inner, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_inner, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(inner, cfg.hidden_size, bias=cfg.attention_bias)

    def _project(self, x: torch.Tensor, proj: nn.Linear, heads: int) -> torch.Tensor:  # -> [B, heads, T, D]
        b, t, _ = x.shape
        return (
            linear(x, proj.weight, proj.bias, block_rows=ONE_ROW_BLOCK).view(b, t, heads, self.head_dim).transpose(1, 2)
        )

    def forward(self, x: torch.Tensor, rope, start: int, stream: DecoderStream) -> torch.Tensor:  # [B, T, hidden]
        b, t, _ = x.shape
        hkv, rep, w = self.kv_heads, self.heads // self.kv_heads, self.window
        q = apply_rope(self._project(x, self.q_proj, self.heads), *rope)
        k = apply_rope(self._project(x, self.k_proj, hkv), *rope)
        k = _with_history(stream, (self, "k"), k, w - 1, dim=2)  # [B, Hkv, w-1+T, D]
        v = _with_history(stream, (self, "v"), self._project(x, self.v_proj, hkv), w - 1, dim=2)
        k_win = k.unfold(2, w, 1).transpose(-1, -2)[:, :, None]  # [B, Hkv, 1, T, w, D]: keys p-w+1 .. p
        v_win = v.unfold(2, w, 1).transpose(-1, -2)[:, :, None]
        q = q.view(b, hkv, rep, t, 1, self.head_dim)  # query heads grouped by their kv head
        scores = (q * k_win).sum(-1) * self.head_dim**-0.5  # [B, Hkv, rep, T, w]
        if bool(torch.as_tensor(start < w - 1).any()):  # window slots before position 0 hold zero padding
            slot = torch.arange(w, device=x.device)
            pos = torch.as_tensor(start, device=x.device).reshape(-1, 1) + torch.arange(t, device=x.device)  # [1|B, T]
            hidden = slot[None, None, :] < (w - 1) - pos[:, :, None]  # [1|B, T, w]
            scores = scores.masked_fill(hidden[:, None, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        out = (probs[..., None] * v_win).sum(-2)  # [B, Hkv, rep, T, D]
        out = out.view(b, self.heads, t, self.head_dim).transpose(1, 2).reshape(b, t, -1)
        return linear(out, self.o_proj.weight, self.o_proj.bias, block_rows=ONE_ROW_BLOCK)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = ONE_ROW_BLOCK
        h = F.silu(linear(x, self.gate_proj.weight, block_rows=rows)) * linear(x, self.up_proj.weight, block_rows=rows)
        return linear(h, self.down_proj.weight, block_rows=rows)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.self_attn = WindowAttention(cfg)
        self.mlp = FeedForward(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)

    def forward(self, x, rope, start: int, stream: DecoderStream) -> torch.Tensor:
        x = x + self.self_attn_layer_scale.scale * self.self_attn(self.input_layernorm(x), rope, start, stream)
        return x + self.mlp_layer_scale.scale * self.mlp(self.post_attention_layernorm(x))


class DecoderTransformer(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.head_dim, self.rope_theta = cfg.head_dim, cfg.rope_theta
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.latent_dim)

    def forward(self, x: torch.Tensor, start: int, stream: DecoderStream) -> torch.Tensor:  # [B, T, latent]
        # Positions continue across chunks; stacked streams ([B] starts) each have their own.
        positions = torch.as_tensor(start, device=x.device).reshape(-1, 1) + torch.arange(x.shape[1], device=x.device)
        rope = rope_tables(positions, self.head_dim, self.rope_theta)
        x = linear(x, self.input_proj.weight, self.input_proj.bias, block_rows=ONE_ROW_BLOCK)
        for layer in self.layers:
            x = layer(x, rope, start, stream)
        return linear(self.norm(x), self.output_proj.weight, self.output_proj.bias, block_rows=ONE_ROW_BLOCK)


# --------------------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------------------


class CodecDecoder(nn.Module):
    """Codes [B, G, T] -> waveform [B, 1, T * samples_per_frame] in [-1, 1]; state_dict keys are the
    official `decoder.*` keys of speech_tokenizer/model.safetensors without the prefix."""

    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        if cfg.hidden_act != "silu":
            raise ValueError(f"codec decoder hidden_act '{cfg.hidden_act}' is not supported (only silu)")
        self.cfg = cfg
        self.samples_per_frame = math.prod(cfg.upsample_rates) * math.prod(cfg.upsampling_ratios)
        latent = cfg.latent_dim
        self.quantizer = SplitQuantizer(cfg)
        self.pre_conv = CausalConv(cfg.codebook_dim, latent, 3, gemm=True)  # a row a frame
        self.pre_transformer = DecoderTransformer(cfg)
        ratios = cfg.upsampling_ratios
        self.upsample = nn.ModuleList(
            nn.ModuleList([
                CausalConvTranspose(latent, latent, r, r, rows_per_frame=math.prod(ratios[:i])),
                ConvNeXtBlock(latent, rows_per_frame=math.prod(ratios[: i + 1])),
            ])
            for i, r in enumerate(ratios)
        )  # fmt: skip
        dims = [cfg.decoder_dim // 2**i for i in range(len(cfg.upsample_rates) + 1)]  # 1536 -> 768 -> ... -> 96
        rows_per_frame = [
            math.prod(cfg.upsampling_ratios) * math.prod(cfg.upsample_rates[:i]) for i in range(len(dims))
        ]
        blocks = [DecoderBlock(dims[i], dims[i + 1], r, rows_per_frame[i]) for i, r in enumerate(cfg.upsample_rates)]
        self.decoder = nn.ModuleList(
            [
                CausalConv(latent, dims[0], 7, gemm=True, rows_per_frame=rows_per_frame[0]),
                *blocks,
                SnakeBeta(dims[-1]),
                CausalConv(dims[-1], 1, 7),
            ]  # fmt: skip
        )

    def new_stream(self, batch: int = 1) -> DecoderStream:
        """A fresh streaming state for `batch` rows decoded together."""
        return DecoderStream(batch)

    def decode_chunk(self, codes: torch.Tensor, stream: DecoderStream) -> torch.Tensor:
        """The samples of the next frames of `stream`: codes [B, G, T] (any T >= 0) -> [B, 1, T * 1920].

        Concatenating the chunks of a stream gives exactly `forward` of all its codes."""
        b, g, t = codes.shape
        assert g == self.cfg.num_quantizers, f"expected {self.cfg.num_quantizers} codebooks, got {g}"
        assert b == stream.batch, f"stream was made for batch {stream.batch}, got codes for batch {b}"
        start = stream.frames
        stream.frames = start + t  # not +=: a stacked stream's frames is a tensor that `start` must keep
        if t == 0:
            return self.decoder[-1].conv.weight.new_zeros(b, 1, 0)
        x = self.quantizer(codes).transpose(1, 2)  # [B, codebook_dim, T]
        x = self.pre_conv(x, stream).transpose(1, 2)  # [B, T, latent]
        x = self.pre_transformer(x, start, stream).transpose(1, 2)  # [B, latent, T]
        for up, convnext in self.upsample:
            x = convnext(up(x, stream), stream)
        x = self.decoder[0](x, stream, time_major_out=True)  # [B, T, C]: the high-rate part runs time-major
        for block in self.decoder[1:-2]:
            x = block(x, stream)
        # The last conv has one output channel, where MKL's matmul would round a row differently at
        # 1-3 rows (measured), so it stays on oneDNN's channel-major conv.
        x = self.decoder[-1](self.decoder[-2](x).transpose(1, 2), stream)  # [B, 1, T * 1920]
        return x.clamp(-1, 1)

    def use_kernels_(self, ops) -> None:
        """Run the SnakeBeta activations through our CPU kernels' one-pass op (`ops`: lowbit.kernels()):
        2.7x torch's five passes on the 96-channel signals, within 1e-6 of them (kernels' tests)."""
        for m in self.modules():
            if isinstance(m, SnakeBeta):
                m.fused = ops.snake

    def relayout_(self) -> None:
        """Store the time-major layers' weights in the layout their matmuls read (once, after loading)."""
        for m in self.decoder.modules():
            if isinstance(m, ResidualUnit):
                m.conv1.relayout_()
                m.conv2.relayout_()
            elif isinstance(m, CausalConvTranspose):
                m.relayout_()

    def relaid_weights(self) -> list[str]:
        """The state_dict names `relayout_` rewrites (a loader reads these into their own memory)."""
        names = []
        for name, m in self.decoder.named_modules(prefix="decoder"):
            if isinstance(m, ResidualUnit):
                names += [f"{name}.conv1.conv.weight", f"{name}.conv2.conv.weight"]
            elif isinstance(m, CausalConvTranspose) and m.time_major:
                names.append(f"{name}.conv.weight")
        return names

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Offline decode, codes [B, G, T] -> [B, 1, T * 1920]: a fresh stream fed in blocks."""
        stream = self.new_stream(codes.shape[0])
        blocks = codes.split(OFFLINE_BLOCK_FRAMES, dim=-1) or [codes]
        return torch.cat([self.decode_chunk(c, stream) for c in blocks], dim=-1)


@torch.no_grad()
def random_init_(decoder: CodecDecoder, generator: torch.Generator) -> CodecDecoder:
    """Random weights that give audible, mostly unclipped test output. The official inits would make it
    nearly silent: layer scale 0.01, ConvNeXt gamma 1e-6, zero codebooks, Snake alpha = beta = 0."""

    def normal_(p: torch.Tensor, std: float, mean: float = 0.0):
        p.copy_(torch.randn(p.shape, generator=generator) * std + mean)

    # Without damping, each residual unit about doubles the signal and the output is all clipped.
    gain = {id(u.conv2.conv): 0.3 for u in decoder.modules() if isinstance(u, ResidualUnit)}
    gain[id(decoder.decoder[-1].conv)] = 0.1
    for m in decoder.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear, nn.ConvTranspose1d)):
            fan_in = m.weight[0].numel()
            if isinstance(m, nn.ConvTranspose1d):  # each output sample sees kernel/stride taps of every input channel
                fan_in = m.in_channels * m.kernel_size[0] // m.stride[0]
            normal_(m.weight, gain.get(id(m), 1.0) * fan_in**-0.5)
            if m.bias is not None:
                normal_(m.bias, 0.02)
        elif isinstance(m, (RMSNorm, nn.LayerNorm)):
            normal_(m.weight, 0.1, mean=1.0)
            if getattr(m, "bias", None) is not None:
                normal_(m.bias, 0.02)
        elif isinstance(m, Codebook):
            normal_(m.embedding_sum, 1.0)
            m.cluster_usage.copy_(torch.rand(m.cluster_usage.shape, generator=generator) + 0.5)
        elif isinstance(m, SnakeBeta):
            normal_(m.alpha, 0.1)
            normal_(m.beta, 0.1)
        elif isinstance(m, LayerScale):
            normal_(m.scale, 0.1, mean=0.8)
        elif isinstance(m, ConvNeXtBlock):
            normal_(m.gamma, 0.1, mean=0.8)
    return decoder
