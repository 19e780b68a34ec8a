"""The `q3tts` command line. Every expected failure prints one line and exits non-zero.

    q3tts speak "Hello!" --model M --speaker vivian -o hello.wav        # CustomVoice
    q3tts design "Hello!" --model M --instruct "a calm, low voice" -o hello.flac
    q3tts clone "Hello!" --model M --ref-audio me.wav --ref-text "..." -o hello.mp3
    q3tts voices save me --model M --ref-audio me.wav --ref-text "..."; q3tts clone ... --voice me
    q3tts encode clip.wav --model M -o codes.npy; q3tts decode codes.npy --model M -o clip.wav

Torch and the model code are imported inside the commands, so `q3tts --help` stays fast.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

from ..console import clear_status, one_line, show_warning
from ..errors import Q3TTSError
from .parser import build_parser

__all__ = ["main"]


def _error_text(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return one_line(str(e)) or type(e).__name__


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "takes_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help, or a usage error already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    args.extra = extra
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            code = args.func(args)
    except KeyboardInterrupt:
        clear_status()
        return 130
    except BrokenPipeError:  # the reader of our stdout went away: the output is incomplete
        try:  # and the interpreter's last flush of stdout must not print a traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        clear_status()
        print("q3tts: error: standard output was closed before all the audio was read", file=sys.stderr)
        return 1
    except SystemExit as e:  # bench's own parser
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (Q3TTSError, OSError) as e:  # the user's input, files or settings: one line, no traceback
        clear_status()
        print(f"q3tts: error: {_error_text(e)}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0
