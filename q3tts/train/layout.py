"""Teacher-forced training sequences, laid out exactly as generation sees them.

    position:  0 ............ P-1 | P          P+1        ...  P+T-1
    input:     prefill (build_prompt) | frame 0 + text 0 | frame 1 + text 1 | ... | frame T-1 + text T-1

The prefill is `q3tts.generate.prompt.build_prompt`'s, the one `Engine.frames` runs; decode input i is
`embed_frame(codes[i]) + text_i`, with text_i = the prompt's trailing text vector i, or tts_pad
once those run out (as in `Engine.frames`). The talker's output at position P-1+i predicts
codebook 0 of frame i, and position P-1+T predicts EOS: see `loss.talker_targets`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import ModelConfig
from ..generate.prompt import Prompt, Utterance, build_prompt
from ..nn.talker import Talker
from ..text import TextTokenizer

# The same prefill as generation, here with gradients (text projection, embeddings).
_build_prompt_with_grad = build_prompt


@dataclass
class Sequence:
    inputs: torch.Tensor  # [P + T, H] talker input embeddings
    prefill_len: int  # P
    codes: torch.Tensor  # [T, G] the frames that are fed (and predicted)


def utterance(text: str, language: str, speaker: Optional[str] = None, xvector: Optional[torch.Tensor] = None,
              dialect: Optional[str] = None, non_streaming_mode: bool = True) -> Utterance:  # fmt: skip
    """The Utterance generation would build for this item.

    A built-in speaker (`speaker`) is looked up in spk_id as in generate_custom_voice. A new
    speaker is given by its embedding (`xvector`): the vector that export writes into its codec
    row, so the prompt is identical to generate_custom_voice(speaker=name) on the exported model.
    A new speaker's dialect replaces the language id exactly when generation's dialect rule would
    (language chinese or auto)."""
    if xvector is not None and dialect and language in ("chinese", "auto"):
        language = dialect
    return Utterance(text, language, speaker=speaker, xvector=xvector, non_streaming_mode=non_streaming_mode)


def text_track(prompt: Prompt, frames: int) -> torch.Tensor:
    """[frames, H]: the text vector added to each decode input (trailing text, then tts_pad)."""
    n = min(frames, prompt.trailing.shape[0])
    pad = prompt.pad.expand(frames - n, -1)
    return torch.cat([prompt.trailing[:n], pad])


def build_sequence(talker: Talker, cfg: ModelConfig, tokenizer: TextTokenizer, utt: Utterance, codes: torch.Tensor,
                   frames: Optional[torch.Tensor] = None) -> Sequence:  # fmt: skip
    """`frames`: `talker.embed_frame(codes)` when already computed (a batch embeds all its frames
    at once: every embedding lookup materialises a dense gradient of its whole table)."""
    assert codes.dim() == 2 and codes.shape[1] == cfg.talker.num_code_groups, f"codes must be [T, G], got {codes.shape}"
    prompt = _build_prompt_with_grad(talker, cfg, tokenizer, dataclasses.replace(utt))
    codes = codes.to(prompt.prefill.device)
    if frames is None:
        frames = talker.embed_frame(codes)
    inputs = frames + text_track(prompt, codes.shape[0]).to(prompt.prefill.dtype)
    return Sequence(torch.cat([prompt.prefill, inputs]), prompt.prefill.shape[0], codes)


def pad_right(seqs: list[Sequence]) -> torch.Tensor:
    """[B, L_max, H]. Right padding: with a causal mask, positions after a row's end never reach
    its real positions, so no attention mask is needed and RoPE positions are 0..L-1 per row."""
    return torch.nn.utils.rnn.pad_sequence([s.inputs for s in seqs], batch_first=True)
