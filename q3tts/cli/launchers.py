"""`q3tts bench`, `serve`, `train` and `dataset`: each imports its own module only when used, and parses its own arguments."""

from __future__ import annotations

import sys

from ..console import one_line
from .common import UsageError, _Parser


def cmd_bench(args) -> int:
    import importlib

    try:
        bench = importlib.import_module("q3tts.bench")
    except ModuleNotFoundError as e:
        if e.name == "q3tts.bench":
            raise UsageError("the bench command is not available: q3tts/bench.py is missing") from None
        raise UsageError(f"the bench command cannot start: {e}") from None
    except ImportError as e:
        raise UsageError(f"the bench command cannot start: {one_line(str(e))}") from None
    parser = _Parser(prog="q3tts bench", description="Measure synthesis speed and memory.")
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(args.extra))


def _train_entry(module: str, argv: list[str]) -> int:
    import importlib

    try:
        entry = importlib.import_module(f"q3tts.train.{module}").main
    except ImportError as e:
        raise UsageError(
            f"fine-tuning needs the `train` extra (pip install 'q3tts[train]'): {one_line(str(e))}"
        ) from None
    try:
        return entry(argv) or 0
    except SystemExit as e:  # the entry points exit with a one-line "q3tts: ..." message
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 1
        raise


def cmd_train(args) -> int:
    return _train_entry("__main__", args.extra)


def cmd_dataset(args) -> int:
    return _train_entry("dataset", args.extra)


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        from ..server.__main__ import build_parser as build_serve_parser
        from ..server.__main__ import serve
    except ImportError as e:
        raise UsageError(f"the serve command needs the server extra (pip install 'q3tts[server]'): {e}") from None
    parser = build_serve_parser(_Parser(prog="q3tts serve", description="OpenAI-compatible speech server."))
    return serve(parser.parse_args(args.extra))
