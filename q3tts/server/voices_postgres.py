"""The PostgreSQL back-end of the voice store: one library shared by replicas on many machines.

`PostgresVoiceStore("postgresql://user:pass@host/db")` (psycopg 3, a psycopg_pool pool). A voice is
one row of `q3tts_voices`: its details, the consent statement and the prompt as the bytes of its
voice file (safetensors, exactly what the folder back-end writes to disk).

- Schema: created and versioned on start (table `q3tts_schema`, one row); each replica migrates
  under an advisory lock, so replicas starting together apply each step once. A database of a
  newer version than this code knows is refused (VoiceStoreError) instead of being written.
- Visible at once: every call reads the database; prompts are not cached, so a voice deleted
  through one replica is gone from all (a 60 s voice is ~100 KB: one fast query).
- Same name at once: `INSERT ... ON CONFLICT DO NOTHING`: the primary key lets exactly one win.
- Crash-safe: a voice is one INSERT in one transaction; a replica killed mid-upload leaves no row
  (the server rolls back the dead connection's transaction).
- Lost database: every call raises VoiceStoreUnavailable within `timeout` seconds (503 on the
  voice routes); the pool reconnects in the background and the store recovers by itself. The
  server starts even when the database is down (the schema is set up on the first call that reaches it).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, Optional

import psycopg
from psycopg_pool import ConnectionPool

from ..errors import Q3TTSError
from ..voices import VoiceClonePromptItem
from .voices import Consent, Voice, VoiceExists, VoiceNotFound, VoiceStoreUnavailable, check_consent, check_name

log = logging.getLogger("q3tts.server")

SCHEMA_VERSION = 2
# Step n brings a database from version n-1 to n. Never edit a step that has shipped: add one.
MIGRATIONS = {
    1: """CREATE TABLE q3tts_voices (
            name TEXT PRIMARY KEY,
            id UUID NOT NULL,                  -- one per upload: a re-created name is a new voice
            created DOUBLE PRECISION NOT NULL, -- unix time
            mode TEXT NOT NULL CHECK (mode IN ('icl', 'x_vector')),
            ref_text TEXT,
            duration DOUBLE PRECISION,
            prompt BYTEA NOT NULL)             -- the voice file's bytes (safetensors)""",
    2: """ALTER TABLE q3tts_voices
            ADD COLUMN consent_by TEXT, ADD COLUMN consent_text TEXT, ADD COLUMN consent_at DOUBLE PRECISION""",
}
DETAILS = "name, created, mode, ref_text, duration, '' AS file, consent_by, consent_text, consent_at"
SCHEMA_LOCK = 0x71337454  # pg_advisory_xact_lock key: one migrating replica at a time


class VoiceStoreError(Q3TTSError):
    """The database holds something this code must not touch (a newer schema)."""


class PostgresVoiceStore:
    def __init__(self, url: str, require_consent: bool = False, timeout: float = 5.0, max_connections: int = 8):
        """`timeout`: seconds a call waits for a connection before VoiceStoreUnavailable."""
        self.url, self.require_consent, self.timeout = url, require_consent, timeout
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        # open(wait=False): the server comes up (built-in voices serve) even with the database down.
        self.pool = ConnectionPool(url, min_size=1, max_size=max_connections, timeout=timeout, open=False,
                                   check=ConnectionPool.check_connection, name="q3tts-voices",
                                   kwargs={"connect_timeout": max(1, round(timeout)),
                                           "application_name": "q3tts"})  # fmt: skip
        self.pool.open(wait=False)
        try:
            self._ensure_schema()
        except VoiceStoreUnavailable as e:
            log.warning("voice database not reachable yet (voice routes answer 503 until it is): %s", e)
        except BaseException:
            self.pool.close()
            raise

    def close(self) -> None:
        self.pool.close()

    # -- connections and schema ------------------------------------------------------------------
    @contextmanager
    def _transaction(self, schema: bool = True) -> Iterator[psycopg.Cursor]:
        """A cursor in one transaction: committed if the block succeeds, rolled back if it raises."""
        if schema:
            self._ensure_schema()
        try:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:  # PoolTimeout is one too
            raise VoiceStoreUnavailable(f"the voice database is unavailable: {_one_line(e)}") from None

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock, self._transaction(schema=False) as cur:
            if self._schema_ready:
                return
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            cur.execute("CREATE TABLE IF NOT EXISTS q3tts_schema (version INTEGER NOT NULL)")
            row = cur.execute("SELECT version FROM q3tts_schema").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise VoiceStoreError(f"the voice database has schema version {version}; this q3tts knows up to "
                                      f"{SCHEMA_VERSION}: upgrade q3tts")  # fmt: skip
            for step in range(version + 1, SCHEMA_VERSION + 1):
                cur.execute(MIGRATIONS[step])
                log.info("voice database: schema version %d", step)
            if row is None:
                cur.execute("INSERT INTO q3tts_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                cur.execute("UPDATE q3tts_schema SET version = %s", (SCHEMA_VERSION,))
        self._schema_ready = True

    def schema_version(self) -> int:
        with self._transaction() as cur:
            return cur.execute("SELECT version FROM q3tts_schema").fetchone()[0]

    # -- the VoiceStore interface ----------------------------------------------------------------
    def list(self) -> list[Voice]:
        with self._transaction() as cur:
            return [Voice.from_row(r) for r in cur.execute(f"SELECT {DETAILS} FROM q3tts_voices ORDER BY name")]

    def get(self, name: str) -> Voice:
        with self._transaction() as cur:
            row = cur.execute(f"SELECT {DETAILS} FROM q3tts_voices WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise VoiceNotFound(name)
        return Voice.from_row(row)

    def __contains__(self, name: str) -> bool:
        with self._transaction() as cur:
            return cur.execute("SELECT 1 FROM q3tts_voices WHERE name = %s", (name,)).fetchone() is not None

    def prompt(self, name: str) -> VoiceClonePromptItem:
        with self._transaction() as cur:
            row = cur.execute("SELECT prompt FROM q3tts_voices WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise VoiceNotFound(name)
        return VoiceClonePromptItem.from_bytes(bytes(row[0]), f"saved voice '{name}'")

    def add(self, name: str, item: VoiceClonePromptItem, duration: float, consent: Optional[Consent] = None) -> Voice:
        check_name(name)
        check_consent(self.require_consent, name, consent)
        voice = Voice(name, time.time(), "x_vector" if item.x_vector_only_mode else "icl", item.ref_text,
                      round(float(duration), 3), "", consent)  # fmt: skip
        c = consent
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO q3tts_voices (name, id, created, mode, ref_text, duration, prompt, consent_by, "
                "consent_text, consent_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, uuid.uuid4(), voice.created, voice.mode, voice.ref_text, voice.duration, item.to_bytes(),
                 c and c.by, c and c.text, c and c.at),
            )  # fmt: skip
            if cur.fetchone() is None:
                raise VoiceExists(name)
        return voice

    def delete(self, name: str) -> None:
        with self._transaction() as cur:
            if cur.execute("DELETE FROM q3tts_voices WHERE name = %s RETURNING name", (name,)).fetchone() is None:
                raise VoiceNotFound(name)


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
