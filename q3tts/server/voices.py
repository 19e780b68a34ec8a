"""Saved voices: a folder of `<name>.safetensors` voice prompts with a SQLite index of their details.

The folder is the one `q3tts voices` and the web UI use: a voice exists when its file does. The
index (voices.db: name, created, mode, ref_text, duration, file) is kept in step with the folder:
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
For many replicas, the answer is the PostgreSQL store of the scale-out issue, not this folder.
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
from typing import Optional

from ..voices import VOICE_NAME as NAME_PATTERN
from ..voices import VOICE_SUFFIX as SUFFIX
from ..voices import VoiceClonePromptItem, check_voice_name, read_voice_header

TEMP_PREFIX = ".upload-"  # .upload-<pid>@<host>@<random>.safetensors: whose upload it is
STALE_TEMP_SECONDS = 3600  # a temporary file of another machine (or unnamed) is abandoned after this
DB_NAME = "voices.db"
COLUMNS = "name, created, mode, ref_text, duration, file"
BUSY_TIMEOUT = 10.0  # seconds SQLite waits for another process's lock, per attempt
ATTEMPTS = 6  # then the whole transaction is retried, up to this many times
SCHEMA = """CREATE TABLE IF NOT EXISTS voices (
    name TEXT PRIMARY KEY, created REAL NOT NULL, mode TEXT NOT NULL,
    ref_text TEXT, duration REAL, file TEXT NOT NULL)"""


class VoiceExists(Exception):
    pass


class VoiceNotFound(KeyError):
    pass


@dataclass
class Voice:
    name: str
    created: float  # unix time
    mode: str  # "icl" (reference codes + transcript) or "x_vector"
    ref_text: Optional[str]
    duration: Optional[float]  # seconds of reference audio (unknown for adopted x-vector voices)
    file: str

    def public(self) -> dict:
        d = asdict(self)
        d.pop("file")
        return d


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
    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db_path = self.folder / DB_NAME
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], VoiceClonePromptItem] = {}
        with self._db(write=True) as db:
            db.execute(SCHEMA)
        for path in self.folder.iterdir():  # what a crash mid-upload leaves (ours, and save()'s own temp)
            if path.name.startswith((TEMP_PREFIX, "." + TEMP_PREFIX)) and path.is_file() and _abandoned(path):
                path.unlink(missing_ok=True)
        self.sync()

    def _db(self, write: bool = False) -> "_Transaction":
        return _Transaction(self.db_path, write)

    def sync(self) -> None:
        """Drop rows whose file is gone; adopt voice files that have no row."""
        with self._lock, self._db(write=True) as db:
            rows = dict(db.execute("SELECT name, file FROM voices").fetchall())
            for name, file in rows.items():
                if not (self.folder / file).is_file():
                    db.execute("DELETE FROM voices WHERE name = ?", (name,))
            for path in self.folder.glob(f"*{SUFFIX}"):
                name = path.name[: -len(SUFFIX)]
                if name not in rows and NAME_PATTERN.fullmatch(name) and (voice := read_details(path)):
                    db.execute(f"INSERT INTO voices ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                               tuple(asdict(voice).values()))  # fmt: skip

    def list(self) -> list[Voice]:
        self.sync()
        with self._db() as db:
            return [Voice(*row) for row in db.execute(f"SELECT {COLUMNS} FROM voices ORDER BY name")]

    def get(self, name: str) -> Voice:
        for attempt in range(2):
            with self._db() as db:
                row = db.execute(f"SELECT {COLUMNS} FROM voices WHERE name = ?", (name,)).fetchone()
            if row is not None and (self.folder / row[-1]).is_file():
                return Voice(*row)
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
        """The saved voice prompt (cached in memory after the first use)."""
        path = self.folder / self.get(name).file
        key = (name, path.stat().st_mtime_ns)  # a file replaced by another tool is read again
        if key not in self._cache:
            self._cache[key] = VoiceClonePromptItem.load(path)
        return self._cache[key]

    def add(self, name: str, item: VoiceClonePromptItem, duration: float) -> Voice:
        check_name(name)
        if name in self:
            raise VoiceExists(name)
        temp = self.folder / f"{TEMP_PREFIX}{os.getpid()}@{socket.gethostname()}@{uuid.uuid4().hex}{SUFFIX}"
        try:
            item.save(temp)
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
            voice = Voice(name, time.time(), "x_vector" if item.x_vector_only_mode else "icl", item.ref_text,
                          round(float(duration), 3), name + SUFFIX)  # fmt: skip
            with self._lock:
                try:  # a hard link is an atomic rename that never replaces an existing voice
                    os.link(temp, self.folder / voice.file)
                except FileExistsError:
                    raise VoiceExists(name) from None
                _fsync_dir(self.folder)
                with self._db(write=True) as db:
                    db.execute(f"INSERT OR REPLACE INTO voices ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                               tuple(asdict(voice).values()))  # fmt: skip
        finally:
            temp.unlink(missing_ok=True)
        return voice

    def delete(self, name: str) -> None:
        voice = self.get(name)
        with self._lock:
            with self._db(write=True) as db:
                db.execute("DELETE FROM voices WHERE name = ?", (name,))
            (self.folder / voice.file).unlink(missing_ok=True)
            self._cache = {k: v for k, v in self._cache.items() if k[0] != name}


class _Transaction:
    """`with self._db(write) as db:` runs the statements in one transaction and closes the connection.
    A "database is locked" on BEGIN (another process held the lock past the busy timeout) is retried."""

    def __init__(self, path: Path, write: bool):
        self.path, self.begin = path, "BEGIN IMMEDIATE" if write else "BEGIN"

    def __enter__(self) -> sqlite3.Connection:
        for attempt in range(ATTEMPTS):
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)  # explicit transactions
            try:
                db.execute("PRAGMA synchronous=FULL")
                db.execute(self.begin)
                self.db = db
                return db
            except sqlite3.OperationalError as e:
                db.close()
                if not _is_busy(e) or attempt == ATTEMPTS - 1:
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
