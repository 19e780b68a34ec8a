"""The argument parser of `q3tts` and its subcommands."""

from __future__ import annotations

import argparse

from .checkpoint import cmd_info, cmd_make_checkpoint
from .codes import cmd_decode, cmd_encode
from .common import _Parser
from .doctor import cmd_doctor
from .evaluate import add_eval_parser
from .launchers import cmd_bench, cmd_dataset, cmd_demo, cmd_serve, cmd_train
from .synthesis import cmd_clone, cmd_design, cmd_speak
from .voices import cmd_voices_delete, cmd_voices_list, cmd_voices_save


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _common(quiet_only: bool = False) -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    p.add_argument("-q", "--quiet", action="store_true", help="no informational messages or progress")
    if quiet_only:
        return p
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (torch.set_num_threads)")
    return p


def _model_args(p: argparse.ArgumentParser, what: str = "checkpoint folder or Hugging Face repo id") -> None:
    p.add_argument("-m", "--model", required=True, help=what)


def _synthesis_parent() -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    p.add_argument("text", nargs="?", help="text to speak; '-' reads standard input")
    p.add_argument("--text-file", metavar="FILE", help="read the text from FILE ('-': standard input)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output audio: .wav, .flac, .mp3, .ogg or .opus ('-': WAV on standard output)")  # fmt: skip
    p.add_argument("--language", help="language of the text: a name or code (english, en, zh-CN, pt-BR; default: auto)")
    _model_args(p)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="weights dtype (auto: bfloat16 on GPU, float32 on CPU)")  # fmt: skip
    p.add_argument("--quantize", default="none",
                   help="CPU weights for the talker and code predictor: int8 (no compiler needed), q8, int4 "
                        "(fastest), or per network 'talker=int4,predictor=q8' (see README, CPU modes)")  # fmt: skip
    g = p.add_argument_group("generation")
    g.add_argument("--seed", type=int, help="seed the sampler, for repeatable output")
    g.add_argument("--greedy", action="store_true", help="no sampling: argmax for every codebook")
    g.add_argument("--temperature", type=float, help="talker (codebook 0) sampling temperature")
    g.add_argument("--top-k", type=int, help="talker top-k (0: off)")
    g.add_argument("--top-p", type=float, help="talker top-p (1: off)")
    g.add_argument("--repetition-penalty", type=float, help="talker repetition penalty (1: off)")
    g.add_argument("--max-new-tokens", type=_positive_int, help="cap on generated frames + 1")
    g.add_argument(
        "--max-piece-tokens",
        type=_count,
        metavar="N",
        help="generate long texts in sentence-aware pieces of at most N text tokens (0: never split)",
    )
    g.add_argument("--stream", action="store_true", help="write the output while it is generated")
    g.add_argument("--chunk-frames", type=_positive_int, default=8, help="frames per decoded chunk (default 8)")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="q3tts", description="Qwen3-TTS: synthesis, streaming, serving, fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common, quiet, synth = _common(), _common(quiet_only=True), _synthesis_parent()

    speak = sub.add_parser("speak", parents=[synth, common], help="speak with a built-in speaker (CustomVoice)")
    speak.add_argument("--speaker", required=True, help="a built-in speaker (see 'q3tts info')")
    speak.add_argument("--instruct", help="style instruction (1.7B CustomVoice only)")
    speak.set_defaults(func=cmd_speak)

    design = sub.add_parser("design", parents=[synth, common], help="speak in a described voice (VoiceDesign)")
    design.add_argument("--instruct", required=True, help="description of the voice")
    design.set_defaults(func=cmd_design)

    clone = sub.add_parser("clone", parents=[synth, common], help="speak in a cloned voice (Base)")
    src = clone.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--ref-audio", metavar="FILE_OR_URL", help="reference clip of the voice (1-60 s): a file or http(s) URL"
    )
    src.add_argument("--voice", metavar="NAME_OR_FILE", help="a saved voice: library name or .safetensors file")
    _reference_args(clone, required=False)
    clone.add_argument("--voices-dir", metavar="DIR", help="voice library folder")
    clone.set_defaults(func=cmd_clone)

    voices = sub.add_parser("voices", help="the saved voice library (save, list, delete)")
    vsub = voices.add_subparsers(dest="voices_command", required=True, metavar="ACTION")
    library = _Parser(add_help=False)
    library.add_argument("--voices-dir", metavar="DIR",
                         help="library folder (default: $Q3TTS_VOICES_DIR or ~/.local/share/q3tts/voices)")  # fmt: skip
    save = vsub.add_parser("save", parents=[library, common], help="analyse a reference clip and save it as NAME")
    save.add_argument("name")
    _model_args(save, "Base checkpoint folder or Hugging Face repo id")
    save.add_argument("--ref-audio", metavar="FILE_OR_URL", required=True,
                      help="reference clip of the voice (1-60 s): a file or http(s) URL")  # fmt: skip
    _reference_args(save, required=False)
    save.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    save.add_argument("--force", action="store_true", help="replace an existing voice of that name")
    save.set_defaults(func=cmd_voices_save)
    lst = vsub.add_parser("list", parents=[library, quiet], help="list saved voices")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_voices_list)
    delete = vsub.add_parser("delete", parents=[library, quiet], help="delete a saved voice")
    delete.add_argument("name")
    delete.set_defaults(func=cmd_voices_delete)

    enc = sub.add_parser("encode", parents=[common], help="audio -> speech codes [frames, 16]")
    enc.add_argument("audio", help="an audio file or http(s) URL")
    _model_args(enc, "model folder, speech tokenizer folder, or Hugging Face repo id")
    enc.add_argument("-o", "--output", required=True, metavar="CODES", help="codes file: .npy, .safetensors or .pt")
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", parents=[common], help="speech codes -> audio")
    dec.add_argument("codes", help="codes file (.npy, .safetensors, .pt) holding [frames, 16] integers")
    _model_args(dec, "model folder, speech tokenizer folder, or Hugging Face repo id")
    dec.add_argument("-o", "--output", required=True, metavar="OUT",
                     help="output audio (.wav, .flac, .mp3, .ogg, .opus, '-')")  # fmt: skip
    dec.set_defaults(func=cmd_decode)

    bench = sub.add_parser("bench", add_help=False, help="benchmark synthesis (see 'q3tts bench --help')")
    bench.set_defaults(func=cmd_bench, takes_extra=True)

    serve = sub.add_parser("serve", add_help=False, help="OpenAI-compatible speech server (see 'q3tts serve --help')")
    serve.set_defaults(func=cmd_serve, takes_extra=True)

    train = sub.add_parser("train", add_help=False, help="fine-tune a checkpoint (see 'q3tts train --help')")
    train.set_defaults(func=cmd_train, takes_extra=True)
    dataset = sub.add_parser("dataset", add_help=False, help="prepare fine-tuning data (see 'q3tts dataset --help')")
    dataset.set_defaults(func=cmd_dataset, takes_extra=True)

    mk = sub.add_parser("make-checkpoint", help="write a random-weight checkpoint in the official layout")
    mk.add_argument("out", help="output folder")
    mk.add_argument("--preset", choices=("tiny", "0.6b", "1.7b"), default="tiny")
    mk.add_argument("--kind", choices=("base", "custom_voice", "voice_design"), default="custom_voice")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                    help="storage dtype of model.safetensors (the official files are bfloat16)")  # fmt: skip
    mk.set_defaults(func=cmd_make_checkpoint)

    info = sub.add_parser("info", help="describe a checkpoint: kind, size, speakers, languages")
    info.add_argument("model", help="checkpoint folder or Hugging Face repo id")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    demo = sub.add_parser("demo", add_help=False,
                          help="the demo job; with MODEL, the web UI alone (see 'q3tts demo MODEL --help')")  # fmt: skip
    demo.set_defaults(func=cmd_demo, takes_extra=True)
    doctor = sub.add_parser("doctor", help="check this machine: Python, torch, CUDA/MPS, bf16, disk, RAM, extras")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=cmd_doctor)
    add_eval_parser(sub, common)  # q3tts eval (issue 12)
    return p


def _reference_args(p: argparse.ArgumentParser, required: bool) -> None:
    how = p.add_mutually_exclusive_group(required=required)
    how.add_argument("--ref-text", help="transcript of the reference clip (in-context cloning, best quality)")
    how.add_argument("--x-vector-only", action="store_true",
                     help="clone from the speaker embedding alone (no transcript needed)")  # fmt: skip
