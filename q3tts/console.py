"""A one-line status display for the command line, and the one-line messages printed beside it.

The status line is drawn on stderr only when stderr is a terminal (never into logs or pipes) and
redrawn at most every `interval` seconds. Messages (`note`, warnings) clear it first, so the two
never interleave on one line. No dependencies.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

_active: Optional["Status"] = None  # the status line currently on screen, if any


class Status:
    def __init__(self, enabled: bool = True, stream: Optional[TextIO] = None, interval: float = 0.1):
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and isatty is not None and isatty())
        self.interval = interval
        self._last = 0.0
        self._shown = False

    def update(self, text: str, force: bool = False) -> None:
        global _active
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        # \r to the start of the line, \033[K erases what an older, longer text left there.
        self.stream.write(f"\r{text}\033[K")
        self.stream.flush()
        self._shown = True
        _active = self

    def clear(self) -> None:
        global _active
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
        if _active is self:
            _active = None

    def __enter__(self) -> "Status":
        return self

    def __exit__(self, *exc) -> None:
        self.clear()


def clear_status() -> None:
    if _active is not None:
        _active.clear()


def note(text: str, quiet: bool = False) -> None:
    """An informational line on stderr (suppressed by --quiet)."""
    if quiet:
        return
    clear_status()
    print(text, file=sys.stderr, flush=True)


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 60 else f"{int(value // 60)} min {value % 60:04.1f} s"


def size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"  # pragma: no cover


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    clear_status()
    print(f"q3tts: warning: {one_line(str(message))}", file=sys.stderr, flush=True)
