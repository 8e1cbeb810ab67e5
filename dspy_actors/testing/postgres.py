"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

The server listens on a free loopback port and on a unix socket in its own directory, trusts
local connections (no password: nothing secret to leak) and is gone, files and process, when
:meth:`PostgresCluster.stop` returns. The binaries are found on ``PATH`` or in Debian's
``/usr/lib/postgresql/<version>/bin``. Run as root, the server runs as the ``postgres`` user
(PostgreSQL refuses to run as root).

    with PostgresCluster() as cluster:
        url = cluster.url  # postgresql://postgres@127.0.0.1:<port>/postgres

The pytest plugin gives it as the session-scoped ``postgres_cluster`` fixture (and
``postgres_url``, a fresh database per test): tests skip when PostgreSQL is not installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Self

__all__ = ["PostgresCluster", "PostgresUnavailable", "find_pg_bin"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine (install Debian's ``postgresql`` package)."""


def find_pg_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(os.path.realpath(initdb)).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if not found:
        raise PostgresUnavailable(
            "PostgreSQL is not installed: no initdb on PATH or in /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql)"
        )
    return Path(found[-1]).parent


def _major_version(initdb: str) -> int:
    name = Path(initdb).parent.parent.name
    return int(name) if name.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """One PostgreSQL server of its own, started by :meth:`start`, removed by :meth:`stop`."""

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.bin = find_pg_bin()
        self.start_timeout = start_timeout
        self.root = Path(tempfile.mkdtemp(prefix="dspy-actors-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._running = False
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` database (superuser ``postgres``, no password)."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
            )

    def start(self) -> Self:
        try:
            return self._start()
        except BaseException:
            self._running = True  # a half-started server is stopped too
            self.stop()
            raise

    def _start(self) -> Self:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", timeout=self.start_timeout)  # fmt: skip
        options = (
            f"-c listen_addresses={self.host} -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", str(int(self.start_timeout)), "start",
                  timeout=self.start_timeout + 10)  # fmt: skip
        self._running = True
        return self

    def restart(self) -> None:
        """Stop the server (fast: connections are cut) and start it again on the same port."""
        # (-l: the new server must not hold our pipes open, or this would wait forever.)
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t",
                  str(int(self.start_timeout)), "-l", str(self.root / "log"), "restart",
                  timeout=self.start_timeout + 10)  # fmt: skip

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg  # the postgres extra; only needed once a server runs

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        """Stop the server (immediately) and delete its files. Idempotent."""
        if self._running:
            self._running = False
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30",
                          "stop", timeout=40)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
