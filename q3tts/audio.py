"""Audio I/O, resampling and the speaker encoder's log-mel features.

Reading and writing go through `soundfile` (libsndfile: wav, flac, ogg/vorbis, opus, mp3) and
resampling through `soxr` at the quality librosa uses by default, so the same reference clip
yields the same samples as in the official package. The slaney mel filterbank is computed here
in numpy instead of importing librosa for one function.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf
import soxr
import torch

from .errors import Q3TTSError
from .url_fetch import fetch_url, is_url, shown

SAMPLE_RATE = 24000  # Hz, every network's input and output rate

# Speaker-encoder mel features (fixed in the official code, not read from any config).
N_FFT = 1024
HOP_LENGTH = 256  # samples per mel frame: 10.7 ms at 24 kHz
WIN_LENGTH = 1024
N_MELS = 128
MEL_FMIN = 0.0
MEL_FMAX = 12000.0  # Hz, = Nyquist at 24 kHz
STFT_PAD = (N_FFT - HOP_LENGTH) // 2  # 384 reflected samples per side, so T = (N - 256) // 256 + 1
MAG_EPS = 1e-9  # added to |X|^2 before sqrt (keeps the sqrt gradient finite)
LOG_FLOOR = 1e-5  # magnitudes are clamped here before the log: a -11.5 floor

# soxr "HQ" is librosa.resample's default `res_type="soxr_hq"`.
RESAMPLE_QUALITY = "HQ"

SAVE_FORMATS = {  # extension -> (libsndfile format, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, tuple]


class AudioError(Q3TTSError, ValueError):
    """Audio that cannot be read, is empty, or holds non-finite samples."""


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_audio(source: AudioSource, sr: Optional[int] = None) -> np.ndarray:
    """Read audio as float32 mono at `sr` Hz (default `SAMPLE_RATE`) -> [N].

    `source` is one of:
      * a file path (str or PathLike), any format libsndfile reads;
      * `(samples, rate)`: samples a numpy array or tensor, [N] or [N, C] (soundfile layout;
        a 2-D array whose first axis is the shorter is taken as [C, N]); integer PCM is scaled
        to [-1, 1];
      * raw encoded bytes (e.g. the body of an uploaded .wav);
      * a base64 string or a `data:audio/...;base64,` URL;
      * an `http://` or `https://` URL, fetched within url_fetch's time and size limits.
    Channels are averaged; other rates are resampled with soxr (librosa's default quality).
    `sr` is the rate to return; the input's own rate comes from the file header or the tuple.
    """
    target = SAMPLE_RATE if sr is None else int(sr)
    samples, rate = _decode(source)
    samples = _to_mono(samples)
    if samples.size == 0:
        raise AudioError("audio is empty (0 samples)")
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    return resample(samples, rate, target)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """[N] float32 -> [ceil(N * target / orig)] float32, as librosa.resample(res_type="soxr_hq")."""
    if orig_sr == target_sr:
        return samples
    out = soxr.resample(samples, orig_sr, target_sr, quality=RESAMPLE_QUALITY)
    # librosa trims or zero-pads soxr's output to ceil(N * ratio), computed in floating point
    # (44100 -> 24000 Hz on 44100 samples gives 24001, the last one 0); do the same.
    n_out = int(np.ceil(samples.shape[0] * (float(target_sr) / orig_sr)))
    out = out[:n_out] if out.shape[0] >= n_out else np.pad(out, (0, n_out - out.shape[0]))
    return out.astype(np.float32, copy=False)


def _decode(source: AudioSource) -> tuple[np.ndarray, int]:
    if isinstance(source, tuple):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read(io.BytesIO(bytes(source)), "audio bytes")
    if isinstance(source, os.PathLike):
        return _read_path(Path(source))
    if isinstance(source, str):
        text = source.strip()
        if text.startswith("data:"):
            _, _, text = text.partition(",")
            return _read(io.BytesIO(_b64decode(text)), "data URL")
        if is_url(text):
            return _read(io.BytesIO(fetch_url(text)), shown(text))
        if os.path.exists(source):
            return _read_path(Path(source))
        # A long string that names no file is taken as base64 (the reference's rule, minus its
        # "no '/'" condition: '/' is a base64 digit).
        if len(text) > 256:
            return _read(io.BytesIO(_b64decode(text)), "base64 audio")
        raise AudioError(f"audio file not found: {source}")
    kind = type(source).__name__
    raise AudioError(f"unsupported audio source type {kind}; pass a path, bytes, base64 or (samples, rate)")


def _read_path(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}" if not path.exists() else f"not a file: {path}")
    return _read(path, str(path))


def _read(file, what: str) -> tuple[np.ndarray, int]:
    try:
        samples, rate = sf.read(file, dtype="float32", always_2d=True)  # [N, C]
    except (sf.LibsndfileError, RuntimeError, TypeError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        # libsndfile names the in-memory file object ("Error opening <_io.BytesIO object at 0x..>: ...")
        reason = re.sub(r"^Error opening <[^>]*>: ", "", reason)
        raise AudioError(f"cannot decode {what}: {reason}") from None
    return samples, int(rate)


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise AudioError("audio string is neither an existing file nor valid base64") from None


def _from_array(source: tuple) -> tuple[np.ndarray, int]:
    if len(source) != 2:
        raise AudioError("an audio tuple must be (samples, sample_rate)")
    samples, rate = source
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().float().numpy()
    samples = np.asarray(samples)
    if not isinstance(rate, (int, np.integer, float)) or int(rate) != rate or rate <= 0:
        raise AudioError(f"sample rate must be a positive integer, got {rate!r}")
    if samples.ndim not in (1, 2):
        raise AudioError(f"audio array must be [N] or [N, C], got shape {samples.shape}")
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)  # int16 -> /32768
    elif not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"audio array must be numeric, got dtype {samples.dtype}")
    if samples.ndim == 2 and samples.shape[0] < samples.shape[1]:
        samples = samples.T  # channels-first input: [C, N] -> [N, C]
    return samples.astype(np.float32, copy=False), int(rate)


def _to_mono(samples: np.ndarray) -> np.ndarray:
    """[N] or [N, C] -> [N] float32, averaging channels."""
    if samples.ndim == 2:
        samples = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def save_audio(path_or_buffer, wav, sr: int, format: Optional[str] = None) -> None:
    """Write `wav` ([N] or [N, C], numpy or tensor, float in [-1, 1]) at `sr` Hz.

    The format comes from `format` (wav, flac, ogg, opus, mp3) or else the file extension;
    a buffer (file-like object) needs `format`. Samples are clipped to [-1, 1].
    """
    if format is None and isinstance(path_or_buffer, (str, os.PathLike)):
        format = Path(path_or_buffer).suffix
    fmt = (format or "").lower().lstrip(".")
    if fmt not in SAVE_FORMATS:
        raise AudioError(f"unknown audio format {fmt!r}; choose one of {sorted(SAVE_FORMATS)}")
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().float().numpy()
    wav = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    container, subtype = SAVE_FORMATS[fmt]
    try:
        sf.write(path_or_buffer, wav, int(sr), format=container, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"cannot write {fmt} at {sr} Hz: {e}") from None


# --------------------------------------------------------------------------------------
# Speaker-encoder mel features
# --------------------------------------------------------------------------------------

# Slaney mel scale: linear below 1 kHz, logarithmic above.
_MEL_LINEAR_HZ = 200.0 / 3  # Hz per mel in the linear part
_MEL_BREAK_HZ = 1000.0
_MEL_BREAK = _MEL_BREAK_HZ / _MEL_LINEAR_HZ  # 15 mel
_MEL_LOG_STEP = np.log(6.4) / 27.0  # ln(Hz ratio) per mel above the break


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MEL_BREAK + np.log(np.maximum(hz, _MEL_BREAK_HZ) / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _MEL_BREAK_HZ, log_part, hz / _MEL_LINEAR_HZ)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _MEL_BREAK_HZ * np.exp(_MEL_LOG_STEP * (mel - _MEL_BREAK))
    return np.where(mel >= _MEL_BREAK, log_part, mel * _MEL_LINEAR_HZ)


def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters on the slaney mel scale, each scaled to unit area in Hz -> [n_mels, n_fft//2 + 1] float32.

    Same numbers as librosa.filters.mel(htk=False, norm="slaney"), including its rounding:
    triangles are stored in float32 before the float64 area scale is applied.
    """
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)  # [F]
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [n_mels + 2]
    widths = np.diff(edges_hz)
    offsets = edges_hz[:, None] - fft_hz[None, :]  # [n_mels + 2, F]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles * area_norm[:, None]).astype(np.float32)


_MEL_CACHE: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _mel_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(filterbank [128, 513], Hann window [1024]) in float32 on `device`, built once."""
    if device not in _MEL_CACHE:
        fb = slaney_mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, MEL_FMIN, MEL_FMAX)
        _MEL_CACHE[device] = (torch.from_numpy(fb).to(device), torch.hann_window(WIN_LENGTH, device=device))
    return _MEL_CACHE[device]


def mel_spectrogram(wav: torch.Tensor) -> torch.Tensor:
    """24 kHz waveform [B, N] or [N] -> log-mel [B, T, 128] float32, T = (N - 256) // 256 + 1.

    The speaker encoder's input features, as the official code computes them: reflect-pad
    384 samples per side, un-centred Hann STFT (1024/256), magnitude, slaney mel, natural log.
    No normalisation. Runs in float32 on `wav`'s device (the reference uses the CPU).
    """
    wav = torch.as_tensor(wav)
    if wav.ndim == 1:
        wav = wav.unsqueeze(0)
    assert wav.ndim == 2, f"expected [B, N] or [N], got {tuple(wav.shape)}"
    if wav.shape[1] <= STFT_PAD:
        raise AudioError(f"audio too short for mel features: {wav.shape[1]} samples, need more than {STFT_PAD}")
    wav = wav.float()
    filterbank, window = _mel_tables(wav.device)
    # Reflect padding + center=False (rather than center=True's 512) centres each 1024-sample
    # window on hop boundaries shifted by 128 samples; kept for exact parity.
    padded = torch.nn.functional.pad(wav.unsqueeze(1), (STFT_PAD, STFT_PAD), mode="reflect").squeeze(1)
    spec = torch.stft(padded, N_FFT, HOP_LENGTH, WIN_LENGTH, window, center=False, onesided=True, return_complex=True)
    magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + MAG_EPS)  # [B, 513, T]
    mel = torch.matmul(filterbank, magnitude)  # [B, 128, T]
    return torch.log(mel.clamp(min=LOG_FLOOR)).transpose(1, 2)
