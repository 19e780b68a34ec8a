"""Text normalisation and word/character error rates.

normalize() puts a written text and its spoken form in one shape before they are compared:
lower case, abbreviations and symbols spelled out, numbers as words, punctuation dropped
("Dr. Smith paid $5." and "Doctor Smith paid five dollars" both become
"doctor smith paid five dollars"). Chinese, Japanese and Korean are scored per character (CER),
every other language per word (WER)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .errors import EvalError

CHARACTER_LANGUAGES = {"chinese", "japanese", "korean", "zh", "ja", "ko", "cantonese", "yue"}

ABBREVIATIONS = {"dr": "doctor", "mr": "mister", "mrs": "missus", "ms": "miss", "st": "saint", "prof": "professor",
                 "jr": "junior", "sr": "senior", "vs": "versus", "etc": "et cetera", "no": "number"}  # fmt: skip
SYMBOLS = {"%": " percent", "&": " and ", "+": " plus ", "@": " at ", "=": " equals "}
CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
              "€": ("euro", "euros", "cent", "cents")}  # fmt: skip
ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()  # fmt: skip
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_words(n: int) -> str:
    """A whole number 0 <= n < 10**12 in English words: 1234 -> 'one thousand two hundred thirty four'."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    for size, name in SCALES:
        if n >= size:
            head, rest = divmod(n, size)
            return f"{number_words(head)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def _spell_number(match: re.Match) -> str:
    digits = match.group(0).replace(",", "")
    whole, _, frac = digits.partition(".")
    if len(whole) > 12:
        return " ".join(ONES[int(d)] for d in whole)
    words = number_words(int(whole))
    return words + (" point " + " ".join(ONES[int(d)] for d in frac) if frac else "")


def _spell_money(match: re.Match) -> str:
    one, many, small_one, small_many = CURRENCIES[match.group(1)]
    whole, cents = int(match.group(2).replace(",", "")), int((match.group(3) or "0").ljust(2, "0")[:2])
    words = f"{number_words(whole)} {one if whole == 1 else many}"
    if cents:
        words += f" {number_words(cents)} {small_one if cents == 1 else small_many}"
    return f" {words} "


def normalize(text: str, language: str = "english") -> str:
    """The comparable form of `text`: see the module docstring. Idempotent."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("’", "'").replace("‘", "'")
    if language.lower() in CHARACTER_LANGUAGES:
        return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")
    text = re.sub(r"([$£€])\s?(\d[\d,]*)(?:\.(\d{1,2}))?\b", _spell_money, text)
    for symbol, words in SYMBOLS.items():
        text = text.replace(symbol, words)
    text = re.sub(r"\d[\d,]*(?:\.\d+)?", lambda m: f" {_spell_number(m)} ", text)
    text = re.sub(r"\b([a-z]+)\.", lambda m: ABBREVIATIONS.get(m.group(1), m.group(1)) + " ", text)
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # well-known -> well known, as an ASR writes it
    text = "".join(ch if ch.isalnum() or ch in " '" else " " for ch in text)
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


def edit_distance(ref: list, hyp: list) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two token lists."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


@dataclass(frozen=True)
class ErrorRate:
    metric: str  # "wer" (per word) or "cer" (per character, for Chinese, Japanese and Korean)
    rate: float  # errors / reference tokens; can exceed 1 when the hypothesis is much longer
    errors: int
    reference_tokens: int
    reference: str  # both texts after normalize()
    hypothesis: str


def error_rate(reference: str, hypothesis: str, language: str = "english") -> ErrorRate:
    """WER (or CER for CJK) of `hypothesis` against `reference`, both normalised first."""
    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    by_char = language.lower() in CHARACTER_LANGUAGES
    ref_tokens, hyp_tokens = (list(ref), list(hyp)) if by_char else (ref.split(), hyp.split())
    if not ref_tokens:
        raise EvalError(f"the reference text {reference!r} has no words after normalisation")
    errors = edit_distance(ref_tokens, hyp_tokens)
    return ErrorRate("cer" if by_char else "wer", errors / len(ref_tokens), errors, len(ref_tokens), ref, hyp)
