"""The Qwen2 byte-level BPE text tokenizer, through the `tokenizers` library only.

A checkpoint may ship `tokenizer.json` (used as is) or only `vocab.json` + `merges.txt` +
`tokenizer_config.json`; for the latter we build the same pipeline that the Hugging Face
Qwen2 slow-to-fast conversion builds (NFC, the Qwen2 split regex, byte-level BPE), with the
added tokens at the ids `tokenizer_config.json` gives them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .errors import Q3TTSError

# The split regex of the Qwen2 tokenizer (public in its tokenizer.json); Qwen3 models reuse it.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SUPPORTED_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast")


class TokenizerError(Q3TTSError, ValueError):
    pass


def qwen2_pipeline(model: models.BPE) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_dir(cls, folder: Path) -> "TextTokenizer":
        folder = Path(folder)
        config_path = folder / "tokenizer_config.json"
        config: dict = {}
        if config_path.exists():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{config_path}: not valid JSON ({e})") from None
            klass = config.get("tokenizer_class")
            if klass is not None and klass not in SUPPORTED_CLASSES:
                raise TokenizerError(
                    f"{config_path}: unknown tokenizer type '{klass}' (supported: {', '.join(SUPPORTED_CLASSES)})"
                )
        if (folder / "tokenizer.json").exists():
            try:
                return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
            except Exception as e:  # tokenizers raises a bare Exception on malformed files
                raise TokenizerError(f"{folder / 'tokenizer.json'}: cannot be read ({e})") from None
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        for p in (vocab, merges):
            if not p.exists():
                raise TokenizerError(f"{p}: file not found (need tokenizer.json, or vocab.json and merges.txt)")
        try:
            bpe = models.BPE.from_file(str(vocab), str(merges))
        except Exception as e:
            raise TokenizerError(f"{vocab} / {merges}: cannot be read ({e})") from None
        tok = qwen2_pipeline(bpe)
        added = config.get("added_tokens_decoder", {})
        for token_id in sorted(added, key=int):
            spec = added[token_id]
            tok.add_special_tokens([AddedToken(spec["content"], special=True, normalized=False)])
            if tok.token_to_id(spec["content"]) != int(token_id):
                raise TokenizerError(
                    f"{config_path}: added token {spec['content']!r} should have id {token_id} "
                    f"but lands at {tok.token_to_id(spec['content'])} (vocab.json has {bpe.get_vocab_size()} entries)"
                )
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


# Prompt templates of the official package (its model code slices them by fixed token counts:
# 3 leading ids of the role prefix, 5 trailing ids of the target, 2 trailing ids of the reference).
def assistant_text(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"


def reference_text(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


def instruct_text(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n"
