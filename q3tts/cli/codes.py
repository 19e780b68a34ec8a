"""`q3tts encode` (audio -> codes file) and `q3tts decode` (codes file -> audio)."""

from __future__ import annotations

import os
from pathlib import Path

from ..console import Status, note, one_line
from .common import CODES_EXTENSIONS, UsageError, _check_device, _set_threads
from .output import Output, _audio_output, _output, _write_audio


def _load_tokenizer(args, with_encoder: bool):
    from ..api import resolve_device
    from ..speech_tokenizer import Qwen3TTSTokenizer

    _check_device(args)
    _set_threads(args)
    with Status(not args.quiet) as status:
        status.update(f"loading the speech tokenizer of {args.model} ...", force=True)
        device = resolve_device(args.device)
        return Qwen3TTSTokenizer.from_pretrained(args.model, device=device, with_encoder=with_encoder)


def _save_codes(out: Output, codes) -> None:
    """[T, 16] int64 codes -> .npy (the array), .safetensors or .pt (key/object 'audio_codes')."""
    import numpy as np

    tmp = out.path.with_name(f".{out.path.name}.{os.getpid()}.tmp")
    try:
        if out.ext == "npy":
            with open(tmp, "wb") as fh:
                np.save(fh, codes.numpy().astype(np.int64), allow_pickle=False)
        elif out.ext == "safetensors":
            from safetensors.torch import save_file

            save_file({"audio_codes": codes.contiguous()}, str(tmp), metadata={"format": "q3tts-codes"})
        else:
            import torch

            torch.save(codes, tmp)
        os.replace(tmp, out.path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_codes(path: str):
    """A codes file written by `encode` (or by hand) -> [T, G] int64 tensor. Checks the shape and
    type; the id range is checked against the codebook when decoding."""
    import numpy as np
    import torch

    from ..speech_tokenizer import CodesError

    p = Path(path).expanduser()
    ext = p.suffix.lower().lstrip(".")
    if ext not in CODES_EXTENSIONS:
        raise UsageError(f"{path}: unknown codes format; use one of {', '.join('.' + e for e in CODES_EXTENSIONS)}")
    if not p.is_file():
        raise UsageError(f"{path}: codes file not found")
    try:
        if ext == "npy":
            value = torch.from_numpy(np.load(p, allow_pickle=False))
        elif ext == "safetensors":
            from safetensors.torch import load_file

            value = load_file(str(p))
        else:
            value = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CodesError(f"{path}: not a readable .{ext} codes file ({one_line(str(e)) or type(e).__name__})") from None
    if isinstance(value, dict):
        if "audio_codes" in value:
            value = value["audio_codes"]
        elif len(value) == 1:
            value = next(iter(value.values()))
        else:
            raise CodesError(f"{path}: holds {sorted(value)}; expected one array named 'audio_codes'")
    if not isinstance(value, torch.Tensor):
        raise CodesError(f"{path}: holds a {type(value).__name__}, not an array of codes")
    if value.dim() == 3 and value.shape[0] == 1:
        value = value[0]
    if value.dim() != 2:
        raise CodesError(f"{path}: codes must be [frames, codebooks], got shape {list(value.shape)}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise CodesError(f"{path}: codes must be integers, got {str(value.dtype).split('.')[-1]}")
    return value.long()


def cmd_encode(args) -> None:
    from ..audio import SAMPLE_RATE, load_audio
    from ..url_fetch import is_url

    out = _output(args.output, CODES_EXTENSIONS, "codes")
    if is_url(args.audio):
        wav = load_audio(args.audio.strip())
    elif not os.path.isfile(os.path.expanduser(args.audio)):
        raise UsageError(f"{args.audio}: audio file not found")
    else:
        wav = load_audio(os.path.expanduser(args.audio))
    tok = _load_tokenizer(args, with_encoder=True)
    with Status(not args.quiet) as status:
        status.update("encoding ...", force=True)
        codes = tok.encode((wav, SAMPLE_RATE)).audio_codes[0].cpu()
    _save_codes(out, codes)
    note(f"wrote {out.name}: {wav.shape[0] / SAMPLE_RATE:.2f} s of audio -> {codes.shape[0]} frames x "
         f"{codes.shape[1]} codebooks", args.quiet)  # fmt: skip


def cmd_decode(args) -> None:
    out = _audio_output(args.output)
    codes = read_codes(args.codes)
    tok = _load_tokenizer(args, with_encoder=False)
    with Status(not args.quiet) as status:
        status.update("decoding ...", force=True)
        wavs, sr = tok.decode(codes)
    _write_audio(out, wavs[0], sr)
    note(f"wrote {out.name}: {codes.shape[0]} frames -> {wavs[0].shape[0] / sr:.2f} s of audio", args.quiet)
