"""The part of "one SQLite file shared by threads and processes" that both of our SQLite
users need: the LM cache's disk tier (``lm/_cache_sqlite.py``) and the runtime's stores
(``runtime/_sqlite.py``). What they do when the file breaks differs (the cache deletes
and starts over, a store moves the file aside and reports lost history), so that stays
with each; what is here is the same for both:

- a pool of connections, each used by one thread at a time (``check_same_thread`` is off
  only so a connection can move between threads *between* uses). A generation number
  retires every pooled connection at once; after a fork the child never touches (or
  closes) its parent's connections;
- the check, before each operation, that the file at ``path`` is still the file we opened
  and still an SQLite file: an open connection keeps working on a deleted file and never
  re-reads pages it cached, so without it a deleted file would go on "working";
- explicit write transactions (``BEGIN IMMEDIATE``: two writers never deadlock upgrading
  a read lock);
- telling a lock held too long (``is_busy``: try later) from a broken file (``is_corrupt``),
  naming an error the same way in both (``describe``), opening a new file with the retries
  its switch to WAL may need (``attach_with_retries``), and finding whether the file at
  ``path`` is still the broken one before discarding it (``is_same_file``);
- care with our own descriptor of the file: under POSIX, closing *any* descriptor of a file
  drops every fcntl lock this process holds on it, including the SHARED lock each WAL-mode
  connection holds on the database file. Without that lock, another process closing its
  last connection believes it is the last user and deletes the WAL and shared-memory files
  under ours. So a descriptor is closed only once its file is abandoned or we close: a
  recovery parks it, and reopening the same file takes it back (``_open_descriptor``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

T = TypeVar("T")

SQLITE_MAGIC = b"SQLite format 3\x00"

FileProblemKind = Literal["missing", "replaced", "corrupt", "unopened"]


class FileProblem(Exception):
    """The file is gone, was replaced, is no SQLite file any more, or is not open."""

    def __init__(self, kind: FileProblemKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_busy(exc: BaseException) -> bool:
    """True for "try later" (a lock held past the busy timeout), not "the file is bad"."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = _code(exc)
    if code is not None:
        return code in _BUSY_CODES
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def is_corrupt(exc: BaseException) -> bool:
    """True for a file that is no (healthy) SQLite database any more."""
    if isinstance(exc, FileProblem):
        return exc.kind == "corrupt"
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = _code(exc)
    if code is not None:
        return code in _CORRUPT_CODES
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def describe(exc: BaseException) -> str:
    """``Type: message [SQLITE_CODE]`` (``file <kind>: ...`` for a FileProblem)."""
    if isinstance(exc, FileProblem):
        return f"file {exc.kind}: {exc}"
    name = getattr(exc, "sqlite_errorname", None)
    return f"{type(exc).__name__}: {exc}" + (f" [{name}]" if name else "")


def attach_with_retries(attach: Callable[[], T], attempts: int = 5) -> T:
    """``attach()``, retried briefly while busy: a brand-new file switching to WAL can
    report "locked" at once while another process creates the same file."""
    for attempt in range(attempts):
        try:
            return attach()
        except sqlite3.Error as exc:
            if not is_busy(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def is_same_file(path: Path, identity: tuple[int, int] | None) -> bool | None:
    """Whether the file at ``path`` is the one with ``identity`` (dev, inode): None if no
    file is there; True when ``identity`` is None (any file will do)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return identity is None or (st.st_dev, st.st_ino) == identity


@contextlib.contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the write lock up front (no deadlock on upgrade)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def close_quietly(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()


class PooledSqliteFile:
    """Connections to the SQLite file at ``path``, and the file's identity. Thread-safe.

    Subclasses open the file (setting ``_identity`` and ``_fd``), decide what to do when
    :meth:`_check_file` raises, and say with :meth:`_accepts_connections` whether returned
    connections may be kept.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float,
        synchronous: Literal["FULL", "NORMAL"],
        max_idle: int,
    ) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._max_idle = max_idle
        # Guards the fields below; never held across SQLite calls.
        self._lock = threading.Lock()
        self._generation = 0
        self._idle: list[sqlite3.Connection] = []
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._fd: int | None = None  # kept open to read the header cheaply
        # A recovery's retired descriptor and its file's identity: kept open while that
        # file may still be in use (see the module docstring), taken back if it reopens.
        self._parked: tuple[int, tuple[int, int] | None] | None = None
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []

    def _accepts_connections(self) -> bool:
        """Whether a connection handed back now may be kept for reuse."""
        return True

    def _check_file(self) -> None:
        """Raise ``FileProblem`` if the file we opened is no longer the healthy file at path."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise FileProblem("missing", f"{self.path} was deleted") from None
        identity, fd = self._identity, self._fd
        if identity is None:
            # An earlier open or recovery did not complete (a lock held too long, say).
            raise FileProblem("unopened", f"{self.path} is not open")
        if (st.st_dev, st.st_ino) != identity:
            raise FileProblem("replaced", f"{self.path} was replaced by another file")
        if fd is not None and hasattr(os, "pread"):  # no pread on Windows: inode check only
            header = os.pread(fd, len(SQLITE_MAGIC), 0)
            if header != SQLITE_MAGIC:
                raise FileProblem("corrupt", f"{self.path} no longer has an SQLite header")

    def _acquire(self) -> sqlite3.Connection:
        with self._lock:
            if os.getpid() != self._pid:
                # Forked: the parent's connections must never be used (or closed) here; keep
                # them referenced so garbage collection does not close them either.
                self._pid = os.getpid()
                self._generation += 1
                self._inherited.extend(self._idle)
                self._idle = []
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _release(self, conn: sqlite3.Connection, generation: int) -> None:
        with self._lock:
            keep = (
                generation == self._generation
                and self._accepts_connections()
                and len(self._idle) < self._max_idle
                and not conn.in_transaction
            )
            if keep:
                self._idle.append(conn)
        if not keep:
            close_quietly(conn)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; write transactions are explicit (BEGIN IMMEDIATE).
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop_connections(self, mark_closed: Callable[[], None] | None = None) -> None:
        """Retire every pooled connection (in-use ones close on return).

        ``mark_closed``, if given, runs under the same lock first: this is the final close
        (nothing can take an idle connection between the mark and the drop), and our
        descriptors close too. Otherwise (a recovery) our descriptor is parked, not closed:
        connections of the retired generation may still be in use in other threads.
        """
        closing: list[int] = []
        with self._lock:
            if mark_closed is not None:
                mark_closed()
            self._generation += 1
            idle, self._idle = self._idle, []
            fd, self._fd = self._fd, None
            identity, self._identity = self._identity, None
            parked = self._parked
            if mark_closed is not None:
                closing = [d for d in (fd, parked[0] if parked else None) if d is not None]
                self._parked = None
            elif fd is not None:
                self._parked = (fd, identity)
                if parked is not None and parked[1] != identity:
                    closing = [parked[0]]  # a file abandoned earlier (another inode)
        for conn in idle:
            close_quietly(conn)
        # Descriptors go last: closing one drops the process's locks on its file, which
        # SQLite's connections still needed until now.
        for each in closing:
            with contextlib.suppress(OSError):
                os.close(each)

    def _open_descriptor(self) -> tuple[int, os.stat_result]:
        """A descriptor of the file now at ``path`` for the header check, and its stat: the
        current or the parked one if it is still that file (a second descriptor of it would
        later have to be closed, dropping locks), else a new one. Call it last when opening
        a file, then :meth:`_swap_in`: nothing may fail in between."""
        st = os.stat(self.path)
        identity = (st.st_dev, st.st_ino)
        with self._lock:
            if self._fd is not None and self._identity == identity:
                return self._fd, st
            parked = self._parked
            if parked is not None and parked[1] == identity:
                self._parked = None
                return parked[0], st
        fd = os.open(self.path, os.O_RDONLY)
        return fd, os.fstat(fd)

    def _swap_in(
        self,
        conn: sqlite3.Connection,
        fd: int,
        st: os.stat_result,
        update: Callable[[], None] = lambda: None,
    ) -> None:
        """Make a freshly opened file current: ``conn`` the only idle connection, ``fd``
        the descriptor the checks read; ``update`` runs under the same lock (a subclass's
        own fields). The previous file's idle connections close; its descriptor too, if it
        is not this file's (then only retired connections used that file)."""
        with self._lock:
            self._generation += 1
            old_idle, self._idle = self._idle, [conn]
            old_fd, self._fd = self._fd, fd
            self._identity = (st.st_dev, st.st_ino)
            update()
        for old in old_idle:
            close_quietly(old)
        if old_fd is not None and old_fd != fd:
            with contextlib.suppress(OSError):
                os.close(old_fd)

    def _remove_orphan_sidecars(self) -> None:
        # The WAL and shared-memory files of a deleted file belong to no file any more:
        # remove them so a new file starts clean.
        if self.path.exists():
            return
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")
