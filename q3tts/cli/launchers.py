"""`q3tts bench`, `serve`, `train`, `dataset` and `demo`: each imports its own module only when used, and parses its own arguments."""

from __future__ import annotations

import sys

from ..console import one_line
from .common import UsageError, _Parser

TRAIN_EXTRA = "fine-tuning needs the `train` extra (pip install 'q3tts[train]')"


def cmd_bench(args) -> int:
    try:
        from .. import bench
    except ModuleNotFoundError as e:
        if e.name == "q3tts.bench":
            raise UsageError("the bench command is not available: q3tts/bench.py is missing") from None
        raise UsageError(f"the bench command cannot start: {e}") from None
    except ImportError as e:
        raise UsageError(f"the bench command cannot start: {one_line(str(e))}") from None
    parser = _Parser(prog="q3tts bench", description="Measure synthesis speed and memory.")
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(args.extra))


def _run_train_entry(entry, argv: list[str]) -> int:
    try:
        return entry(argv) or 0
    except SystemExit as e:  # the entry points exit with a one-line "q3tts: ..." message
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 1
        raise


def cmd_train(args) -> int:
    # Plain imports, not importlib by name, so that tests/test_layering.py sees these edges.
    try:
        from ..train.__main__ import main
    except ImportError as e:
        raise UsageError(f"{TRAIN_EXTRA}: {one_line(str(e))}") from None
    return _run_train_entry(main, args.extra)


def cmd_dataset(args) -> int:
    try:
        from ..train.dataset import main
    except ImportError as e:
        raise UsageError(f"{TRAIN_EXTRA}: {one_line(str(e))}") from None
    return _run_train_entry(main, args.extra)


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


def cmd_demo(args) -> int:
    """`q3tts demo`: the demo job (a sentence to out/demo.wav, q3tts/demo.py); `q3tts demo MODEL [--ip
    --port --ssl-certfile --ssl-keyfile --no-ssl-verify ...]`: the web UI alone, as the official demo."""
    if not args.extra:
        from ..demo import main as demo_job

        return demo_job()
    try:
        from ..server.ui import build_demo_parser, run_demo
    except ImportError as e:
        raise UsageError(f"q3tts demo MODEL needs the ui extra (pip install 'q3tts[server,ui]'): {e}") from None
    parser = build_demo_parser(_Parser(prog="q3tts demo", description="The web UI on its own (the official demo)."))
    demo_args = parser.parse_args(args.extra)
    if not (demo_args.checkpoint_pos or demo_args.checkpoint or demo_args.model):
        raise UsageError("q3tts demo with options needs MODEL (a checkpoint folder or Hugging Face repo id); "
                         "without any arguments it runs the demo job")  # fmt: skip
    return run_demo(demo_args)
