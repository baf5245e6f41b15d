"""A private, throw-away PostgreSQL cluster on 127.0.0.1, as a session-scoped fixture.

Needs Debian's ``postgresql`` package (``scripts/install-system-deps.sh``); when it is
missing the fixture fails (it never skips). PostgreSQL refuses to run as root, so when the
tests run as root the cluster is created and run as the ``postgres`` system user, in a
temporary directory it owns: ``initdb`` (trust auth, loopback only), ``pg_ctl start`` on a
free port with its socket in that directory, ``pg_ctl stop`` at the end of the session. The
server runs with ``fsync=off``: the tests crash workers, never PostgreSQL itself.

Fixtures:
- ``postgres_cluster`` (session): the running cluster (``.host``, ``.port``, ``.url(db)``,
  ``.create_schema()``).
- ``postgres_url`` (function): a fresh, empty schema for one test, as a ``postgresql://`` URL
  whose connections use it.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = "run `sudo bash scripts/install-system-deps.sh` (installs postgresql)"
PG_USER = "postgres"


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not versions:
        pytest.fail(f"PostgreSQL (pg_ctl, initdb) is not installed: {INSTALL_HINT}", pytrace=False)
    return Path(versions[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresCluster:
    root: Path
    bindir: Path
    port: int
    host: str = "127.0.0.1"
    user_kwargs: dict[str, Any] = field(default_factory=dict)
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{database}"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
            **self.user_kwargs,
        )

    def create_schema(self) -> str:
        """A new empty schema in the session's database; returns a URL whose connections
        use it (``search_path``), so each test starts from nothing without the cost of a
        database."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def drop_schema(self, url: str) -> None:
        import psycopg

        name = url.rsplit("%3D", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")


def start_postgres(*, fsync: bool = False) -> PostgresCluster:
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="smtpsubmit-pg-"))
    user_kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            shutil.chown(root, user=PG_USER, group=None)
        except LookupError:
            shutil.rmtree(root, ignore_errors=True)
            pytest.fail(f"system user {PG_USER!r} is missing: {INSTALL_HINT}", pytrace=False)
        user_kwargs = {"user": PG_USER}
    cluster = PostgresCluster(root, bindir, _free_port(), user_kwargs=user_kwargs)
    init = cluster.run(
        "initdb", "-D", str(root / "data"), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
        "--no-sync", "--locale=C",
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr or init.stdout}", pytrace=False)
    # The tests kill workers, never the database server: its own fsyncs only cost time here.
    options = f"-k {root} -p {cluster.port} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if not fsync:  # the benchmark keeps PostgreSQL's durability on
        options += " -c fsync=off -c full_page_writes=off"
    start = cluster.run(
        "pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-o", options, "-w",
        "-t", "30", "start",
    )  # fmt: skip
    if start.returncode != 0:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {start.stderr}{log[-2000:]}", pytrace=False)
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = start_postgres()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    url = postgres_cluster.create_schema()
    try:
        yield url
    finally:
        postgres_cluster.drop_schema(url)
