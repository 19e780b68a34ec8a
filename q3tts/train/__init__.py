"""Fine-tuning Qwen3-TTS: data preparation, training (full, LoRA, layer replacement) and export.

    python -m q3tts.train.dataset prepare --manifest data.jsonl --model BASE --out data/
    python -m q3tts.train --config train.yaml [--set key=value ...]
    python -m q3tts.train export --checkpoint out/checkpoint-000500 --out my-voice/

One file per concern:
    dataset.py   manifest / clip folder / HF datasets -> checked audio -> codec codes in shards (+ report, info)
    checks.py    reading one clip and the reasons a clip is rejected
    data.py      prepared shards -> examples read on demand (PreparedSet) and a resumable batch plan
    config.py    TrainConfig: YAML, .env files, the environment, `--set` (the community .env names)
    layout.py    teacher-forced training sequences, laid out exactly as generation sees them
    loss.py      talker and code-predictor cross-entropy (labels aligned once)
    module.py    the trained module: mode set-up (full / LoRA / layers) and the forward pass
    lora.py      LoRA via peft, and merged weights for export
    speakers.py  new speaker ids, float32-averaged speaker embeddings, config changes
    state.py     resumable training checkpoints, written atomically
    export.py    the official checkpoint layout (a CustomVoice model)
    trainer.py   the loop: accelerate, schedule, validation, logs, checkpoints, NaN/Inf steps
    summary.py   the per-part table a run prints (frozen / trainable / replaced / new)
    hub.py       upload of final/ and best/ to the Hugging Face Hub (never fails the run)

Heavy dependencies (accelerate, peft, yaml, datasets, tensorboard) are imported where used;
they come with the `train` extra.
"""

INSTALL_HINT = "install the train extra: pip install 'q3tts[train]'"


def require(module: str, what: str):
    """Import `module` or exit with one line naming the missing package and the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"q3tts: {what} needs the '{module}' package; {INSTALL_HINT}") from None
