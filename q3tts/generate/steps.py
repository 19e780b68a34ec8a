"""The two forms of a decode step over a DecodeBatch's buffers (decode.py), with the same methods:

* EagerSteps: over the slots in use, [0, high), attending over the cache slots written so far.
  The CPU path: no work on padding.
* FixedShapeSteps: over a bucketed number of rows (1, 2, 4, ...) and the whole static cache under
  its validity mask, with the code predictor's 17-slot cache reused every frame. Each shape is
  captured once as a CUDA graph on CUDA and replayed per frame: a frame is one talker step plus 15
  code-predictor sub-steps, hundreds of small kernels whose launches, not their arithmetic, set
  the pace on a GPU. Off CUDA (or with graphs=False) the same functions run eagerly, which is how
  the CPU tests show this form gives the codes of the eager one.

Sampling inside a graph cannot call a torch.Generator, so the fixed-shape code predictor samples by
the Gumbel-max trick with noise drawn outside the graph from each row's generator: argmax(scores +
Gumbel noise) is a draw from softmax(scores), after the same temperature/top-k/top-p filters, and
each row has its own filter settings (sampling.filtered_scores_rows). Seeded output is repeatable
on this form but differs from the eager form's multinomial draws.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable, Optional

import torch

from ..nn.layers import KVCache
from .sampling import SamplingOptions, filtered_scores_rows

CACHE_BUCKET = 256  # talker cache lengths are rounded up to this, so graphs are reused across calls


class Replayable:
    """`fn()` over static buffers: captured as a CUDA graph on first use on CUDA, else run eagerly."""

    def __init__(self, fn: Callable[[], torch.Tensor], capture: bool):
        self.fn = fn
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.out: Optional[torch.Tensor] = None
        self.capture = capture

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


class SamplerRows:
    """Each slot's sub-talker sampler settings as tensors, for sampling inside one fixed-shape call."""

    def __init__(self, capacity: int, device: torch.device):
        self.greedy = torch.ones(capacity, dtype=torch.bool, device=device)
        self.temperature = torch.ones(capacity, 1, dtype=torch.float32, device=device)
        self.top_k = torch.zeros(capacity, dtype=torch.long, device=device)
        self.top_p = torch.ones(capacity, 1, dtype=torch.float32, device=device)

    def set(self, slot: int, o: SamplingOptions) -> None:
        self.greedy[slot] = o.subtalker_greedy
        self.temperature[slot] = 1.0 if o.subtalker_greedy else o.subtalker_temperature  # no 0-division
        self.top_k[slot] = o.subtalker_top_k
        self.top_p[slot] = o.subtalker_top_p

    def pick(self, logits: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        """Ids [n] from logits [n, V]: argmax for greedy rows, Gumbel-max of the filtered scores else."""
        n = logits.shape[0]
        greedy_ids = logits.argmax(-1)
        if noise is None:
            return greedy_ids
        scores = filtered_scores_rows(logits, self.temperature[:n], self.top_k[:n], self.top_p[:n])
        return torch.where(self.greedy[:n], greedy_ids, (scores + noise).argmax(-1))


def cache_rows(caches: list[KVCache], n: int) -> list[KVCache]:
    """Views of the first `n` rows of every layer's cache."""
    return [KVCache(c.k[:n], c.v[:n]) for c in caches]


class EagerSteps:
    """Steps over the slots in use; the talker attends over the cache slots written so far."""

    def __init__(self, batch):
        # A proxy, not a reference: batch.steps -> steps -> batch would be a cycle, and the batch's
        # caches (56 MB for a 0.6B call) would wait for the cyclic GC instead of going at once.
        self.batch = weakref.proxy(batch)

    def reset(self) -> None:  # nothing is captured
        pass

    def predict_rest(self, high: int, code0: torch.Tensor) -> torch.Tensor:
        """Codebooks 0..G-1 [high, G] for slots [0, high), each group of rows with its own sampler."""
        b = self.batch

        def pick(logits: torch.Tensor, g: int) -> torch.Tensor:
            return b.choose_grouped(logits, b._sub_groups)

        return b.engine.predict_rest(b.hidden[:high], code0, pick, cache_rows(b.cp_caches, high))

    def talker_step(self, high: int, width: int) -> None:
        """Feed each slot's frame (b.codes) and text-track vector to the talker; new b.hidden."""
        b = self.batch
        rows = torch.arange(high, device=b.device)
        b.valid[rows, b.write[:high]] = True  # a row sees what it writes now (and a hole sees itself)
        mask = b.valid[:high, None, None, :width]  # a view: rows see exactly the slots they wrote
        text = b.text_track[rows, torch.minimum(b.steps_done[:high], b.text_len[:high])]
        x = (b.engine.talker.embed_frame(b.codes[:high]) + text)[:, None]
        out = b.engine.talker(x, b.position[:high, None], mask, cache_rows(b.caches, high), b.write[:high, None])
        b.hidden[:high] = out[:, -1]


class FixedShapeSteps:
    """Steps over a bucketed number of rows and the whole cache, each shape replayed as a graph on CUDA."""

    def __init__(self, batch, graphs: bool = True):
        # A proxy, not a reference: batch.steps -> steps -> batch would be a cycle, and the batch's
        # caches (56 MB for a 0.6B call) would wait for the cyclic GC instead of going at once.
        self.batch = weakref.proxy(batch)
        self.capture = graphs and batch.device.type == "cuda"
        eng = batch.engine
        C = batch.capacity
        self.rows = torch.arange(C, device=batch.device)
        self.code0 = torch.zeros(C, dtype=torch.long, device=batch.device)
        self.true = torch.ones(C, dtype=torch.bool, device=batch.device)  # a tensor, not a host scalar, in graphs
        vocab = eng.predictor.cfg.vocab_size
        self.noise = torch.zeros(eng.groups - 1, C, vocab, dtype=torch.float32, device=batch.device)
        self._talker: dict[int, Replayable] = {}
        self._rest: dict[tuple[int, bool], Replayable] = {}

    def reset(self) -> None:
        """Forget captured graphs (the cache or text buffers they read were replaced)."""
        self._talker.clear()
        self._rest.clear()

    def rows_for(self, high: int) -> int:
        return min(1 << max(high - 1, 0).bit_length(), self.batch.capacity)

    # -- what the graphs run -------------------------------------------------------------------
    def _predict_rest_fn(self, n: int, sampled: bool) -> torch.Tensor:
        b = self.batch

        def pick(logits: torch.Tensor, g: int) -> torch.Tensor:
            return b.sub_sampler.pick(logits, self.noise[g - 1, :n] if sampled else None)

        return b.engine.predict_rest(b.hidden[:n], self.code0[:n], pick, cache_rows(b.cp_caches, n))

    def _talker_fn(self, n: int) -> torch.Tensor:
        b = self.batch
        rows = self.rows[:n]
        b.valid[rows, b.write[:n]] = self.true[:n]
        mask = b.valid[:n, None, None, :]
        text = b.text_track[rows, torch.minimum(b.steps_done[:n], b.text_len[:n])]
        x = (b.engine.talker.embed_frame(b.codes[:n]) + text)[:, None]
        out = b.engine.talker(x, b.position[:n, None], mask, cache_rows(b.caches, n), b.write[:n, None])[:, -1]
        b.hidden[:n].copy_(out)
        return out

    # -- per step --------------------------------------------------------------------------------
    def predict_rest(self, high: int, code0: torch.Tensor) -> torch.Tensor:
        b = self.batch
        n = self.rows_for(high)
        self.code0[:high].copy_(code0)
        sampled = any(not greedy for (greedy, *_), _, _ in b._sub_groups)
        if sampled:
            self._draw_noise(high)
        key = (n, sampled)
        if key not in self._rest:
            self._rest[key] = Replayable(lambda: self._predict_rest_fn(n, sampled), self.capture)
        return self._rest[key]()[:high].clone()  # the graph's output buffer is overwritten by the next replay

    def talker_step(self, high: int, width: int) -> None:
        n = self.rows_for(high)
        if n not in self._talker:
            self._talker[n] = Replayable(lambda: self._talker_fn(n), self.capture)
        self._talker[n]()

    def _draw_noise(self, high: int) -> None:
        """Gumbel noise for every sampled row, from the row's generator (one draw per group)."""
        b = self.batch
        shape = self.noise.shape
        groups = b._sub_groups
        for (greedy, *_), generator, idx in groups:
            if greedy:
                continue
            rows = high if len(groups) == 1 else len(idx)
            u = torch.rand((shape[0], rows, shape[2]), generator=generator, device=self.noise.device)
            gumbel = -torch.log(-torch.log(u))
            if len(groups) == 1:
                self.noise[:, :high] = gumbel
            else:
                self.noise[:, idx] = gumbel
