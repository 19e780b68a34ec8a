"""The error base class of every mistake q3tts reports to its caller.

Front doors map these, and only these, to a one-line message: the CLI prints `q3tts: error: ...`
and exits non-zero, the server answers 4xx with a JSON body. Anything else is a bug and keeps its
traceback."""

from __future__ import annotations


class Q3TTSError(Exception):
    """A problem with the caller's input, files or settings, explained in one line."""


class InputError(Q3TTSError, ValueError):
    """Invalid input to a synthesis call (unknown speaker, empty text, unusable reference, ...)."""
