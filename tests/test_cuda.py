"""GPU-only checks (marker `requires_cuda`: tests/conftest.py skips them where torch sees no CUDA device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from q3tts.api import Qwen3TTS

GREEDY = dict(do_sample=False, subtalker_dosample=False)


@pytest.mark.requires_cuda
@pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")
def test_tiny_model_speaks_on_cuda(make_tiny):
    tts = Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cuda", dtype="bfloat16")
    assert tts.device.type == "cuda" and tts.dtype == torch.bfloat16
    (wav,), sr = tts.generate_custom_voice("Hello there.", speaker="Vivian", language="English", max_new_tokens=6,
                                           **GREEDY)  # fmt: skip
    assert sr == 24000 and wav.shape == (5 * 1920,)  # 5 frames: random weights never say end-of-speech
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0


def test_requires_cuda_tests_are_skipped_without_cuda(request):
    """The conftest hook: without CUDA, the test above is collected with a skip marker."""
    items = [i for i in request.session.items if i.name == "test_tiny_model_speaks_on_cuda"]
    if not items:
        pytest.skip("the CUDA test was deselected")
    skips = [m for m in items[0].iter_markers("skip")]
    assert bool(skips) == (not torch.cuda.is_available())
