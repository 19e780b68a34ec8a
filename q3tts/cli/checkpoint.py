"""`q3tts make-checkpoint` (random weights in the official layout) and `q3tts info`."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_make_checkpoint(args) -> None:
    import torch

    from ..testing.presets import make_checkpoint

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    out = make_checkpoint(args.out, preset=args.preset, kind=args.kind, seed=args.seed, dtype=dtype)
    total = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(f"wrote random-weight {args.preset} {args.kind} checkpoint to {out} ({total / 1e6:.1f} MB)")


def checkpoint_info(path: str) -> dict:
    import torch

    from ..checkpoint import MAIN_FILES, read_safetensors_header, require_files, resolve
    from ..config import ModelConfig, SpeechTokenizerConfig
    from ..languages import model_languages

    folder = resolve(path)
    require_files(folder, MAIN_FILES)
    cfg = ModelConfig.from_file(folder / "config.json")
    header = read_safetensors_header(folder / "model.safetensors")
    params = sum(int(torch.Size(v["shape"]).numel()) for v in header.values())
    speech = SpeechTokenizerConfig.from_file(folder / "speech_tokenizer" / "config.json")
    t = cfg.talker
    languages = ["auto", *(lang for lang in model_languages(t.codec_language_id) if lang != "auto")]
    return {
        "path": str(folder),
        "kind": cfg.tts_model_type,
        "size": cfg.tts_model_size,
        "parameters": params,
        "dtypes": sorted({v["dtype"] for v in header.values()}),
        "talker": {
            "hidden": t.hidden_size,
            "layers": t.num_hidden_layers,
            "heads": t.num_attention_heads,
            "kv_heads": t.num_key_value_heads,
            "intermediate": t.intermediate_size,
        },  # fmt: skip
        "code_predictor": {"hidden": t.code_predictor.hidden_size, "layers": t.code_predictor.num_hidden_layers},
        "codebooks": t.num_code_groups,
        "sample_rate": speech.output_sample_rate,
        "frame_rate": speech.output_sample_rate / speech.decode_upsample_rate,
        "speakers": sorted(t.spk_id),
        "dialect_speakers": {k: v for k, v in t.spk_is_dialect.items() if v},
        "languages": languages,
    }


def cmd_info(args) -> None:
    info = checkpoint_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['path']}")
    print(
        f"  kind        {info['kind']} ({info['size']}), {info['parameters'] / 1e6:.1f} M parameters, {'/'.join(info['dtypes'])}"
    )
    tk = info["talker"]
    print(f"  talker      {tk['layers']} layers, hidden {tk['hidden']}, {tk['heads']}/{tk['kv_heads']} heads")
    print(
        f"  codec       {info['codebooks']} codebooks, {info['frame_rate']:g} Hz frames, {info['sample_rate']} Hz audio"
    )
    print(f"  languages   {', '.join(info['languages'])}")
    if info["speakers"]:
        print(f"  speakers    {', '.join(info['speakers'])}")
