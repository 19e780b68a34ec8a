"""The generation loop: prefill, then one talker step and one code-predictor pass per frame.

The engine owns no weights and keeps no per-call state on modules: every call allocates its own
static KV caches, so one loaded model serves concurrent callers. `frames()` is the primitive: it
yields each frame's 16 codes as soon as they exist; everything else (batch generation, audio
streaming) drains it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from .config import ModelConfig
from .layers import causal_mask
from .model import TTSNetworks
from .prompt import Prompt
from .sampling import SamplingOptions, choose, penalise_repeats
from .static_decode import DecoderPool


class LengthCapWarning(UserWarning):
    """A generation reached its length cap without an end-of-speech token."""


@dataclass
class FrameStep:
    codes: torch.Tensor  # [B, G] this step's frame for every row (rows not in `emitted` hold junk)
    emitted: torch.Tensor  # bool [B]: rows for which `codes` is a real frame
    hidden: torch.Tensor  # [B, hidden] talker hidden state that produced codebook 0


def length_cap(text_tokens: int, frame_rate: float = 12.5) -> int:
    """Frames a text of `text_tokens` tokens may take before we call the EOS missing.

    Speech runs at roughly 2-5 tokens per second in every supported language; allowing 1.2 s
    per token plus 4 s keeps every real utterance far inside the cap while bounding a runaway."""
    return int(frame_rate * (4.0 + 1.2 * text_tokens))


class Engine:
    """`static`: "auto" (fixed-shape steps replayed as CUDA graphs on CUDA, the dynamic loop
    elsewhere), "off", or "eager" (the fixed-shape steps without graphs: for tests on CPU)."""

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
        use_static = static == "eager" or (static == "auto" and self.device.type == "cuda")
        self.decoders = DecoderPool(self) if use_static else None

    @property
    def device(self) -> torch.device:
        return self.talker.codec_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.talker.codec_head.weight.dtype

    # ------------------------------------------------------------------------------------------
    def _batch_prompts(self, prompts: list[Prompt]):
        """Left-pad the prefills and right-pad the trailing text with each row's tts_pad vector."""
        lengths = [p.prefill.shape[0] for p in prompts]
        T = max(lengths)
        H = prompts[0].prefill.shape[-1]
        prefill = torch.zeros(len(prompts), T, H, dtype=self.dtype, device=self.device)
        valid = torch.zeros(len(prompts), T, dtype=torch.bool, device=self.device)
        L = max(p.trailing.shape[0] for p in prompts)
        trailing = torch.empty(len(prompts), L, H, dtype=self.dtype, device=self.device)
        for i, p in enumerate(prompts):
            prefill[i, T - lengths[i] :] = p.prefill
            valid[i, T - lengths[i] :] = True
            trailing[i] = p.pad
            trailing[i, : p.trailing.shape[0]] = p.trailing
        pad = torch.stack([p.pad for p in prompts]).to(self.dtype)
        return prefill, valid, trailing, pad

    def predict_rest(self, hidden: torch.Tensor, code0: torch.Tensor, pick: Callable[..., torch.Tensor],
                     caches: Optional[list] = None) -> torch.Tensor:  # fmt: skip
        """Codebooks 1..G-1 for a frame. hidden [B, H] (talker), code0 [B] -> codes [B, G].
        `pick(logits [B, V], g) -> ids [B]` chooses codebook g's ids. `caches`: reused when given
        (positions restart every frame and the mask hides the older slots)."""
        cp = self.predictor
        caches = caches if caches is not None else cp.new_caches(code0.shape[0])
        x = torch.stack([hidden, self.talker.embed_codec(code0)], dim=1)
        positions = self.predictor_positions
        pos = positions[:2]
        h = cp(x, pos, caches, pos)[:, -1]
        codes = [code0]
        for g in range(1, self.groups):
            nxt = pick(cp.lm_head[g - 1](h).float(), g)
            codes.append(nxt)
            if g == self.groups - 1:
                break
            pos = positions[g + 1 : g + 2]
            h = cp(cp.embed_code(g, nxt)[:, None], pos, caches, pos)[:, -1]
        return torch.stack(codes, dim=1)

    def _predict_rest(self, decoder, hidden, code0, generator) -> torch.Tensor:
        return decoder.predict_rest(hidden, code0, generator)  # one place to time it (q3tts bench)

    def code0_scores(self, logits: torch.Tensor, seen: torch.Tensor, penalty: float, allow_eos: bool) -> torch.Tensor:
        """Codebook-0 logits [B, V] -> the scores sampling sees: repetition penalty on ids already
        generated, control ids suppressed, EOS masked while too few frames exist."""
        logits = penalise_repeats(logits.float(), seen, penalty)
        logits = logits.masked_fill(self.suppress, float("-inf"))
        if not allow_eos:
            logits[:, self.eos] = float("-inf")
        return logits

    def _choose_code0(self, logits, seen, step, opts, generator) -> torch.Tensor:
        scores = self.code0_scores(logits, seen, opts.repetition_penalty, allow_eos=step >= opts.min_new_tokens)
        return choose(scores, opts.greedy, opts.temperature, opts.top_k, opts.top_p, generator)

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
        prefill, valid_prefill, trailing, pad = self._batch_prompts(prompts)
        total = prefill.shape[1] + max(caps) + 2  # cache slots: prompt, every frame, and a spare
        lent = self.decoders.acquire(B, total, opts) if self.decoders is not None else None
        decoder = lent[1] if lent else DynamicDecoder(self, B, total, opts)
        try:
            yield from self._frames(prefill, valid_prefill, trailing, pad, opts, caps, generator, decoder)
        finally:
            if lent:
                self.decoders.release(*lent)

    def _frames(self, prefill, valid_prefill, trailing, pad, opts, caps, generator, decoder) -> Iterator[FrameStep]:
        B, T = prefill.shape[:2]
        max_frames = opts.max_new_tokens - 1
        caps_t = torch.tensor(caps, device=self.device)
        positions = (valid_prefill.long().cumsum(-1) - 1).masked_fill(~valid_prefill, 1)
        next_position = valid_prefill.sum(-1)  # [B] RoPE position of the first generated frame
        hidden = decoder.prefill(prefill, positions, valid_prefill)
        seen = torch.zeros(B, self.config.talker.vocab_size, dtype=torch.bool, device=self.device)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        emitted_count = torch.zeros(B, dtype=torch.long, device=self.device)
        for step in range(opts.max_new_tokens):
            code0 = self._choose_code0(self.talker.codec_head(hidden), seen, step, opts, generator)
            seen[torch.arange(B), code0] = True
            done |= code0 == self.eos
            capped = ~done & (emitted_count >= caps_t)
            if bool(capped.any()):
                limit = int(caps_t[capped].min())
                why = "max_new_tokens" if limit == max_frames else "the length limit for its text"
                warnings.warn(
                    f"generation reached {why} ({limit} frames) without an end-of-speech token; "
                    "the audio was cut there",
                    LengthCapWarning,
                    stacklevel=3,
                )
                done |= capped
            if bool(done.all()):
                return
            codes = self._predict_rest(decoder, hidden, code0, generator)
            emitted = ~done
            yield FrameStep(codes, emitted, hidden)
            emitted_count += emitted.long()
            text = trailing[:, step] if step < trailing.shape[1] else pad
            hidden = decoder.talker_step(codes, text, (next_position + step)[:, None], T + step)


class DynamicDecoder:
    """The steps of one call over caches of its own, attending over the filled prefix only (the
    CPU path; static_decode.StaticDecoder has the same three methods over fixed shapes)."""

    def __init__(self, engine: Engine, batch: int, length: int, opts: SamplingOptions):
        self.engine, self.opts = engine, opts
        self.caches = engine.talker.new_caches(batch, length)
        self.valid = torch.zeros(batch, length, dtype=torch.bool, device=engine.device)
        self.slots = torch.arange(length, device=engine.device)

    def prefill(self, prefill: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        T = prefill.shape[1]
        self.valid[:, :T] = valid
        slots = self.slots[:T]
        return self.engine.talker(prefill, positions, causal_mask(slots, slots, valid), self.caches, slots)[:, -1]

    def predict_rest(self, hidden: torch.Tensor, code0: torch.Tensor, generator) -> torch.Tensor:
        o = self.opts

        def pick(logits, g):
            return choose(logits, o.subtalker_greedy, o.subtalker_temperature, o.subtalker_top_k, o.subtalker_top_p,
                          generator)  # fmt: skip

        return self.engine.predict_rest(hidden, code0, pick)

    def talker_step(self, codes: torch.Tensor, text: torch.Tensor, position: torch.Tensor, slot: int) -> torch.Tensor:
        talker = self.engine.talker
        self.valid[:, slot] = True
        mask = causal_mask(self.slots[slot : slot + 1], self.slots[: slot + 1], self.valid[:, : slot + 1])
        x = (talker.embed_frame(codes) + text)[:, None]
        return talker(x, position, mask, self.caches, self.slots[slot : slot + 1])[:, -1]
