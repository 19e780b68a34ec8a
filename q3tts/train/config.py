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
as keys too, in the YAML, in `--set`, from a file given with `--env-file`, and from the process
environment (`NUM_EPOCHS=1 q3tts train ...`). Precedence, highest first: flags (`--set`, and the
precision `accelerate launch --mixed_precision` passes on), the environment, the files (the
.env file over the YAML), the defaults. The trainer prints the resolved config with each key's
source. An unknown name in an .env file is an error naming the closest known one.
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
# mozi1924/Qwen3-TTS-EasyFinetuning train.sh, and the "unified" train.py pipelines whose .env
# has DATA_MODE, REPLACE_LAST_N_LAYERS, UPLOAD_TO_HUB, ...) -> our keys. Several spellings of
# one setting map to one key.
ENV_NAMES = {
    "INIT_MODEL_PATH": "model",
    "OUTPUT_DIR": "output_dir",
    "TRAIN_JSONL": "data",
    "VALIDATION_JSONL": "val_data",
    "VAL_JSONL": "val_data",
    "DATA_MODE": "data_mode",
    "DATASET_NAME": "dataset_name",
    "TRAIN_SPLIT": "train_split",
    "VALIDATION_SPLIT": "validation_split",
    "MAX_TRAIN_SAMPLES": "max_train_samples",
    "MAX_EVAL_SAMPLES": "max_eval_samples",
    "MAX_VAL_SAMPLES": "max_eval_samples",
    "BATCH_SIZE": "batch_size",
    "EVAL_BATCH_SIZE": "eval_batch_size",
    "LR": "lr",
    "LEARNING_RATE": "lr",
    "EPOCHS": "epochs",
    "NUM_EPOCHS": "epochs",
    "GRAD_ACCUM_STEPS": "grad_accum",
    "GRADIENT_ACCUMULATION_STEPS": "grad_accum",
    "WEIGHT_DECAY": "weight_decay",
    "WARMUP_STEPS": "warmup_steps",
    "WARMUP_RATIO": "warmup_ratio",
    "MAX_GRAD_NORM": "max_grad_norm",
    "SUB_TALKER_LOSS_WEIGHT": "cp_loss_weight",
    "MIXED_PRECISION": "mixed_precision",
    "SAVE_STEPS": "save_steps",
    "SAVE_TOTAL_LIMIT": "save_total_limit",
    "EVAL_STEPS": "eval_steps",
    "LOGGING_STEPS": "logging_steps",
    "SEED": "seed",
    "TRAIN_SEED": "seed",
    "SPEAKER_NAME": "speaker_name",
    "SPEAKER_ID": "speaker_id",
    "REF_AUDIO_PATH": "ref_audio",
    "REPLACE_LAST_N_LAYERS": "layers.replace",
    "ADD_NEW_LAYERS": "layers.add",
    "FREEZE_ORIGINAL_LAYERS": "layers.freeze_rest",
    "FREEZE_SPEAKER_ENCODER": "freeze_speaker_encoder",
    "USE_WANDB": "use_wandb",
    "WANDB_PROJECT": "project",
    "WANDB_RUN_NAME": "run_name",
    "WANDB_ENTITY": "wandb_entity",
    "UPLOAD_TO_HUB": "upload_to_hub",
    "UPLOAD_TO_HF": "upload_to_hub",
    "HUB_MODEL_ID_BEST": "hub_model_id_best",
    "HF_BEST_MODEL_REPO": "hub_model_id_best",
    "HUB_MODEL_ID_LAST": "hub_model_id_last",
    "HF_LAST_MODEL_REPO": "hub_model_id_last",
    "HF_TOKEN": "hf_token",
    "LORA_RANK": "lora.rank",
    "LORA_ALPHA": "lora.alpha",
    "LORA_DROPOUT": "lora.dropout",
    "LORA_TARGET_MODULES": "lora.targets",
}

# Names those .env files carry that q3tts does not need: accepted, and the reason is printed.
NOT_NEEDED = {
    "TOKENIZER_PATH": "the codec is the model's own speech_tokenizer/",
    "DEVICE": "accelerate picks the device (CUDA when present; `accelerate launch --cpu` for the CPU)",
    "REF_TEXT": "training uses speaker embeddings, not in-context prompts",
    "CACHE_DIR": "prepared data is kept in output_dir/data",
}

DATA_MODES = ("auto", "jsonl", "direct", "none")
SECRET_KEYS = ("hf_token",)  # never printed, never written into checkpoints or exports
# Where a value came from, lowest precedence first (`resolved_lines` prints it per key).
SOURCES = ("default", "config file", "env file", "environment", "accelerate launch", "flag")


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
    freeze_rest: bool = True  # False: the original layers (and the rest, as in mode full) train too


@dataclass
class SpeakerOptions:
    dialect: Optional[str] = None  # a dialect key of codec_language_id (e.g. sichuan_dialect)
    id: Optional[int] = None  # codec id to use; default: the first free id from 3000 on


@dataclass
class TrainConfig:
    model: str = ""  # checkpoint to start from (Base is the normal case)
    data: str = ""  # prepared folder, JSONL manifest, or folder of clips (clip.wav + clip.txt, or metadata.csv)
    output_dir: str = "runs/finetune"
    val_data: Optional[str] = None  # optional separate validation set (all of it is validation)
    data_mode: str = "auto"  # auto | jsonl (`data` is a manifest) | direct (`dataset_name`) | none (prepared)
    dataset_name: Optional[str] = None  # a Hugging Face dataset (hub name or save_to_disk folder)
    dataset_config: Optional[str] = None
    train_split: str = "train"
    validation_split: Optional[str] = None  # None: `val_fraction` of the training split
    columns: dict = field(default_factory=dict)  # dataset column names, e.g. {text: transcription}
    max_train_samples: int = 0  # > 0: use at most this many training items (small debug runs)
    max_eval_samples: int = 0  # > 0: at most this many validation items
    ref_audio: Optional[str] = None  # clip whose speaker embedding stands for items without ref_audio
    val_fraction: float = 0.05  # split used when `data` is a manifest prepared by the trainer
    mode: str = "full"
    lora: LoraOptions = field(default_factory=LoraOptions)
    layers: LayerOptions = field(default_factory=LayerOptions)
    freeze: list = field(default_factory=lambda: ["talker.model.text_embedding"])  # name prefixes, full mode
    also_train: list = field(default_factory=list)  # name prefixes trained on top of lora / layers
    freeze_speaker_encoder: bool = True  # the speaker encoder never trains (embeddings come from prepare)
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
    max_nonfinite_steps: int = 10  # NaN/Inf losses in a row (each step skipped) that stop the run
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
    project: str = "q3tts-finetune"  # tracker project name (W&B project, TensorBoard folder)
    use_wandb: Optional[bool] = None  # True / False: add / remove wandb from report_to
    run_name: Optional[str] = None  # W&B run name
    wandb_entity: Optional[str] = None  # W&B team or user
    upload_to_hub: bool = False  # push final/ and best/ to the hub at the end
    hub_model_id_last: Optional[str] = None  # repo for final/ (`--push-to-hub REPO`)
    hub_model_id_best: Optional[str] = None  # repo for best/ (default: <last>-best)
    hub_private: bool = False  # create missing repos as private
    hub_timeout: float = 3600.0  # seconds an upload may take before the run ends without it
    hf_token: Optional[str] = None  # hub token (default: HF_TOKEN / the saved login)
    stop_at_step: int = 0  # stop after this step as if interrupted (resume continues the run)
    resume: Optional[str] = None  # a checkpoint folder, or "latest" in output_dir
    # speech metrics at each validation (train/speech_eval.py, the `eval` extra)
    eval_generate: int = 0  # held-out items spoken and scored (speaker similarity, WER); 0: off
    eval_asr: str = "pocketsphinx"  # ASR back-end for the WER (pocketsphinx: offline, English)
    metric_for_best: str = "loss"  # loss | wer | speaker_similarity (the last two need eval_generate)

    def validate(self) -> "TrainConfig":
        if not self.model:
            raise ConfigError("set `model` (the checkpoint to fine-tune)")
        if self.data_mode == "direct" and not self.dataset_name:
            raise ConfigError("data_mode direct needs `dataset_name` (DATASET_NAME)")
        if not self.data and not self.dataset_name:
            raise ConfigError("set `data` (a prepared folder, a JSONL manifest or a folder of clips) or `dataset_name`")
        if self.upload_to_hub and not (self.hub_model_id_last or self.hub_model_id_best):
            raise ConfigError("upload_to_hub needs hub_model_id_last or hub_model_id_best (or --push-to-hub REPO)")
        if (self.layers.replace or self.layers.add) and self.mode == "lora":
            raise ConfigError(
                "layer replacement (layers.replace / layers.add) works with mode layers or full, not lora"
            )
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.data_mode not in DATA_MODES:
            raise ConfigError(f"data_mode must be one of {DATA_MODES}, got {self.data_mode!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if self.mode == "layers" and self.layers.replace + self.layers.add == 0:
            raise ConfigError("mode 'layers' needs layers.replace > 0 or layers.add > 0")
        for name in ("batch_size", "eval_batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.max_grad_norm < 0 or self.max_nonfinite_steps < 1:
            raise ConfigError("need max_grad_norm >= 0 (0: no clipping) and max_nonfinite_steps >= 1")
        if self.max_train_samples < 0 or self.max_eval_samples < 0:
            raise ConfigError("max_train_samples and max_eval_samples must be >= 0 (0: no limit)")
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
        """Every key, secrets blanked (this goes into checkpoints, exports and trackers)."""
        return {k: (None if k in SECRET_KEYS else v) for k, v in dataclasses.asdict(self).items()}

    def hub_repos(self) -> dict[str, str]:
        """{"final": repo, "best": repo} to push to (empty unless upload_to_hub)."""
        if not self.upload_to_hub:
            return {}
        last, best = self.hub_model_id_last, self.hub_model_id_best
        repos = {"final": last, "best": best or (f"{last}-best" if last else None)}
        return {k: v for k, v in repos.items() if v}


# ------------------------------------------------------------------------------------------
def _build(cls, data: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        first = sorted(unknown)[0]
        hint = closest(first, list(names))
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {', '.join(sorted(unknown))}"
            + (f" (did you mean {hint!r}?)" if hint else "")
        )
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
    if kind == "dict":  # "text=transcription,speaker=spk"
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError(f"{where}: expected name=value pairs separated by commas, got {value!r}")
        return {k.strip(): v.strip() for k, v in pairs}
    if kind == "bool":
        return value.strip().lower() in ("1", "true", "yes", "on")
    if kind in ("int", "float"):
        try:
            return float(value) if kind == "float" else int(float(value))
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    return value


def closest(name: str, known: list[str]) -> Optional[str]:
    import difflib

    found = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return found[0] if found else None


def _set(tree: dict, dotted: str, value: Any) -> str:
    """Set a dotted key (or an .env name) in the nested tree; returns the dotted key."""
    dotted = ENV_NAMES.get(dotted, dotted)
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return dotted


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


def check_env_names(names, where: str) -> list[str]:
    """Notes for the names q3tts does not need; an unknown name is an error naming the closest one."""
    notes = []
    for name in names:
        if name in ENV_NAMES:
            continue
        if name in NOT_NEEDED:
            notes.append(f"{name} is not needed: {NOT_NEEDED[name]}")
            continue
        hint = closest(name, list(ENV_NAMES) + list(NOT_NEEDED))
        raise ConfigError(f"{where}: unknown setting {name}" + (f" (did you mean {hint}?)" if hint else "") +
                          "; see ENV_NAMES in q3tts/train/config.py")  # fmt: skip
    return notes


def config_from_dict(data: dict) -> TrainConfig:
    """A TrainConfig from `TrainConfig.to_dict()` output (as stored in checkpoints)."""
    return _build(TrainConfig, data, "")


@dataclass
class Resolved:
    """The resolved config, where each key came from (`SOURCES`), and notes to print."""

    config: TrainConfig
    sources: dict = field(default_factory=dict)  # dotted key -> source
    notes: list = field(default_factory=list)

    def lines(self) -> list[str]:
        """The resolved config, one key a line, with its source (secrets blanked)."""
        flat = _flatten(self.config.to_dict())
        width = max(len(k) for k in flat)
        out = ["config (precedence: flag > environment > file > default):"]
        for key, value in flat.items():
            if key in SECRET_KEYS and getattr(self.config, key):
                value = "*** (set)"
            out.append(f"  {key:<{width}} = {value!s:<24} [{self.sources.get(key, 'default')}]")
        return out + self.notes


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key in ("lora", "layers"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve_config(path: Optional[Path] = None, overrides: tuple[str, ...] = (), env_file: Optional[Path] = None,
                   environ: Optional[dict] = None) -> Resolved:  # fmt: skip
    """Build the config from, lowest precedence first: defaults, the YAML file `path`, the .env
    file `env_file`, the process environment (`environ`, only the .env names), the precision
    `accelerate launch --mixed_precision` passes on, and `--set key=value` flags."""
    yaml = require("yaml", "reading the training config")
    tree: dict = {}
    sources: dict = {}
    notes: list = []
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        for key, value in loaded.items():
            if isinstance(value, dict) and key in ("lora", "layers"):
                for sub, v in value.items():
                    sources[_set(tree, f"{key}.{sub}", v)] = "config file"
            else:
                sources[_set(tree, key, value)] = "config file"
    if env_file is not None:
        values = read_env_file(env_file)
        notes += check_env_names(values, str(env_file))
        for key, value in values.items():
            if key in ENV_NAMES and value != "":  # `NAME=` leaves the setting at its default
                sources[_set(tree, key, value)] = "env file"
    environ = dict(environ or {})
    for key in ENV_NAMES:
        if environ.get(key, "") != "":
            sources[_set(tree, key, environ[key])] = "environment"
    launched = environ.get("ACCELERATE_MIXED_PRECISION", "")
    # `accelerate launch` passes "no" also when it was not asked for a precision: that "no" does
    # not override a precision the config sets.
    if launched and (launched != "no" or "mixed_precision" not in sources):
        sources[_set(tree, "mixed_precision", launched)] = "accelerate launch"
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        sources[_set(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")] = "flag"
    layers = tree.get("layers") or {}
    if "mode" not in sources and (_nonzero(layers.get("replace")) or _nonzero(layers.get("add"))):
        tree["mode"], sources["mode"] = "layers", "implied by layers.replace / layers.add"
    config = _build(TrainConfig, tree, "").validate()
    if not config.freeze_speaker_encoder:
        notes.append("freeze_speaker_encoder false (FREEZE_SPEAKER_ENCODER): q3tts never trains the speaker "
                     "encoder; the embeddings are computed once in prepare, so it stays frozen")  # fmt: skip
    return Resolved(config, sources, notes)


def _nonzero(value: Any) -> bool:
    try:
        return float(value or 0) != 0
    except (TypeError, ValueError):
        return True  # not a number: let validation report it


def load_config(
    path: Optional[Path] = None, overrides: tuple[str, ...] = (), env_file: Optional[Path] = None
) -> TrainConfig:
    """The config from a file, an .env file and `--set` overrides (not the process environment:
    `resolve_config` adds that, as the command line does)."""
    return resolve_config(path, overrides, env_file).config
