"""Prepare a fine-tuning dataset: check every clip, encode it to codec codes, write shards.

    python -m q3tts.train.dataset prepare --manifest data.jsonl --model Qwen/Qwen3-TTS-12Hz-0.6B-Base --out data/
    python -m q3tts.train.dataset prepare --dataset user/corpus --dataset-split train --model ... --out data/
    python -m q3tts.train.dataset prepare --clips recordings/ --model ... --out data/ [--max-samples 20]
    python -m q3tts.train.dataset info data/        (also: q3tts dataset prepare / info)

Output folder:
    shard-00000.safetensors   codes [sum T, 16] int16, offsets [n + 1], xvectors [n, H] float32
    index.jsonl               one line per kept item: id, shard, row, frames, duration, text,
                              speaker, language, source, split ("train" / "validation")
    report.json               the last run's summary: kept / dropped per reason, hours, each drop

Clips are resampled to 24 kHz and encoded in batches with the model's own codec encoder. The
speaker embedding of each item (of its `ref_audio` when given, else of the clip itself) is
stored too, so training can average a speaker's embeddings without touching audio again.
Bad items are skipped and reported, never fatal. Re-running the same command resumes: items
already in index.jsonl (same stable id) are not encoded again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from ..audio import SAMPLE_RATE
from ..console import Status, note
from .checks import REASONS, Limits, Rejected, check_language, check_text, read_clip
from .sources import Item, dataset_items, folder_items, manifest_items

INDEX = "index.jsonl"
REPORT = "report.json"


def split_of(item_id: str, val_fraction: float) -> str:
    """Deterministic: the same id always lands in the same split."""
    return "validation" if int(item_id[:8], 16) / 16**8 < val_fraction else "train"


class Encoders:
    """The codec encoder (audio -> codes) and, when the model has one, the speaker encoder."""

    def __init__(self, model: str, device: str = "cpu", speaker_model: Optional[str] = None):
        from ..checkpoint import load_weights, resolve
        from ..config import ModelConfig
        from ..model import load_speech_tokenizer
        from ..nn.speaker_encoder import SpeakerEncoder

        folder = resolve(model)
        self.device = torch.device(device)
        self.codec = load_speech_tokenizer(folder / "speech_tokenizer", self.device, torch.float32).encoder
        cfg = ModelConfig.from_file(folder / "config.json")
        self.languages = {k.lower() for k in cfg.talker.codec_language_id if "dialect" not in k}
        self.speaker = None
        sfolder = resolve(speaker_model) if speaker_model else folder
        scfg = ModelConfig.from_file(sfolder / "config.json")
        if scfg.has_speaker_encoder:
            with torch.device("meta"):
                enc = SpeakerEncoder(scfg.speaker_encoder)
            load_weights(enc, sfolder / "model.safetensors", prefix="speaker_encoder.", device=self.device,
                         dtype=torch.float32)  # fmt: skip
            self.speaker = enc.eval().requires_grad_(False)

    def codes(self, wavs: list[np.ndarray]) -> list[torch.Tensor]:
        return [c.cpu() for c in self.codec.encode_batch(wavs)]

    @torch.inference_mode()
    def xvector(self, wav: np.ndarray) -> torch.Tensor:
        from ..audio import mel_spectrogram

        mel = mel_spectrogram(torch.from_numpy(np.clip(wav, -1.0, 1.0))[None]).to(self.device)
        return self.speaker(mel)[0].float().cpu()


class ShardWriter:
    """Buffers encoded items; every `shard_size` items writes one shard (atomically) and then
    appends their index lines, so a crash loses at most the unwritten buffer."""

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        self.next_shard = len(list(out.glob("shard-*.safetensors")))
        self.rows: list[tuple[dict, torch.Tensor, Optional[torch.Tensor]]] = []

    def add(self, meta: dict, codes: torch.Tensor, xvector: Optional[torch.Tensor]) -> None:
        self.rows.append((meta, codes, xvector))
        if len(self.rows) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.rows:
            return
        name = f"shard-{self.next_shard:05d}.safetensors"
        codes = [c for _, c, _ in self.rows]
        offsets = torch.tensor([0] + [c.shape[0] for c in codes]).cumsum(0)
        tensors = {"codes": torch.cat(codes).to(torch.int16), "offsets": offsets}
        if all(x is not None for _, _, x in self.rows):
            tensors["xvectors"] = torch.stack([x for _, _, x in self.rows]).float()
        tmp = self.out / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.out / name)
        with open(self.out / INDEX, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(dict(meta, shard=name, row=row, frames=int(c.shape[0])), ensure_ascii=False) + "\n"
                          for row, (meta, c, _) in enumerate(self.rows))  # fmt: skip
            fh.flush()
            os.fsync(fh.fileno())
        self.next_shard += 1
        self.rows = []


def ref_key(ref) -> str:
    """Cache key of a reference clip: its path, or a hash of its bytes / samples."""
    import hashlib

    if isinstance(ref, Path):
        return str(ref)
    data = bytes(ref) if not isinstance(ref, tuple) else np.ascontiguousarray(ref[0]).tobytes() + str(ref[1]).encode()
    return hashlib.sha1(data).hexdigest()


def read_index(out: Path) -> list[dict]:
    path = out / INDEX
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash mid-write: its shard is re-done
            continue
    return [x for x in lines if (out / x.get("shard", "")).is_file()]


@dataclass
class Tally:
    seen: int = 0
    new: int = 0
    previous: int = 0
    dropped: list = field(default_factory=list)

    def drop(self, item: Item, why: Rejected) -> None:
        self.dropped.append({"source": item.source, "id": item.id, "reason": why.kind, "detail": why.detail})


@dataclass
class Prepare:
    out: Path
    encoders: Encoders
    val_fraction: float = 0.05
    shard_size: int = 500
    batch_size: int = 8
    limits: Limits = field(default_factory=Limits)
    default_ref: Optional[Path] = None  # speaker clip of the items without their own ref_audio
    max_items: int = 0  # > 0: stop once this many items are kept (debug runs)

    def run(self, items: Iterable[Item], quiet: bool = False) -> dict:
        start = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        done = {x["id"] for x in read_index(self.out)}
        writer, tally, seen_ids = ShardWriter(self.out, self.shard_size), Tally(), set()
        pending: list[tuple[dict, np.ndarray, Optional[torch.Tensor]]] = []
        refs: dict = {}
        with Status(enabled=not quiet) as status:
            for item in items:
                if self.max_items and tally.new + tally.previous + len(pending) >= self.max_items:
                    break
                tally.seen += 1
                status.update(f"prepare: {tally.seen} items, {tally.new + tally.previous} kept, "
                              f"{len(tally.dropped)} dropped")  # fmt: skip
                if item.id in seen_ids:
                    tally.drop(item, Rejected("duplicate", "same audio, text and speaker as an earlier item"))
                    continue
                seen_ids.add(item.id)
                if item.id in done:
                    tally.previous += 1
                    continue
                try:
                    pending.append(self.check(item, refs))
                except Rejected as why:
                    tally.drop(item, why)
                    continue
                if len(pending) >= self.batch_size:
                    tally.new += self.encode(pending, writer)
            tally.new += self.encode(pending, writer)
            writer.flush()
        return self.report(tally, time.monotonic() - start)

    def check(self, item: Item, refs: dict) -> tuple[dict, np.ndarray, Optional[torch.Tensor]]:
        if item.problem is not None:
            raise item.problem
        text = check_text(item.text)
        language = check_language(item.language, self.encoders.languages)
        if item.audio is None:
            raise Rejected("missing_file", "the item has no audio")
        wav = read_clip(item.audio, self.limits)
        xvector = None
        if self.encoders.speaker is not None:
            ref = item.ref_audio if item.ref_audio is not None else self.default_ref
            xvector = self.ref_xvector(ref, refs) if ref is not None else None
            if xvector is None:
                xvector = self.encoders.xvector(wav)
        meta = dict(id=item.id, text=text, speaker=item.speaker or None, language=language,
                    duration=round(wav.shape[0] / SAMPLE_RATE, 3), source=item.source,
                    split=split_of(item.id, self.val_fraction))  # fmt: skip
        return meta, wav, xvector

    def ref_xvector(self, ref, refs: dict) -> torch.Tensor:
        key = ref_key(ref)
        if key not in refs:
            try:
                refs[key] = self.encoders.xvector(read_clip(ref, Limits(0.5, 60.0)))
            except Rejected as why:
                refs[key] = Rejected("ref_audio", f"{why.kind}: {why.detail}")
        if isinstance(refs[key], Rejected):
            raise refs[key]
        return refs[key]

    def encode(self, pending: list, writer: ShardWriter) -> int:
        if not pending:
            return 0
        codes = self.encoders.codes([wav for _, wav, _ in pending])
        for (meta, _, xvector), c in zip(pending, codes):
            writer.add(meta, c, xvector)
        n = len(pending)
        pending.clear()
        return n

    def report(self, tally: Tally, seconds: float) -> dict:
        index = read_index(self.out)
        hours = Counter()
        for x in index:
            hours[x["split"]] += x["duration"] / 3600
        report = {
            "out": str(self.out),
            "items_seen": tally.seen,
            "kept": {
                "total": len(index),
                "new": tally.new,
                "previous": tally.previous,
                "train": sum(x["split"] == "train" for x in index),
                "validation": sum(x["split"] == "validation" for x in index),
            },  # fmt: skip
            "hours": {
                "total": round(sum(hours.values()), 4),
                "train": round(hours["train"], 4),
                "validation": round(hours["validation"], 4),
            },  # fmt: skip
            "dropped": {"total": len(tally.dropped), "by_reason": dict(Counter(d["reason"] for d in tally.dropped))},
            "dropped_items": tally.dropped,
            "speaker_embeddings": self.encoders.speaker is not None,
            "seconds": round(seconds, 2),
        }
        tmp = self.out / f".{REPORT}.tmp"
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.out / REPORT)
        return report


def dropped_lines(by_reason: dict, items: list, limit: int, report_file: Path) -> list[str]:
    """The dropped items for a summary: counts by reason, then the first `limit` items, then where the rest are."""
    lines = [f"  {n:6d}  {reason} ({REASONS.get(reason, reason)})"
             for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1])]  # fmt: skip
    lines += [f"  {item['source']}: {item['reason']}: {item['detail']}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... {len(items) - limit} more in {report_file}")
    return lines


def summary_lines(report: dict) -> list[str]:
    k, d = report["kept"], report["dropped"]
    lines = [
        (f"kept {k['total']} items ({k['new']} new, {k['previous']} already prepared), "
         f"{report['hours']['total']:.3f} h: train {k['train']}, validation {k['validation']}"),
        f"dropped {d['total']} items" + (":" if d["total"] else ""),
    ]  # fmt: skip
    lines += dropped_lines(d["by_reason"], report["dropped_items"], 50, Path(report["out"]) / REPORT)
    if not report["speaker_embeddings"]:
        lines.append("no speaker embeddings stored: the model has no speaker encoder (pass --speaker-model BASE)")
    return lines


# ------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m q3tts.train.dataset", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("prepare", help="check, encode and shard a dataset (resumable)")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="JSONL: audio, text, optional speaker, language, ref_audio")
    src.add_argument("--clips", type=Path,
                     help="a folder of clips: clip.wav + clip.txt pairs, or a metadata.csv")  # fmt: skip
    src.add_argument("--dataset", help="a Hugging Face dataset: a save_to_disk folder or a hub name (streamed)")
    q.add_argument("--dataset-split", default="train")
    q.add_argument("--dataset-config", default=None)
    q.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                   help="dataset column names, e.g. --column text=transcription")  # fmt: skip
    q.add_argument("--model", required=True, help="checkpoint whose codec encodes the audio (the one to fine-tune)")
    q.add_argument(
        "--speaker-model", default=None, help="a Base checkpoint for speaker embeddings, if --model has none"
    )
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--val-fraction", type=float, default=0.05)
    q.add_argument("--max-samples", type=int, default=0, metavar="N",
                   help="stop once N items are kept (small debug runs; 0: all)")  # fmt: skip
    q.add_argument("--ref-audio", type=Path, default=None,
                   help="speaker clip for the items without their own ref_audio")  # fmt: skip
    q.add_argument("--shard-size", type=int, default=500, help="items per shard")
    q.add_argument("--batch-size", type=int, default=8, help="clips encoded together")
    q.add_argument("--min-seconds", type=float, default=Limits.min_seconds)
    q.add_argument("--max-seconds", type=float, default=Limits.max_seconds)
    q.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    q.add_argument("--quiet", action="store_true")
    i = sub.add_parser("info", help="describe a prepared folder: items, hours, speakers, languages, lengths, drops")
    i.add_argument("folder", type=Path)
    i.add_argument("--json", action="store_true", help="the figures as JSON")
    return p


def prepare_from_args(args) -> dict:
    if args.manifest is not None and not args.manifest.is_file():
        raise SystemExit(f"q3tts: manifest not found: {args.manifest}")
    if args.clips is not None and not args.clips.is_dir():
        raise SystemExit(f"q3tts: clips folder not found: {args.clips}")
    if args.ref_audio is not None and not args.ref_audio.is_file():
        raise SystemExit(f"q3tts: --ref-audio not found: {args.ref_audio}")
    if not 0 <= args.val_fraction < 1 or args.shard_size < 1 or args.batch_size < 1 or args.max_samples < 0:
        raise SystemExit(
            "q3tts: need 0 <= --val-fraction < 1, --shard-size >= 1, --batch-size >= 1, --max-samples >= 0"
        )
    columns = dict(c.split("=", 1) for c in args.column if "=" in c)
    if args.manifest is not None:
        items = manifest_items(args.manifest)
    elif args.clips is not None:
        items = folder_items(args.clips)
    else:
        items = dataset_items(args.dataset, args.dataset_split, args.dataset_config, columns)
    job = Prepare(args.out, Encoders(args.model, args.device, args.speaker_model), args.val_fraction,
                  args.shard_size, args.batch_size, Limits(args.min_seconds, args.max_seconds), args.ref_audio,
                  args.max_samples)  # fmt: skip
    return job.run(items, quiet=args.quiet)


def describe(folder: Path) -> dict:
    """Figures of a prepared folder (index.jsonl and the last run's report.json)."""
    index = read_index(folder)
    if not index and not (folder / REPORT).is_file():
        raise SystemExit(f"q3tts: {folder} is not a prepared folder (no {INDEX}); run `q3tts dataset prepare`")
    report = json.loads((folder / REPORT).read_text(encoding="utf-8")) if (folder / REPORT).is_file() else {}
    seconds = [x["duration"] for x in index]
    edges = [0, 1, 2, 5, 10, 15, 20, 30]
    bins = Counter(next((f"{a}-{b} s" for a, b in zip(edges, edges[1:]) if s < b), f">={edges[-1]} s") for s in seconds)
    dropped = report.get("dropped", {"total": 0, "by_reason": {}})
    return {
        "folder": str(folder),
        "items": len(index),
        "splits": dict(Counter(x["split"] for x in index)),
        "hours": round(sum(seconds) / 3600, 4),
        "speakers": dict(Counter(x.get("speaker") or "(run's speaker_name)" for x in index)),
        "languages": dict(Counter(x.get("language", "auto") for x in index)),
        "seconds": {
            "min": min(seconds, default=0),
            "mean": round(sum(seconds) / max(1, len(seconds)), 3),
            "max": max(seconds, default=0),
        },  # fmt: skip
        "length_histogram": {f"{a}-{b} s": bins.get(f"{a}-{b} s", 0) for a, b in zip(edges, edges[1:])}
        | ({f">={edges[-1]} s": bins[f">={edges[-1]} s"]} if bins.get(f">={edges[-1]} s") else {}),
        "dropped": {
            "total": dropped["total"],
            "by_reason": dropped["by_reason"],
            "items": report.get("dropped_items", []),
        },  # fmt: skip
    }


def info_lines(info: dict) -> list[str]:
    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"

    s = info["seconds"]
    lines = [
        f"{info['folder']}: {info['items']} items ({counts(info['splits'])}), {info['hours']:.3f} h",
        f"speakers: {counts(info['speakers'])}",
        f"languages: {counts(info['languages'])}",
        f"length: min {s['min']:.2f} s, mean {s['mean']:.2f} s, max {s['max']:.2f} s",
    ]
    top = max(info["length_histogram"].values(), default=0) or 1
    for label, n in info["length_histogram"].items():
        lines.append(f"  {label:>8}  {n:6d}  {'#' * round(30 * n / top)}")
    d = info["dropped"]
    lines.append(f"dropped: {d['total']}" + (":" if d["total"] else ""))
    lines += dropped_lines(d["by_reason"], d["items"], 20, Path(info["folder"]) / REPORT)
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from ..checkpoint import CheckpointError
    from ..config import ConfigError

    if args.command == "info":
        info = describe(args.folder)
        print(json.dumps(info, indent=2, ensure_ascii=False) if args.json else "\n".join(info_lines(info)))
        return 0
    try:
        report = prepare_from_args(args)
    except (CheckpointError, ConfigError, OSError) as e:  # the model or the output folder: one line
        raise SystemExit(f"q3tts: {e}") from None
    for line in summary_lines(report):
        note(line, args.quiet)
    note(f"report: {args.out / REPORT}", args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
