"""Pitch-preserving speed change (OpenAI's `speed`, 0.25-4.0): WSOLA time-scale modification,
streaming, with the same output whatever the chunking.

    stretch = TimeStretch(2.0)                    # twice as fast, same pitch
    for chunk in chunks: out = stretch.push(chunk)    # whatever output is final so far
    out = stretch.finish()                        # the rest
    time_stretch(wav, 0.5)                        # the same, in one call

WSOLA (waveform-similarity overlap-add): output frames of N samples overlap by half (a Hann
window, whose half-overlapped copies sum to 1). Output frame k copies the input around k * Ha
(Ha = speed * N/2), shifted by up to +-TOLERANCE samples to where the input looks most like the
natural continuation of the frame copied before it (the highest cross-correlation), so periods line
up and the pitch stays. Each frame waits until the input it may read has arrived; a sample leaves
once no later frame can add to it, so the stream is the offline result cut at other places: no
seams at chunk borders. Output length is round(input length / speed), exactly.
"""

from __future__ import annotations

import numpy as np

FRAME = 960  # samples per WSOLA frame at 24 kHz: 40 ms, two periods of a 50 Hz voice
HOP = FRAME // 2  # output hop: 20 ms
TOLERANCE = 240  # search +-10 ms: one period of a 100 Hz voice, so any voice's periods can line up
MIN_SPEED, MAX_SPEED = 0.25, 4.0
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)  # periodic Hann: copies at HOP sum to 1


class TimeStretch:
    """One stream's speed change; `push` float audio chunks, then `finish()` once."""

    def __init__(self, speed: float):
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
        self.speed = float(speed)
        self.analysis_hop = self.speed * HOP
        # The input is read as FRAME/2 zeros then the audio, so the first frame's fade-in falls on
        # the zeros; the output samples those zeros make (`trim`) are dropped.
        self._x = np.zeros(FRAME // 2)  # input not yet consumed; _x[0] is virtual index _x_start
        self._x_start = 0
        self._received = 0  # real input samples pushed
        self._y = np.zeros(FRAME)  # output being summed; _y[0] is output index _y_start
        self._y_start = 0
        self._k = 0  # next frame
        self._prev = 0  # virtual input index where the previous frame was copied from
        self._trim = round(FRAME / 2 / self.speed)
        self._emitted = 0  # output samples handed out (after the trim)
        self._finished = False

    def push(self, audio: np.ndarray) -> np.ndarray:
        """Add input; returns the output samples that are final now (float32, maybe empty)."""
        if self._finished:
            raise RuntimeError("push after finish")
        audio = np.asarray(audio, dtype=np.float64).reshape(-1)
        if self.speed == 1.0:
            self._received += audio.size
            return audio.astype(np.float32)
        self._x = np.concatenate([self._x, audio])
        self._received += audio.size
        self._run(self._x_start + self._x.size)
        # Never past what the input so far is sure to give (the final length is round(n / speed)).
        return self._emit(int(self._received // self.speed))

    def finish(self) -> np.ndarray:
        """The rest of the output: the total is round(input samples / speed)."""
        if self._finished:
            return np.zeros(0, np.float32)
        self._finished = True
        if self.speed == 1.0:
            return np.zeros(0, np.float32)
        total = round(self._received / self.speed)
        # Zeros after the end, enough for every frame that reaches the last output sample.
        end = self._x_start + self._x.size
        frames_needed = -(-(self._trim + total) // HOP)
        need = self._frame_need(frames_needed) + FRAME
        self._x = np.concatenate([self._x, np.zeros(max(0, need - end))])
        self._run(self._x_start + self._x.size, until_frame=frames_needed)
        return self._emit(total)

    # -- the frames ---------------------------------------------------------------------------------
    def _nominal(self, k: int) -> int:
        return int(round(k * self.analysis_hop))

    def _frame_need(self, k: int) -> int:
        """The virtual input end frame k may read (its search region; its template lies within)."""
        return self._nominal(k) + TOLERANCE + FRAME

    def _run(self, available: int, until_frame: int | None = None) -> None:
        while (until_frame is None or self._k <= until_frame) and self._frame_ready(available):
            self._add_frame()

    def _frame_ready(self, available: int) -> bool:
        k = self._k
        need = max(self._frame_need(k), self._prev + HOP + FRAME if k else FRAME)
        return available >= need

    def _add_frame(self) -> None:
        k, x, x0 = self._k, self._x, self._x_start
        if k == 0:
            pos = 0
        else:
            template = x[self._prev + HOP - x0 : self._prev + HOP + FRAME - x0]
            lo = max(0, self._nominal(k) - TOLERANCE)
            region = x[lo - x0 : self._nominal(k) + TOLERANCE + FRAME - x0]
            pos = lo + int(np.argmax(np.correlate(region, template, mode="valid")))
        out_at = k * HOP - self._y_start
        if self._y.size < out_at + FRAME:  # doubling: a whole clip pushed at once grows it ~log(n) times
            self._y = np.concatenate([self._y, np.zeros(max(out_at + FRAME, 2 * self._y.size) - self._y.size)])
        self._y[out_at : out_at + FRAME] += _WINDOW * x[pos - x0 : pos + FRAME - x0]
        self._prev, self._k = pos, k + 1
        # Input before both the next search region and the next template is never read again.
        keep = min(max(0, self._nominal(k + 1) - TOLERANCE), pos + HOP)
        if keep > x0:
            self._x, self._x_start = x[keep - x0 :], keep

    def _emit(self, limit: int) -> np.ndarray:
        """Final output samples (those before frame k's start) up to real output index `limit`."""
        final = self._k * HOP  # output indices below this get no more frames
        stop = min(final, self._trim + limit)
        start = self._trim + self._emitted
        if stop <= start:
            return np.zeros(0, np.float32)
        out = self._y[start - self._y_start : stop - self._y_start]
        if out.size < stop - start:  # past the last frame's end (only at finish): silence
            out = np.concatenate([out, np.zeros(stop - start - out.size)])
        self._emitted += stop - start
        drop = min(stop, final) - self._y_start
        if drop > 0:
            self._y, self._y_start = self._y[drop:], self._y_start + drop
        return out.astype(np.float32)


def time_stretch(audio: np.ndarray, speed: float) -> np.ndarray:
    """The whole clip at `speed` (pitch kept): what the stream gives, in one call."""
    stretch = TimeStretch(speed)
    return np.concatenate([stretch.push(audio), stretch.finish()])
