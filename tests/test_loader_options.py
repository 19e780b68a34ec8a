"""The official loaders' keyword arguments: `Qwen3TTS.from_pretrained(..., device_map=..., torch_dtype=...,
attn_implementation=..., local_files_only=...)` and `Qwen3TTSTokenizer.from_pretrained(..., device_map=...)`
are honoured or mapped; an option q3tts does not implement is accepted with one warning line, never
dropped silently; a misspelt one is a TypeError."""

from __future__ import annotations

import warnings

import pytest
import torch

from q3tts.api import Qwen3TTS, Qwen3TTSModel
from q3tts.checkpoint import CheckpointError
from q3tts.errors import InputError
from q3tts.loader_options import IgnoredOptionWarning
from q3tts.speech_tokenizer import Qwen3TTSTokenizer


def loaded_without_warnings(*args, **kwargs) -> Qwen3TTS:
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredOptionWarning)
        return Qwen3TTSModel.from_pretrained(*args, **kwargs)


def test_the_official_call_loads_on_the_mapped_device_and_dtype(make_tiny):
    tts = loaded_without_warnings(make_tiny("custom_voice"), device_map="cpu", torch_dtype=torch.bfloat16,
                                  attn_implementation="sdpa", local_files_only=True)  # fmt: skip
    assert tts.device == torch.device("cpu") and tts.dtype == torch.bfloat16
    assert tts.checkpoint.networks.talker.codec_head.weight.dtype == torch.bfloat16
    tts = loaded_without_warnings(make_tiny("custom_voice"), device_map={"": "cpu"}, dtype="float32")
    assert tts.dtype == torch.float32


@pytest.mark.parametrize(("device_map", "device"), [(0, "cuda:0"), ("cuda:1", "cuda:1"), ({"": 0}, "cuda:0"),
                                                     (torch.device("cpu"), "cpu"), ("auto", None)])  # fmt: skip
def test_device_map_forms(make_tiny, device_map, device):
    tts = loaded_without_warnings(make_tiny("custom_voice"), device_map=device_map, lazy=True)  # no weights read
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert str(tts.device) == (device or expected)


def test_unimplemented_options_get_one_warning_line(make_tiny, capsys):
    from q3tts.console import show_warning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device_map="balanced", attn_implementation="flash_attention_2",
                                 trust_remote_code=True, lazy=True)  # fmt: skip
    texts = [str(w.message) for w in caught if w.category is IgnoredOptionWarning]
    assert texts == [
        "device_map='balanced' splits a model over GPUs, which q3tts does not implement; using one device "
        "(device_map='auto')",
        "attn_implementation='flash_attention_2' is not implemented: q3tts runs PyTorch's "
        "scaled_dot_product_attention (sdpa), which uses its flash kernel on CUDA by itself",
        "Qwen3TTS.from_pretrained: trust_remote_code=True is not implemented by q3tts and has no effect",
    ]
    assert all(w.filename == __file__ for w in caught)  # pointing at the caller's line
    show_warning(caught[1].message, IgnoredOptionWarning, __file__, 1)  # as the CLI prints them: one line
    assert capsys.readouterr().err.count("\n") == 1


def test_bad_and_contradicting_options_are_errors(make_tiny):
    path = make_tiny("custom_voice")
    with pytest.raises(TypeError, match="unexpected keyword argument 'devcie' \\(did you mean 'device'\\?\\)"):
        Qwen3TTS.from_pretrained(path, devcie="cpu")
    with pytest.raises(InputError, match="unknown attn_implementation 'fast'"):
        Qwen3TTS.from_pretrained(path, attn_implementation="fast")
    with pytest.raises(InputError, match="device='cpu' and device_map='cuda:0' disagree"):
        Qwen3TTS.from_pretrained(path, device="cpu", device_map="cuda:0")
    with pytest.raises(InputError, match="dtype='float32' and torch_dtype=torch.bfloat16 disagree"):
        Qwen3TTS.from_pretrained(path, dtype="float32", torch_dtype=torch.bfloat16)
    Qwen3TTS.from_pretrained(path, dtype="bfloat16", torch_dtype=torch.bfloat16, lazy=True)  # the same: fine


def test_local_files_only_never_downloads(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # without the flag, this id would be downloaded
    with pytest.raises(
        CheckpointError, match="q3tts-absent: not in the Hugging Face cache, and local_files_only is set"
    ):
        Qwen3TTS.from_pretrained("nobody/q3tts-absent", local_files_only=True)
    with pytest.raises(CheckpointError, match="local_files_only is set"):
        Qwen3TTSTokenizer.from_pretrained("nobody/q3tts-absent", local_files_only=True)


def test_the_tokenizer_honours_device_map_and_dtype(make_tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredOptionWarning)
        tok = Qwen3TTSTokenizer.from_pretrained(make_tiny("base"), device_map="cpu", torch_dtype=torch.bfloat16)
    params = list(tok.model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16} and {p.device.type for p in params} == {"cpu"}
    tok = Qwen3TTSTokenizer.from_pretrained(make_tiny("base"))  # defaults: CPU, float32 (the codec's exact dtype)
    assert {p.dtype for p in tok.model.parameters()} == {torch.float32}
    with pytest.warns(IgnoredOptionWarning, match="low_cpu_mem_usage=True is not implemented"):
        Qwen3TTSTokenizer.from_pretrained(make_tiny("base"), low_cpu_mem_usage=True)


@pytest.mark.requires_cuda
def test_device_map_cuda_places_both_loaders_on_the_gpu(make_tiny):
    tok = Qwen3TTSTokenizer.from_pretrained(make_tiny("base"), device_map="cuda:0")
    assert {p.device.type for p in tok.model.parameters()} == {"cuda"}
    tts = Qwen3TTSModel.from_pretrained(make_tiny("custom_voice"), device_map="cuda:0", dtype=torch.bfloat16,
                                        attn_implementation="sdpa")  # fmt: skip
    assert tts.device == torch.device("cuda:0") and tts.dtype == torch.bfloat16
    wavs, sr = tts.generate_custom_voice("Hi.", speaker="vivian", language="en", max_new_tokens=4)
    assert sr == 24000 and wavs[0].size > 0
