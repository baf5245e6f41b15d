"""The zero-setup outbox store: one SQLite file (stdlib ``sqlite3``).

Durability: WAL journal and ``synchronous=FULL``, so a commit that returned
survives a power cut, not only a crash. Writers are serialised by ``BEGIN
IMMEDIATE`` (one writer transaction per claim batch, or per group of records,
see :mod:`~smtpsubmit.outbox.commit`); readers never block.
Each thread gets its own connection, so any number of worker threads and
processes can share the file on one machine.

URLs: ``sqlite:///abs/path.db`` (an absolute path), ``sqlite:relative.db``,
and ``?mode=ro`` to inspect an outbox without the right to change it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from smtpsubmit.outbox.sql import Connections, Cursor, SqlStore, translate_errors
from smtpsubmit.outbox.store import StoreError

__all__ = ["SqliteStore", "default_path", "path_from_url"]

BUSY_TIMEOUT_MS = 30_000


def default_path() -> str:
    """``$XDG_DATA_HOME/smtpsubmit/outbox.sqlite3`` (else ``~/.local/share/…``)."""
    base = os.environ.get("XDG_DATA_HOME") or ""
    if not (base and os.path.isabs(base)):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "smtpsubmit", "outbox.sqlite3")


def path_from_url(url: str) -> tuple[str, bool]:
    """The file path of a ``sqlite:`` URL and whether it is read-only."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise StoreError(f"not a SQLite outbox URL (sqlite:///PATH): {url!r}")
    path = unquote(parts.path)
    if path.startswith("//"):
        path = path[1:]
    if not path:
        raise StoreError("the SQLite outbox URL has no path (sqlite:///PATH)")
    options = dict(parse_qsl(parts.query))
    unknown = set(options) - {"mode"}
    if unknown or options.get("mode", "rw") not in ("rw", "ro"):
        raise StoreError(f"unknown SQLite outbox URL option(s) in {url!r} (only mode=ro|rw)")
    return os.path.expanduser(path), options.get("mode") == "ro"


class SqliteStore(SqlStore):
    """An outbox in one SQLite file."""

    batched_updates = sqlite3.sqlite_version_info >= (3, 33)

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._connections = Connections()
        # SQLite lets one writer in at a time and makes the others poll (sleeping 1 ms,
        # then longer): the threads of one process queue here instead, in turn.
        self._writer: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if read_only else threading.Lock()
        )
        if not read_only:
            directory = os.path.dirname(os.path.abspath(path))
            with translate_errors((OSError,), f"cannot create {directory!r}"):
                os.makedirs(directory, exist_ok=True)

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        path, read_only = path_from_url(url)
        return cls(path, read_only=read_only)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = self._connections.get()
        if conn is None:
            with translate_errors((sqlite3.Error,), f"cannot open the outbox {self.path!r}"):
                if self.read_only:
                    target = "file:" + os.path.abspath(self.path) + "?mode=ro"
                    conn = sqlite3.connect(
                        target, uri=True, isolation_level=None, check_same_thread=False
                    )
                else:
                    conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA synchronous=FULL")
            self._connections.add(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self, connection: Any = None) -> Iterator[Cursor]:
        if connection is not None:
            if not isinstance(connection, sqlite3.Connection):
                raise TypeError("a SQLite outbox needs a sqlite3.Connection as connection=")
            # The caller's transaction: it commits (or rolls back) what we write.
            with translate_errors((sqlite3.Error,), "cannot write to the outbox"):
                yield connection.cursor()
            return
        conn = self._connection()
        with (
            self._writer,
            translate_errors((sqlite3.Error,), f"outbox {self.path!r}"),
        ):
            cur = conn.cursor()
            cur.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _use_index(self, index: str) -> str:
        return f" INDEXED BY {index}"

    def close(self) -> None:
        self._connections.close_all()
