"""Replicas sharing one voice library: a real PostgreSQL server for the session, started here in a
temporary folder with Debian's binaries (tools/setup_postgres.sh installs them), and helpers.

Skips when PostgreSQL or psycopg is missing, unless Q3TTS_REQUIRE_POSTGRES=1 (`make test`, CI),
where that is a failure."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from voice_helpers import ROOT, missing, require_module, wav_bytes  # noqa: E402, F401 - tests import them from here too

sys.path.insert(0, str(ROOT / "tests"))


def postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@dataclass
class PostgresServer:
    port: int
    admin_url: str  # the superuser's connection to the `postgres` database

    def url(self, database: str) -> str:
        return f"postgresql://q3tts@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, params: tuple = (), database: str = "postgres"):
        """Run one statement in autocommit (CREATE DATABASE needs it); the rows, if any."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else None

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.sql(f"CREATE DATABASE {name}")
        return name

    def cut_off(self, database: str) -> None:
        """The database goes away for its clients: new connections refused, open ones closed."""
        self.sql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        self.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))

    def restore(self, database: str) -> None:
        self.sql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """A PostgreSQL server of our own on 127.0.0.1 (trust authentication, user q3tts), for the session."""
    from serverproc import free_port

    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        missing("psycopg is not installed (the `postgres` extra)")
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        missing("PostgreSQL's initdb/pg_ctl are not installed")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="q3tts-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the `postgres` user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no `postgres` user to run the server as")
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    subprocess.run([*as_user, initdb, "-D", str(data / "db"), "-U", "q3tts", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], **run)  # fmt: skip
    # fsync off: the tests kill clients (replicas), never this server, and it keeps CI's disk quiet.
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
    subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w",
                    "-t", "60", "start"], **run)  # fmt: skip
    server = PostgresServer(port, f"postgresql://q3tts@127.0.0.1:{port}/postgres")
    try:
        yield server
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-m", "immediate", "stop"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture()
def database(postgres) -> str:
    """A fresh, empty database's URL on the session's server."""
    return postgres.url(postgres.new_database())
