"""Language names: the one place where what a user types (`en`, `zh-CN`, `pt_BR`, `English`, `日本語`)
becomes a language of the model (`english`, `chinese`, `portuguese`, ...).

The model's languages are the keys of its config's `codec_language_id` (dialect entries aside),
lowercase, plus "auto". A name is matched without regard to case, `_` and `-` (pt_BR = pt-br), as:
  1. one of the model's languages;
  2. an ISO 639-1/639-2/639-3 code, a common BCP 47 tag with its region or script, or the
     language's own name, from `ALIASES`.
Anything else is an `UnknownLanguage` error that lists what the model accepts. The API, the CLI,
the server (HTTP and WebSocket) and the web UI all resolve through `resolve_language`.
"""

from __future__ import annotations

from typing import Iterable, Optional

from .errors import InputError

AUTO = "auto"

# canonical model language -> what people write for it (lowercase, '-' as the separator).
_SPELLINGS: dict[str, tuple[str, ...]] = {
    "chinese": ("zh", "zho", "chi", "cmn", "zh-cn", "zh-sg", "zh-tw", "zh-hk", "zh-hans", "zh-hant",
                "zh-hans-cn", "zh-hant-tw", "mandarin", "中文", "汉语", "漢語", "普通话", "國語"),
    "english": ("en", "eng", "en-us", "en-gb", "en-au", "en-ca", "en-in", "en-nz", "en-ie", "en-za"),
    "german": ("de", "deu", "ger", "de-de", "de-at", "de-ch", "deutsch"),
    "spanish": ("es", "spa", "es-es", "es-mx", "es-us", "es-ar", "es-co", "es-cl", "es-419", "español", "espanol",
                "castellano"),
    "french": ("fr", "fra", "fre", "fr-fr", "fr-ca", "fr-be", "fr-ch", "français", "francais"),
    "italian": ("it", "ita", "it-it", "it-ch", "italiano"),
    "japanese": ("ja", "jpn", "ja-jp", "日本語", "にほんご"),
    "korean": ("ko", "kor", "ko-kr", "한국어", "조선말"),
    "portuguese": ("pt", "por", "pt-br", "pt-pt", "português", "portugues"),
    "russian": ("ru", "rus", "ru-ru", "русский"),
}  # fmt: skip
ALIASES: dict[str, str] = {spelling: language for language, spellings in _SPELLINGS.items() for spelling in spellings}


class UnknownLanguage(InputError):
    """A language the model does not speak, or a spelling of none."""


def _key(name: str) -> str:
    return "-".join(name.strip().lower().replace("_", "-").split())


def model_languages(codec_language_id: Iterable[str]) -> list[str]:
    """The languages a checkpoint takes: "auto" and its `codec_language_id` keys without dialects, sorted."""
    return sorted({AUTO} | {k.lower() for k in codec_language_id if "dialect" not in k.lower()})


def resolve_language(name: Optional[str], supported: Iterable[str]) -> str:
    """`name` (None or "" = auto) -> one of `supported` (the model's lowercase languages, with "auto").
    Raises UnknownLanguage naming the accepted languages."""
    supported = list(supported)
    if name is None or not str(name).strip():
        return AUTO
    if not isinstance(name, str):
        raise UnknownLanguage(f"language must be a string, got {type(name).__name__}")
    key = _key(name)
    canonical = key if key in supported else ALIASES.get(key)
    if canonical is None or canonical not in supported:
        codes = [code for code in ("en", "zh", "ja", "pt-BR") if ALIASES.get(code.lower()) in supported]
        also = f" (or a code such as {', '.join(codes)})" if codes else ""
        why = f" ({canonical} is not one of this model's languages)" if canonical else ""
        raise UnknownLanguage(f"unsupported language '{name}'{why}; use one of: {', '.join(supported)}{also}")
    return canonical


def accepted_names(supported: Iterable[str]) -> list[str]:
    """Every lowercase spelling `resolve_language` maps into `supported` (for the server's OpenAPI enum)."""
    supported = list(supported)
    return sorted(set(supported) | {alias for alias, language in ALIASES.items() if language in supported})
