"""Audio loading/saving, resampling and the speaker encoder's mel features."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from q3tts.audio import (
    LOG_FLOOR,
    N_MELS,
    SAMPLE_RATE,
    AudioError,
    hz_to_mel,
    load_audio,
    mel_spectrogram,
    mel_to_hz,
    resample,
    save_audio,
    slaney_mel_filterbank,
)

MEL_TOL = 1e-5  # max abs difference of log-mel values vs the reference


def tone(seconds: float, sr: int = SAMPLE_RATE, hz: float = 220.0, seed: int = 0) -> np.ndarray:
    """A modulated tone plus a little noise: broadband enough to light up every mel bin."""
    t = np.arange(int(sr * seconds)) / sr
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * hz * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * noise).astype(np.float32)


# ----------------------------------------------------------------------------- mel filterbank


@pytest.fixture(scope="module")
def filterbank() -> np.ndarray:
    return slaney_mel_filterbank(SAMPLE_RATE, 1024, N_MELS, 0.0, 12000.0)


def test_slaney_mel_scale_known_points():
    # Linear at 200/3 Hz per mel up to 1 kHz (= 15 mel), then 27 mel per factor 6.4.
    np.testing.assert_allclose(hz_to_mel([0.0, 500.0, 1000.0, 6400.0]), [0.0, 7.5, 15.0, 42.0], rtol=1e-12)
    hz = np.array([0.0, 123.0, 999.0, 1000.0, 4321.0, 12000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


def test_filterbank_shape_and_support(filterbank):
    assert filterbank.shape == (128, 513) and filterbank.dtype == np.float32
    assert (filterbank >= 0).all()
    for row in filterbank:
        support = np.nonzero(row)[0]
        assert support.size > 0, "every filter must cover at least one FFT bin"
        assert (np.diff(support) == 1).all(), "triangles are contiguous"
    assert (np.diff(filterbank.argmax(axis=1)) >= 0).all(), "filter centres rise with the index"
    # Edges sit exactly at fmin = 0 Hz and fmax = 12 kHz (Nyquist), where the weights vanish.
    assert filterbank[:, 0].max() == 0 and filterbank[:, -1].max() == 0


def test_filterbank_slaney_norm_gives_unit_area(filterbank):
    bin_hz = SAMPLE_RATE / 1024
    area = filterbank.astype(np.float64).sum(axis=1) * bin_hz
    # Narrow low filters span only 1-3 bins, so their sampled area is rougher.
    np.testing.assert_allclose(area, 1.0, atol=0.1)
    np.testing.assert_allclose(area[60:], 1.0, atol=0.04)
    assert area.mean() == pytest.approx(1.0, abs=0.01)


def test_filterbank_matches_librosa_spot_values(filterbank):
    # Values printed by librosa 0.11 `filters.mel(sr=24000, n_fft=1024, n_mels=128, fmin=0, fmax=12000)`.
    assert filterbank[0, 1] == np.float32(0.03355042636394501)
    assert filterbank[64].max() == np.float32(0.01410350389778614)
    assert filterbank[127].max() == np.float32(0.003086800454184413)
    assert filterbank.astype(np.float64).sum() == pytest.approx(5.459415810865721, rel=1e-9)
    assert list(filterbank.argmax(axis=1)[[0, 1, 10, 40, 80, 127]]) == [1, 2, 12, 47, 138, 498]


# ----------------------------------------------------------------------------- mel spectrogram


def test_mel_shapes_and_batching():
    wav = torch.from_numpy(np.stack([tone(1.0, seed=1), tone(1.0, hz=440, seed=2)]))
    mel = mel_spectrogram(wav)
    assert mel.shape == (2, (24000 - 256) // 256 + 1, 128) and mel.dtype == torch.float32
    single = mel_spectrogram(wav[1])
    assert single.shape == (1, *mel.shape[1:])
    torch.testing.assert_close(single[0], mel[1], rtol=0, atol=1e-6)
    assert mel_spectrogram(wav[0].numpy()).shape == single.shape  # numpy input works too


def test_mel_silence_sits_on_the_log_floor():
    mel = mel_spectrogram(torch.zeros(4000))
    assert torch.all(mel == torch.log(torch.tensor(LOG_FLOOR)))


def test_mel_peak_follows_a_pure_tone(filterbank):
    t = torch.arange(24000) / SAMPLE_RATE
    mel = mel_spectrogram(0.5 * torch.sin(2 * np.pi * 3000.0 * t))[0]  # [T, 128]
    peak = int(mel.mean(0).argmax())
    support_hz = np.nonzero(filterbank[peak])[0] * SAMPLE_RATE / 1024
    assert support_hz.min() <= 3000 <= support_hz.max()


def test_mel_rejects_too_short_audio():
    with pytest.raises(AudioError, match="too short"):
        mel_spectrogram(torch.zeros(300))


BATCH = np.stack([tone(1.3, seed=3), tone(1.3, hz=97.0, seed=4)])
LOUD = tone(0.7, seed=5) * 4  # out of [-1, 1]: the reference only warns, the maths is unchanged
HI_RATE = tone(1.5, sr=44100, seed=7)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, oracle) -> dict:
    """All of this module's oracle jobs in one reference process (its start-up costs seconds)."""
    ckpt = str(tiny_checkpoint)
    return oracle([
        dict(id="batch", op="mel", checkpoint=ckpt, audio=BATCH),
        dict(id="loud", op="mel", checkpoint=ckpt, audio=LOUD),
        dict(id="44k", op="speaker_embedding", checkpoint=ckpt, audio=HI_RATE, sr=44100),
    ])  # fmt: skip


def test_mel_matches_reference(reference):
    ours = mel_spectrogram(torch.from_numpy(BATCH)).numpy()
    assert ours.shape == reference["batch"]["mel"].shape
    assert np.abs(ours - reference["batch"]["mel"]).max() <= MEL_TOL
    assert np.abs(mel_spectrogram(torch.from_numpy(LOUD))[0].numpy() - reference["loud"]["mel"]).max() <= MEL_TOL


# ----------------------------------------------------------------------------- loading


def write(path, samples: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    sf.write(path, samples, sr, subtype=subtype)


def test_load_wav_and_flac_at_24k(tmp_path):
    wav = tone(0.5)
    for name in ("a.wav", "a.flac"):
        write(tmp_path / name, wav, SAMPLE_RATE)
        expected, _ = sf.read(tmp_path / name, dtype="float32")
        out = load_audio(tmp_path / name)
        assert out.dtype == np.float32 and out.ndim == 1
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(load_audio(str(tmp_path / name)), expected)
        assert np.abs(out - wav).max() < 1e-4  # 16-bit quantisation only


def test_load_stereo_averages_channels(tmp_path):
    left, right = tone(0.5, seed=1), tone(0.5, hz=330, seed=2)
    write(tmp_path / "s.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    mono = (left + right) / 2
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), mono, atol=1e-7)
    # Arrays: soundfile layout [N, C], and channels-first [C, N] is recognised too.
    np.testing.assert_allclose(load_audio((np.stack([left, right], axis=1), SAMPLE_RATE)), mono, atol=1e-7)
    np.testing.assert_allclose(load_audio((np.stack([left, right]), SAMPLE_RATE)), mono, atol=1e-7)


def test_load_resamples_44k1_like_librosa(tmp_path):
    src = tone(1.0, sr=44100)
    write(tmp_path / "hi.wav", src, 44100, subtype="FLOAT")
    out = load_audio(tmp_path / "hi.wav")
    # librosa.resample(res_type="soxr_hq") is soxr HQ trimmed/zero-padded to ceil(N * (24000 / 44100)).
    # In floating point that is 24000.000000000004 for N = 44100, so librosa (and we) append one 0.
    assert out.shape == (24001,) and out.dtype == np.float32 and out[-1] == 0
    np.testing.assert_array_equal(out[:24000], soxr.resample(src, 44100, 24000, quality="HQ"))
    odd = tone(0.123457, sr=44100)
    assert resample(odd, 44100, 24000).shape == (int(np.ceil(odd.size * 24000 / 44100)),)
    assert load_audio((src, 44100), sr=16000).shape == (16000,)


def test_load_resampling_matches_reference(reference):
    """The reference resamples with librosa; the mel it feeds the encoder must equal ours."""
    ours = mel_spectrogram(torch.from_numpy(load_audio((HI_RATE, 44100))))[0].numpy()
    assert ours.shape == reference["44k"]["mel"].shape
    assert np.abs(ours - reference["44k"]["mel"]).max() <= MEL_TOL


def test_load_bytes_base64_and_data_url(tmp_path):
    write(tmp_path / "a.wav", tone(0.3), SAMPLE_RATE)
    raw = (tmp_path / "a.wav").read_bytes()
    expected = load_audio(tmp_path / "a.wav")
    b64 = base64.b64encode(raw).decode()
    assert "/" in b64  # the reference would mistake this for a path; we must not
    for source in (raw, bytearray(raw), b64, "data:audio/wav;base64," + b64):
        np.testing.assert_array_equal(load_audio(source), expected)


def test_load_tuple_inputs():
    wav = tone(0.2)
    np.testing.assert_array_equal(load_audio((wav, SAMPLE_RATE)), wav)
    np.testing.assert_array_equal(load_audio((torch.from_numpy(wav), SAMPLE_RATE)), wav)
    pcm = (wav * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio((pcm, SAMPLE_RATE)), pcm / 32768.0, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "source, message",
    [
        (b"this is not audio at all" * 20, "cannot decode audio bytes"),
        ("A" * 300, "cannot decode base64"),
        ("no/such/file.wav", "not found"),
        ("not base64 !!" * 30, "neither an existing file nor valid base64"),
        ((np.zeros(0, np.float32), 24000), "empty"),
        ((np.array([0.0, np.nan], np.float32), 24000), "NaN or infinite"),
        ((np.zeros(10, np.float32), 0), "sample rate"),
        ((np.zeros((2, 2, 2), np.float32), 24000), "shape"),
        (12345, "unsupported audio source"),
    ],
)
def test_load_errors_are_clear(source, message):
    with pytest.raises(AudioError, match=message):
        load_audio(source)


def test_load_garbage_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(AudioError, match="bad.wav"):
        load_audio(tmp_path / "bad.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError):
        load_audio(tmp_path / "empty.wav")
    assert issubclass(AudioError, ValueError)


# ----------------------------------------------------------------------------- saving


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "opus", "mp3"])
def test_save_roundtrip(tmp_path, ext):
    wav = tone(1.0, hz=440)
    path = tmp_path / f"out.{ext}"
    save_audio(path, torch.from_numpy(wav), SAMPLE_RATE)
    back = load_audio(path)
    assert abs(back.size - wav.size) < 0.1 * wav.size  # lossy codecs add priming/padding samples
    if ext in ("wav", "flac"):
        assert np.abs(back - wav).max() < 1e-4
    buf = io.BytesIO()
    save_audio(buf, wav, SAMPLE_RATE, format=ext)
    assert load_audio(buf.getvalue()).size == back.size


def test_save_clips_and_rejects_unknown_formats(tmp_path):
    save_audio(tmp_path / "loud.wav", np.array([2.0, -2.0, 0.5], np.float32), SAMPLE_RATE)
    np.testing.assert_allclose(sf.read(tmp_path / "loud.wav")[0], [32767 / 32768, -1.0, 0.5], atol=1e-4)
    with pytest.raises(AudioError, match="unknown audio format 'xyz'"):
        save_audio(tmp_path / "a.xyz", np.zeros(10, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="unknown audio format ''"):
        save_audio(io.BytesIO(), np.zeros(10, np.float32), SAMPLE_RATE)
