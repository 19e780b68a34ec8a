"""Where training items come from: a JSONL manifest, or a Hugging Face `datasets` dataset.

Manifest lines (the official fine-tuning format, plus optional keys):

    {"audio": "clips/0001.wav", "text": "Hello there.", "speaker": "alice", "language": "english",
     "ref_audio": "clips/ref.wav"}

Relative paths are looked up next to the manifest first, then in the working directory.
Every item gets a stable id (a hash of what defines it), used for resuming and for the
train/validation split, so re-runs and re-orderings give the same ids and the same split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from . import require
from .checks import Rejected

Audio = Union[Path, bytes, tuple]  # a file, encoded bytes, or (samples, rate)


@dataclass
class Item:
    id: str
    source: str  # where it came from, for reports: "data.jsonl:12" or "dataset[12]"
    audio: Optional[Audio]
    text: object
    speaker: Optional[str] = None
    language: Optional[str] = None
    ref_audio: Optional[Audio] = None
    problem: Optional[Rejected] = None  # set when the line itself is unusable


def stable_id(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()[:16]


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    near = base / path
    return near if near.exists() or not path.exists() else path


def manifest_items(path: Path) -> Iterator[Item]:
    base = path.parent
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield Item(
                    stable_id(where, line), where, None, None, problem=Rejected("bad_line", f"invalid JSON ({e.msg})")
                )
                continue
            if not isinstance(row, dict) or not isinstance(row.get("audio"), str) or not row["audio"].strip():
                problem = Rejected("bad_line", "no 'audio' path" if isinstance(row, dict) else "not a JSON object")
                yield Item(stable_id(where, line), where, None, None, problem=problem)
                continue
            ref = row.get("ref_audio")
            if isinstance(ref, list):  # the official format allows a list; its first entry is used
                ref = ref[0] if ref else None
            key = [row["audio"], row.get("text"), row.get("speaker"), row.get("language"), ref]
            yield Item(stable_id(*key), where, _resolve(row["audio"], base), row.get("text"), row.get("speaker"),
                       row.get("language"), _resolve(ref, base) if isinstance(ref, str) and ref else None)  # fmt: skip


def _hf_audio(value) -> Optional[Audio]:
    """A `datasets` audio cell (decode=False: {"bytes", "path"}; decoded: {"array", "sampling_rate"};
    or a plain path) -> what checks.read_clip takes."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("array") is not None:
            return (value["array"], int(value["sampling_rate"]))
        if value.get("path"):
            return Path(value["path"])
        return None
    if isinstance(value, str):
        return Path(value)
    return None


def dataset_items(name: str, split: str = "train", config: Optional[str] = None,
                  columns: Optional[dict] = None) -> Iterator[Item]:  # fmt: skip
    """Rows of a local `save_to_disk` folder or a hub dataset (streamed, so any size works)."""
    datasets = require("datasets", "--dataset")
    cols = {"audio": "audio", "text": "text", "speaker": "speaker", "language": "language", "ref_audio": "ref_audio"}
    cols.update(columns or {})
    if Path(name).is_dir():
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    features = getattr(ds, "features", None) or {}
    for key in ("audio", "ref_audio"):  # decode ourselves: no torchcodec needed, and one code path
        if isinstance(features.get(cols[key]), datasets.Audio):
            ds = ds.cast_column(cols[key], datasets.Audio(decode=False))
    for index, row in enumerate(ds):
        where = f"{name}[{index}]"
        text = row.get(cols["text"])
        speaker, language = row.get(cols["speaker"]), row.get(cols["language"])
        yield Item(stable_id(name, split, index, text, speaker, language), where, _hf_audio(row.get(cols["audio"])),
                   text, speaker, language, _hf_audio(row.get(cols["ref_audio"])))  # fmt: skip


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")
METADATA = "metadata.csv"


def folder_items(folder: Path) -> Iterator[Item]:
    """A folder of clips: `metadata.csv`, else every clip with a transcript of the same name
    (`clip.wav` + `clip.txt`, subfolders included; a subfolder's name is not the speaker).

    metadata.csv is either the Hugging Face audiofolder layout (a header naming `file_name` and
    `text` or `transcription`, optional `speaker`, `language`) or the LJSpeech one (no header,
    `name|text[|normalized text]`, clips in wavs/name.wav or name.wav)."""
    folder = Path(folder)
    if (folder / METADATA).is_file():
        yield from _metadata_items(folder, folder / METADATA)
        return
    clips = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    for clip in clips:
        where = str(clip.relative_to(folder))
        txt = clip.with_suffix(".txt")
        if not txt.is_file():
            yield Item(stable_id(where), where, clip, None, problem=Rejected("bad_line", f"no transcript {txt.name}"))
            continue
        text = txt.read_text(encoding="utf-8").strip()
        yield Item(stable_id(where, text), where, clip, text)


def _metadata_items(folder: Path, path: Path) -> Iterator[Item]:
    import csv

    lines = path.read_text(encoding="utf-8-sig").splitlines()
    first = lines[0].lower() if lines else ""
    if "file_name" in first and ("text" in first or "transcription" in first):
        for n, row in enumerate(csv.DictReader(lines), 2):
            where = f"{METADATA}:{n}"
            name = (row.get("file_name") or "").strip()
            text = row.get("text", row.get("transcription"))
            speaker, language = row.get("speaker") or None, row.get("language") or None
            yield Item(stable_id(name, text, speaker, language), where, folder / name if name else None, text,
                       speaker, language)  # fmt: skip
        return
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{METADATA}:{n}"
        name, _, rest = line.partition("|")
        text = rest.split("|")[-1] if rest else None  # LJSpeech: the last column is the normalised text
        found = [p for p in (folder / "wavs" / name, folder / name) for p in (p, p.with_name(p.name + ".wav"))
                 if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()]  # fmt: skip
        yield Item(stable_id(name, text), where, found[0] if found else folder / "wavs" / f"{name}.wav", text)
