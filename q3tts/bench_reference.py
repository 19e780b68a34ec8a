"""The reference side of `q3tts bench`: the official `qwen-tts` package on the same checkpoint.

    REFERENCE_PYTHON q3tts/bench_reference.py CONFIG.json RESULT.json

Run by path with the reference environment's Python (one that has `qwen_tts` installed); our
package never imports this file and this file imports nothing of ours, so it runs where q3tts is
not installed. CONFIG is the bench configuration written by q3tts/bench.py; RESULT receives the
same measurement fields as our side, as far as the official code has them (it has no streaming,
so no time to first chunk). The talker / code-predictor split comes from hooks on this process's
own model instance: a forward hook on the inner talker transformer and a wrapper around
`code_predictor.generate` (the official talker runs the code predictor inside its decode step).
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import time
import types
import warnings
from collections import defaultdict
from pathlib import Path

# Executed by path, this file's folder would be first on sys.path and our modules (audio, text,
# config, ...) would shadow same-named top-level imports of the official stack.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

# qwen_tts imports its 25 Hz tokenizer eagerly, and that imports sox, onnxruntime and torchaudio;
# the 12 Hz models never use them. Stubs with a __spec__ (transformers probes optional packages
# with importlib.util.find_spec) let the import succeed without those packages.
STUBBED = ("sox", "onnxruntime", "torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi")


class _Stub(types.ModuleType):
    def __getattr__(self, attr):
        raise AttributeError(f"{self.__name__}.{attr}: stubbed by q3tts bench (only the 25 Hz tokenizer uses it)")


def install_stubs() -> None:
    for name in STUBBED:
        try:
            __import__(name)
            continue  # the real package is installed: use it
        except ImportError:
            pass
        mod = _Stub(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        sys.modules[name] = mod
    if isinstance(sys.modules.get("torchaudio"), _Stub):
        sys.modules["torchaudio"].compliance = sys.modules["torchaudio.compliance"]
        sys.modules["torchaudio.compliance"].kaldi = sys.modules["torchaudio.compliance.kaldi"]


def memory_kib(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process, from /proc; 0 where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Stopwatch:
    """Seconds and call counts per named section of one run (CUDA synchronised at both ends)."""

    def __init__(self, torch, device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.reset()

    def reset(self) -> None:
        self.seconds, self.calls = defaultdict(float), defaultdict(int)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def add(self, name: str, start: float) -> None:
        self.seconds[name] += self.now() - start
        self.calls[name] += 1

    def wrap(self, fn, name: str):
        def timed(*args, **kwargs):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, start)

        return timed


def reference_audio(np, seconds: float = 3.0, sr: int = 24000):
    """A deterministic voiced-like clip (harmonics + a little noise) to clone in Base benches."""
    t = np.arange(int(seconds * sr)) / sr
    wav = sum(0.2 / k * np.sin(2 * np.pi * 140 * k * t) for k in range(1, 6))
    wav = wav * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * np.random.default_rng(0).standard_normal(t.shape)
    return wav.astype(np.float32), sr


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    cfg = json.loads(Path(argv[0]).read_text())
    install_stubs()
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    import transformers
    from qwen_tts import Qwen3TTSModel

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    dtype = getattr(torch, cfg["dtype"])
    start = time.perf_counter()
    tts = Qwen3TTSModel.from_pretrained(cfg["model"], dtype=dtype, device_map=str(device), attn_implementation="sdpa")
    load_seconds = time.perf_counter() - start
    rss_after_load = memory_kib("VmRSS") * 1024
    model = tts.model
    talker = model.talker
    eos = talker.config.codec_eos_token_id
    clock = Stopwatch(torch, device)

    # Every run must make exactly `frames` frames: end-of-speech is masked out of the logits.
    eos_index = torch.tensor([eos], device=device)
    talker.codec_head.register_forward_hook(lambda mod, inp, logits: logits.index_fill(-1, eos_index, float("-inf")))
    starts: list[float] = []

    def before_talker(mod, args, kwargs):
        starts.append(clock.now())

    def after_talker(mod, args, kwargs, out):
        prefill = kwargs["inputs_embeds"].shape[1] > 1
        clock.add("prefill" if prefill else "talker", starts.pop())

    talker.model.register_forward_pre_hook(before_talker, with_kwargs=True)
    talker.model.register_forward_hook(after_talker, with_kwargs=True)
    talker.code_predictor.generate = clock.wrap(talker.code_predictor.generate, "code_predictor")
    model.speech_tokenizer.decode = clock.wrap(model.speech_tokenizer.decode, "codec")
    record = {}
    model_generate = model.generate

    def recording_generate(*args, **kwargs):
        record["codes"], hidden = model_generate(*args, **kwargs)
        return record["codes"], hidden

    model.generate = recording_generate

    kind = model.tts_model_type
    prompt = None
    if kind == "base":
        prompt = tts.create_voice_clone_prompt(ref_audio=reference_audio(np), x_vector_only_mode=True)

    def call(batch: int):
        common = dict(max_new_tokens=cfg["frames"] + 1, language=[cfg["language"]] * batch)
        texts = [cfg["text"]] * batch
        if kind == "custom_voice":
            return tts.generate_custom_voice(text=texts, speaker=[cfg["speaker"]] * batch, **common)
        if kind == "voice_design":
            return tts.generate_voice_design(text=texts, instruct=[cfg["instruct"]] * batch, **common)
        return tts.generate_voice_clone(text=texts, voice_clone_prompt=prompt * batch, **common)

    runs = {}
    with torch.inference_mode():
        for batch in cfg["batches"]:
            samples = []
            for i in range(cfg["warmup"] + cfg["repeat"]):
                torch.manual_seed(cfg["seed"])
                clock.reset()
                start = clock.now()
                wavs, sr = call(batch)
                wall = clock.now() - start
                if i >= cfg["warmup"]:
                    samples.append(raw_sample(clock, wall, wavs, sr, record["codes"]))
            runs[str(batch)] = samples
    peak_gpu = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("speech_tokenizer."))
    result = dict(
        implementation="qwen-tts",
        env=dict(
            torch=torch.__version__,
            transformers=transformers.__version__,
            qwen_tts=package_version("qwen-tts"),
            python=sys.version.split()[0],
            device=str(device),
            dtype=cfg["dtype"],
            threads=torch.get_num_threads(),
            attention="sdpa",
        ),
        checkpoint=dict(kind=kind, size=model.tts_model_size, parameters=params),
        load_seconds=load_seconds,
        rss_after_load_bytes=rss_after_load,
        peak_rss_bytes=memory_kib("VmHWM") * 1024,
        peak_gpu_bytes=peak_gpu,
        first_chunk_ms=None,
        first_chunk_note="qwen-tts 0.1.1 has no streaming audio output",
        runs=runs,
    )
    Path(argv[1]).write_text(json.dumps(result, indent=1))
    return 0


def raw_sample(clock: Stopwatch, wall: float, wavs, sr: int, codes) -> dict:
    """One run's raw measurements; q3tts/bench.py derives the per-frame figures for both sides."""
    return dict(
        wall_s=wall,
        seconds=dict(clock.seconds),
        calls=dict(clock.calls),
        frames_per_row=[int(c.shape[0]) for c in codes],
        audio_seconds_per_row=[len(w) / sr for w in wavs],
    )


def package_version(name: str):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
