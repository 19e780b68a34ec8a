"""The engine: the networks' generation rules (codebook-0 scores, the code predictor's pass over a
frame) and `frames()`, one call's generation on the decode core (decode.py).

The engine owns no weights and keeps no per-call state on modules: every call runs its own
DecodeBatch (or borrows a pooled fixed-shape one), so one loaded model serves concurrent callers.
`frames()` is the primitive of the Python API: it admits every row at once and steps until none is
left, yielding each step's frames; batch generation and audio streaming drain it. The server's
scheduler (serving.py) runs the same DecodeBatch, with rows joining and leaving between steps.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ..config import ModelConfig
from ..model import TTSNetworks
from .decode import BatchPool, DecodeBatch, RowRequest
from .prompt import Prompt
from .sampling import SamplingOptions


class LengthCapWarning(UserWarning):
    """A generation reached its length cap without an end-of-speech token."""


@dataclass
class FrameStep:
    codes: torch.Tensor  # [B, G] int64 on the host: this step's frame for every row (rows not in `emitted` hold 0)
    emitted: torch.Tensor  # bool [B]: rows for which `codes` is a real frame


def length_cap(text_tokens: int, frame_rate: float = 12.5) -> int:
    """Frames a text of `text_tokens` tokens may take before we call the EOS missing.

    Speech runs at roughly 2-5 tokens per second in every supported language; allowing 1.2 s
    per token plus 4 s keeps every real utterance far inside the cap while bounding a runaway."""
    return int(frame_rate * (4.0 + 1.2 * text_tokens))


def length_cap_message(frames: int, max_new_tokens: int) -> str:
    why = "max_new_tokens" if frames == max_new_tokens - 1 else "the length limit for its text"
    return f"generation reached {why} ({frames} frames) without an end-of-speech token; the audio was cut there"


class Engine:
    """`static`: "auto" (fixed-shape steps replayed as CUDA graphs on CUDA, eager steps elsewhere),
    "off" (eager steps), or "eager" (the fixed-shape steps without graphs: for tests on CPU)."""

    def __init__(self, networks: TTSNetworks, config: ModelConfig, static: str = "auto"):
        self.networks = networks
        self.config = config
        self.talker = networks.talker
        self.predictor = networks.talker.code_predictor
        t = config.talker
        self.groups = t.num_code_groups
        self.eos = t.codec_eos_token_id
        # Only real codes and EOS may be sampled: the top 1024 ids are control/language/speaker ids.
        suppress = torch.zeros(t.vocab_size, dtype=torch.bool)
        suppress[t.vocab_size - 1024 :] = True
        suppress[self.eos] = False
        self.suppress = suppress.to(self.device)
        self.predictor_positions = torch.arange(self.groups + 1, device=self.device)
        if static not in ("auto", "off", "eager"):
            raise ValueError(f"static must be auto, off or eager, got {static!r}")
        self.static = static
        self.pool = BatchPool(self, graphs=static == "auto") if self.fixed_shape else None

    @property
    def fixed_shape(self) -> bool:
        """Whether decode steps run in their fixed-shape form (on CUDA by default, or static="eager")."""
        return self.static == "eager" or (self.static == "auto" and self.device.type == "cuda")

    @property
    def device(self) -> torch.device:
        return self.talker.codec_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.talker.codec_head.weight.dtype

    def new_batch(self, capacity: int) -> DecodeBatch:
        """A long-lived batch for a scheduler: rows join and leave between steps."""
        return DecodeBatch(self, capacity, fixed_shape=self.fixed_shape, graphs=self.static == "auto")

    # -- generation rules (the only place they are written) -------------------------------------
    def predict_rest(self, hidden: torch.Tensor, code0: torch.Tensor, pick: Callable[..., torch.Tensor],
                     caches: Optional[list] = None) -> torch.Tensor:  # fmt: skip
        """Codebooks 1..G-1 for a frame. hidden [B, H] (talker), code0 [B] -> codes [B, G].
        `pick(logits [B, V], g) -> ids [B]` chooses codebook g's ids. `caches`: reused when given
        (positions restart every frame and the mask hides the older slots)."""
        cp = self.predictor
        caches = caches if caches is not None else cp.new_caches(code0.shape[0])
        x = torch.stack([hidden, self.talker.embed_codec(code0)], dim=1)
        positions = self.predictor_positions
        codes = [code0]
        for g in range(1, self.groups):
            # Pass g reads positions [0, g] (the first pass feeds two) and head g-1 picks codebook g.
            pos = positions[:2] if g == 1 else positions[g : g + 1]
            if g > 1:
                x = cp.embed_code(g - 1, codes[-1])[:, None]
            codes.append(pick(cp.head_logits(x, pos, caches, g - 1).float(), g))
        return torch.stack(codes, dim=1)

    def code0_scores_rows(self, logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor,
                          allow_eos: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Codebook-0 logits [B, V] (float32) -> the scores sampling sees, each row with its own
        settings: repetition penalty [B, 1] on ids already generated (seen bool [B, V]; a penalty
        of 1 leaves the scores exactly as they are), control ids suppressed, EOS masked in the rows
        where allow_eos [B] is False (too few frames exist)."""
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        scores = torch.where(seen, penalised, logits).masked_fill(self.suppress, float("-inf"))
        scores[:, self.eos] = scores[:, self.eos].masked_fill(~allow_eos, float("-inf"))
        return scores

    def code0_scores(self, logits: torch.Tensor, seen: torch.Tensor, penalty: float, allow_eos: bool) -> torch.Tensor:
        """`code0_scores_rows` with one setting for every row."""
        B = logits.shape[0]
        return self.code0_scores_rows(logits.float(), seen, torch.full((B, 1), float(penalty), device=logits.device),
                                      torch.full((B,), bool(allow_eos), device=logits.device))  # fmt: skip

    # -- one call ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def frames(
        self,
        prompts: list[Prompt],
        opts: SamplingOptions,
        caps: Optional[list[int]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Iterator[FrameStep]:
        """Yield one FrameStep per talker step until every row has ended (EOS, its cap, or
        `opts.max_new_tokens`: like the official loop, the step that hits the limit yields nothing)."""
        B = len(prompts)
        max_frames = opts.max_new_tokens - 1
        caps = [min(c, max_frames) for c in (caps or [max_frames] * B)]
        batch = self.pool.acquire(B) if self.pool is not None else None
        pooled = batch is not None
        if batch is None:  # eager steps; also where the pooled fixed-shape batch is busy with another call
            batch = DecodeBatch(self, B)
        try:
            slots = batch.admit(
                [RowRequest(p, opts, c, generator, tag=i) for i, (p, c) in enumerate(zip(prompts, caps))]
            )
            row_of = {slot: i for i, slot in enumerate(slots)}
            while len(batch):
                events = batch.step()
                codes = torch.zeros(B, self.groups, dtype=torch.long)
                emitted = torch.zeros(B, dtype=torch.bool)
                capped = [e.frames for e in events if e.end == "length"]
                if capped:
                    warnings.warn(length_cap_message(min(capped), opts.max_new_tokens), LengthCapWarning, stacklevel=3)
                for e in events:
                    if e.codes is not None:
                        codes[row_of[e.slot]] = e.codes
                        emitted[row_of[e.slot]] = True
                if bool(emitted.any()):
                    yield FrameStep(codes, emitted)
        finally:
            if pooled:
                self.pool.release(batch)
