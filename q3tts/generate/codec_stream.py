"""Frames -> audio chunks: the one place generated codes become streamed audio.

A CodecStream is one row's causal codec state plus the frames it has not decoded yet. The API's
streams, the server's scheduler and the tokenizer's `decode_stream` all use it, so every front
door cuts and decodes chunks by the same rule:

* the first chunk after `first_chunk_frames` frames, then every `chunk_frames`, and the rest at the end;
* an in-context clone's state starts from its reference codes (the official package decodes
  reference + generated codes and cuts the reference off; decoding the reference first into the
  causal state gives the same samples);
* `decode_due` decodes the due chunks of many streams in one codec call per chunk length, their
  states stacked: one call over many rows costs little more than one over a single row.

Concatenating a stream's chunks gives exactly the offline decode of its codes.

Chunks are decoded on the generating thread. Decoding them on a second thread while the next frames
are generated measured slower on 2 cores (0.6B int8, 24 frames, chunks of 1 then 8, codec thread
at 1 torch thread, best / median of 3 wall ms per frame: sequential 286 / 307, threaded 323 / 353):
generation already keeps both cores busy, and a second thread's OpenMP team is throttled (openmp.py).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..nn.codec.decoder import STEADY_CHUNK_FRAMES, CodecDecoder, DecoderStream

# Frames per chunk after the first (8 = 640 ms of audio): the API's, the server's and the CLI's
# default, the chunk the decoder's low-rate linears are blocked for (a steady chunk is one call per
# layer). Measured before that blocking, 0.6B codec, float32, 1 thread, CPU time, 48 frames, best /
# median of 3 interleaved runs, ms per frame: chunk 4: 85.9 / 92.6, 8: 75.1 / 75.4, 12: 58.7 / 75.2,
# 16: 63.6 / 73.3, 24: 63.3 / 70.0; with the time-major decoder (16-row blocks), 2 threads, wall,
# best / median, two runs each: 8: 27.7 / 29.8 and 30.9 / 33.0, 16: 31.7 / 33.8 and 33.6 / 34.3,
# 24: 33.3 / 34.9 and 38.2 / 40.5 (longer chunks' signals outgrow the caches).
DEFAULT_CHUNK_FRAMES = STEADY_CHUNK_FRAMES


class CodecStream:
    def __init__(self, decoder: CodecDecoder, ref_codes: Optional[torch.Tensor] = None, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                 first_chunk_frames: int = 1):  # fmt: skip
        if chunk_frames < 1 or first_chunk_frames < 1:
            raise ValueError("chunk sizes must be at least 1 frame")
        self.decoder = decoder
        self.device = next(decoder.parameters()).device
        self.chunk_frames, self.first_chunk_frames = chunk_frames, first_chunk_frames
        self.state: DecoderStream = decoder.new_stream(1)
        self.pending: list[torch.Tensor] = []  # [G] codes per frame, not yet decoded
        self.chunks = 0  # chunks decoded so far
        if ref_codes is not None:  # ref_codes [T_ref, G]: the reference's audio is decoded and dropped
            with torch.inference_mode():
                decoder.decode_chunk(ref_codes.T[None].to(self.device), self.state)

    def push(self, codes: torch.Tensor) -> None:
        """One generated frame, codes [G]."""
        self.pending.append(codes)

    @property
    def due(self) -> bool:
        """A chunk is complete."""
        return len(self.pending) >= (self.first_chunk_frames if self.chunks == 0 else self.chunk_frames)

    @staticmethod
    @torch.inference_mode()
    def decode_due(streams: list["CodecStream"]) -> list[np.ndarray]:
        """Decode every pending frame of each stream (float32 chunks, in the order given). Streams
        of one decoder with as many pending frames run as one call."""
        out: list[Optional[np.ndarray]] = [None] * len(streams)
        groups: dict = {}
        for i, s in enumerate(streams):
            groups.setdefault((id(s.decoder), len(s.pending)), []).append(i)
        for (_, n), idx in groups.items():
            group = [streams[i] for i in idx]
            if n == 0:
                for i in idx:
                    out[i] = np.zeros(0, dtype=np.float32)
                continue
            decoder, device = group[0].decoder, group[0].device
            codes = torch.stack([torch.stack(s.pending, dim=1) for s in group]).to(device)  # [B, G, n]
            states = [s.state for s in group]
            state = DecoderStream.stack(states) if len(group) > 1 else states[0]
            wavs = decoder.decode_chunk(codes, state)[:, 0].float().cpu().numpy()
            if len(group) > 1:
                state.unstack(states)
            for i, s, wav in zip(idx, group, wavs):
                s.pending = []
                s.chunks += 1
                out[i] = wav
        return out  # type: ignore[return-value]

    def decode(self) -> np.ndarray:
        """This stream's pending frames as one chunk (empty when none are pending)."""
        return self.decode_due([self])[0]
