"""The training configuration: a YAML file, then `--set key=value` overrides.

    model: Qwen/Qwen3-TTS-12Hz-0.6B-Base
    data: data/                  # a prepared folder, or a JSONL manifest (prepared into output_dir/data)
    output_dir: runs/alice
    speaker_name: alice          # for items without a "speaker" field
    mode: lora                   # full | lora | layers
    lora: {rank: 16, alpha: 32}
    lr: 2.0e-6
    epochs: 3

Nested keys are set with dots (`--set lora.rank=8`); values are parsed as YAML (`--set
lr=1e-5`, `--set freeze=[]`). The variable names of the community fine-tuning scripts'
`.env` files (INIT_MODEL_PATH, TRAIN_JSONL, LR, LORA_RANK, ...: see `ENV_NAMES`) are accepted
as keys too, in the YAML, in `--set`, or from a file given with `--env-file`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import Q3TTSError
from . import require

MODES = ("full", "lora", "layers")
PRECISIONS = ("no", "bf16", "fp16")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# .env names of the community scripts (instavar/qwen3-tts-lora-finetuning run_*_train.sh,
# mozi1924/Qwen3-TTS-EasyFinetuning train.sh) -> our keys.
ENV_NAMES = {
    "INIT_MODEL_PATH": "model",
    "OUTPUT_DIR": "output_dir",
    "TRAIN_JSONL": "data",
    "VAL_JSONL": "val_data",
    "BATCH_SIZE": "batch_size",
    "EVAL_BATCH_SIZE": "eval_batch_size",
    "LR": "lr",
    "EPOCHS": "epochs",
    "GRAD_ACCUM_STEPS": "grad_accum",
    "MIXED_PRECISION": "mixed_precision",
    "SPEAKER_NAME": "speaker_name",
    "SPEAKER_ID": "speaker_id",
    "TRAIN_SEED": "seed",
    "LORA_RANK": "lora.rank",
    "LORA_ALPHA": "lora.alpha",
    "LORA_DROPOUT": "lora.dropout",
    "LORA_TARGET_MODULES": "lora.targets",
}


class ConfigError(Q3TTSError, ValueError):
    pass


@dataclass
class LoraOptions:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list = field(default_factory=lambda: list(LORA_TARGETS))  # linear names inside talker layers


@dataclass
class LayerOptions:
    replace: int = 0  # re-initialise the last N talker layers
    add: int = 0  # append M fresh talker layers


@dataclass
class SpeakerOptions:
    dialect: Optional[str] = None  # a dialect key of codec_language_id (e.g. sichuan_dialect)
    id: Optional[int] = None  # codec id to use; default: the first free id from 3000 on


@dataclass
class TrainConfig:
    model: str = ""  # checkpoint to start from (Base is the normal case)
    data: str = ""  # prepared folder or JSONL manifest
    output_dir: str = "runs/finetune"
    val_data: Optional[str] = None  # optional separate validation set (all of it is validation)
    val_fraction: float = 0.05  # split used when `data` is a manifest prepared by the trainer
    mode: str = "full"
    lora: LoraOptions = field(default_factory=LoraOptions)
    layers: LayerOptions = field(default_factory=LayerOptions)
    freeze: list = field(default_factory=lambda: ["talker.model.text_embedding"])  # name prefixes, full mode
    also_train: list = field(default_factory=list)  # name prefixes trained on top of lora / layers
    speaker_name: str = "speaker"
    speaker_id: Optional[int] = None  # codec id of `speaker_name` (the official script uses 3000)
    speakers: dict = field(default_factory=dict)  # name -> SpeakerOptions fields
    non_streaming_mode: bool = True  # text layout of the prompts (as generate_custom_voice's default)
    epochs: int = 3
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 2
    eval_batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-6
    weight_decay: float = 0.01
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    max_grad_norm: float = 1.0
    cp_loss_weight: float = 0.3  # code-predictor loss weight (the official recipe's 0.3)
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 42
    logging_steps: int = 10
    eval_steps: int = 0  # 0: validate at the end of each epoch
    save_steps: int = 0  # 0: checkpoint at the end of each epoch
    save_total_limit: int = 2  # periodic checkpoints kept (the best one is never deleted)
    export_dtype: str = "auto"  # auto (= the source checkpoint's) | float32 | bfloat16 | float16
    report_to: list = field(default_factory=lambda: ["auto"])  # auto | tensorboard | wandb | none
    project: str = "q3tts-finetune"  # tracker project name
    stop_at_step: int = 0  # stop after this step as if interrupted (resume continues the run)
    resume: Optional[str] = None  # a checkpoint folder, or "latest" in output_dir
    # speech metrics at each validation (train/speech_eval.py, the `eval` extra)
    eval_generate: int = 0  # held-out items spoken and scored (speaker similarity, WER); 0: off
    eval_asr: str = "pocketsphinx"  # ASR back-end for the WER (pocketsphinx: offline, English)
    metric_for_best: str = "loss"  # loss | wer | speaker_similarity (the last two need eval_generate)

    def validate(self) -> "TrainConfig":
        if not self.model:
            raise ConfigError("set `model` (the checkpoint to fine-tune)")
        if not self.data:
            raise ConfigError("set `data` (a prepared folder or a JSONL manifest)")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if self.mode == "layers" and self.layers.replace + self.layers.add == 0:
            raise ConfigError("mode 'layers' needs layers.replace > 0 or layers.add > 0")
        for name in ("batch_size", "eval_batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.epochs < 1 and self.max_steps < 1:
            raise ConfigError("set epochs >= 1 or max_steps >= 1")
        for name in self.speakers:
            if name != name.lower():
                raise ConfigError(f"speaker names are matched in lowercase; use {name.lower()!r}")
        return self

    def speaker(self, name: str) -> SpeakerOptions:
        opts = dict(self.speakers.get(name) or {})
        if name == self.speaker_name and self.speaker_id is not None:
            opts.setdefault("id", self.speaker_id)
        return _build(SpeakerOptions, opts, f"speakers.{name}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------
def _build(cls, data: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    kwargs = {}
    for key, value in data.items():
        sub = {"lora": LoraOptions, "layers": LayerOptions}.get(key) if cls is TrainConfig else None
        if sub is not None:
            value = _build(sub, value or {}, key)
        kwargs[key] = _coerce(names[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    """YAML gives the right types already; strings from .env files / --set need a nudge."""
    kind = str(f.type).replace("Optional[", "").rstrip("]")  # annotations are strings here
    if not isinstance(value, str) or kind == "str":
        return float(value) if kind == "float" and isinstance(value, int) and not isinstance(value, bool) else value
    if kind == "list":
        return [v.strip() for v in value.split(",") if v.strip()]
    if kind == "bool":
        return value.strip().lower() in ("1", "true", "yes", "on")
    if kind in ("int", "float"):
        try:
            return float(value) if kind == "float" else int(float(value))
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    return value


def _set(tree: dict, dotted: str, value: Any) -> None:
    dotted = ENV_NAMES.get(dotted, dotted)
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def read_env_file(path: Path) -> dict:
    """KEY=VALUE lines (shell style: `export`, quotes and # comments allowed)."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.split(" #", 1)[0].strip().strip("'\"")
        out[key.strip()] = value
    return out


def config_from_dict(data: dict) -> TrainConfig:
    """A TrainConfig from `TrainConfig.to_dict()` output (as stored in checkpoints)."""
    return _build(TrainConfig, data, "")


def load_config(
    path: Optional[Path] = None, overrides: tuple[str, ...] = (), env_file: Optional[Path] = None
) -> TrainConfig:
    yaml = require("yaml", "reading the training config")
    tree: dict = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        for key, value in loaded.items():
            _set(tree, key, value) if key in ENV_NAMES else tree.__setitem__(key, value)
    if env_file is not None:
        for key, value in read_env_file(env_file).items():
            if key in ENV_NAMES:
                _set(tree, key, value)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return _build(TrainConfig, tree, "").validate()
