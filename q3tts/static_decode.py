"""Fixed-shape decode steps, replayed as CUDA graphs on a GPU.

A frame costs one talker step and 15 code-predictor sub-steps: on a GPU that is hundreds of small
kernels, and launching them, not the arithmetic, sets the pace. Here both parts run over
preallocated buffers of fixed shape (the talker attends over its whole static cache under a
validity mask instead of a growing prefix; the code predictor's 17-slot cache is reused every
frame), so each can be captured once as a CUDA graph and replayed per frame.

Off CUDA the same buffers and functions run eagerly: that is how the CPU tests prove this path
gives the codes of the dynamic one (`Engine(..., static="eager")`).

Sampling inside a graph cannot call a torch.Generator, so the code predictor samples by the
Gumbel-max trick with noise drawn outside the graph from the call's generator: argmax(scores +
Gumbel noise) is a draw from softmax(scores), after the same temperature/top-k/top-p filters.
Seeded output is therefore repeatable on this path but differs from the eager path's draws.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Callable, Optional

import torch

from .layers import causal_mask
from .sampling import SamplingOptions, filtered_scores

CACHE_BUCKET = 256  # talker cache lengths are rounded up to this, so graphs are reused across calls
MAX_POOLED = 2  # decoders (each holding a talker cache) kept per engine


class Replayable:
    """`fn()` over static buffers: captured as a CUDA graph on first use on CUDA, else run eagerly."""

    def __init__(self, fn: Callable[[], torch.Tensor], device: torch.device):
        self.fn = fn
        self.graph: Optional["torch.cuda.CUDAGraph"] = None
        self.out: Optional[torch.Tensor] = None
        self.capture = device.type == "cuda"

    def __call__(self) -> torch.Tensor:
        if not self.capture:
            return self.fn()
        if self.graph is None:
            try:
                self._record()
            except Exception as e:  # a GPU/driver that cannot capture: correct, only slower
                warnings.warn(f"CUDA graph capture failed, running the decode steps eagerly: {e}", RuntimeWarning,
                              stacklevel=2)  # fmt: skip
                self.capture, self.graph = False, None
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                return self.fn()
        self.graph.replay()
        return self.out  # type: ignore[return-value]

    def _record(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy inits and allocator state outside the capture
            for _ in range(2):
                self.fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self.fn()
        self.graph = graph


class StaticDecoder:
    """Buffers and steps for `batch` rows over a talker cache of `length` slots, one sampler setting.

    Not thread-safe: the engine lends it to one call at a time."""

    def __init__(self, engine, batch: int, length: int, opts: SamplingOptions):
        talker, cp = engine.talker, engine.predictor
        dev, dtype = engine.device, engine.dtype
        self.engine, self.batch, self.length = engine, batch, length
        self.groups = engine.groups
        self.sub_greedy = opts.subtalker_greedy
        self.sub_sampler = (opts.subtalker_temperature, opts.subtalker_top_k, opts.subtalker_top_p)
        hidden = talker.cfg.hidden_size
        self.caches = talker.new_caches(batch, length)
        self.cp_caches = cp.new_caches(batch)
        self.slots = torch.arange(length, device=dev)
        self.valid = torch.zeros(batch, length, dtype=torch.bool, device=dev)
        # talker step inputs
        self.codes = torch.zeros(batch, self.groups, dtype=torch.long, device=dev)
        self.text = torch.zeros(batch, hidden, dtype=dtype, device=dev)
        self.position = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        # code predictor inputs
        self.hidden = torch.zeros(batch, hidden, dtype=dtype, device=dev)
        self.code0 = torch.zeros(batch, dtype=torch.long, device=dev)
        vocab = cp.cfg.vocab_size
        self.noise = torch.zeros(self.groups - 1, batch, vocab, dtype=torch.float32, device=dev)
        self._talker = Replayable(self._talker_step, dev)
        self._rest = Replayable(self._predict_rest, dev)

    # -- what the graphs run -------------------------------------------------------------------
    def _talker_step(self) -> torch.Tensor:
        talker = self.engine.talker
        x = (talker.embed_frame(self.codes) + self.text)[:, None]
        mask = causal_mask(self.slot, self.slots, self.valid)
        return talker(x, self.position, mask, self.caches, self.slot)[:, -1]

    def _pick(self, logits: torch.Tensor, g: int) -> torch.Tensor:
        if self.sub_greedy:
            return logits.argmax(-1)
        temperature, top_k, top_p = self.sub_sampler
        return (filtered_scores(logits, temperature, top_k, top_p) + self.noise[g - 1]).argmax(-1)

    def _predict_rest(self) -> torch.Tensor:
        return self.engine.predict_rest(self.hidden, self.code0, self._pick, self.cp_caches)

    # -- per call ------------------------------------------------------------------------------
    def prefill(self, prefill: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Eager prompt pass into the static cache; returns the last hidden state [B, H]."""
        T = prefill.shape[1]
        self.valid.zero_()
        self.valid[:, :T] = valid
        slots = self.slots[:T]
        mask = causal_mask(slots, slots, valid)
        return self.engine.talker(prefill, positions, mask, self.caches, slots)[:, -1]

    def predict_rest(self, hidden: torch.Tensor, code0: torch.Tensor, generator) -> torch.Tensor:
        self.hidden.copy_(hidden)
        self.code0.copy_(code0)
        if not self.sub_greedy:
            u = torch.rand(self.noise.shape, generator=generator, device=self.noise.device)
            self.noise.copy_(-torch.log(-torch.log(u)))
        return self._rest().clone()

    def talker_step(self, codes: torch.Tensor, text: torch.Tensor, position: torch.Tensor, slot: int) -> torch.Tensor:
        self.codes.copy_(codes)
        self.text.copy_(text)
        self.position.copy_(position)
        self.slot.fill_(slot)
        self.valid[:, slot] = True
        return self._talker().clone()  # the graph's output buffer is overwritten by the next replay


class DecoderPool:
    """A few StaticDecoders per engine, keyed by shape and sub-talker sampler, lent one call at a
    time. A caller that finds its decoder busy gets None and runs the dynamic path instead."""

    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._free: OrderedDict[tuple, StaticDecoder] = OrderedDict()
        self._busy: set[tuple] = set()

    def acquire(self, batch: int, needed: int, opts: SamplingOptions) -> Optional[tuple[tuple, StaticDecoder]]:
        length = -(-needed // CACHE_BUCKET) * CACHE_BUCKET
        key = (batch, length, opts.subtalker_greedy, opts.subtalker_temperature, opts.subtalker_top_k,
               opts.subtalker_top_p)  # fmt: skip
        with self._lock:
            if key in self._busy:
                return None
            self._busy.add(key)
            decoder = self._free.pop(key, None)
        if decoder is None:
            decoder = StaticDecoder(self.engine, batch, length, opts)
        return key, decoder

    def release(self, key: tuple, decoder: StaticDecoder) -> None:
        with self._lock:
            self._busy.discard(key)
            self._free[key] = decoder
            while len(self._free) > MAX_POOLED:
                self._free.popitem(last=False)
