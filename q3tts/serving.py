"""Serving layer: many requests share each generation step (continuous batching).

One scheduler thread owns a batch of rows. Each step it runs the talker once for every active
row and the code predictor once for the batch, then hands each row's new frame to its job. A
new request joins at the next step (its prefill runs alone, straight into its cache slot); a row
that ends, or whose client went away, leaves at once and its slot is reused. Each job's frames
are decoded to audio in the same thread, chunk by chunk, as soon as a chunk is complete.

Rows are kept compact in cache slots 0..n-1: a leaving row's slot is filled by moving the last
row into it, so every step runs on plain [:n] views of the caches. Each row writes its own cache
slot and has its own RoPE position; a mask hides the slots a row has not written.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, Optional

import numpy as np
import torch

from .api import InputError, Qwen3TTS
from .codec.decoder import DecoderStream
from .engine import LengthCapWarning
from .layers import KVCache
from .prompt import Prompt, Utterance
from .sampling import SamplingOptions, choose

_END = object()
INITIAL_CACHE_LENGTH = 512  # slots; doubled when a row needs more


class QueueFull(RuntimeError):
    """Too many requests are waiting; try again later (HTTP 429)."""


class SchedulerClosed(RuntimeError):
    """The scheduler is shutting down (HTTP 503)."""


def _decode_chunks(jobs: list["SpeechJob"]) -> None:
    """Decode each job's pending frames into its next audio chunk. Jobs with as many pending frames
    (and the same decoder) share one decoder call, their streams stacked: one call over many rows
    costs little more than over one, where a call per job pays the per-op overheads each time."""
    groups: dict = {}
    for job in jobs:
        groups.setdefault((id(job.decoder), len(job._pending)), []).append(job)
    for group in groups.values():
        decoder = group[0].decoder
        device = next(decoder.parameters()).device
        codes = torch.stack([torch.stack(j._pending, dim=1) for j in group]).to(device)  # [B, G, n]
        streams = [j._stream for j in group]
        stacked = DecoderStream.stack(streams) if len(group) > 1 else streams[0]
        wavs = decoder.decode_chunk(codes, stacked)[:, 0].float().cpu().numpy()
        if len(group) > 1:
            stacked.unstack(streams)
        for job, wav in zip(group, wavs):
            job._pending = []
            job._chunks_sent += 1
            job.audio.put(wav)


class SpeechJob:
    """One request's audio. The scheduler thread generates its frames and decodes them into
    chunks; `chunks()` hands the chunks out as they come."""

    def __init__(self, scheduler: "SpeechScheduler", pieces: list[Prompt], opts: SamplingOptions, caps: list[int],
                 chunk_frames: int, first_chunk_frames: int, ref_codes: Optional[torch.Tensor]):  # fmt: skip
        self.scheduler = scheduler
        self.pieces, self.opts, self.caps = pieces, opts, caps
        self.chunk_frames, self.first_chunk_frames = chunk_frames, first_chunk_frames
        self.ref_codes = ref_codes
        self.decoder = scheduler.tts.checkpoint.speech_tokenizer.decoder
        self.sample_rate = scheduler.tts.sample_rate
        self.generator = None
        if opts.seed is not None:
            self.generator = torch.Generator(device=scheduler.tts.device).manual_seed(opts.seed)
        self.audio: queue.Queue = queue.Queue()  # float32 chunks, then _END
        self.cancelled = threading.Event()
        self.submitted_at = time.perf_counter()
        self.first_chunk_seconds: Optional[float] = None
        self.audio_seconds = 0.0
        self.frames_generated = 0
        self.finish_reason: Optional[str] = None  # "stop" (end of speech), "length", "cancelled", "error"
        self.error: Optional[BaseException] = None
        self._stream = None  # the codec decoder's state, created in the scheduler thread
        self._pending: list[torch.Tensor] = []
        self._chunks_sent = 0

    # -- scheduler side -------------------------------------------------------------------------
    # Decoding runs in the scheduler thread too: one thread doing all the torch work keeps the
    # CPU's intra-op thread pool from being oversubscribed by many concurrent decoders, which
    # measured 100x slower per chunk on 2 cores than decoding them one after another.
    def _start_stream(self) -> None:
        if self._stream is None:
            device = next(self.decoder.parameters()).device
            self._stream = self.decoder.new_stream(1)
            if self.ref_codes is not None:  # an in-context clone continues the reference's audio
                self.decoder.decode_chunk(self.ref_codes.T[None].to(device), self._stream)

    def _chunk_ready(self) -> bool:
        return len(self._pending) >= (self.first_chunk_frames if self._chunks_sent == 0 else self.chunk_frames)

    def _put(self, codes: torch.Tensor) -> None:
        self.frames_generated += 1
        self._pending.append(codes)

    def _finish(self, reason: str, error: Optional[BaseException] = None) -> None:
        if self.finish_reason is not None:
            return
        if self._pending and reason in ("stop", "length"):
            try:
                _decode_chunks([self])
            except Exception as e:  # noqa: BLE001 - reported to the consumer
                reason, error = "error", e
        self.finish_reason, self.error = reason, error
        self.audio.put(_END)

    # -- consumer side --------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating; the batch slot is freed at the next step."""
        self.cancelled.set()
        self.scheduler._wake()

    def chunks(self) -> Iterator[np.ndarray]:
        """Float32 audio chunks as frames are generated (the first after `first_chunk_frames`).
        Raises the scheduler's error if generation failed."""
        try:
            while True:
                wav = self.audio.get()
                if wav is _END:
                    break
                if self.first_chunk_seconds is None:
                    self.first_chunk_seconds = time.perf_counter() - self.submitted_at
                self.audio_seconds += wav.shape[0] / self.sample_rate
                yield wav
        finally:
            if self.finish_reason is None:  # the consumer stopped early
                self.cancel()
        if self.error is not None:
            raise self.error

    async def achunks(self) -> AsyncIterator[np.ndarray]:
        """`chunks()` for asyncio: the waiting runs in a worker thread."""
        it = self.chunks()
        try:
            while True:
                chunk = await asyncio.to_thread(next, it, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            if self.finish_reason is None:
                self.cancel()


@dataclass
class _Row:
    job: SpeechJob
    piece: int = 0
    prompt: Optional[Prompt] = None
    length: int = 0  # cache slots written = next write slot
    position: int = 0  # RoPE position of the next input
    step: int = 0  # talker steps taken in this piece
    emitted: int = 0  # frames emitted in this piece
    hidden: Optional[torch.Tensor] = None  # [H] talker output that predicts the next codebook 0
    seen: Optional[torch.Tensor] = None  # bool [V] codebook-0 ids generated in this piece
    next_codes: Optional[torch.Tensor] = None  # [G] the frame this step produced, fed to the talker next


@dataclass
class _Stats:
    requests: int = 0
    frames: int = 0
    steps: int = 0
    rows_per_step: float = 0.0
    errors: int = 0
    started: float = field(default_factory=time.time)


class SpeechScheduler:
    def __init__(self, tts: Qwen3TTS, max_batch: int = 16, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.tts = tts
        self.max_batch, self.max_queue = max_batch, max_queue
        self._waiting: "queue.Queue[SpeechJob]" = queue.Queue()
        self._rows: list[_Row] = []
        self._caches: Optional[list[KVCache]] = None
        self._cond = threading.Condition()
        self._closing = False
        self._thread: Optional[threading.Thread] = None
        self._stats = _Stats()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "SpeechScheduler":
        if self._thread is None:
            self.tts.load()
            self._thread = threading.Thread(target=self._run, name="q3tts-scheduler", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop: running and waiting jobs end with SchedulerClosed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> "SpeechScheduler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- requests -------------------------------------------------------------------------------
    def submit(self, utterance: Utterance, *, chunk_frames: int = 4, first_chunk_frames: int = 1,
               max_piece_tokens: Optional[int] = None, **gen_kwargs) -> SpeechJob:  # fmt: skip
        """Queue one utterance (see `Qwen3TTS.utterances`). Raises InputError for bad options,
        QueueFull when `max_queue` requests already wait, SchedulerClosed when shutting down."""
        if self._closing or self._thread is None:
            raise SchedulerClosed("the speech scheduler is not running")
        if chunk_frames < 1 or first_chunk_frames < 1:
            raise InputError("chunk sizes must be at least 1 frame")
        tts = self.tts
        opts = tts._options(gen_kwargs)
        self._check_room()  # early, before the prompt is built
        pieces = tts._pieces(utterance, max_piece_tokens)
        prompts = tts._prompts(pieces)  # built here, in the caller's thread, off the step loop
        caps = [min(c, opts.max_new_tokens - 1) for c in tts._caps(pieces)]
        job = SpeechJob(self, prompts, opts, caps, chunk_frames, first_chunk_frames, utterance.ref_codes)
        with self._cond:
            self._check_room()  # again, atomically with the put: concurrent submitters cannot overshoot
            self._stats.requests += 1
            self._waiting.put(job)
            self._cond.notify_all()
        return job

    def _check_room(self) -> None:
        waiting = self._waiting.qsize()
        if waiting >= self.max_queue and len(self._rows) + waiting >= self.max_batch:
            raise QueueFull(f"{waiting} requests are already waiting; try again later")

    def stats(self) -> dict:
        s = self._stats
        return {
            "active": len(self._rows),
            "queued": self._waiting.qsize(),
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            "requests": s.requests,
            "frames_generated": s.frames,
            "steps": s.steps,
            "mean_rows_per_step": s.rows_per_step / s.steps if s.steps else 0.0,
            "errors": s.errors,
        }

    # -- the step loop --------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._closing and not self._rows and self._waiting.empty():
                    self._cond.wait(timeout=1.0)
                if self._closing:
                    break
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    self._admit()
                    if self._rows:
                        self._step()
            except Exception as e:  # a failed step fails its rows, not the server
                self._stats.errors += 1
                for row in self._rows:
                    row.job._finish("error", e)
                self._rows.clear()
        closed = SchedulerClosed("the speech scheduler shut down")
        for row in self._rows:
            row.job._finish("cancelled", closed)
        self._rows.clear()
        while not self._waiting.empty():
            self._waiting.get()._finish("cancelled", closed)

    @property
    def _engine(self):
        return self.tts.engine

    def _cache_views(self, n: int, start: int = 0) -> list[KVCache]:
        return [KVCache(c.k[start : start + n], c.v[start : start + n]) for c in self._caches]

    def _ensure_cache(self, length: int) -> None:
        """Caches for max_batch rows of at least `length` slots (grown by doubling, contents kept)."""
        current = self._caches[0].k.shape[2] if self._caches else 0
        if length <= current:
            return
        new_length = max(INITIAL_CACHE_LENGTH, current)
        while new_length < length:
            new_length *= 2
        fresh = self._engine.talker.new_caches(self.max_batch, new_length)
        if self._caches:
            for old, new in zip(self._caches, fresh):
                new.k[:, :, :current] = old.k
                new.v[:, :, :current] = old.v
        self._caches = fresh

    def _drop_cancelled(self) -> None:
        for i in reversed(range(len(self._rows))):
            if self._rows[i].job.cancelled.is_set():
                self._rows[i].job._finish("cancelled")
                self._remove(i)

    def _remove(self, i: int) -> None:
        last = len(self._rows) - 1
        if i != last:  # keep rows compact: move the last row's cache into slot i
            for c in self._caches:
                c.k[i] = c.k[last]
                c.v[i] = c.v[last]
            self._rows[i] = self._rows[last]
        self._rows.pop()

    def _admit(self) -> None:
        while len(self._rows) < self.max_batch and not self._waiting.empty():
            job = self._waiting.get()
            if job.cancelled.is_set():
                job._finish("cancelled")
                continue
            row = _Row(job)
            self._rows.append(row)
            try:
                job._start_stream()
                self._prefill(len(self._rows) - 1, row)
            except Exception as e:
                self._stats.errors += 1
                self._rows.pop()
                job._finish("error", e)

    def _prefill(self, slot: int, row: _Row) -> None:
        """Start `row`'s current piece in cache slot `slot`: run its prompt alone."""
        eng = self._engine
        prompt = row.job.pieces[row.piece]
        T = prompt.prefill.shape[0]
        self._ensure_cache(T + row.job.caps[row.piece] + 2)
        slots = torch.arange(T, device=eng.device)
        mask = (slots[None, :] <= slots[:, None])[None, None]
        hidden = eng.talker(prompt.prefill[None].to(eng.dtype), slots[None], mask, self._cache_views(1, slot), slots)
        row.prompt, row.length, row.position, row.step, row.emitted = prompt, T, T, 0, 0
        row.hidden = hidden[0, -1]
        row.seen = torch.zeros(eng.config.talker.vocab_size, dtype=torch.bool, device=eng.device)

    def _choose_code0(self, logits: torch.Tensor) -> torch.Tensor:
        """Codebook 0 for every row: each row's repetition penalty and EOS rule, then its sampler."""
        eng, rows = self._engine, self._rows
        logits = logits.float()
        penalty = torch.tensor([r.job.opts.repetition_penalty for r in rows], device=logits.device)[:, None]
        seen = torch.stack([r.seen for r in rows])
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        scores = torch.where(seen, penalised, logits).masked_fill(eng.suppress, float("-inf"))
        too_early = torch.tensor([r.step < r.job.opts.min_new_tokens for r in rows], device=logits.device)
        scores[:, eng.eos] = scores[:, eng.eos].masked_fill(too_early, float("-inf"))
        return self._choose_grouped(scores, lambda o: (o.greedy, o.temperature, o.top_k, o.top_p))

    def _pick_rest(self, logits: torch.Tensor, g: int) -> torch.Tensor:
        return self._choose_grouped(logits, lambda o: (o.subtalker_greedy, o.subtalker_temperature,
                                                       o.subtalker_top_k, o.subtalker_top_p))  # fmt: skip

    def _choose_grouped(self, scores: torch.Tensor, settings) -> torch.Tensor:
        """Ids [B] from scores [B, V]: rows whose sampler `settings(opts)` agree and that have no
        private generator share one call; a seeded row draws from its own generator."""
        groups: dict = {}
        for i, row in enumerate(self._rows):
            key = settings(row.job.opts) if row.job.generator is None else ("own", i)
            groups.setdefault(key, []).append(i)
        out = None
        for idx in groups.values():
            job = self._rows[idx[0]].job
            greedy, temperature, top_k, top_p = settings(job.opts)
            if len(groups) == 1:
                return choose(scores, greedy, temperature, top_k, top_p, job.generator)
            if out is None:
                out = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
            sel = torch.tensor(idx, device=scores.device)
            out[sel] = choose(scores[sel], greedy, temperature, top_k, top_p, job.generator)
        return out

    def _step(self) -> None:
        eng = self._engine
        rows = self._rows
        hidden = torch.stack([r.hidden for r in rows])  # [B, H]
        code0 = self._choose_code0(eng.talker.codec_head(hidden))
        ends = []  # (row index, reason)
        for i, row in enumerate(rows):
            row.seen[code0[i]] = True
            if int(code0[i]) == eng.eos:
                ends.append((i, "stop"))
            elif row.emitted >= row.job.caps[row.piece]:
                ends.append((i, "length"))
        ending = {i for i, _ in ends}
        codes = eng.predict_rest(hidden, code0, self._pick_rest)  # [B, G]
        codes_cpu = codes.cpu()
        for i, row in enumerate(rows):
            if i not in ending:
                row.job._put(codes_cpu[i])
                row.emitted += 1
        ready = [r.job for i, r in enumerate(rows) if i not in ending and r.job._chunk_ready()]
        if ready:
            _decode_chunks(ready)
        self._stats.steps += 1
        self._stats.rows_per_step += len(rows)
        self._stats.frames += len(rows) - len(ending)

        for i, row in enumerate(rows):
            row.next_codes = None if i in ending else codes[i]
        # Rows that end leave (or start their next piece) before the talker step.
        for i, reason in sorted(ends, reverse=True):
            row = rows[i]
            if reason == "length":
                warnings.warn(f"a request reached its length limit ({row.emitted} frames) without an end-of-speech "
                              "token; its audio was cut there", LengthCapWarning, stacklevel=1)  # fmt: skip
            if row.piece + 1 < len(row.job.pieces):
                row.piece += 1
                self._prefill(i, row)
            else:
                row.job._finish(reason)
                self._remove(i)
        if any(r.next_codes is not None for r in self._rows):
            self._talker_step()

    def _talker_step(self) -> None:
        """Feed each row's new frame (plus its next text-track vector) to the talker, one batch.
        A row that has just started a piece has no frame yet: it rides along with a dummy input
        whose cache write lands in the slot its real next step overwrites, and keeps its state."""
        eng = self._engine
        rows = self._rows
        n, dev = len(rows), eng.device
        dummy = torch.zeros(eng.groups, dtype=torch.long, device=dev)
        frame = eng.talker.embed_frame(torch.stack([dummy if r.next_codes is None else r.next_codes for r in rows]))
        text = torch.stack([r.prompt.trailing[r.step] if r.step < r.prompt.trailing.shape[0] else r.prompt.pad
                            for r in rows])  # fmt: skip
        write = torch.tensor([r.length for r in rows], device=dev)[:, None]  # [n, 1] cache slot per row
        positions = torch.tensor([r.position for r in rows], device=dev)[:, None]
        keys = torch.arange(int(write.max()) + 1, device=dev)
        mask = (keys[None, :] <= write)[:, None, None, :]  # [n, 1, 1, W]: a row sees the slots it wrote
        hidden = eng.talker((frame + text.to(frame.dtype))[:, None], positions, mask, self._cache_views(n), write)
        for i, row in enumerate(rows):
            if row.next_codes is not None:
                row.hidden = hidden[i, -1]
                row.length += 1
                row.position += 1
                row.step += 1
                row.next_codes = None
