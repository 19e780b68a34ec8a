"""Sentence-aware splitting of long texts into pieces that one generation handles well.

A single generation drifts (pace, then coherence) on long inputs and is bounded by max_new_tokens,
so texts over a token budget are cut into pieces that each stay under it: at sentence ends first,
then at clause punctuation, then between words, and only as a last resort inside a run of
characters (long unpunctuated CJK). Pieces keep every character of the input except the
whitespace at their edges.
"""

from __future__ import annotations

import re
from typing import Callable

# A sentence ends at Latin end punctuation followed by whitespace (so "3.14" and "e.g.x" stay whole),
# at CJK end punctuation (no space follows it in CJK text), at a line break, or at the end of the text.
_SENTENCE = re.compile(r".+?(?:[.!?…]+[\"'”’)\]]*(?=\s|$)|[。！？]+[”’」』）]*|\n|$)\s*", re.S)
_CLAUSE = re.compile(r".+?(?:[,;:，；：、—]+[\"'”’)\]]*\s*|$)", re.S)
_WORD = re.compile(r"\S+\s*|\s+")


def _units(text: str, pattern: re.Pattern) -> list[str]:
    return [m.group(0) for m in pattern.finditer(text) if m.group(0)]


def split_text(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Pieces of `text` of at most `max_tokens` tokens each (as `count_tokens` counts them), cut at
    the strongest boundary available. A text within the budget comes back whole."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")

    def count(piece: str) -> int:  # as the piece will be spoken: without its edge whitespace
        return count_tokens(piece.strip())

    if count(text) <= max_tokens:
        return [text.strip()] if text.strip() else []

    def pieces_of(unit: str, level: int) -> list[str]:
        """Units no longer than the budget, splitting `unit` at boundaries of `level` and finer."""
        if count(unit) <= max_tokens:
            return [unit]
        if level == len(_LEVELS):  # no boundary left: cut characters, keeping each piece in budget
            out, start = [], 0
            while start < len(unit):
                end = start + 1
                while end < len(unit) and count(unit[start : end + 1]) <= max_tokens:
                    end += 1
                out.append(unit[start:end])
                start = end
            return out
        parts = _units(unit, _LEVELS[level])
        if len(parts) <= 1:
            return pieces_of(unit, level + 1)
        return [p for part in parts for p in pieces_of(part, level + 1)]

    # Greedy packing of the finest-needed units, in order.
    pieces: list[str] = []
    current = ""
    for unit in pieces_of(text, 0):
        if current and count(current + unit) > max_tokens:
            pieces.append(current)
            current = unit
        else:
            current += unit
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


_LEVELS = (_SENTENCE, _CLAUSE, _WORD)
