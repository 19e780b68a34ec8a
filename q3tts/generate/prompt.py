"""The talker's prefill for one utterance, in the official layout.

Sequence (each position = text-track vector + codec-track vector, "-" = nothing added):

    [instruct tokens]      text: <|im_start|>user\\n{instruct}<|im_end|>\\n        codec: -
    role                   text: <|im_start|> assistant \\n                       codec: -
    control prefix         text: tts_pad ... tts_pad tts_bos                     codec: think/nothink, think_bos,
                                                                                        [language], think_eos,
                                                                                        [speaker], pad
    then one of
      streaming text       text: first token                                     codec: bos
                           (the rest of the text, then tts_eos, is fed one token per generated frame)
      non-streaming text   text: every token, tts_eos, tts_pad                   codec: pad ... pad, bos
      in-context clone     text: ref text ++ text ++ tts_eos (padded with tts_pad)
                           codec: bos, then the summed codebooks of every reference frame
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import ModelConfig
from ..nn.talker import Talker
from ..text import TextTokenizer, assistant_text, instruct_text, reference_text


@dataclass
class Utterance:
    text: str
    language: str = "auto"
    speaker: Optional[str] = None  # a built-in speaker (CustomVoice)
    instruct: Optional[str] = None  # style instruction / voice description
    xvector: Optional[torch.Tensor] = None  # [hidden] speaker embedding (Base: voice clone)
    ref_codes: Optional[torch.Tensor] = None  # [T_ref, G] reference codes (in-context clone)
    ref_text: Optional[str] = None  # transcript of the reference (in-context clone)
    non_streaming_mode: bool = True  # text all in the prefill (True) or fed one token per frame


@dataclass
class Prompt:
    prefill: torch.Tensor  # [T, hidden]
    trailing: torch.Tensor  # [L, hidden] text-track vectors added to the decode inputs, one per frame
    pad: torch.Tensor  # [hidden] tts_pad vector, added once `trailing` is used up
    ref_codes: Optional[torch.Tensor] = None  # [T_ref, G] kept so the codec can start from them


def language_id(cfg: ModelConfig, utt: Utterance) -> Optional[int]:
    t = cfg.talker
    lang = utt.language.lower()
    lid = None if lang == "auto" else t.codec_language_id[lang]
    if lang in ("chinese", "auto") and utt.speaker:
        dialect = t.spk_is_dialect.get(utt.speaker.lower(), False)
        if dialect:  # dialect speakers speak their dialect when the language allows it
            lid = t.codec_language_id[dialect]
    return lid


def codec_prefix_ids(cfg: ModelConfig, lid: Optional[int]) -> list[int]:
    t = cfg.talker
    if lid is None:
        return [t.codec_nothink_id, t.codec_think_bos_id, t.codec_think_eos_id]
    return [t.codec_think_id, t.codec_think_bos_id, lid, t.codec_think_eos_id]


def build_prompt(talker: Talker, cfg: ModelConfig, tokenizer: TextTokenizer, utt: Utterance) -> Prompt:
    t = cfg.talker
    dev = talker.codec_head.weight.device

    def ids(seq: list[int]) -> torch.Tensor:
        return torch.tensor(seq, dtype=torch.long, device=dev)

    text_ids = tokenizer.encode(assistant_text(utt.text))
    bos, eos, pad = talker.embed_text(ids([cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id]))
    parts = []
    if utt.instruct:
        parts.append(talker.embed_text(ids(tokenizer.encode(instruct_text(utt.instruct)))))
    parts.append(talker.embed_text(ids(text_ids[:3])))

    codec = talker.embed_codec(ids(codec_prefix_ids(cfg, language_id(cfg, utt))))
    if utt.speaker:
        codec = torch.cat([codec, talker.embed_codec(ids([t.spk_id[utt.speaker.lower()]]))])
    elif utt.xvector is not None:
        codec = torch.cat([codec, utt.xvector.to(codec.dtype).view(1, -1)])
    codec = torch.cat([codec, talker.embed_codec(ids([t.codec_pad_id]))])
    text_track = torch.cat([pad.expand(codec.shape[0] - 1, -1), bos[None]])
    parts.append(text_track + codec)

    codec_bos = talker.embed_codec(ids([t.codec_bos_id]))
    codec_pad = talker.embed_codec(ids([t.codec_pad_id]))
    body = text_ids[3:-5]
    if utt.ref_codes is not None:
        ref_ids = tokenizer.encode(reference_text(utt.ref_text or ""))[3:-2]
        text_part = torch.cat([talker.embed_text(ids(ref_ids + body)), eos[None]])
        codec_part = torch.cat([codec_bos, talker.embed_frame(utt.ref_codes.to(dev))])
        if utt.non_streaming_mode:
            parts += [text_part + codec_pad, codec_part + pad]
            trailing = pad[None]
        elif text_part.shape[0] > codec_part.shape[0]:
            parts.append(text_part[: codec_part.shape[0]] + codec_part)
            trailing = text_part[codec_part.shape[0] :]
        else:
            fill = pad.expand(codec_part.shape[0] - text_part.shape[0], -1)
            parts.append(torch.cat([text_part, fill]) + codec_part)
            trailing = pad[None]
    elif utt.non_streaming_mode:
        text_part = torch.cat([talker.embed_text(ids(body)), eos[None]])
        parts += [text_part + codec_pad, pad[None] + codec_bos]
        trailing = pad[None]
    else:
        parts.append(talker.embed_text(ids(body[:1])) + codec_bos)
        trailing = torch.cat([talker.embed_text(ids(body[1:])), eos[None]])
    return Prompt(torch.cat(parts), trailing, pad, utt.ref_codes)
