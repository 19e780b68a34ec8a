"""Saved voices: the voice-store interface, and its folder back-end (the PostgreSQL one, for replicas
on several machines, is voices_postgres.py; voicestore.py picks one from a setting).

The folder back-end: a folder of `<name>.safetensors` voice prompts with a SQLite index of their details.

The folder is the one `q3tts voices` and the web UI use: a voice exists when its file does. The
index (voices.db: name, created, mode, ref_text, duration, file; consents) is kept in step with the folder:
rows whose file is gone are dropped, and files saved by other tools are adopted, reading their
details from the file header.

An upload is written so that a crash at any point leaves either the whole voice or none of it:
  1. the prompt goes to a temporary `.upload-*` file, which is fsync'ed;
  2. it is renamed to `<name>.safetensors` (atomic) and the folder fsync'ed;
  3. its row is inserted in a transaction.
Only complete files ever carry a final name; a crash before 3 leaves a complete file that is
adopted on the next start. Temporary files left by a crash are removed at start-up (those of a
process that no longer runs; another machine's after an hour, as it may still be writing them).

Several processes may share one folder (replicas on a shared disk). Every transaction that may
write starts with BEGIN IMMEDIATE: it takes the write lock first, waiting for it (busy timeout),
instead of reading under a shared lock and failing at once with "database is locked" when two
readers both try to write (SQLite cannot wait there: one of them must roll back). A lock still
held past the timeout is retried, so a request waits rather than fails. The journal stays in
the default rollback mode: WAL needs shared memory, which network file systems do not give.
For replicas on several machines, use the PostgreSQL store (voices_postgres.py), not this folder.

Deleting a voice removes its file and its row (with `secure_delete`, SQLite zeroes the freed
pages, so the transcript does not linger in voices.db). Prompts are not cached in memory: a voice
deleted through another process must not live on in this one (reading one is well under a
millisecond for a 60 s voice's ~100 KB file).
A folder that is gone (an unmounted disk) or whose index cannot be opened makes every call raise
VoiceStoreUnavailable (503 on the voice routes); the folder is not re-created behind the mount's back.
"""

from __future__ import annotations

import os
import random
import re
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Protocol

from ..errors import InputError
from ..voices import VOICE_NAME as NAME_PATTERN
from ..voices import VOICE_SUFFIX as SUFFIX
from ..voices import VoiceClonePromptItem, check_voice_name, read_voice_header

TEMP_PREFIX = ".upload-"  # .upload-<pid>@<host>@<random>.safetensors: whose upload it is
STALE_TEMP_SECONDS = 3600  # a temporary file of another machine (or unnamed) is abandoned after this
DB_NAME = "voices.db"
COLUMNS = "name, created, mode, ref_text, duration, file"
# A voice with its consent statement, if any (the `consents` table of the consent option).
DETAILS = ("SELECT v.name, v.created, v.mode, v.ref_text, v.duration, v.file, c.given_by, c.statement, c.given_at "
           "FROM voices v LEFT JOIN consents c ON c.name = v.name")  # fmt: skip
BUSY_TIMEOUT = 10.0  # seconds SQLite waits for another process's lock, per attempt
ATTEMPTS = 6  # then the whole transaction is retried, up to this many times
SCHEMA = """CREATE TABLE IF NOT EXISTS voices (
    name TEXT PRIMARY KEY, created REAL NOT NULL, mode TEXT NOT NULL,
    ref_text TEXT, duration REAL, file TEXT NOT NULL)"""
# Its own table, so the `voices` table (and every tool that writes it) stays as it was.
CONSENT_SCHEMA = """CREATE TABLE IF NOT EXISTS consents (
    name TEXT PRIMARY KEY, given_by TEXT NOT NULL, statement TEXT NOT NULL, given_at REAL NOT NULL)"""


class VoiceExists(Exception):
    pass


class VoiceNotFound(KeyError):
    pass


class VoiceStoreUnavailable(Exception):
    """The store cannot be reached (database down, folder gone): the voice routes answer 503."""


class ConsentRequired(Exception):
    """The store was opened with require_consent and a voice came without a consent statement."""


@dataclass(frozen=True)
class Consent:
    """The statement under which a cloned voice was saved: who gave it, what it says, when (unix time)."""

    by: str
    text: str
    at: float


@dataclass
class Voice:
    name: str
    created: float  # unix time
    mode: str  # "icl" (reference codes + transcript) or "x_vector"
    ref_text: Optional[str]
    duration: Optional[float]  # seconds of reference audio (unknown for adopted x-vector voices)
    file: str  # the folder back-end's file name ("" in PostgreSQL)
    consent: Optional[Consent] = None

    @classmethod
    def from_row(cls, row: tuple) -> "Voice":
        """(name, created, mode, ref_text, duration, file, consent_by, consent_text, consent_at)"""
        *fields, by, text, at = row
        return cls(*fields, consent=Consent(by, text, at) if by is not None else None)

    def row(self) -> tuple:
        """The folder index's `voices` row (COLUMNS)."""
        return self.name, self.created, self.mode, self.ref_text, self.duration, self.file

    def public(self) -> dict:
        d = asdict(self)
        d.pop("file")
        return d


class VoiceStore(Protocol):
    """What the server and the UI need of a voice store (folder: VoiceLibrary; PostgreSQL:
    PostgresVoiceStore). Every method may raise VoiceStoreUnavailable."""

    def list(self) -> list[Voice]: ...
    def get(self, name: str) -> Voice: ...  # VoiceNotFound
    def __contains__(self, name: str) -> bool: ...
    def prompt(self, name: str) -> VoiceClonePromptItem: ...  # VoiceNotFound
    def add(self, name: str, item: VoiceClonePromptItem, duration: float,
            consent: Optional[Consent] = None) -> Voice: ...  # VoiceExists, ConsentRequired  # fmt: skip
    def delete(self, name: str) -> None: ...  # VoiceNotFound: every trace of the voice is gone
    def close(self) -> None: ...


def check_consent(require: bool, name: str, consent: Optional[Consent]) -> None:
    if require and (consent is None or not consent.by.strip() or not consent.text.strip()):
        raise ConsentRequired(f"voice '{name}': this server saves cloned voices only with a consent statement "
                              "(who gave it, and its text)")  # fmt: skip


check_name = check_voice_name  # the one name rule (q3tts/voices.py)


def read_details(path: Path) -> Optional[Voice]:
    """A voice file's details from its header, or None if it is not a readable voice prompt."""
    header = read_voice_header(path)
    if header is None:
        return None
    return Voice(header.name, path.stat().st_mtime, header.mode, header.ref_text, header.duration, path.name)


def _abandoned(temp: Path) -> bool:
    """A temporary upload file whose writer is gone: a process of this machine that no longer runs,
    else (another machine's, or an older name) one untouched for STALE_TEMP_SECONDS. Another
    server on the same folder may be writing it right now: its file must stay."""
    owner = re.match(r"\.{1,2}upload-(\d+)@([^@]+)@", temp.name)
    if owner and owner.group(2) == socket.gethostname():
        try:
            os.kill(int(owner.group(1)), 0)
        except (ProcessLookupError, OverflowError):  # gone (or never a process id)
            return True
        except PermissionError:  # alive, under another user
            pass
        return False
    try:
        return time.time() - temp.stat().st_mtime > STALE_TEMP_SECONDS
    except FileNotFoundError:
        return False


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class VoiceLibrary:
    """The folder back-end of VoiceStore."""

    def __init__(self, folder: str | Path, require_consent: bool = False):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db_path = self.folder / DB_NAME
        self.require_consent = require_consent
        self._lock = threading.Lock()
        with self._db(write=True) as db:
            db.execute(SCHEMA)
            db.execute(CONSENT_SCHEMA)
        for path in self.folder.iterdir():  # what a crash mid-upload leaves (ours, and save()'s own temp)
            if path.name.startswith((TEMP_PREFIX, "." + TEMP_PREFIX)) and path.is_file() and _abandoned(path):
                path.unlink(missing_ok=True)
        self.sync()

    def _db(self, write: bool = False) -> "_Transaction":
        if not self.folder.is_dir():
            raise VoiceStoreUnavailable(f"the voice folder {self.folder} is gone (an unmounted disk?)")
        return _Transaction(self.db_path, write)

    def close(self) -> None:
        pass  # every call opens and closes its own connection

    def sync(self) -> None:
        """Drop rows whose file is gone; adopt voice files that have no row."""
        with self._lock, self._db(write=True) as db:
            rows = dict(db.execute("SELECT name, file FROM voices").fetchall())
            for name, file in rows.items():
                if not (self.folder / file).is_file():
                    db.execute("DELETE FROM voices WHERE name = ?", (name,))
            db.execute("DELETE FROM consents WHERE name NOT IN (SELECT name FROM voices)")
            for path in self.folder.glob(f"*{SUFFIX}"):
                name = path.name[: -len(SUFFIX)]
                if name not in rows and NAME_PATTERN.fullmatch(name) and (voice := read_details(path)):
                    db.execute(f"INSERT INTO voices ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", voice.row())

    def list(self) -> list[Voice]:
        self.sync()
        with self._db() as db:
            return [Voice.from_row(row) for row in db.execute(f"{DETAILS} ORDER BY v.name")]

    def get(self, name: str) -> Voice:
        for attempt in range(2):
            with self._db() as db:
                row = db.execute(f"{DETAILS} WHERE v.name = ?", (name,)).fetchone()
            if row is not None and (self.folder / row[5]).is_file():
                return Voice.from_row(row)
            if attempt == 0:
                self.sync()  # another tool may have added or removed it
        raise VoiceNotFound(name)

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
            return True
        except VoiceNotFound:
            return False

    def prompt(self, name: str) -> VoiceClonePromptItem:
        """The saved voice prompt, read from its file each time (see the module's docstring)."""
        try:
            return VoiceClonePromptItem.load(self.folder / self.get(name).file)
        except InputError:
            if not (self.folder / self.get(name).file).is_file():  # deleted between the two lines
                raise VoiceNotFound(name) from None
            raise

    def add(self, name: str, item: VoiceClonePromptItem, duration: float, consent: Optional[Consent] = None) -> Voice:
        check_name(name)
        check_consent(self.require_consent, name, consent)
        if name in self:
            raise VoiceExists(name)
        temp = self.folder / f"{TEMP_PREFIX}{os.getpid()}@{socket.gethostname()}@{uuid.uuid4().hex}{SUFFIX}"
        try:
            item.save(temp)
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
            voice = Voice(name, time.time(), "x_vector" if item.x_vector_only_mode else "icl", item.ref_text,
                          round(float(duration), 3), name + SUFFIX, consent)  # fmt: skip
            with self._lock:
                try:  # a hard link is an atomic rename that never replaces an existing voice
                    os.link(temp, self.folder / voice.file)
                except FileExistsError:
                    raise VoiceExists(name) from None
                _fsync_dir(self.folder)
                with self._db(write=True) as db:
                    db.execute(f"INSERT OR REPLACE INTO voices ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", voice.row())
                    db.execute("DELETE FROM consents WHERE name = ?", (name,))
                    if consent is not None:
                        db.execute("INSERT INTO consents VALUES (?, ?, ?, ?)", (name, consent.by, consent.text,
                                                                               consent.at))  # fmt: skip
        except OSError as e:  # a full, read-only or vanished folder: the store cannot take voices now
            raise VoiceStoreUnavailable(f"the voice folder {self.folder} cannot be written: {e.strerror or e}") from e
        finally:
            temp.unlink(missing_ok=True)
        return voice

    def delete(self, name: str) -> None:
        voice = self.get(name)
        with self._lock:
            with self._db(write=True) as db:
                db.execute("DELETE FROM voices WHERE name = ?", (name,))
                db.execute("DELETE FROM consents WHERE name = ?", (name,))
            (self.folder / voice.file).unlink(missing_ok=True)


class _Transaction:
    """`with self._db(write) as db:` runs the statements in one transaction and closes the connection.
    A "database is locked" on BEGIN (another process held the lock past the busy timeout) is retried."""

    def __init__(self, path: Path, write: bool):
        self.path, self.begin = path, "BEGIN IMMEDIATE" if write else "BEGIN"

    def __enter__(self) -> sqlite3.Connection:
        for attempt in range(ATTEMPTS):
            try:
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)  # explicit transactions
            except sqlite3.OperationalError as e:
                raise VoiceStoreUnavailable(f"the voice index {self.path} cannot be opened: {e}") from None
            try:
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA secure_delete=ON")  # a deleted voice's row is zeroed in the file
                db.execute(self.begin)
                self.db = db
                return db
            except sqlite3.OperationalError as e:
                db.close()
                if not _is_busy(e):
                    raise VoiceStoreUnavailable(f"the voice index {self.path} cannot be opened: {e}") from None
                if attempt == ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.01, 0.1) * (attempt + 1))
        raise AssertionError("unreachable")

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.db.close()


def _is_busy(e: sqlite3.OperationalError) -> bool:
    return "locked" in str(e) or "busy" in str(e)
