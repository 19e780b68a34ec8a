"""`q3tts voices save|list|delete`: the saved voice library (a folder of voice files, see q3tts/voices.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..console import Status, note, size
from ..voices import VOICE_SUFFIX, check_voice_name, default_voices_dir, list_voice_files, read_voice_header, voice_path
from .common import UsageError, _check_reference, _load_tts, _read_reference
from .output import _check_writable


def voices_dir(args=None) -> Path:
    return default_voices_dir(getattr(args, "voices_dir", None) if args is not None else None)


def _voice_file(args, spec: str) -> Path:
    """`--voice`: a library name, or the path of a .safetensors voice file."""
    if "/" in spec or os.sep in spec or spec.endswith(VOICE_SUFFIX):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UsageError(f"{spec}: voice file not found")
        return path
    path = voice_path(voices_dir(args), spec)
    if not path.is_file():
        raise UsageError(f"no voice named '{spec}' in {voices_dir(args)} (see 'q3tts voices list')")
    return path


def voice_summary(path: Path) -> dict:
    """Mode, reference length and model width of a voice file, from its header only."""
    header = read_voice_header(path)
    info: dict = {"name": path.name[: -len(VOICE_SUFFIX)], "path": str(path), "size": path.stat().st_size,
                  "mode": "invalid", "ref_seconds": None, "hidden_size": None, "ref_text": None}  # fmt: skip
    if header is not None:
        info.update(mode="x-vector" if header.mode == "x_vector" else "in-context", ref_seconds=header.duration,
                    hidden_size=header.hidden_size, ref_text=header.ref_text)  # fmt: skip
    return info


def cmd_voices_save(args) -> None:
    name = check_voice_name(args.name)
    folder = voices_dir(args)
    path = voice_path(folder, name)
    if path.exists() and not args.force:
        raise UsageError(f"voice '{name}' already exists in {folder}; pass --force to replace it")
    _check_reference(args)
    ref = _read_reference(args.ref_audio)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    _check_writable(path)
    model = _load_tts(args, "voices save", "base")
    with Status(not args.quiet) as status:
        status.update("analysing the reference ...", force=True)
        item = model.create_voice_clone_prompt(ref, args.ref_text, args.x_vector_only)[0]
    item.save(path)
    mode = "x-vector only" if args.x_vector_only else "in-context"
    note(f"saved voice '{name}' ({mode}, {ref[0].shape[0] / ref[1]:.1f} s reference) to {path}", args.quiet)


def cmd_voices_list(args) -> None:
    folder = voices_dir(args)
    voices = [voice_summary(p) for p in list_voice_files(folder)]
    if args.json:
        print(json.dumps(voices, indent=2))
        return
    if not voices:
        note(f"no voices in {folder}", args.quiet)
        return
    width = max(4, *(len(v["name"]) for v in voices))
    print(f"{'NAME':<{width}}  {'MODE':<10}  {'REF':>7}  {'HIDDEN':>6}  {'SIZE':>8}")
    for v in voices:
        ref = f"{v['ref_seconds']:.1f} s" if v["ref_seconds"] is not None else "-"
        hidden = str(v["hidden_size"]) if v["hidden_size"] else "-"
        print(f"{v['name']:<{width}}  {v['mode']:<10}  {ref:>7}  {hidden:>6}  {size(v['size']):>8}")
    note(f"{len(voices)} voice(s) in {folder}", args.quiet)


def cmd_voices_delete(args) -> None:
    name = check_voice_name(args.name)
    path = voice_path(voices_dir(args), name)
    if not path.is_file():
        raise UsageError(f"no voice named '{name}' in {voices_dir(args)}")
    path.unlink()
    note(f"deleted voice '{name}'", args.quiet)
