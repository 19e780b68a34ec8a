"""Audio encoders for the speech endpoints: float32 chunks in, bytes out as early as the format allows.

pcm   raw s16le, 24 kHz mono: each chunk as it is generated
wav   a 44-byte header whose RIFF and data sizes are 0xFFFFFFFF ("length unknown", as streaming
      WAV writers do), then the pcm stream
mp3, opus (Ogg), aac (ADTS)   encoded incrementally with PyAV (FFmpeg): a packet leaves as soon
      as the encoder has it (one ~20 ms Ogg page per Opus packet)
flac  encoded after generation, in one piece: a streamed FLAC cannot state its length, and common
      readers (libsndfile) reject such a file
"""

from __future__ import annotations

import io
import struct

import numpy as np

MEDIA_TYPES = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
}
FORMATS = tuple(MEDIA_TYPES)
STREAMED = {"pcm", "wav", "mp3", "opus", "aac"}  # sent while generating; flac comes at the end

# format -> (container, codec, bit rate)
_PYAV = {"mp3": ("mp3", "libmp3lame", 96_000), "opus": ("ogg", "libopus", 32_000), "aac": ("adts", "aac", 64_000)}
_UNKNOWN_SIZE = 0xFFFFFFFF


def pcm16(chunk: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian int16 bytes."""
    return (np.clip(chunk, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(sample_rate: int, channels: int = 1, bits: int = 16) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block, block, bits)
    return (b"RIFF" + struct.pack("<I", _UNKNOWN_SIZE) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", _UNKNOWN_SIZE))  # fmt: skip


class Encoder:
    """encode(chunk) -> bytes ready to send now; finish() -> the rest."""

    def encode(self, chunk: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class PCMEncoder(Encoder):
    def encode(self, chunk):
        return pcm16(chunk)


class WAVEncoder(Encoder):
    def __init__(self, sample_rate: int):
        self.header = wav_header(sample_rate)

    def encode(self, chunk):
        out, self.header = self.header + pcm16(chunk), b""
        return out

    def finish(self):
        return self.header  # a response without audio is still a valid (empty) WAV


class FLACEncoder(Encoder):
    def __init__(self, sample_rate: int):
        self.sample_rate, self.parts = sample_rate, []

    def encode(self, chunk):
        self.parts.append(chunk)
        return b""

    def finish(self):
        from ..audio import save_audio

        buf = io.BytesIO()
        save_audio(buf, np.concatenate(self.parts or [np.zeros(0, np.float32)]), self.sample_rate, format="flac")
        return buf.getvalue()


class _Sink:
    """A write-only file for PyAV: without seek() FFmpeg treats the output as a stream."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class PyAVEncoder(Encoder):
    def __init__(self, fmt: str, sample_rate: int):
        import av

        container, codec, bit_rate = _PYAV[fmt]
        self.av, self.sink, self.pts, self.sample_rate = av, _Sink(), 0, sample_rate
        options = {"flush_packets": "1"}  # hand every packet to the sink at once
        if container == "ogg":
            options["page_duration"] = "20000"  # µs: one page per Opus packet, not one per second
        self.container = av.open(self.sink, "w", format=container, container_options=options)
        self.stream = self.container.add_stream(codec, rate=sample_rate, layout="mono")
        self.stream.bit_rate = bit_rate

    def encode(self, chunk):
        frame = self.av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk, np.float32)[None], format="flt",
                                                layout="mono")  # fmt: skip
        frame.sample_rate, frame.pts = self.sample_rate, self.pts
        self.pts += chunk.shape[0]
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        return self.sink.take()

    def finish(self):
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        return self.sink.take()


def make_encoder(fmt: str, sample_rate: int) -> Encoder:
    if fmt == "pcm":
        return PCMEncoder()
    if fmt == "wav":
        return WAVEncoder(sample_rate)
    if fmt == "flac":
        return FLACEncoder(sample_rate)
    if fmt in _PYAV:
        return PyAVEncoder(fmt, sample_rate)
    raise ValueError(f"unknown response_format {fmt!r}; choose one of {', '.join(FORMATS)}")
