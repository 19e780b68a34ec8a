"""Export a trained module in the official checkpoint layout (loads in q3tts and in qwen-tts).

    out/config.json               the source config, with tts_model_type "custom_voice", the new
                                  speakers in talker_config.spk_id / spk_is_dialect, and the talker's
                                  layer count (layer mode)
    out/generation_config.json    and every other top-level file (text tokenizer), copied
    out/model.safetensors         official tensor names; LoRA merged; no speaker_encoder.* (as the
                                  official recipe: CustomVoice models have none); new speakers'
                                  embeddings written into their rows of the talker codec embedding
    out/speech_tokenizer/         copied unchanged
    out/training_state.json       step, epoch, best_val_loss, best_val_metrics, config (as the
                                  community pipeline writes it; secrets blanked), plus the data
    out/speakers.json             the new speakers: codec id, dialect, items trained on
    out/README.md                 a model card: trained from what, on what, for how long

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


def model_card(state: dict, speakers: dict) -> str:
    """README.md of an export (YAML front matter: the hub reads it as the model card)."""
    cfg, data = state.get("config") or {}, state.get("data") or {}
    base = cfg.get("model", "?")
    hub_base = f"base_model: {base}\n" if base.count("/") == 1 and not Path(base).exists() else ""
    best = state.get("best_val_loss")
    lines = [
        "---",
        f"{hub_base}library_name: q3tts",
        "pipeline_tag: text-to-speech",
        "tags: [text-to-speech, qwen3-tts, q3tts, fine-tuned]",
        "---",
        "",
        f"# {', '.join(speakers) or 'Fine-tuned'} (Qwen3-TTS CustomVoice)",
        "",
        f"- Trained from: `{base}` (mode {cfg.get('mode', '?')})",
        f"- Trained on: {data.get('train_items', '?')} items, {data.get('train_hours', '?')} h "
        f"(`{cfg.get('dataset_name') or cfg.get('data', '?')}`); validation: {data.get('val_items', '?')} items",
        f"- Trained for: {state.get('step', '?')} steps, {state.get('epoch', '?')} epochs "
        f"(batch {cfg.get('batch_size', '?')} x accumulation {cfg.get('grad_accum', '?')}, lr {cfg.get('lr', '?')}, "
        f"precision {cfg.get('mixed_precision', '?')})",
        f"- Best validation loss: {best:.4f} (step {state.get('best_step')})" if best is not None else
        "- Best validation loss: none (no validation set)",
        "- Speakers: " + (", ".join(f"{n} (id {v['id']})" for n, v in speakers.items()) or "none new"),
        "",
        "```python",
        "from q3tts import Qwen3TTS",
        "tts = Qwen3TTS.from_pretrained('THIS_FOLDER_OR_REPO')",
        f"wavs, sr = tts.generate_custom_voice('Hello!', speaker='{next(iter(speakers), 'SPEAKER')}')",
        "```",
        "",
        "Written by `q3tts train`; training_state.json holds the full config.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def speaker_meta(module: TrainModule, items: dict) -> dict:
    sp = module.speakers
    return {name: {"id": sid, "dialect": sp.dialects.get(name) or None, "items": items.get(name, 0)}
            for name, sid in sp.ids.items()}  # fmt: skip


def export_model(module: TrainModule, source: Path, out: Path, dtype_name: str = "auto",
                 state: dict | None = None) -> Path:  # fmt: skip
    """Write the fine-tuned model to `out` (replaced atomically if it exists). `state`: the
    training_state.json contents (step, epoch, best_val_loss, config, data, speaker_items)."""
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
    if state is not None:
        speakers = speaker_meta(module, state.get("speaker_items") or {})
        (tmp / "training_state.json").write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "speakers.json").write_text(json.dumps(speakers, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(state, speakers), encoding="utf-8")
    replace_dir(tmp, out)
    return out
