"""`q3tts speak`, `design` and `clone`."""

from __future__ import annotations

from .common import UsageError, _check_reference, _load_tts, _read_reference, _read_text
from .output import _audio_output, _render
from .voices import _voice_file


def cmd_speak(args) -> None:
    text, out = _read_text(args), _audio_output(args.output)
    model = _load_tts(args, "speak", "custom_voice")
    _render(args, model, out, text=text, speaker=args.speaker, instruct=args.instruct, language=args.language)


def cmd_design(args) -> None:
    text, out = _read_text(args), _audio_output(args.output)
    if not args.instruct.strip():
        raise UsageError("--instruct is empty: describe the voice")
    model = _load_tts(args, "design", "voice_design")
    _render(args, model, out, text=text, instruct=args.instruct, language=args.language)


def cmd_clone(args) -> None:
    text, out = _read_text(args), _audio_output(args.output)
    call: dict = {"text": text, "language": args.language}
    if args.voice is not None:
        if args.ref_text or args.x_vector_only:
            raise UsageError("--ref-text/--x-vector-only go with --ref-audio; a saved --voice has its own")
        from ..api import VoiceClonePromptItem

        call["voice_clone_prompt"] = VoiceClonePromptItem.load(_voice_file(args, args.voice))
    else:
        _check_reference(args)
        call.update(ref_audio=_read_reference(args.ref_audio), ref_text=args.ref_text,
                    x_vector_only_mode=args.x_vector_only)  # fmt: skip
    model = _load_tts(args, "clone", "base")
    _render(args, model, out, **call)
