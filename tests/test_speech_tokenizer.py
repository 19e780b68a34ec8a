"""The standalone speech tokenizer API: encode/decode round trips, official input forms, bad codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from q3tts import CodesError, Qwen3TTSTokenizer
from q3tts.audio import save_audio


def tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(24000 * seconds)) / 24000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def tok(tiny_checkpoint):
    return Qwen3TTSTokenizer.from_pretrained(tiny_checkpoint)  # a model folder: uses its speech_tokenizer/


def test_loads_standalone_folder(tiny_checkpoint):
    tok = Qwen3TTSTokenizer.from_pretrained(tiny_checkpoint / "speech_tokenizer")
    assert tok.get_output_sample_rate() == 24000 and tok.get_decode_upsample_rate() == 1920


def test_encode_forms_agree(tok, tmp_path):
    clip = tone(1.0)
    path = tmp_path / "a.wav"
    save_audio(path, clip, 24000, format="wav")  # 16-bit: a slightly different signal
    as_array = tok.encode(clip, sr=24000).audio_codes[0]
    as_tuple = tok.encode((clip, 24000)).audio_codes[0]
    assert as_array.shape == (13, 16) and as_array.dtype == torch.int64
    assert torch.equal(as_array, as_tuple)
    from_file = tok.encode(str(path)).audio_codes[0]
    assert from_file.shape == (13, 16)
    clip48 = np.interp(np.arange(48000) / 2, np.arange(24000), clip).astype(np.float32)
    assert tok.encode(clip48, sr=48000).audio_codes[0].shape == (13, 16)  # resampled to 24 kHz


def test_batch_encode_then_decode_lengths(tok):
    enc = tok.encode([tone(0.5), tone(1.3, 330)])
    assert [c.shape[0] for c in enc.audio_codes] == [7, 17]
    wavs, sr = tok.decode(enc)
    assert sr == 24000 and [w.shape[0] for w in wavs] == [7 * 1920, 17 * 1920]
    wavs2, _ = tok.decode({"audio_codes": enc.audio_codes})
    assert all(np.array_equal(a, b) for a, b in zip(wavs, wavs2))


def test_decode_right_padded_batch(tok):
    codes = torch.randint(0, 2048, (2, 10, 16), generator=torch.Generator().manual_seed(0))
    codes[1, 6:] = -1  # official batches pad with -1
    wavs, _ = tok.decode(codes)
    assert [w.shape[0] for w in wavs] == [10 * 1920, 6 * 1920]
    alone, _ = tok.decode(codes[1, :6])
    np.testing.assert_allclose(wavs[1], alone[0], atol=1e-6)


def test_decode_stream_matches_decode(tok):
    codes = torch.randint(0, 2048, (33, 16), generator=torch.Generator().manual_seed(1))
    (full,), _ = tok.decode(codes)
    pieces = list(tok.decode_stream([codes[:1], codes[1:5], codes[5:33]]))
    assert np.array_equal(np.concatenate(pieces), full)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(5, 15, dtype=torch.long), r"\[frames, 16\]"),
    (torch.full((5, 16), 2048), "out of range"),
    (torch.zeros(5, 16), "integers"),
    (torch.cat([torch.full((2, 16), -1), torch.zeros(3, 16, dtype=torch.long)]), "before the end"),
])  # fmt: skip
def test_bad_codes_are_clear_errors(tok, bad, message):
    with pytest.raises(CodesError, match=message):
        tok.decode(bad)


def test_encode_empty_is_an_error(tok):
    from q3tts import AudioError

    with pytest.raises(AudioError):
        tok.encode(np.zeros(0, np.float32), sr=24000)
