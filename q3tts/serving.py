"""Serving layer: a thread and a queue around the decode core (decode.py), for many requests at once.

One scheduler thread owns one DecodeBatch of `max_batch` slots, the same core `Engine.frames` runs
for the Python API (fixed-shape steps replayed as CUDA graphs on CUDA, eager steps on CPU). Between
steps it drops cancelled rows and admits waiting requests (their prefills batched into one
forward); each step makes one frame for every row. A row that ends leaves its slot at once; a long
text's next piece joins as a new row with the same codec stream. Each job's frames become audio in
the same thread (codec_stream.py), the due chunks of all jobs decoded in one batched call.
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

from .api import GenerationPlan, Qwen3TTS
from .errors import InputError, Q3TTSError
from .generate.codec_stream import DEFAULT_CHUNK_FRAMES, CodecStream
from .generate.decode import DecodeBatch, RowRequest
from .generate.engine import LengthCapWarning, length_cap_message
from .generate.openmp import release_idle_workers
from .generate.prompt import Utterance
from .generate.sampling import SamplingOptions

_END = object()
# Prompt positions a joining request's prefill runs per step while other rows generate. On CPU a
# decode step of the 0.6B int8 model costs about as much as a prefill of this many positions.
PREFILL_CHUNK_TOKENS_CPU = 64
PREFILL_CHUNK_TOKENS_CUDA = 512


class QueueFull(Q3TTSError, RuntimeError):
    """Too many requests are waiting; try again later (HTTP 429)."""


class SchedulerClosed(Q3TTSError, RuntimeError):
    """The scheduler is shutting down (HTTP 503)."""


class SpeechJob:
    """One request's audio. The scheduler thread generates its frames and decodes them into
    chunks; `chunks()` hands the chunks out as they come."""

    def __init__(self, scheduler: "SpeechScheduler", plan: GenerationPlan, chunk_frames: int, first_chunk_frames: int):
        self.scheduler = scheduler
        self.plan = plan
        self.chunk_frames, self.first_chunk_frames = chunk_frames, first_chunk_frames
        self.sample_rate = scheduler.tts.sample_rate
        self.generator = scheduler.tts.generator(plan.opts)
        self.piece = 0  # the piece of the text being generated
        self.audio: queue.Queue = queue.Queue()  # float32 chunks, then _END
        self.cancelled = threading.Event()
        self.submitted_at = time.perf_counter()
        self.admitted_at: Optional[float] = None  # when its first piece joined the batch
        self.first_chunk_seconds: Optional[float] = None
        self.audio_seconds = 0.0
        self.frames_generated = 0
        self.finish_reason: Optional[str] = None  # "stop" (end of speech), "length", "cancelled", "error"
        self.error: Optional[BaseException] = None
        self.stream: Optional[CodecStream] = None  # made in the scheduler thread: priming runs the codec
        self.frames: list[torch.Tensor] = []  # [G] codes of every frame generated (128 bytes each)

    @property
    def opts(self) -> SamplingOptions:
        return self.plan.opts

    @property
    def queue_seconds(self) -> Optional[float]:
        """Seconds between submit and joining the batch (None while still waiting, or never admitted)."""
        return None if self.admitted_at is None else self.admitted_at - self.submitted_at

    # -- scheduler side -------------------------------------------------------------------------
    # Decoding runs in the scheduler thread too: one thread doing all the torch work keeps the
    # CPU's intra-op thread pool from being oversubscribed by many concurrent decoders, which
    # measured 100x slower per chunk on 2 cores than decoding them one after another.
    def _request(self) -> RowRequest:
        """The row for the current piece."""
        p = self.plan
        return RowRequest(p.prompts[self.piece], p.opts, p.caps[self.piece], self.generator, tag=self)

    def _finish(self, reason: str, error: Optional[BaseException] = None) -> None:
        if self.finish_reason is None:
            self.finish_reason, self.error = reason, error
            self.audio.put(_END)

    # -- consumer side --------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """The codes generated so far, [frames, G] int64."""
        G = self.scheduler.tts.checkpoint.config.talker.num_code_groups
        return torch.stack(self.frames) if self.frames else torch.zeros(0, G, dtype=torch.long)

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
class _Stats:
    requests: int = 0
    frames: int = 0
    steps: int = 0
    rows_per_step: float = 0.0
    errors: int = 0
    started: float = field(default_factory=time.time)


class SpeechScheduler:
    """`static`: the decode steps' form, as `Engine(static=...)`: "auto" (CUDA graphs on CUDA),
    "off" (eager steps), "eager" (fixed-shape steps without graphs); None follows the model's."""

    def __init__(self, tts: Qwen3TTS, max_batch: int = 16, max_queue: int = 64, static: Optional[str] = None,
                 prefill_chunk_tokens: Optional[int] = None):  # fmt: skip
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        if static not in (None, "auto", "off", "eager"):
            raise ValueError(f"static must be auto, off or eager, got {static!r}")
        self.tts = tts
        self.max_batch, self.max_queue, self.static = max_batch, max_queue, static
        # A joining prompt longer than this runs in pieces of this many positions between steps.
        self.prefill_chunk_tokens = prefill_chunk_tokens or (
            PREFILL_CHUNK_TOKENS_CUDA if tts.device.type == "cuda" else PREFILL_CHUNK_TOKENS_CPU
        )
        self._waiting: queue.Queue[SpeechJob] = queue.Queue()
        self._next_pieces: list[SpeechJob] = []  # jobs whose next piece joins at the next admission
        self._batch: Optional[DecodeBatch] = None
        self._cond = threading.Condition()
        self._closing = False
        self._thread: Optional[threading.Thread] = None
        self._stats = _Stats()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "SpeechScheduler":
        if self._thread is None:
            engine = self.tts.load().engine
            if self.static is None:
                self._batch = engine.new_batch(self.max_batch)
            else:
                fixed = self.static == "eager" or (self.static == "auto" and engine.device.type == "cuda")
                self._batch = DecodeBatch(engine, self.max_batch, fixed_shape=fixed, graphs=self.static == "auto")
            self._thread = threading.Thread(target=self._run, name="q3tts-scheduler", daemon=True)
            release_idle_workers()  # the loading thread's team would throttle the decode thread's (openmp.py)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop: running and waiting jobs end with SchedulerClosed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if not self._thread.is_alive():  # the batch's caches and engine (the weights) go with it
                self._batch = None
            self._thread = None

    def __enter__(self) -> "SpeechScheduler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- requests -------------------------------------------------------------------------------
    def submit(self, utterance: Utterance, *, chunk_frames: int = DEFAULT_CHUNK_FRAMES, first_chunk_frames: int = 1,
               max_piece_tokens: Optional[int] = None, **gen_kwargs) -> SpeechJob:  # fmt: skip
        """Queue one utterance (see `Qwen3TTS.utterances`). Raises InputError for bad options,
        QueueFull when `max_queue` requests already wait, SchedulerClosed when shutting down."""
        if self._closing or self._thread is None:
            raise SchedulerClosed("the speech scheduler is not running")
        if chunk_frames < 1 or first_chunk_frames < 1:
            raise InputError("chunk sizes must be at least 1 frame")
        opts = self.tts.options(**gen_kwargs)
        self._check_room()  # early, before the prompt is built
        try:
            plan = self.tts.plan(utterance, max_piece_tokens, opts)  # in the caller's thread, off the step loop
        finally:
            release_idle_workers()  # the prompt's ops gave this thread OpenMP workers (openmp.py)
        job = SpeechJob(self, plan, chunk_frames, first_chunk_frames)
        with self._cond:
            self._check_room()  # again, atomically with the put: concurrent submitters cannot overshoot
            self._stats.requests += 1
            self._waiting.put(job)
            self._cond.notify_all()
        return job

    def _check_room(self) -> None:
        waiting = self._waiting.qsize()
        active = len(self._batch) if self._batch is not None else 0
        if waiting >= self.max_queue and active + waiting >= self.max_batch:
            raise QueueFull(f"{waiting} requests are already waiting; try again later")

    def stats(self) -> dict:
        s = self._stats
        return {
            "active": len(self._batch) if self._batch is not None else 0,
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
        batch = self._batch
        assert batch is not None
        while True:
            with self._cond:
                if self._idle(batch):  # other threads' torch work must not find our workers holding CPUs
                    release_idle_workers()
                while self._idle(batch):
                    self._cond.wait(timeout=1.0)
                if self._closing:
                    break
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    self._admit()
                    if batch.prefilling:  # with no row running, nobody waits: the whole prompt at once
                        batch.advance_prefills(self.prefill_chunk_tokens if len(batch) else None)
                    if len(batch):
                        self._step()
            except Exception as e:  # a failed step fails its rows, not the server
                self._stats.errors += 1
                self._fail_all(e, "error")
        self._fail_all(SchedulerClosed("the speech scheduler shut down"), "cancelled")
        while not self._waiting.empty():
            self._waiting.get()._finish("cancelled", SchedulerClosed("the speech scheduler shut down"))

    def _idle(self, batch: DecodeBatch) -> bool:
        return (not self._closing and not len(batch) and not batch.prefilling and not self._next_pieces
                and self._waiting.empty())  # fmt: skip

    def _fail_all(self, error: BaseException, reason: str) -> None:
        batch = self._batch
        for slot, job in batch.tags():
            batch.leave(slot)
            job._finish(reason, error)
        for job in self._next_pieces:
            job._finish(reason, error)
        self._next_pieces = []

    def _drop_cancelled(self) -> None:
        for slot, job in self._batch.tags():
            if job.cancelled.is_set():
                self._batch.leave(slot)
                job._finish("cancelled")
        for job in [j for j in self._next_pieces if j.cancelled.is_set()]:
            self._next_pieces.remove(job)
            job._finish("cancelled")

    def _admit(self) -> None:
        """The next pieces of running texts, then waiting requests, into the free slots: one prefill."""
        batch = self._batch
        joining, self._next_pieces = self._next_pieces, []
        while len(joining) < batch.free and not self._waiting.empty():
            job = self._waiting.get()
            if job.cancelled.is_set():
                job._finish("cancelled")
                continue
            try:
                job.stream = CodecStream(job.scheduler.tts.checkpoint.speech_tokenizer.decoder, job.plan.ref_codes,
                                         job.chunk_frames, job.first_chunk_frames)  # fmt: skip
            except Exception as e:
                self._stats.errors += 1
                job._finish("error", e)
                continue
            job.admitted_at = time.perf_counter()
            joining.append(job)
        if joining:
            try:
                chunk = self.prefill_chunk_tokens if len(batch) else None
                batch.admit([job._request() for job in joining], chunk_tokens=chunk)
            except Exception as e:
                self._stats.errors += 1
                for job in joining:
                    job._finish("error", e)

    def _step(self) -> None:
        events = self._batch.step()
        self._stats.steps += 1
        self._stats.rows_per_step += len(events)
        due, ended = [], []
        for e in events:
            job: SpeechJob = e.tag
            if e.codes is not None:
                self._stats.frames += 1
                job.frames_generated += 1
                job.frames.append(e.codes)
                job.stream.push(e.codes)
                if job.stream.due:
                    due.append(job)
                continue
            if e.end == "length":
                warnings.warn(length_cap_message(e.frames, job.opts.max_new_tokens), LengthCapWarning, stacklevel=1)
            if job.piece + 1 < len(job.plan.prompts):
                job.piece += 1  # the codec stream runs on: the join decodes like any two frames
                self._next_pieces.append(job)
            else:
                ended.append((job, e.end))
        flushing = due + [job for job, _ in ended if job.stream.pending]
        try:
            chunks = CodecStream.decode_due([job.stream for job in flushing])
        except Exception as e:  # the codec failed: these jobs fail, the others run on
            self._stats.errors += 1
            slots = {id(job): slot for slot, job in self._batch.tags()}
            for job in flushing:
                if id(job) in slots:
                    self._batch.leave(slots[id(job)])
                job._finish("error", e)
            chunks = []
        for job, chunk in zip(flushing, chunks):
            job.audio.put(chunk)
        for job, reason in ended:
            job._finish(reason)
