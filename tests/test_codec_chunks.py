"""Streamed chunk sizes: one default steady chunk for every front door, cut as documented, and
the chunks still concatenate to exactly the offline decode."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from q3tts.api import Qwen3TTS
from q3tts.cli.parser import build_parser
from q3tts.generate.codec_stream import DEFAULT_CHUNK_FRAMES, CodecStream
from q3tts.model import load_speech_tokenizer
from q3tts.server import Settings
from q3tts.serving import SpeechScheduler


def parameter_default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


def test_every_front_door_has_the_measured_default_steady_chunk():
    assert DEFAULT_CHUNK_FRAMES == 8
    for fn in (Qwen3TTS.stream, Qwen3TTS.stream_batch, SpeechScheduler.submit, CodecStream.__init__):
        assert parameter_default(fn, "chunk_frames") == DEFAULT_CHUNK_FRAMES, fn.__qualname__
    assert Settings().chunk_frames == DEFAULT_CHUNK_FRAMES
    speak = build_parser().parse_args(["speak", "-m", "m", "-o", "o.wav", "--speaker", "vivian", "hello"])
    assert speak.chunk_frames == DEFAULT_CHUNK_FRAMES


def test_default_chunks_are_one_frame_then_eight_then_the_rest_and_equal_offline(tiny_checkpoint):
    decoder = load_speech_tokenizer(tiny_checkpoint / "speech_tokenizer", with_encoder=False).decoder
    codes = torch.randint(0, 2048, (16, 20), generator=torch.Generator().manual_seed(5))  # [G, T]
    stream, chunks = CodecStream(decoder), []
    for t in range(codes.shape[1]):
        stream.push(codes[:, t])
        if stream.due:
            chunks.append(stream.decode())
    chunks.append(stream.decode())  # the end: what is left
    assert [len(c) // decoder.samples_per_frame for c in chunks] == [1, 8, 8, 3]
    with torch.inference_mode():
        offline = decoder(codes[None])[0, 0].numpy()
    streamed = torch.from_numpy(np.concatenate(chunks))
    assert torch.equal(streamed, torch.from_numpy(offline))
