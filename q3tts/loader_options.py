"""The official loaders' keyword arguments (transformers-style `from_pretrained`), mapped to ours.

Code written for the official package calls

    Qwen3TTSModel.from_pretrained(repo, device_map="cuda:0", dtype=torch.bfloat16,
                                  attn_implementation="flash_attention_2")
    Qwen3TTSTokenizer.from_pretrained(repo, device_map="cuda:0")

Each such option is honoured (device_map/torch_dtype -> device/dtype; local_files_only, revision,
cache_dir, token -> how the checkpoint is found), mapped (attention implementations: we always run
PyTorch's scaled_dot_product_attention, which picks its flash kernel on CUDA by itself) or, when we
do not implement it, named in a one-line `IgnoredOptionWarning`; never dropped silently. A name
that is no loader option at all is a TypeError, as for any Python call."""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InputError


class IgnoredOptionWarning(UserWarning):
    """A loader option of the official package that q3tts accepts but does not implement."""


# Options of transformers' from_pretrained that change nothing q3tts does: accepted, with a warning.
UNIMPLEMENTED = ("trust_remote_code", "low_cpu_mem_usage", "use_safetensors", "max_memory", "offload_folder",
                 "offload_state_dict", "offload_buffers", "quantization_config", "variant", "force_download",
                 "resume_download", "proxies", "subfolder", "output_loading_info", "use_flash_attention_2",
                 "weights_only", "key_mapping", "tp_plan", "tp_size")  # fmt: skip
HUB_OPTIONS = ("local_files_only", "revision", "cache_dir", "token")  # passed to the checkpoint lookup
ATTENTION = {"sdpa": None, "eager": "eager", "flash_attention_2": "flash", "flash_attention_3": "flash",
             "flex_attention": "flex"}  # fmt: skip
MULTI_DEVICE_MAPS = ("balanced", "balanced_low_0", "sequential")


@dataclass
class LoaderOptions:
    device: Any = "auto"
    dtype: Any = "auto"
    hub: dict = field(default_factory=dict)  # local_files_only, revision, cache_dir, token


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _warn(text: str) -> None:
    """Warn at the caller's line: the first frame outside the q3tts package."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(text, IgnoredOptionWarning, stacklevel=level + 1)


def _device_from_map(device_map) -> Any:
    """transformers' device_map forms -> one device: "cuda:0", 0, torch.device, {"": dev}, "auto"."""
    if isinstance(device_map, dict):
        devices = list(dict.fromkeys(device_map.values()))
        if len(devices) != 1:
            _warn(f"device_map places modules on {len(devices)} devices; q3tts loads the whole model on "
                  f"{devices[0]!r} (per-module placement is not implemented)")  # fmt: skip
        return _device_from_map(devices[0]) if devices else "auto"
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return f"cuda:{device_map}"
    if isinstance(device_map, str) and device_map in MULTI_DEVICE_MAPS:
        _warn(f"device_map={device_map!r} splits a model over GPUs, which q3tts does not implement; "
              "using one device (device_map='auto')")  # fmt: skip
        return "auto"
    if isinstance(device_map, (str, torch.device)):
        return device_map
    raise InputError(f"device_map must be a device name, a GPU index or a dict, got {type(device_map).__name__}")


def _pick(name_a: str, a, name_b: str, b, default):
    """One value from two spellings of one option (ours and transformers'), refusing a contradiction."""
    given = [(n, v) for n, v in ((name_a, a), (name_b, b)) if v is not None and str(v) != "auto"]
    if len(given) == 2 and str(given[0][1]).removeprefix("torch.") != str(given[1][1]).removeprefix("torch."):
        raise InputError(f"{name_a}={a!r} and {name_b}={b!r} disagree; give one of them")
    return given[0][1] if given else (a if a is not None else (b if b is not None else default))


def parse_loader_options(caller: str, device=None, dtype=None, known: tuple[str, ...] = (),
                         default_device="auto", **kwargs) -> tuple:  # fmt: skip
    """Split `kwargs` of `caller` (e.g. "Qwen3TTS.from_pretrained") into (LoaderOptions, the rest).
    The rest holds only names in `known` (the caller's own parameters)."""
    device_map = kwargs.pop("device_map", None)
    device = _pick("device", device, "device_map", None if device_map is None else _device_from_map(device_map),
                   default_device)  # fmt: skip
    dtype = _pick("dtype", dtype, "torch_dtype", kwargs.pop("torch_dtype", None), "auto")
    attention = kwargs.pop("attn_implementation", None)
    if attention is not None:
        if attention not in ATTENTION:
            raise InputError(f"unknown attn_implementation {attention!r}; expected one of {', '.join(ATTENTION)}")
        if ATTENTION[attention] is not None:
            _warn(f"attn_implementation={attention!r} is not implemented: q3tts runs PyTorch's "
                  "scaled_dot_product_attention (sdpa), which uses its flash kernel on CUDA by itself")  # fmt: skip
    hub = {name: kwargs.pop(name) for name in HUB_OPTIONS if name in kwargs}
    for name in [n for n in kwargs if n in UNIMPLEMENTED]:
        _warn(f"{caller}: {name}={kwargs.pop(name)!r} is not implemented by q3tts and has no effect")
    unknown = [n for n in kwargs if n not in known]
    if unknown:
        choices = [*known, "device", "dtype", "device_map", "torch_dtype", "attn_implementation", *HUB_OPTIONS]
        close = difflib.get_close_matches(unknown[0], choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}{hint}")
    return LoaderOptions(device, dtype, hub), kwargs
