"""python -m q3tts.train --config train.yaml [--set key=value ...] [--env-file .env] [--resume [DIR]]
    [--push-to-hub REPO]          (the same as `q3tts train ...`; NUM_EPOCHS=1 and the other
                                   .env names are read from the environment too)
python -m q3tts.train export --checkpoint output_dir/checkpoint-000500 --out my-voice/

Several GPUs: accelerate launch --multi_gpu --num_processes N -m q3tts.train --config train.yaml
Several CPU processes: ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node N -m q3tts.train ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m q3tts.train",
        description="Fine-tune a Qwen3-TTS checkpoint.",
        epilog="Settings come from --config, --env-file, the environment (the same .env names: NUM_EPOCHS=1 ...) "
        "and --set; precedence: flag > environment > file > default. The run prints the resolved config.",
    )
    p.add_argument("--config", type=Path, help="YAML training config (see q3tts/train/config.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--env-file", type=Path, help="a .env file with the community scripts' variable names")
    p.add_argument("--resume", nargs="?", const="latest", help="resume from a checkpoint (default: the latest)")
    p.add_argument("--push-to-hub", metavar="REPO",
                   help="at the end, upload final/ to REPO and best/ to REPO-best (created if missing)")  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    return p


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m q3tts.train export", description="Export a training checkpoint.")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", default=None, help="auto | float32 | bfloat16 | float16 (default: the run's)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..checkpoint import CheckpointError
    from ..errors import Q3TTSError
    from .config import ConfigError

    try:
        if argv[:1] == ["export"]:
            args = export_parser().parse_args(argv[1:])
            from .trainer import export_checkpoint

            print(export_checkpoint(args.checkpoint, args.out, args.dtype))
            return 0
        args = train_parser().parse_args(argv)
        import os

        from .config import resolve_config
        from .trainer import train

        overrides = list(args.set) + ([f"resume={args.resume}"] if args.resume else [])
        if args.push_to_hub:
            overrides += ["upload_to_hub=true", f"hub_model_id_last={args.push_to_hub}"]
        resolved = resolve_config(args.config, tuple(overrides), args.env_file, environ=dict(os.environ))
        train(resolved.config, quiet=args.quiet, resolved=resolved)
    except (ConfigError, CheckpointError, OSError, Q3TTSError) as e:  # set-up problems: one line, no traceback
        raise SystemExit(f"q3tts: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
