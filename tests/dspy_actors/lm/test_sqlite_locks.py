"""Our own descriptor of an SQLite file must not cost the file its locks.

Under POSIX, closing any descriptor of a file drops every fcntl lock the process holds on
it, including the SHARED lock a WAL-mode connection keeps on the database file. Another
process that then closes its last connection believes it is the file's last user and
deletes the WAL and shared-memory files under ours. A recovery therefore parks the
descriptor it retires instead of closing it while connections may still be in use."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from dspy_actors.lm._cache_sqlite import SqliteCacheFile

_OTHER_PROCESS = """
import sqlite3, sys
other = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
other.execute("CREATE TABLE IF NOT EXISTS other_process (x)")
other.execute("INSERT INTO other_process VALUES (1)")
other.close()
"""


def _another_process_writes_and_closes(path: Path) -> None:
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(path)], check=True, timeout=60)


def test_a_recovery_keeps_the_locks_of_connections_still_in_use(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    store = SqliteCacheFile(path, max_bytes=10_000_000, busy_timeout=5.0)
    try:
        store.put("k", '{"outputs": ["v"]}')
        holding, release = threading.Event(), threading.Event()

        def long_read(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT count(*) FROM entries").fetchone()
            holding.set()
            release.wait(30)

        reader = threading.Thread(target=store._run, args=("long read", long_read, False))
        reader.start()
        try:
            assert holding.wait(10)
            descriptor = store._fd
            # What a recovery does first: retire every connection. The reader's is in use.
            store._drop_connections()
            _another_process_writes_and_closes(path)
            # Had our descriptor been closed, the other process would have found no lock
            # and deleted these under the reader's connection.
            assert os.path.exists(f"{path}-wal")
            assert os.path.exists(f"{path}-shm")
        finally:
            release.set()
            reader.join(10)
        # The store recovers onto the same file, with the same descriptor (a second one of
        # that file would have to be closed some day, dropping the locks again).
        assert store.get("k") is not None
        assert store._fd == descriptor
    finally:
        store.close()
