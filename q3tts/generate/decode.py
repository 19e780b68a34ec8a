"""The decode core: a batch of rows in cache slots, one frame per row per step.

Every generation runs here: `Engine.frames` admits all its rows at once and steps until none is
left; the server's scheduler keeps one batch alive and admits requests between steps. A row has
its own prompt, RoPE position, cache write slot, sampling options, generator, length cap and
end-of-speech state, so rows of different requests share each step and still get what they
would get alone.

Slots. A row keeps its slot from admission to its end; a slot that frees up is a *hole* until a
new row takes it. Steps run over slots [0, high) where `high` is one past the highest row, so
holes below it ride along (their inputs frozen, their writes overwriting one slot) and nothing
is ever moved between slots: moving a row's cache costs a copy of its whole history.

One host synchronisation per step. End-of-speech and caps are decided on the device; the frame's
codes and both end flags come back to the host in one copy. Counters that only ever advance by
one per step (write slot, RoPE position, step count) are mirrored on the host instead of read back.

The steps themselves come in two forms with the same methods (steps.py): EagerSteps, over the rows
and cache slots in use, and FixedShapeSteps, over bucketed batch sizes and the whole cache,
replayed as CUDA graphs on CUDA.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..nn.layers import causal_mask
from .prompt import Prompt
from .sampling import SamplingOptions, choose
from .steps import CACHE_BUCKET, EagerSteps, FixedShapeSteps, SamplerRows


@dataclass
class RowRequest:
    """What a row needs to run: its prompt, options, frame cap and random generator."""

    prompt: Prompt
    opts: SamplingOptions
    cap: int  # frames it may emit; reaching it without end-of-speech ends it with reason "length"
    generator: Optional[torch.Generator] = None  # None: torch's global RNG
    tag: Any = None  # the caller's handle, handed back with the row's events


@dataclass
class RowEvent:
    """One row's outcome of a step: a frame, or its end ("stop": end-of-speech, "length": its cap)."""

    slot: int
    tag: Any
    codes: Optional[torch.Tensor]  # [G] int64 on the host; None when the row ended
    end: Optional[str] = None
    frames: int = 0  # frames the row has emitted, this one included


@dataclass
class _Row:
    request: RowRequest
    emitted: int = 0  # frames emitted (host mirror)


@dataclass
class _Prefill:
    requests: list[Optional[RowRequest]]  # None: the row left before its prompt was done
    slots: list[int]
    lengths: list[int]  # prompt lengths (the batch is left-padded to the longest)
    prefill: torch.Tensor  # [k, T, H]
    valid: torch.Tensor  # bool [k, T]
    scratch: list  # the joiners' own KV caches, [k, ..., T, ...]
    done: int = 0  # prompt positions run so far


def _bucket(n: int, unit: int) -> int:
    return -(-n // unit) * unit


class DecodeBatch:
    """Rows in `capacity` cache slots; `admit` between steps, `step` for one frame of every row.

    `fixed_shape`: the steps run over bucketed batch sizes and the whole cache (CUDA graphs on
    CUDA, `graphs=False` to run them eagerly, as the CPU tests do). Not thread-safe: one owner."""

    def __init__(self, engine, capacity: int, fixed_shape: bool = False, graphs: bool = True):
        assert capacity >= 1, "a batch needs at least one slot"
        self.engine, self.capacity = engine, capacity
        self.device, self.dtype = engine.device, engine.dtype
        talker = engine.talker
        C, H = capacity, talker.cfg.hidden_size
        self.vocab = engine.config.talker.vocab_size
        self.length = 0  # cache slots per row; grown on demand
        self.caches: list = []
        self.valid = torch.zeros(C, 0, dtype=torch.bool, device=self.device)
        self.cp_caches = engine.predictor.new_caches(C)
        self.hidden = torch.zeros(C, H, dtype=self.dtype, device=self.device)
        self.seen = torch.zeros(C, self.vocab, dtype=torch.bool, device=self.device)
        self.steps_done = torch.zeros(C, dtype=torch.long, device=self.device)
        self.emitted = torch.zeros(C, dtype=torch.long, device=self.device)
        self.cap = torch.zeros(C, dtype=torch.long, device=self.device)
        self.min_new = torch.zeros(C, dtype=torch.long, device=self.device)
        self.penalty = torch.ones(C, 1, dtype=torch.float32, device=self.device)
        self.write = torch.zeros(C, dtype=torch.long, device=self.device)
        self.position = torch.zeros(C, dtype=torch.long, device=self.device)
        self.active = torch.zeros(C, dtype=torch.bool, device=self.device)
        # Each row's text track: trailing[i, :n_i] then its pad vector at [i, n_i]; step s reads min(s, n_i).
        self.text_track = torch.zeros(C, 1, H, dtype=self.dtype, device=self.device)
        self.text_len = torch.zeros(C, dtype=torch.long, device=self.device)
        self.codes = torch.zeros(C, engine.groups, dtype=torch.long, device=self.device)
        self.sub_sampler = SamplerRows(C, self.device)
        self.rows: list[Optional[_Row]] = [None] * C
        # Host mirror of `write`, holes included (a hole keeps writing its last slot): the eager
        # talker step attends over [0, max + 1) without reading anything back.
        self.slot_write = [0] * C
        self._prefills: list[_Prefill] = []  # joiners whose prompts are being run, oldest first
        self._reserved: set[int] = set()  # their slots
        self._code0_groups: list = []
        self._sub_groups: list = []
        self.steps = FixedShapeSteps(self, graphs) if fixed_shape else EagerSteps(self)

    # -- occupancy ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(r is not None for r in self.rows)

    @property
    def free(self) -> int:
        return self.capacity - len(self) - len(self._reserved)

    @property
    def high(self) -> int:
        """One past the highest occupied slot: steps run over slots [0, high)."""
        return max((i + 1 for i, r in enumerate(self.rows) if r is not None), default=0)

    def tags(self) -> list[tuple[int, Any]]:
        """(slot, tag) of every row, those still being prefilled included."""
        rows = [(i, r.request.tag) for i, r in enumerate(self.rows) if r is not None]
        for p in self._prefills:
            rows += [(slot, req.tag) for slot, req in zip(p.slots, p.requests) if req is not None]
        return rows

    # -- admission ------------------------------------------------------------------------------
    @torch.inference_mode()
    def admit(self, requests: list[RowRequest], chunk_tokens: Optional[int] = None) -> list[int]:
        """Prefill `requests` together (left-padded) into free slots; returns their slots.

        With `chunk_tokens`, a prompt longer than that is not run at once: the slots are reserved
        and `advance_prefills` runs the prompts `chunk_tokens` positions at a time between steps,
        so the running rows wait for at most one chunk per step. The rows join when it is done."""
        if not requests:
            return []
        if len(requests) > self.free:
            raise RuntimeError(f"{len(requests)} rows do not fit in {self.free} free slots")
        slots = [i for i, r in enumerate(self.rows) if r is None and i not in self._reserved][: len(requests)]
        lengths = [r.prompt.prefill.shape[0] for r in requests]
        T = max(lengths)
        k, H = len(requests), self.hidden.shape[1]
        prefill = torch.zeros(k, T, H, dtype=self.dtype, device=self.device)
        valid = torch.zeros(k, T, dtype=torch.bool, device=self.device)
        for j, (req, n) in enumerate(zip(requests, lengths)):
            prefill[j, T - n :] = req.prompt.prefill
            valid[j, T - n :] = True
        # The joiners' prompts run as one batch over a cache of their own, then land in their slots.
        pending = _Prefill(list(requests), slots, lengths, prefill, valid, self.engine.talker.new_caches(k, T))
        self._prefills.append(pending)
        self._reserved.update(slots)
        if chunk_tokens is None or T <= chunk_tokens:
            self._advance(pending, T)
        return slots

    @property
    def prefilling(self) -> int:
        """Rows whose prompts are still being prefilled."""
        return len(self._reserved)

    @torch.inference_mode()
    def advance_prefills(self, chunk_tokens: Optional[int] = None) -> list[int]:
        """Run the next `chunk_tokens` prompt positions (all, with None) of the oldest pending
        prefill; returns the slots of the rows that joined."""
        if not self._prefills:
            return []
        pending = self._prefills[0]
        T = pending.prefill.shape[1]
        return self._advance(pending, T if chunk_tokens is None else min(T, pending.done + chunk_tokens))

    def _advance(self, p: "_Prefill", end: int) -> list[int]:
        T = p.prefill.shape[1]
        ar = torch.arange(T, device=self.device)
        query = ar[p.done : end]
        positions = (p.valid.long().cumsum(-1) - 1).masked_fill(~p.valid, 1)[:, p.done : end]
        mask = causal_mask(query, ar[:end], p.valid[:, :end])
        out = self.engine.talker(p.prefill[:, p.done : end], positions, mask, p.scratch, query)[:, -1]
        p.done = end
        if end < T:
            return []
        self._prefills.remove(p)
        self._reserved.difference_update(p.slots)
        kept = [j for j, req in enumerate(p.requests) if req is not None]  # None: left while prefilling
        if not kept:
            return []
        return self._land(p, kept, out)

    def _land(self, p: "_Prefill", kept: list[int], out: torch.Tensor) -> list[int]:
        """Rows whose prompts are done take their slots: caches, state and settings."""
        requests = [p.requests[j] for j in kept]
        slots = [p.slots[j] for j in kept]
        T = p.prefill.shape[1]
        self._ensure_length(max(T + r.cap + 2 for r in requests))  # prompt, every frame, a spare
        self._ensure_text(max(r.prompt.trailing.shape[0] for r in requests) + 1)
        index = torch.tensor(slots, device=self.device)
        rows = torch.tensor(kept, device=self.device)
        for big, small in zip(self.caches, p.scratch):
            big.k[index, :, :T] = small.k[rows]
            big.v[index, :, :T] = small.v[rows]
        self.valid[index] = False
        self.valid[index, :T] = p.valid[rows]
        self.hidden[index] = out[rows]
        self.seen[index] = False
        self.steps_done[index] = 0
        self.emitted[index] = 0
        self.write[index] = T
        self.position[index] = torch.tensor([p.lengths[j] for j in kept], device=self.device)
        self.active[index] = True
        for slot, req in zip(slots, requests):
            o, prompt = req.opts, req.prompt
            self.cap[slot] = req.cap
            self.min_new[slot] = o.min_new_tokens
            self.penalty[slot] = o.repetition_penalty
            n = prompt.trailing.shape[0]
            self.text_track[slot, :n] = prompt.trailing
            self.text_track[slot, n] = prompt.pad
            self.text_len[slot] = n
            self.sub_sampler.set(slot, o)
            self.rows[slot] = _Row(req)
            self.slot_write[slot] = T
        self._regroup()
        return slots

    def leave(self, slot: int) -> None:
        """Free `slot` (its row ended or was cancelled); it becomes a hole until a new row takes it.
        A row still being prefilled is dropped from its prefill."""
        if self.rows[slot] is not None:
            self.rows[slot] = None
            self.active[slot] = False
            self._regroup()
        elif slot in self._reserved:
            p = next(p for p in self._prefills if slot in p.slots)
            p.requests[p.slots.index(slot)] = None
            if all(req is None for req in p.requests):  # nobody waits for this prompt any more
                self._prefills.remove(p)
                self._reserved.difference_update(p.slots)

    def _ensure_length(self, needed: int) -> None:
        """Caches of at least `needed` slots per row (bucketed; contents kept when grown)."""
        if needed <= self.length:
            return
        length = max(_bucket(needed, CACHE_BUCKET), 2 * self.length)
        fresh = self.engine.talker.new_caches(self.capacity, length)
        for old, new in zip(self.caches, fresh):
            new.k[:, :, : self.length] = old.k
            new.v[:, :, : self.length] = old.v
        valid = torch.zeros(self.capacity, length, dtype=torch.bool, device=self.device)
        valid[:, : self.length] = self.valid
        self.caches, self.valid, self.length = fresh, valid, length
        self.steps.reset()  # graphs hold the old buffers

    def _ensure_text(self, needed: int) -> None:
        current = self.text_track.shape[1]
        if needed > current:
            grown = torch.zeros(self.capacity, max(needed, 2 * current), self.text_track.shape[2], dtype=self.dtype,
                                device=self.device)  # fmt: skip
            grown[:, :current] = self.text_track
            self.text_track = grown
            self.steps.reset()

    def _regroup(self) -> None:
        """Rows that draw together: same sampler settings and the same generator (None: global RNG).
        When one group covers every row, it draws over all slots [0, high), holes included, in one call."""
        code0: dict = {}
        sub: dict = {}
        for i, r in enumerate(self.rows):
            if r is None:
                continue
            o, g = r.request.opts, r.request.generator
            code0.setdefault((o.greedy, o.temperature, o.top_k, o.top_p, id(g)), (g, []))[1].append(i)
            sub_key = (o.subtalker_greedy, o.subtalker_temperature, o.subtalker_top_k, o.subtalker_top_p, id(g))
            sub.setdefault(sub_key, (g, []))[1].append(i)

        def groups(d):
            return [(key[:4], g, torch.tensor(idx, device=self.device)) for key, (g, idx) in d.items()]

        self._code0_groups, self._sub_groups = groups(code0), groups(sub)

    # -- one step -------------------------------------------------------------------------------
    def choose_grouped(self, scores: torch.Tensor, groups: list) -> torch.Tensor:
        """Ids [n] from scores [n, V], each group of rows with its sampler and generator."""
        if len(groups) == 1:
            (greedy, temperature, top_k, top_p), generator, _ = groups[0]
            return choose(scores, greedy, temperature, top_k, top_p, generator)
        out = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        for (greedy, temperature, top_k, top_p), generator, idx in groups:
            out[idx] = choose(scores[idx], greedy, temperature, top_k, top_p, generator)
        return out

    @torch.inference_mode()
    def step(self) -> list[RowEvent]:
        """One frame for every row: codebook 0 (penalty, EOS rule, sampler per row), the end
        decisions, codebooks 1..15, then the talker step that feeds the frame back. Rows that end
        leave their slot. Returns one event per row, in slot order."""
        high = self.high
        if high == 0:
            return []
        eng = self.engine
        logits = eng.talker.codec_head(self.hidden[:high]).float()
        scores = eng.code0_scores_rows(logits, self.seen[:high], self.penalty[:high],
                                       self.steps_done[:high] >= self.min_new[:high])  # fmt: skip
        code0 = self.choose_grouped(scores, self._code0_groups)
        self.seen[:high].scatter_(1, code0[:, None], True)
        eos = code0 == eng.eos
        capped = ~eos & (self.emitted[:high] >= self.cap[:high])
        codes = self.steps.predict_rest(high, code0)
        continuing = self.active[:high] & ~eos & ~capped
        self.codes[:high] = codes
        # Feed the frame back for every slot in use (ending rows too: that costs nothing on fixed
        # shapes, and it spares a host round trip before the step).
        moving = self.active[:high]
        self.steps.talker_step(high, max(self.slot_write[:high]) + 1)
        self.write[:high] += moving
        self.position[:high] += moving
        self.steps_done[:high] += moving
        self.emitted[:high] += continuing
        # The one synchronisation of the step: codes and end flags together.
        host = torch.cat([codes, eos[:, None], capped[:, None]], dim=1).cpu().numpy()
        events = []
        for i in range(high):
            row = self.rows[i]
            if row is None:
                continue
            self.slot_write[i] += 1
            if host[i, -2]:
                events.append(RowEvent(i, row.request.tag, None, "stop", row.emitted))
            elif host[i, -1]:
                events.append(RowEvent(i, row.request.tag, None, "length", row.emitted))
            else:
                row.emitted += 1
                events.append(RowEvent(i, row.request.tag, torch.from_numpy(host[i, :-2]), None, row.emitted))
        for e in events:
            if e.end is not None:
                self.leave(e.slot)
        return events


class BatchPool:
    """Fixed-shape batches kept per engine (their captured graphs are worth keeping), lent to one
    call at a time by capacity. A call that finds its capacity busy gets None and runs eagerly."""

    MAX_POOLED = 2

    def __init__(self, engine, graphs: bool):
        self.engine, self.graphs = engine, graphs
        self._lock = threading.Lock()
        self._free: dict[int, DecodeBatch] = {}
        self._busy: set[int] = set()

    def acquire(self, rows: int) -> Optional[DecodeBatch]:
        capacity = 1 << max(rows - 1, 0).bit_length()  # 1, 2, 4, 8, ...: graphs shared across calls
        with self._lock:
            if capacity in self._busy:
                return None
            self._busy.add(capacity)
            batch = self._free.pop(capacity, None)
        if batch is None:  # (an idle batch is empty, hence falsy: compare with None)
            batch = DecodeBatch(self.engine, capacity, fixed_shape=True, graphs=self.graphs)
        return batch

    def release(self, batch: DecodeBatch) -> None:
        for slot in range(batch.capacity):
            batch.leave(slot)
        with self._lock:
            self._busy.discard(batch.capacity)
            self._free[batch.capacity] = batch
            while len(self._free) > self.MAX_POOLED:
                self._free.pop(next(iter(self._free)))
