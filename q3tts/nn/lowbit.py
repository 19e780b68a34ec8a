"""Group-wise 4-bit and 8-bit linears with our own CPU kernel (kernels/lowbit_linear.cpp).

    linear = LowBitLinear.from_linear(nn.Linear(1024, 3072), bits=4)   # or quant.quantize_(...)

Each output channel's weights are cut into groups of `group` inputs (32 by default) and every group
gets its own fp16 scale, symmetric (0 stays 0): 4.5 bits per int4 weight, 8.5 per int8 one. The
kernel quantises the activations per row and group to int8 and multiplies in integers
(AVX512-VNNI), so a decode step reads the packed bytes once and does little else. Why our own
kernel: torch's int4 CPU matmul (`_weight_int4pack_mm_for_cpu`) was only 16% faster than fbgemm
int8 on the code predictor's 35 linears with bf16 activations, 1.6x slower on one cached shape, and
14-50x slower with fp32 activations (measured on this 2-core AVX-512 Xeon, issue 13 notes).

The kernel is C++ built on first use with the machine's own compiler (`-march=native`, so it
uses the instructions this CPU has) into torch's extension cache. Without a compiler these modes
are refused with one line; the int8 mode of quant.py needs none.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import Q3TTSError
from .layers import rope_inv_freq

SOURCE = Path(__file__).with_name("kernels") / "lowbit_linear.cpp"
DEFAULT_GROUP = 32
BLOCK = 16  # output channels per packed block (the kernel's register width in fp32 lanes)


class KernelUnavailable(Q3TTSError, RuntimeError):
    """The low-bit kernel could not be built or loaded on this machine."""


def _cpu_fingerprint() -> str:
    """What the native build depends on: -march=native code must not run on another CPU model."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha1(f"{platform.machine()} {flags} {torch.__version__}".encode()).hexdigest()[:10]


# Builds besides this machine's best, for the tests: the same source on the narrower paths
# (kernel_isa in the C++: 512 AVX512-VNNI, 257 AVX2 + AVX-VNNI, 256 AVX2, 0 portable).
VARIANTS = {
    "native": ["-march=native"],
    "avx2vnni": ["-march=native", "-mno-avx512f"],
    "avx2": ["-march=native", "-mno-avx512f", "-mno-avxvnni"],
    "portable": ["-DQ3TTS_PORTABLE"],
}


@functools.lru_cache(maxsize=None)
def kernels(variant: str = "native"):
    """The op namespace (`.linear`, `.stack_step`, `.isa`), built on first use. `variant`: one of
    VARIANTS; the tests run the narrower paths beside this machine's own."""
    from torch.utils import cpp_extension  # imported here: it pulls in setuptools, which loading a model never needs

    namespace = "q3tts_lowbit" if variant == "native" else f"q3tts_lowbit_{variant}"
    name = f"{namespace}_{_cpu_fingerprint()}"
    # -fopenmp: at::parallel_for is inline and runs serially without it; the extension then shares
    # the libgomp torch already loaded (same soname), so it uses torch's thread team.
    flags = ["-O3", "-fopenmp", f"-DQ3TTS_LIBRARY={namespace}", "-std=c++17", *VARIANTS[variant]]
    try:
        cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                           is_python_module=False,
                           verbose=bool(os.environ.get("Q3TTS_VERBOSE_BUILD")))  # fmt: skip
    except (RuntimeError, OSError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KernelUnavailable(
            f"the int4/grouped-int8 CPU kernel could not be built ({first}); it needs a C++ compiler "
            "(g++ or clang) and ninja; quantize='int8' works without one"
        ) from None
    return getattr(torch.ops, namespace)


def kernel_available() -> bool:
    try:
        kernels()
    except KernelUnavailable:
        return False
    return True


def quantize_groups(weight: torch.Tensor, bits: int, group: int = DEFAULT_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (q int8 [N, K], scales fp32 [N, K // group]) with weight ~= q * scale.

    int4 keeps q in [-8, 7]; of three scales per group (absmax / 7, / 7.5, / 8: how far the
    largest weight may be clipped) it keeps the one with the least squared error, which lowered
    the error of random and trained-like weights by about 8% over absmax / 7 alone."""
    w = weight.detach().float()
    N, K = w.shape
    if K % group:
        raise ValueError(f"in_features {K} is not a multiple of the group size {group}")
    wg = w.reshape(N, K // group, group)
    amax = wg.abs().amax(-1).clamp(min=1e-10)
    qmax = 127 if bits == 8 else 7
    lo = -127 if bits == 8 else -8
    divisors = (127.0,) if bits == 8 else (7.0, 7.5, 8.0)
    best_q, best_scale, best_err = None, None, None
    for d in divisors:
        scale = (amax / d).to(torch.float16).float()  # the kernel reads fp16 scales: choose with those
        q = torch.round(wg / scale[..., None]).clamp(lo, qmax)
        err = ((q * scale[..., None] - wg) ** 2).sum(-1)
        if best_err is None:
            best_q, best_scale, best_err = q, scale, err
        else:
            better = err < best_err
            best_q = torch.where(better[..., None], q, best_q)
            best_scale = torch.where(better, scale, best_scale)
            best_err = torch.minimum(err, best_err)
    return best_q.reshape(N, K).to(torch.int8), best_scale


def pack(q: torch.Tensor, scales: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [N, K], scales [N, K // group]) -> the kernel's layout (kernels/lowbit_linear.cpp)."""
    N, K = q.shape
    if N % BLOCK:
        raise ValueError(f"out_features {N} is not a multiple of {BLOCK}")
    if bits == 4:
        u = (q.to(torch.int16) + 8).to(torch.uint8).reshape(N // BLOCK, BLOCK, K // 8, 2, 4)
        byte = u[:, :, :, 0] | (u[:, :, :, 1] << 4)  # [N/16, 16, K/8, 4]
        packed = byte.permute(0, 2, 1, 3).contiguous()
    else:
        u = (q.to(torch.int16) + 128).to(torch.uint8).reshape(N // BLOCK, BLOCK, K // 4, 4)
        packed = u.permute(0, 2, 1, 3).contiguous()
    s = scales.reshape(N // BLOCK, BLOCK, -1).permute(0, 2, 1).contiguous().to(torch.float16)
    return packed.reshape(-1), s.reshape(-1)


class LowBitLinear(nn.Module):
    """nn.Linear with group-wise int4 or int8 weights run by our kernel. Its state_dict holds
    `weight_packed` (u8), `weight_scales` (fp16) and `bias`."""

    def __init__(self, in_features: int, out_features: int, bits: int, group: int = DEFAULT_GROUP,
                 bias: Optional[torch.Tensor] = None):  # fmt: skip
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        n_bytes = out_features * in_features // (2 if bits == 4 else 1)
        self.register_buffer("weight_packed", torch.zeros(n_bytes, dtype=torch.uint8))
        self.register_buffer("weight_scales", torch.zeros(out_features * in_features // group, dtype=torch.float16))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self._ops = kernels()

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group: int = DEFAULT_GROUP) -> "LowBitLinear":
        new = cls(linear.in_features, linear.out_features, bits, group, linear.bias)
        # 256 channels at a time: the float temporaries of a whole 3072 x 1024 weight (tens of MB)
        # fragmented the heap enough to raise the 0.6B load's peak RSS by about 400 MB.
        packed, scales = [], []
        for rows in linear.weight.detach().split(256):
            p, s = pack(*quantize_groups(rows, bits, group), bits)
            packed.append(p)
            scales.append(s)
        new.weight_packed, new.weight_scales = torch.cat(packed), torch.cat(scales)
        return new

    @staticmethod
    def supports(linear: nn.Linear, group: int = DEFAULT_GROUP) -> bool:
        return linear.in_features % group == 0 and linear.out_features % BLOCK == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._ops.linear(x, self.weight_packed, self.weight_scales, self.out_features, self.group, self.bits,
                                self.bias)  # fmt: skip

    def dequantized(self) -> torch.Tensor:
        """The float weight [N, K] the kernel multiplies by (for tests and quality reports)."""
        N, K, B = self.out_features, self.in_features, BLOCK
        if self.bits == 4:
            byte = self.weight_packed.reshape(N // B, K // 8, B, 4).permute(0, 2, 1, 3)
            u = torch.stack([byte & 0xF, byte >> 4], dim=3)  # [N/16, 16, K/8, 2, 4]
            q = u.reshape(N, K).to(torch.int16) - 8
        else:
            q = self.weight_packed.reshape(N // B, K // 4, B, 4).permute(0, 2, 1, 3).reshape(N, K).to(torch.int16) - 128
        s = self.weight_scales.reshape(N // B, K // self.group, B).permute(0, 2, 1).reshape(N, K // self.group)
        return (q.float().reshape(N, K // self.group, self.group) * s.float()[..., None]).reshape(N, K)

    def weight_bytes(self) -> int:
        return self.weight_packed.numel() + 2 * self.weight_scales.numel()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, group={self.group}"


# Per layer, the order kernels/lowbit_linear.cpp reads them (18 tensors); the kernel reads the
# norms as float32 (.float() is the tensor itself when it already is).
def _layer_params(layer: nn.Module) -> list[torch.Tensor]:
    a, m = layer.self_attn, layer.mlp

    def packed(*linears):
        return [t for lin in linears for t in (lin.weight_packed, lin.weight_scales)]

    return [layer.input_layernorm.weight.float(), *packed(a.q_proj, a.k_proj, a.v_proj), a.q_norm.weight.float(),
            a.k_norm.weight.float(), *packed(a.o_proj), layer.post_attention_layernorm.weight.float(),
            *packed(m.gate_proj, m.up_proj, m.down_proj)]  # fmt: skip


def stack_kernel_applies(layers: nn.ModuleList) -> Optional[tuple[int, int]]:
    """(bits, group) when every linear of every layer is a LowBitLinear of one kind, without biases."""
    kinds = set()
    for layer in layers:
        for lin in (*[getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")],
                    layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):  # fmt: skip
            if not isinstance(lin, LowBitLinear) or lin.bias is not None:
                return None
            kinds.add((lin.bits, lin.group))
        if layer.self_attn.q_norm is None:
            return None
    return kinds.pop() if len(kinds) == 1 else None


class StackKernel:
    """One decode step of a stack of Qwen3 layers whose linears are all LowBitLinear, in one kernel
    call (norms, RoPE, cache writes, attention and the MLP included). The final norm stays outside.

    Rows are (batch row, token) pairs, row r = b * tokens + t, writing its k/v at cache row b, slot
    `slots[r]`. `valid` [rows, >= width] bool: the cache slots each row sees (the talker's masks:
    causal, padding, holes); None: each row sees slots [0, its own slot] (the code predictor's
    per-frame prefix)."""

    def __init__(self, layers: nn.ModuleList, heads: int, kv_heads: int, head_dim: int, eps: float, theta: float):
        bits_group = stack_kernel_applies(layers)
        if bits_group is None:
            raise ValueError("every linear of the stack must be a LowBitLinear of one kind")
        self.bits, self.group = bits_group
        self.params = [t for layer in layers for t in _layer_params(layer)]
        self.heads, self.kv_heads, self.head_dim, self.eps = heads, kv_heads, head_dim, eps
        self.inv_freq = rope_inv_freq(head_dim, theta)
        self._ops = kernels()

    def takes_head(self, head: nn.Module) -> bool:
        return isinstance(head, LowBitLinear) and head.group == self.group and head.bias is None

    def __call__(self, x: torch.Tensor, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor],
                 slots: torch.Tensor, positions: torch.Tensor, valid: Optional[torch.Tensor], width: int,
                 tokens: int, final_norm: Optional[torch.Tensor] = None,
                 head: Optional["LowBitLinear"] = None) -> torch.Tensor:  # fmt: skip
        """The stack's output [rows, hidden]; with `final_norm` (float32) and `head` (a LowBitLinear without
        bias, of this stack's group), the head's logits [B, V] on each batch row's last token."""
        extra = ()
        if head is not None:
            extra = (final_norm, head.weight_packed, head.weight_scales, head.bits)
        return self._ops.stack_step(x, self.params, k_caches, v_caches, slots.contiguous(), positions.contiguous(),
                                    valid, width, tokens, self.inv_freq, self.heads, self.kv_heads, self.head_dim,
                                    self.bits, self.group, self.eps, *extra)  # fmt: skip


def use_stack_kernels_(talker: nn.Module) -> list[str]:
    """Give the talker and its code predictor a StackKernel where all their layers' linears are
    low-bit of one kind; returns the names of the stacks that got one."""
    done = []
    for name, net in (("talker", talker), ("code_predictor", talker.code_predictor)):
        c = net.cfg
        if stack_kernel_applies(net.model.layers) is not None:
            net.stack_kernel = StackKernel(net.model.layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                           c.rms_norm_eps, c.rope_theta)  # fmt: skip
            done.append(name)
    return done
