"""Shared by the commands: usage errors, the text to speak, loading the model on a checked device."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..console import Status, note, one_line, seconds
from ..errors import Q3TTSError

FRAME_SAMPLES = 1920  # samples per 12.5 Hz codec frame at 24 kHz


AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg", "opus")


CODES_EXTENSIONS = ("npy", "safetensors", "pt")


class UsageError(Q3TTSError):
    pass


def _read_text(args) -> str:
    if args.text is not None and args.text_file is not None:
        raise UsageError("give the text as an argument or with --text-file, not both")
    if args.text_file is not None:
        try:
            text = sys.stdin.read() if args.text_file == "-" else Path(args.text_file).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{args.text_file}: not UTF-8 text") from None
    elif args.text == "-":
        text = sys.stdin.read()
    elif args.text is not None:
        text = args.text
    else:
        raise UsageError("no text: pass TEXT, '-' to read standard input, or --text-file FILE")
    text = text.strip()
    if not text:
        raise UsageError("text is empty")
    return text


def _load_tts(args, command: str, kind: str):
    """Check the checkpoint's kind from its config (cheap), then load it."""
    from ..checkpoint import require_files, resolve
    from ..config import ModelConfig

    folder = resolve(args.model)
    require_files(folder, ("config.json",))
    found = ModelConfig.from_file(folder / "config.json").tts_model_type
    if found != kind:
        use = {"custom_voice": "speak", "voice_design": "design", "base": "clone"}.get(found, "another command")
        raise UsageError(f"'{command}' needs a {kind} checkpoint, but {args.model} is {found} (use '{use}')")
    _check_device(args)
    _set_threads(args)
    from ..api import Qwen3TTS

    with Status(not args.quiet) as status:
        status.update(f"loading {args.model} ...", force=True)
        t0 = time.perf_counter()
        model = Qwen3TTS.from_pretrained(folder, device=args.device, dtype=args.dtype,
                                         quantize=getattr(args, "quantize", None))  # fmt: skip
    note(f"loaded {args.model} ({model.kind}, {model.device.type}, {str(model.dtype).split('.')[-1]}) "
         f"in {seconds(time.perf_counter() - t0)}", args.quiet)  # fmt: skip
    return model


def _check_device(args) -> None:
    """Refuse a device this machine lacks with one line, before torch raises deep inside loading."""
    import torch

    from ..api import resolve_device

    try:
        device = resolve_device(args.device)
    except RuntimeError as e:
        raise UsageError(f"bad --device '{args.device}': {one_line(str(e))}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {args.device}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UsageError(f"--device {args.device}: unsupported device type (use cpu, cuda, mps or xpu)")


def _set_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _generation_kwargs(args) -> dict:
    kw: dict = {}
    if args.greedy:
        kw.update(do_sample=False, subtalker_dosample=False)
    for name in ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed", "max_piece_tokens"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    return kw


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one-line form of every other error."""

    def error(self, message: str):
        self.exit(2, f"q3tts: error: {message} (see '{self.prog} --help')\n")


def _check_reference(args) -> None:
    if args.x_vector_only and args.ref_text:
        raise UsageError("--ref-text and --x-vector-only exclude each other")
    if not args.x_vector_only and not (args.ref_text and args.ref_text.strip()):
        raise UsageError("--ref-audio needs --ref-text (its transcript) for in-context cloning, or --x-vector-only")


def _read_reference(path: str):
    """Read and check the reference clip (a file or an http(s) URL) before the model is loaded;
    -> (samples, 24000)."""
    from ..audio import SAMPLE_RATE, load_audio
    from ..url_fetch import is_url

    if is_url(path):
        return load_audio(path.strip()), SAMPLE_RATE
    if not os.path.isfile(os.path.expanduser(path)):
        raise UsageError(f"{path}: reference audio file not found")
    return load_audio(os.path.expanduser(path)), SAMPLE_RATE
