"""Long-form drift: does the voice (or the level) of a long clip wander away from its first piece?

The clip is cut into pieces (the generator's own pieces when their boundaries are known, else
windows of `piece_seconds`); each piece's speaker embedding is compared with the first piece's,
and its loudness with the first's. A piece is flagged when its similarity falls more than
`max_similarity_drop` below the typical (median) similarity of the others to the first piece,
so a voice that is simply hard to embed is not flagged everywhere; the worst piece is named."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import EvalError
from .levels import check_audio, loudness_lufs
from .speaker import similarity

# Resemblyzer on espeak-ng voices: the same voice across sentences scores 0.89-0.93, four distinct
# voices (en-us, +f3, +f5, +whisper) 0.53-0.81 to each other; a 0.1 drop below the median is a voice change.
DEFAULT_MAX_SIMILARITY_DROP = 0.1
MAX_LOUDNESS_DRIFT_LU = 6.0  # a piece 6 LU louder or quieter than the first is flagged too


@dataclass(frozen=True)
class Piece:
    index: int
    start: float  # seconds
    end: float
    similarity: float  # to the first piece (1.0 for the first)
    loudness_lufs: float
    flagged: bool


@dataclass(frozen=True)
class Drift:
    pieces: tuple[Piece, ...]
    worst: int  # index of the piece least similar to the first
    min_similarity: float
    loudness_range_lu: float  # loudest minus quietest piece
    flagged: tuple[int, ...]  # indices of flagged pieces

    @property
    def drifted(self) -> bool:
        return bool(self.flagged)


def windows(seconds: float, piece_seconds: float) -> list[tuple[float, float]]:
    """Equal windows of about piece_seconds covering [0, seconds] (the last one not shorter than half)."""
    n = max(1, int(round(seconds / piece_seconds)))
    edges = np.linspace(0.0, seconds, n + 1)
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]


def drift(wav: np.ndarray, sr: int, embedder, bounds: Optional[Sequence[tuple[float, float]]] = None,
          piece_seconds: float = 3.0, max_similarity_drop: float = DEFAULT_MAX_SIMILARITY_DROP) -> Drift:  # fmt: skip
    """Similarity and loudness of each piece of `wav` against the first (see the module docstring)."""
    wav = check_audio(wav, sr)
    bounds = list(bounds) if bounds is not None else windows(len(wav) / sr, piece_seconds)
    if len(bounds) < 2:
        raise EvalError(f"drift needs at least 2 pieces; {len(wav) / sr:.1f} s gives {len(bounds)}")
    clips = [wav[int(a * sr) : int(b * sr)] for a, b in bounds]
    embeddings = [embedder.embed(c, sr) for c in clips]
    sims = [similarity(embeddings[0], e) for e in embeddings]
    levels = [loudness_lufs(c, sr) for c in clips]
    typical = float(np.median(sims[1:]))
    finite = [v for v in levels if np.isfinite(v)]
    pieces = []
    for i, ((a, b), s, lv) in enumerate(zip(bounds, sims, levels)):
        loud_jump = np.isfinite(lv) and np.isfinite(levels[0]) and abs(lv - levels[0]) > MAX_LOUDNESS_DRIFT_LU
        flagged = i > 0 and (s < typical - max_similarity_drop or bool(loud_jump))
        pieces.append(Piece(i, a, b, s, lv, flagged))
    worst = int(np.argmin(sims))
    return Drift(tuple(pieces), worst, float(sims[worst]), float(max(finite) - min(finite)) if finite else 0.0,
                 tuple(p.index for p in pieces if p.flagged))  # fmt: skip
