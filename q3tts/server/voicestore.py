"""Which voice store a server uses, from one setting: a PostgreSQL URL, else a folder.

    open_voice_store("postgresql://q3tts@db.internal/voices")  # replicas on many machines
    open_voice_store("/srv/voices")                              # one machine (or a shared disk)

Both back-ends implement voices.VoiceStore; the routes and the UI see no difference."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import Q3TTSError
from .voices import VoiceLibrary, VoiceStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class VoiceStoreSettingError(Q3TTSError):
    """A voice store setting that cannot work here (e.g. PostgreSQL without psycopg)."""


def is_postgres_url(spec: str | os.PathLike) -> bool:
    return isinstance(spec, str) and spec.startswith(POSTGRES_SCHEMES)


def open_voice_store(spec: str | os.PathLike, require_consent: bool = False, timeout: float = 5.0) -> VoiceStore:
    """`spec`: a postgresql:// URL (libpq's form) or a folder. `timeout`: seconds a PostgreSQL call
    waits for the database before the voice routes answer 503."""
    if is_postgres_url(spec):
        try:
            from .voices_postgres import PostgresVoiceStore
        except ImportError as e:
            raise VoiceStoreSettingError(f"a PostgreSQL voice store needs psycopg: pip install 'q3tts[postgres]' "
                                         f"({e})") from None  # fmt: skip
        return PostgresVoiceStore(str(spec), require_consent=require_consent, timeout=timeout)
    return VoiceLibrary(Path(spec), require_consent=require_consent)
