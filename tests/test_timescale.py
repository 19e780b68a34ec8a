"""`speed` (q3tts/timescale.py): WSOLA keeps the pitch while the duration scales by 1/speed, and a
stream chunked any way gives the offline result sample for sample. Pitch is measured on real speech
(espeak-ng) and on a harmonic tone, never on random-weight model output."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr

from q3tts.timescale import TimeStretch, time_stretch

SR = 24000


def f0_median(wav: np.ndarray, sr: int = SR) -> float:
    """Median pitch (Hz) of the voiced frames: the autocorrelation peak between 60 and 400 Hz."""
    frame, hop, found = 1024, 256, []
    for start in range(0, wav.size - frame, hop):
        x = wav[start : start + frame].astype(np.float64)
        x -= x.mean()
        if np.sqrt(np.mean(x**2)) < 0.02:  # silence
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        lo, hi = sr // 400, sr // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:  # clearly periodic: voiced
            found.append(sr / lag)
    assert len(found) >= 10, "too few voiced frames to estimate a pitch"
    return float(np.median(found))


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore."
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    wav, sr = sf.read(path, dtype="float32")
    return soxr.resample(wav, sr, SR).astype(np.float32)


def harmonic_tone(hz: float = 150.0, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return sum(0.3 / k * np.sin(2 * np.pi * k * hz * t) for k in range(1, 6)).astype(np.float32)


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speech_keeps_its_pitch_and_scales_its_duration(speech, speed):
    out = time_stretch(speech, speed)
    assert abs(out.size - speech.size / speed) <= 0.03 * speech.size / speed
    assert out.size == round(speech.size / speed)  # exact, in fact
    f0, f0_scaled = f0_median(speech), f0_median(out)
    assert abs(f0_scaled - f0) <= 0.05 * f0, (f0, f0_scaled)


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 2.0, 4.0])
def test_a_harmonic_tone_keeps_its_pitch(speed):
    tone = harmonic_tone()
    out = time_stretch(tone, speed)
    assert out.size == round(tone.size / speed)
    assert abs(f0_median(out) - 150.0) <= 0.05 * 150.0


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_any_chunking_gives_the_offline_samples(speech, speed):
    offline = time_stretch(speech, speed)
    for seed, biggest in ((0, 50), (1, 2000), (2, 30000)):
        rng, stretch, parts, i = np.random.default_rng(seed), TimeStretch(speed), [], 0
        while i < speech.size:
            n = int(rng.integers(1, biggest))
            parts.append(stretch.push(speech[i : i + n]))
            i += n
        parts.append(stretch.finish())
        assert np.array_equal(np.concatenate(parts), offline)


def test_output_starts_before_the_input_ends_and_bad_speeds_are_refused(speech):
    stretch = TimeStretch(2.0)
    early = stretch.push(speech[: SR // 2])  # half a second in: a quarter second out already
    assert early.size > SR // 8
    with pytest.raises(ValueError, match="between 0.25 and 4.0"):
        TimeStretch(5.0)
    assert time_stretch(np.zeros(0, np.float32), 2.0).size == 0
    assert time_stretch(np.ones(7, np.float32), 0.5).size == 14
