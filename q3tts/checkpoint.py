"""Finding checkpoints (local folder or Hugging Face cache/hub) and loading weights into modules.

Modules are built on the meta device, their tensors are read one at a time from the
memory-mapped safetensors file straight into the target device and dtype, and assigned, so
peak memory stays near the size of the loaded weights. Every problem with a file is reported
as one `CheckpointError` that names the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from .errors import Q3TTSError

MAIN_FILES = ("config.json", "generation_config.json", "model.safetensors")
SPEECH_TOKENIZER_FILES = ("config.json", "model.safetensors")


class CheckpointError(Q3TTSError, ValueError):
    """A checkpoint is missing, incomplete or does not match the model it claims to be."""


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve(path_or_repo: str | os.PathLike, local_files_only: bool = False, revision: Optional[str] = None,
            cache_dir: Optional[str | os.PathLike] = None, token=None) -> Path:  # fmt: skip
    """A local checkpoint folder for `path_or_repo`: the folder itself, else the Hugging Face cache,
    else a download (unless `local_files_only` or HF_HUB_OFFLINE). `revision`, `cache_dir` and
    `token` are snapshot_download's. Raises CheckpointError when none works."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_repo)
    if not _looks_like_repo_id(name):
        raise CheckpointError(f"{name}: no such checkpoint folder (and not a Hugging Face repo id like 'Qwen/...')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        raise CheckpointError(f"{name}: huggingface_hub is not installed, pass a local folder") from None
    hub = {"revision": revision, "cache_dir": None if cache_dir is None else str(cache_dir), "token": token}
    try:
        return Path(snapshot_download(name, local_files_only=True, **hub))
    except Exception:
        pass
    if local_files_only:
        raise CheckpointError(f"{name}: not in the Hugging Face cache, and local_files_only is set")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(f"{name}: not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(name, **hub))
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{name}: not a local folder, not in the cache, and download failed ({reason})") from None


def require_files(folder: Path, names: Iterable[str]) -> None:
    for name in names:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name}: required file is missing")


def read_safetensors_header(path: Path) -> dict:
    """Parse and sanity-check the header, catching truncated or foreign files with a clear message."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated (only {size} bytes), not a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise CheckpointError(
                    f"{path}: corrupt or not a safetensors file (header length {n}, file {size} bytes)"
                )
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header") from None
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path}: truncated ({size} bytes on disk, the header promises {8 + n + end}); re-download the file"
        )
    return header


SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
                      "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
                      "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}  # fmt: skip


def read_tensor(path: Path, key: str, shape: tuple[int, ...], header: Optional[dict] = None) -> torch.Tensor:
    """One tensor of a safetensors file by a plain read (no memory map, so nothing of the file stays
    resident once the tensor is dropped), checked against the `shape` the config implies."""
    header = header if header is not None else read_safetensors_header(path)
    if key not in header:
        raise CheckpointError(f"{path}: missing tensor {key}")
    info = header[key]
    if tuple(info["shape"]) != tuple(shape):
        raise CheckpointError(f"{path}: tensor {key} has shape {list(info['shape'])}, the config implies {list(shape)}")
    if info["dtype"] not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + n + begin)
        data = bytearray(fh.read(end - begin))
    if len(data) != end - begin:
        raise CheckpointError(f"{path}: truncated inside tensor {key}")
    if not data:
        return torch.empty(shape, dtype=SAFETENSORS_DTYPES[info["dtype"]])
    return torch.frombuffer(data, dtype=SAFETENSORS_DTYPES[info["dtype"]]).reshape(shape)


def load_weights(
    module: nn.Module,
    path: Path,
    *,
    prefix: str = "",
    ignore_prefixes: tuple[str, ...] = (),
    device: torch.device | str = "cpu",
    dtype: Optional[torch.dtype] = None,
    keep_float32: tuple[str, ...] = (),
    keep_narrow: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
    own_memory: tuple[str, ...] = (),
) -> None:
    """Fill `module` (usually on the meta device) from the safetensors file at `path`.

    Keys in the file are `prefix + name`; keys under `ignore_prefixes` (after the prefix) are
    skipped. Floating tensors are cast to `dtype` unless their name starts with one of
    `keep_float32`, or with one of `keep_narrow` and the file's dtype is the narrower (widening
    a lookup table adds no information, only bytes). Raises CheckpointError for missing,
    unexpected or mis-shaped tensors. Names under `skip` are neither expected nor loaded (the
    caller has filled those modules itself). Names starting with one of `own_memory` get their own
    memory even without a cast (the caller rewrites them; a mapped tensor would leave the file's
    pages resident beside the rewrite)."""
    from safetensors import safe_open

    header = read_safetensors_header(path)
    expected = {k: v for k, v in module.state_dict(keep_vars=True).items() if not k.startswith(skip)}
    found = {k[len(prefix) :]: k for k in header if k.startswith(prefix)}
    found = {k: v for k, v in found.items() if not k.startswith(ignore_prefixes + skip)}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} tensor(s), e.g. {prefix}{missing[0]}")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor(s) for this config, e.g. {prefix}{unexpected[0]}")
    for name, ref in expected.items():
        shape = tuple(header[found[name]]["shape"])
        if shape != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: tensor {found[name]} has shape {list(shape)}, the config implies {list(ref.shape)}"
            )
    state = {}
    as_stored = []  # names used straight from the memory-mapped file (no cast, no copy)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name, ref in expected.items():
                t = f.get_tensor(found[name])
                target = ref.dtype
                if t.is_floating_point():
                    target = torch.float32 if name.startswith(keep_float32) else (dtype or t.dtype)
                    if name.startswith(keep_narrow) and t.element_size() < target.itemsize:
                        target = t.dtype
                if target == t.dtype and torch.device(device).type == "cpu" and not name.startswith(own_memory):
                    as_stored.append(name)
                else:
                    # A plain read, so that the file's pages do not stay mapped (and resident) while
                    # the rest loads: the 0.6B codec's float32 file added 436 MB to the peak RSS.
                    del t
                    plain = read_tensor(path, found[name], tuple(ref.shape), header)
                    state[name] = plain.to(device=device, dtype=target)
        # The mapped tensors come from a second mapping: every page the copies above read stays
        # resident for as long as its mapping lives, and this one has been read by nobody yet.
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state.update({name: f.get_tensor(found[name]) for name in as_stored})
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    module.load_state_dict(state, strict=not skip, assign=True)  # every expected name is checked above
