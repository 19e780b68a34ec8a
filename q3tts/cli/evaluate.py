"""`q3tts eval`: score models, checkpoints or existing audio on a test list (see q3tts/eval)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import Status, note
from .common import UsageError, _check_device, _set_threads

SPEAKER_BACKENDS = ("resemblyzer", "checkpoint", "none")


def _at_least_2(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (one frame), got {value}")
    return value


def add_eval_parser(sub, common) -> None:
    p = sub.add_parser("eval", parents=[common], help="score models or audio on a test list: WER, similarity, ...")
    p.add_argument(
        "test_list", help="JSONL (text, language, speaker/instruct/ref_audio+ref_text) or Seed-TTS-eval list"
    )
    p.add_argument("-m", "--model", action="append", default=[], metavar="MODEL",
                   help="checkpoint folder or repo id to generate with (repeat to compare models)")  # fmt: skip
    p.add_argument("--audio-dir", action="append", default=[], metavar="DIR",
                   help="score existing audio instead: DIR/<id>.wav for each item (repeatable)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the JSON, CSV, Markdown and PNG")
    p.add_argument("--asr", default="pocketsphinx", choices=("pocketsphinx", "faster-whisper", "whisper"),
                   help="ASR back-end for WER/CER (pocketsphinx: offline, English only)")  # fmt: skip
    p.add_argument("--speaker-backend", default="resemblyzer", choices=SPEAKER_BACKENDS,
                   help="speaker embeddings for similarity and drift")  # fmt: skip
    p.add_argument("--speaker-model", metavar="BASE",
                   help="Base checkpoint whose speaker encoder --speaker-backend checkpoint uses")  # fmt: skip
    p.add_argument("--codec", metavar="MODEL", help="also score MODEL's speech tokenizer round trip on the audio")
    p.add_argument("--language", default="english", help="language of items that give none (default english)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for generation (default 0)")
    p.add_argument("--max-new-tokens", type=_at_least_2, metavar="N", help="cap on generated frames + 1 per item")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    p.add_argument("--save-audio", action="store_true", help="keep the generated audio in OUTPUT/audio/<model>/")
    p.set_defaults(func=cmd_eval)


def _load(args, path: str):
    from ..api import Qwen3TTS
    from ..checkpoint import resolve

    return Qwen3TTS.from_pretrained(resolve(path), device=args.device, dtype=args.dtype)


def _codec_rows(args, items, status) -> list[dict]:
    from ..audio import SAMPLE_RATE, load_audio
    from ..eval.codec import round_trip
    from ..speech_tokenizer import Qwen3TTSTokenizer

    tokenizer = Qwen3TTSTokenizer.from_pretrained(args.codec, device=args.device)
    sources = [(i.id, Path(i.ref_audio)) for i in items if i.ref_audio]
    for folder in args.audio_dir:
        sources += [(i.id, Path(folder) / f"{i.id}.wav") for i in items if (Path(folder) / f"{i.id}.wav").is_file()]
    rows = []
    for item_id, path in sources:
        status.update(f"codec round trip: {item_id}")
        fidelity = round_trip(tokenizer, load_audio(str(path)), SAMPLE_RATE)
        rows.append({"model": f"codec:{Path(args.codec).name}", "id": item_id, **vars(fidelity)})
    return rows


def cmd_eval(args) -> None:
    if not args.model and not args.audio_dir and not args.codec:
        raise UsageError("nothing to evaluate: give --model MODEL, --audio-dir DIR or --codec MODEL")
    for folder in args.audio_dir:
        if not Path(folder).is_dir():
            raise UsageError(f"--audio-dir {folder}: not a folder")
    if args.speaker_backend == "checkpoint" and not args.speaker_model:
        raise UsageError("--speaker-backend checkpoint needs --speaker-model BASE (a Base checkpoint)")
    from ..eval.report import write_report
    from ..eval.runner import NATURALNESS_NOTE, Scorers, evaluate_audio_dir, evaluate_model
    from ..eval.testlist import load_test_list

    items = load_test_list(args.test_list, args.language)
    _check_device(args)
    _set_threads(args)
    out = Path(args.output)
    scorers = Scorers(args.asr, args.speaker_backend)
    if args.speaker_model:
        scorers.speaker_model = _load(args, args.speaker_model)
    options = {"seed": args.seed, "max_new_tokens": args.max_new_tokens}
    rows: list[dict] = []
    with Status(not args.quiet) as status:
        for path in args.model:
            status.update(f"loading {path} ...", force=True)
            model, label = _load(args, path), Path(path).name
            audio = out / "audio" / label if args.save_audio else None
            rows += evaluate_model(model, label, items, scorers, audio, status.update, **options)
        for folder in args.audio_dir:
            rows += evaluate_audio_dir(Path(folder), items, scorers, progress=status.update)
        if args.codec:
            rows += _codec_rows(args, items, status)
    paths = write_report(out, rows, [NATURALNESS_NOTE])
    note("wrote " + ", ".join(str(p) for p in paths.values()), args.quiet)
