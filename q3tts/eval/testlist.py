"""Test lists for `q3tts eval`: JSONL, or the Seed-TTS-eval list format.

JSONL, one object a line: `text` (required), `language`, `id`, and the voice: `speaker` (CustomVoice),
`instruct` (VoiceDesign, or style for CustomVoice), or `ref_audio` + `ref_text` (Base clones).
Seed-TTS-eval (any other extension): `id|ref_text|ref_audio|text` a line. Relative audio paths are
relative to the list's folder."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import EvalError

FIELDS = ("id", "text", "language", "speaker", "instruct", "ref_audio", "ref_text")


@dataclass(frozen=True)
class TestItem:
    id: str
    text: str
    language: str = "english"
    speaker: Optional[str] = None
    instruct: Optional[str] = None
    ref_audio: Optional[str] = None  # a path, resolved against the list's folder
    ref_text: Optional[str] = None


def _item(fields: dict, where: str, folder: Path, index: int, default_language: str) -> TestItem:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise EvalError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise EvalError(f"{where}: '{name}' must be a string")
    text = (fields.get("text") or "").strip()
    if not text:
        raise EvalError(f"{where}: 'text' is missing or empty")
    item_id = fields.get("id") or f"item{index:04d}"
    if not re.fullmatch(r"[\w.\-]+", item_id):
        raise EvalError(f"{where}: id {item_id!r} may hold only letters, digits, '.', '-' and '_'")
    ref_audio = fields.get("ref_audio")
    if ref_audio:
        path = Path(ref_audio).expanduser()
        ref_audio = str(path if path.is_absolute() else folder / path)
    return TestItem(item_id, text, fields.get("language") or default_language, fields.get("speaker"),
                    fields.get("instruct"), ref_audio, fields.get("ref_text"))  # fmt: skip


def load_test_list(path: str | Path, default_language: str = "english") -> list[TestItem]:
    """The items of a JSONL or Seed-TTS-eval list; EvalError (with the line) for anything unusable."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise EvalError(f"{path}: not UTF-8 text") from None
    items: list[TestItem] = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{n}"
        if path.suffix.lower() in (".jsonl", ".json"):
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(fields, dict):
                raise EvalError(f"{where}: expected a JSON object")
        else:
            parts = line.split("|")
            if len(parts) < 4:
                raise EvalError(f"{where}: expected 'id|ref_text|ref_audio|text' (Seed-TTS-eval format)")
            fields = dict(id=parts[0], ref_text=parts[1], ref_audio=parts[2], text=parts[3])
        items.append(_item(fields, where, path.parent, len(items), default_language))
    if not items:
        raise EvalError(f"{path}: the test list is empty")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise EvalError(f"{path}: repeated id {next(i for i in ids if ids.count(i) > 1)!r}")
    return items
