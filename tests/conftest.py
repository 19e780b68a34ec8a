"""Shared fixtures: random tiny checkpoints written by our own `make_checkpoint`, the models and
reference clips made from them, and the oracle (the official `qwen-tts` package, run in its own venv
in a subprocess). Markers (registered in pyproject.toml) are set here from what a test uses:

- `oracle`: the test uses the `oracle` fixture (directly or through another fixture);
- `browser`: it uses a fixture that drives Chromium (BROWSER_FIXTURES);
- `requires_cuda`: set by hand; such tests are skipped where torch sees no CUDA device.

`make check` runs `-m "not oracle and not browser"`; `make test` runs everything."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "oracle"))

torch.set_num_threads(2)

BROWSER_FIXTURES = ("ui_server",)  # tests/test_ui_browser.py: the web UI in Chromium


def pytest_collection_modifyitems(config, items):
    no_cuda = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "oracle" in used:
            item.add_marker(pytest.mark.oracle)
        if used.intersection(BROWSER_FIXTURES):
            item.add_marker(pytest.mark.browser)
        if no_cuda is not None and item.get_closest_marker("requires_cuda"):
            item.add_marker(no_cuda)


@pytest.fixture(scope="session")
def checkpoints_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def make_tiny(checkpoints_dir):
    """make_tiny(kind, seed=0) -> folder of a tiny random checkpoint, written once per session."""
    from q3tts.testing.presets import make_checkpoint

    made: dict[tuple, Path] = {}

    def make(kind: str = "base", seed: int = 0, dtype=torch.bfloat16) -> Path:
        key = (kind, seed, dtype)
        if key not in made:
            name = f"tiny-{kind}-{seed}-{str(dtype).split('.')[-1]}"
            made[key] = make_checkpoint(checkpoints_dir / name, "tiny", kind, seed, dtype)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(make_tiny) -> Path:
    """A tiny Base checkpoint (it has every network: talker, code predictor, speaker encoder, codec)."""
    return make_tiny("base")


@pytest.fixture(scope="session")
def tiny_tts(make_tiny):
    """tiny_tts(kind, seed=0) -> Qwen3TTS of a tiny checkpoint on CPU in float32, loaded once per session
    and shared: a test that changes the model (hooks, quantisation) must undo it or work on a copy."""
    from q3tts.api import Qwen3TTS

    loaded: dict[tuple, object] = {}

    def load(kind: str = "custom_voice", seed: int = 0):
        if (kind, seed) not in loaded:
            loaded[kind, seed] = Qwen3TTS.from_pretrained(make_tiny(kind, seed), device="cpu", dtype="float32")
        return loaded[kind, seed]

    return load


@pytest.fixture(scope="session")
def custom_voice_tts(tiny_tts):
    """The tiny CustomVoice model (speakers vivian, ryan, ...), shared by the session."""
    return tiny_tts("custom_voice")


def voiced_clip(seconds: float, hz: float = 180.0, seed: int = 0, sr: int = 24000) -> np.ndarray:
    """A voice-like test clip: a tone with a 3 Hz swell and a little noise, float32 in [-0.5, 0.5]."""
    t = np.arange(int(sr * seconds)) / sr
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * hz * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * noise).astype(np.float32)


@pytest.fixture(scope="session")
def ref_wav(tmp_path_factory) -> str:
    """A 2 s reference clip for cloning, as a float WAV file at 24 kHz (25 codec frames)."""
    path = tmp_path_factory.mktemp("ref") / "ref.wav"
    sf.write(path, voiced_clip(2.0), 24000, subtype="FLOAT")
    return str(path)


def oracle_required() -> bool:
    return os.environ.get("Q3TTS_REQUIRE_ORACLE", "0") == "1"


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    """oracle(jobs) -> {id: result}: runs the official package on the jobs (see tools/oracle/reference.py).

    Skips when the oracle venv is missing, unless Q3TTS_REQUIRE_ORACLE=1 (as in `make test` and CI)."""
    import client

    if not client.oracle_available():
        msg = "oracle venv missing: run `make setup-oracle` (tools/oracle/setup.sh)"
        if oracle_required():
            pytest.fail(msg)
        pytest.skip(msg)
    workdir = tmp_path_factory.mktemp("oracle")
    counter = iter(range(10**9))

    def run(jobs: list[dict]) -> dict:
        return client.run_reference(jobs, workdir / f"batch{next(counter)}")

    return run


@pytest.fixture(scope="session")
def force_eos():
    """force_eos(model, stop) -> context manager: row r says end-of-speech at talker step stop[r]
    and never before; yields the list of steps taken (random weights rarely say EOS on their own)."""

    @contextmanager
    def force(model, stop: list[int]):
        eos = model.checkpoint.config.talker.codec_eos_token_id
        steps: list[int] = []

        def say_eos(module, inputs, logits):
            step = len(steps)
            steps.append(step)
            logits = logits.clone()
            logits[..., eos] = float("-inf")
            for row, at in enumerate(stop):
                if step == at:
                    logits[row, eos] = 1e9
            return logits

        hook = model.checkpoint.networks.talker.codec_head.register_forward_hook(say_eos)
        try:
            yield steps
        finally:
            hook.remove()

    return force
