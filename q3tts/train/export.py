"""Export a trained module in the official checkpoint layout (loads in q3tts and in qwen-tts).

    out/config.json               the source config, with tts_model_type "custom_voice", the new
                                  speakers in talker_config.spk_id / spk_is_dialect, and the talker's
                                  layer count (layer mode)
    out/generation_config.json    and every other top-level file (text tokenizer), copied
    out/model.safetensors         official tensor names; LoRA merged; no speaker_encoder.* (as the
                                  official recipe: CustomVoice models have none); new speakers'
                                  embeddings written into their rows of the talker codec embedding
    out/speech_tokenizer/         copied unchanged

config.json is written by hand (json), never through a config class: the official
speaker-encoder config rejects the extra keys `save_pretrained` would add.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..checkpoint import SAFETENSORS_DTYPES, read_safetensors_header
from . import lora
from .config import ConfigError
from .module import TrainModule
from .speakers import Speakers
from .state import fresh_tmp, replace_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "config.json")


def export_dtype(name: str, source: Path) -> torch.dtype:
    """`auto`: the dtype the source checkpoint stores its talker in (bf16 for the releases)."""
    if name != "auto":
        if name not in DTYPES:
            raise ConfigError(f"export_dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
        return DTYPES[name]
    header = read_safetensors_header(source / "model.safetensors")
    stored = SAFETENSORS_DTYPES.get(header["talker.codec_head.weight"]["dtype"])
    return stored if stored in DTYPES.values() else torch.float32


def model_state(module: TrainModule, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    networks = module.networks
    state = lora.merged_state_dict(networks)  # the plain state dict when no adapter is present
    state = {k: v for k, v in state.items() if not k.startswith("speaker_encoder.")}
    key = "talker.model.codec_embedding.weight"
    table = state[key].detach().clone()
    for name, sid in module.speakers.ids.items():
        table[sid] = module.speakers.new[name].to(table.dtype)
    state[key] = table
    return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in state.items()}  # fmt: skip


def patched_config(source: Path, module: TrainModule) -> dict:
    cfg = json.loads((source / "config.json").read_text(encoding="utf-8"))
    talker = cfg.setdefault("talker_config", {})
    sp: Speakers = module.speakers
    if sp.ids:
        cfg["tts_model_type"] = "custom_voice"
        talker["spk_id"] = {**(talker.get("spk_id") or {}), **sp.ids}
        talker["spk_is_dialect"] = {**(talker.get("spk_is_dialect") or {}), **sp.dialects}
    talker["num_hidden_layers"] = module.cfg.talker.num_hidden_layers
    return cfg


def export_model(module: TrainModule, source: Path, out: Path, dtype_name: str = "auto") -> Path:
    """Write the fine-tuned model to `out` (replaced atomically if it exists)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_tmp(out)
    for f in source.iterdir():
        if f.is_file() and f.name not in WEIGHT_FILES and not f.name.startswith("."):
            shutil.copy2(f, tmp / f.name)
    shutil.copytree(source / "speech_tokenizer", tmp / "speech_tokenizer")
    cfg = patched_config(source, module)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    save_file(model_state(module, export_dtype(dtype_name, source)), str(tmp / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    replace_dir(tmp, out)
    return out
