"""The CPU quantize modes (QuantizeSpec: one precision per network, "int8", "q8", "int4" or
"talker=int4,predictor=q8"), the fbgemm int8 linears, and the CPU thread count to run with.
The group-wise q8/int4 linears and their kernel live in lowbit.py.

    tts = Qwen3TTS.from_pretrained(path, device="cpu", quantize="int8")   # quantised while loading

    tts = Qwen3TTS.from_pretrained(path, device="cpu")
    quantize_int8_(tts.checkpoint.networks.talker)   # or afterwards (the talker holds the code predictor)

Generation on CPU streams every weight of the talker (28 layers) once per frame and every weight
of the code predictor (5 layers) 15 times per frame, one row of activations at a time: it is
bound by memory bandwidth, so a quarter of the bytes is most of the win. Weights get symmetric
per-output-channel int8 scales. Two kernels, measured on the 0.6B layer shapes with
tools/bench_int8_kernels.py (2 threads, AMD EPYC with AVX-512; fp32 F.linear = 1.0x):

- "dynamic": torch's x86/fbgemm quantised linear. Activations are quantised to int8 per call
  (one scale per call; 7 bits on CPUs without VNNI) and accumulated in int32. Fastest at
  every batch size: 3.0x at 1 row, 3.8x at 4 rows.
- "weight_only": `torch._weight_int8pack_mm` with bf16 activations; only the weights lose
  precision. 1.2x at 1 row, 3.5x at 4 rows (its fp32-activation path is 5x *slower* than fp32).

Dequantising on the fly and multiplying in fp32 or bf16 was 2-3x slower than plain fp32.
The code predictor's 15 heads (`lm_head`, 2048 x 1024 each, all read once per frame) are int8
too: in float they were 9% of the bytes a frame reads once the layers are int8, and a tenth of
the code predictor's time. The talker's `codec_head` stays in float: it alone chooses codebook 0
and end of speech, and it is read once per frame.
"""

from __future__ import annotations

import ctypes
import gc
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn

from ..errors import Q3TTSError
from . import lowbit

Kernel = Literal["auto", "dynamic", "weight_only"]
SKIPPED_LINEARS = ("codec_head",)  # module-name parts whose linears stay in float
MAX_DEFAULT_THREADS = 8


class QuantizationError(Q3TTSError, ValueError):
    """The module cannot be quantised as asked (already int8, wrong device, missing kernel)."""


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (int8 [N, K], fp32 scales [N]) with weight ~= int8 * scale[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # symmetric: 0 stays exactly 0
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def dynamic_kernel_available() -> bool:
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights. Its state_dict holds `weight_int8` [N, K] int8, `weight_scale`
    [N] fp32 and `bias`, whichever kernel runs it."""

    def __init__(self, linear: nn.Linear, kernel: Literal["dynamic", "weight_only"]):
        super().__init__()
        self.in_features, self.out_features, self.kernel = linear.in_features, linear.out_features, kernel
        weight_int8, scale = quantize_weight(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        if kernel == "dynamic":
            # 7-bit activations keep the u8*s8 pair sums of pre-VNNI AVX2/AVX-512 kernels from
            # saturating int16; with VNNI the full 8 bits are safe and measurably more accurate
            # (torch's own x86 qconfig makes the same choice).
            self.reduce_range = not getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
            # The packed handle is the only copy of the weights (a second int8 copy would cost as
            # much again); the state_dict hooks below unpack it on demand.
            self.register_parameter("bias", None)
            self._packed = _prepack(weight_int8, scale, None if bias is None else bias.float())
            self._bias_dtype = None if bias is None else bias.dtype
        else:
            self.register_buffer("weight_int8", weight_int8)
            self.register_buffer("weight_scale", scale)
            self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "dynamic":
            return torch.ops.quantized.linear_dynamic(x.float(), self._packed, self.reduce_range).to(x.dtype)
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)  # the kernel's fast path is bf16
        y = torch._weight_int8pack_mm(rows, self.weight_int8, self.weight_scale.to(torch.bfloat16))
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def int8_weights(self) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(weight_int8 [N, K], weight_scale [N], bias or None), for either kernel."""
        if self.kernel == "weight_only":
            return self.weight_int8, self.weight_scale, self.bias
        qweight, bias = torch.ops.quantized.linear_unpack(self._packed)
        bias = None if bias is None else bias.to(self._bias_dtype)
        return qweight.int_repr(), qweight.q_per_channel_scales().float(), bias

    def cast_bias_(self, dtype: torch.dtype) -> None:
        """The dtype the bias has outside the kernel (state_dict, weight_only forward); the
        dynamic kernel keeps its own float32 copy inside the packed weights."""
        if self.kernel == "dynamic":
            self._bias_dtype = None if self._bias_dtype is None else dtype
        elif self.bias is not None:
            self.bias.data = self.bias.data.to(dtype)

    def weight_bytes(self) -> int:
        """Bytes of weights and scales (the int8 payload; the packed layout adds kernel padding)."""
        return self.out_features * self.in_features + 4 * self.out_features

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.kernel == "weight_only":
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        weight_int8, scale, bias = self.int8_weights()
        destination[prefix + "weight_int8"], destination[prefix + "weight_scale"] = weight_int8, scale
        if bias is not None:
            destination[prefix + "bias"] = bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        if self.kernel == "weight_only":
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected,
                                                 errors)  # fmt: skip
        keys = [prefix + "weight_int8", prefix + "weight_scale"]
        missing.extend(k for k in keys if k not in state_dict)
        if all(k in state_dict for k in keys):
            bias = state_dict.get(prefix + "bias")
            self._packed = _prepack(state_dict[keys[0]], state_dict[keys[1]].float(),
                                    None if bias is None else bias.float())  # fmt: skip

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


def _prepack(weight_int8: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor]):
    zero_points = torch.zeros(scale.shape, dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.10+ deprecates creating quantised tensors, yet linear_prepack still takes one
        # (and nothing replaces it in torch itself); the warning would only alarm users.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        qweight = torch._make_per_channel_quantized_tensor(weight_int8.cpu(), scale.double().cpu(), zero_points, 0)
    return torch.ops.quantized.linear_prepack(qweight, bias)


# ----------------------------------------------------------------------------------------------
# Modes: one precision per network
# ----------------------------------------------------------------------------------------------

# "int8": fbgemm per-channel (Int8Linear above; needs no compiler). "q8" and "int4": group-wise
# weights run by our kernel (lowbit.py), with whole decode steps in one call (lowbit.StackKernel).
PRECISIONS = ("float", "int8", "q8", "int4")
NETWORKS = ("talker", "predictor")
# Named modes. "int4" is the fastest measured on CPU (issue 13 notes): int4 for both networks.
MODES = {"int8": ("int8", "int8"), "q8": ("q8", "q8"), "int4": ("int4", "int4")}


@dataclass(frozen=True)
class QuantizeSpec:
    """The precision of the talker's and the code predictor's linears."""

    talker: str = "float"
    predictor: str = "float"

    def __str__(self) -> str:
        for name, (t, p) in MODES.items():
            if (t, p) == (self.talker, self.predictor):
                return name
        return f"talker={self.talker},predictor={self.predictor}"

    def precision_of(self, name: str) -> str:
        """Precision of the talker's linear `name` (a name inside the talker module)."""
        return self.predictor if name.startswith("code_predictor.") else self.talker

    @property
    def uses_kernel(self) -> bool:
        return bool({self.talker, self.predictor} & {"q8", "int4"})


def parse_quantize(value) -> Optional[QuantizeSpec]:
    """None / "none" / "float" -> None; "int8", "q8", "int4"; or per network, e.g.
    "talker=int4,predictor=q8" (a network not named stays float). A QuantizeSpec passes through."""
    if isinstance(value, QuantizeSpec):
        spec = value
    elif value in (None, "none", "float"):
        return None
    elif not isinstance(value, str):
        raise QuantizationError(f"quantize must be a string, got {type(value).__name__}")
    elif value in MODES:
        spec = QuantizeSpec(*MODES[value])
    else:
        parts = {}
        for item in value.split(","):
            network, sep, precision = item.strip().partition("=")
            if not sep or network not in NETWORKS or precision not in PRECISIONS or network in parts:
                raise QuantizationError(
                    f"unknown quantize '{value}': expected one of none, {', '.join(MODES)}, or per network "
                    f"'talker=P,predictor=P' with P one of {', '.join(PRECISIONS)}"
                )
            parts[network] = precision
        spec = QuantizeSpec(parts.get("talker", "float"), parts.get("predictor", "float"))
    if (spec.talker, spec.predictor) == ("float", "float"):
        return None
    if spec.uses_kernel:
        lowbit.kernels()  # refuse now, in one line, where the kernel cannot be built
    return spec


def quantized_linear(linear: nn.Linear, precision: str, kernel: Literal["dynamic", "weight_only"]) -> nn.Module:
    """`linear` at `precision` ("float" returns it; a low-bit one it cannot hold stays int8)."""
    if precision == "float":
        return linear
    if precision in ("q8", "int4") and lowbit.LowBitLinear.supports(linear):
        return lowbit.LowBitLinear.from_linear(linear, bits=4 if precision == "int4" else 8)
    return Int8Linear(linear, kernel)


def quantize_(module: nn.Module, quantize="int8", kernel: Kernel = "auto") -> nn.Module:
    """Replace, in place, the talker's and code predictor's linears (not the codec head) by their
    quantised form under `quantize` (a mode name or per-network spec, see parse_quantize).

    Pass the talker (the code predictor is inside it) or a whole TTSNetworks (only its talker is
    quantised: the speaker encoder runs once per voice). CPU only. Quantising twice is an error."""
    given = module
    # A TTSNetworks is recognised by its `talker` rather than by class: model.py imports this module,
    # so importing model.py here would be an import cycle.
    if isinstance(getattr(module, "talker", None), nn.Module):
        module = module.talker
    if any(isinstance(m, (Int8Linear, lowbit.LowBitLinear)) for m in module.modules()):
        raise QuantizationError("this module is already quantised")
    devices = {p.device.type for p in module.parameters()}
    if devices - {"cpu"}:
        raise QuantizationError(f"quantisation is CPU-only; this module is on {', '.join(sorted(devices))}")
    spec = parse_quantize(quantize)
    if spec is None:
        return given
    kernel = resolve_kernel(kernel)
    for name in int8_targets(module):  # by name, so that no local keeps a float weight alive past the trim below
        replace_linear(module, name, quantized_linear(module.get_submodule(name), spec.precision_of(name), kernel))
    lowbit.use_stack_kernels_(module)
    release_freed_memory()
    return given


def quantize_int8_(module: nn.Module, kernel: Kernel = "auto") -> nn.Module:
    """`quantize_(module, "int8", kernel)`: every linear of the talker and code predictor except the
    codec head becomes an Int8Linear. `kernel`: "auto" (dynamic where torch has the x86/fbgemm
    engine, else weight_only)."""
    return quantize_(module, "int8", kernel)


def resolve_kernel(kernel: Kernel) -> Literal["dynamic", "weight_only"]:
    if kernel == "auto":
        kernel = "dynamic" if dynamic_kernel_available() else "weight_only"
    if kernel == "dynamic" and not dynamic_kernel_available():
        raise QuantizationError("the dynamic int8 kernel needs torch's x86/fbgemm quantised engine (an x86 CPU)")
    if kernel not in ("dynamic", "weight_only"):
        raise QuantizationError(f"unknown kernel '{kernel}', expected auto, dynamic or weight_only")
    return kernel


def int8_targets(talker: nn.Module) -> list[str]:
    """Names (in `talker`) of the linears the int8 mode quantises."""
    return [name for name, m in talker.named_modules() if isinstance(m, nn.Linear)
            and not any(part in SKIPPED_LINEARS for part in name.split("."))]  # fmt: skip


def replace_linear(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent_name), child, new)


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc only; a no-op elsewhere).

    The float weights we just dropped were mostly carved from glibc's heap, which keeps freed
    chunks for reuse: without a trim the process stays as large as before quantising (measured on
    the 0.6B model: 4.3 GiB resident before the trim, 2.3 GiB after)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 convolutions and
    matmuls beat float32 instead of emulating it."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                        "_is_amx_tile_supported"))  # fmt: skip


def linear_weight_bytes(module: nn.Module) -> tuple[int, int]:
    """(bytes of quantised linears, bytes the same linears took as fp32), for reports and tests."""
    layers = [m for m in module.modules() if isinstance(m, (Int8Linear, lowbit.LowBitLinear))]
    return sum(m.weight_bytes() for m in layers), sum(4 * m.in_features * m.out_features for m in layers)


# ----------------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------------


def _cgroup_cpu_limit() -> Optional[int]:
    """CPUs a container may use (cgroup v2 `cpu.max`), or None when unlimited/unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, int(int(quota) // int(period)))


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings count once)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))  # no topology (not Linux): count logical CPUs
    return max(1, len(cores))


def default_threads() -> int:
    """Intra-op threads for generation: the physical cores we may use, capped.

    SMT siblings share the core's load/store units, and a frame is a long chain of small
    matrix-vector products, so a second thread per core only adds hand-off cost. Beyond about 8
    threads the per-op synchronisation outweighs the extra bandwidth for these layer sizes."""
    n = physical_cores()
    limit = _cgroup_cpu_limit()
    return max(1, min(n, limit or n, MAX_DEFAULT_THREADS))


def threads_set_by_user() -> bool:
    """True when the environment already chose a thread count (OMP_NUM_THREADS, MKL_NUM_THREADS)."""
    return any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))


def apply_default_threads() -> int:
    """Set torch's intra-op threads to `default_threads()` unless the environment set them;
    returns the count in effect. Meant for model load on CPU."""
    if not threads_set_by_user():
        torch.set_num_threads(default_threads())
    return torch.get_num_threads()


__all__ = [
    "Int8Linear",
    "QuantizationError",
    "QuantizeSpec",
    "apply_default_threads",
    "default_threads",
    "parse_quantize",
    "quantize_",
    "quantize_int8_",
]
