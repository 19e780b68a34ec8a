"""The errors of the evaluation package: bad input, and an optional package that is not installed."""

from __future__ import annotations

from ..errors import InputError


class EvalError(InputError):
    """An evaluation input that cannot be used (bad test list, unsupported language, unreadable audio)."""


class MissingPackage(EvalError):
    """A metric's back-end is not installed; the message names what to `pip install`."""


def require(module: str, install: str, what: str):
    """Import `module`, or raise MissingPackage naming the pip package for `what`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(
            f"{what} needs `{install}` (pip install {install}, or pip install 'q3tts[eval]')"
        ) from None
