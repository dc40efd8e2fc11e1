"""A throwaway PostgreSQL server for the tests, run from Debian's postgresql packages.

The server lives in one temp dir that it owns entirely:

    /tmp/trow-pg-XXXXXX/        owned by the postgres user (initdb refuses to run as root)
        data/                   the cluster (initdb -D)
        sock/                   the Unix socket dir (-k), kept out of /var/run/postgresql
        postgres.log            the server log (pg_ctl -l), quoted when start fails

It listens on 127.0.0.1 on a port picked once, so that a test can stop and start the same server
and its clients reconnect to the same address.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from typing import Sequence
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

# Durability costs time and buys nothing for a server that is thrown away after the run.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}

INSTALL_HINT = "apt-get install postgresql"


def find_bindir() -> str:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb, pg_ctl and postgres.

    Fails the test (never skips) when there is none: the suite needs a real server.
    """
    candidates = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        if all(os.access(os.path.join(bindir, n), os.X_OK) for n in ("initdb", "pg_ctl", "postgres")):
            version = os.path.basename(os.path.dirname(bindir))
            # Sort numerically so that 15 beats 9.6.
            key = tuple(int(p) if p.isdigit() else 0 for p in version.split("."))
            candidates.append((key, bindir))
    if not candidates:
        pytest.fail(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: "
            f"run `{INSTALL_HINT}` (Debian's packages) to run the PostgreSQL tests",
            pytrace=False,
        )
    return max(candidates)[1]


def pick_locale() -> str:
    """A UTF-8 locale whose collation is not plain "C": en_US.UTF-8 when installed, else C.UTF-8.

    A linguistic collation catches code that assumes byte order (``ORDER BY`` on names).
    """
    try:
        listed = subprocess.run(
            ["locale", "-a"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = []
    # locale -a prints normalised names ("en_US.utf8"); initdb accepts the canonical spelling.
    normalised = {name.lower().replace("-", "") for name in listed}
    if "en_us.utf8" in normalised:
        return "en_US.UTF-8"
    if "c.utf8" in normalised:
        return "C.UTF-8"
    return "C"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_traversable(path: str) -> None:
    """Fail clearly if the postgres user could not reach ``path`` through its parents."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            pytest.fail(
                f"{parent} is not world-traversable, so the postgres user cannot reach {path}: "
                "point TMPDIR somewhere else",
                pytrace=False,
            )
        if parent == os.path.dirname(parent):
            return
        parent = os.path.dirname(parent)


class PostgresServer:
    """One PostgreSQL cluster in a temp dir, started on construction.

    Databases are cheap to make (``fresh_database``); the server can be stopped and started again
    on the same port to test clients that must survive a restart.
    """

    user = "postgres"

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.locale = pick_locale()
        self.port = free_port()
        self._names = itertools.count(1)
        # initdb and the postmaster refuse root, so when the tests run as root every server
        # command runs as the postgres user, in a dir that user owns.
        self._as_root = os.geteuid() == 0
        self.dir = tempfile.mkdtemp(prefix="trow-pg-")
        try:
            if self._as_root:
                _check_traversable(self.dir)
                shutil.chown(self.dir, user=self.user, group=self.user)
            self.datadir = os.path.join(self.dir, "data")
            self.sockdir = os.path.join(self.dir, "sock")
            self.logfile = os.path.join(self.dir, "postgres.log")
            self._run(["mkdir", self.sockdir])
            self._initdb()
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run for the postgres user: through runuser when we are root."""
        if self._as_root:
            return ["runuser", "-u", self.user, "--", *argv]
        return list(argv)

    def _run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run a server command, failing the test with its output (and the log) if it fails."""
        # cwd: the postgres user cannot read root's home, and pg_ctl insists on a readable cwd.
        result = subprocess.run(
            self._command(argv), cwd=self.dir, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
                f"{self._log_tail()}",
                pytrace=False,
            )
        return result

    def _log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError:
            return ""
        return "\n--- " + self.logfile + " ---\n" + "".join(tail)

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def _initdb(self) -> None:
        self._run(
            [
                self._bin("initdb"),
                "-D", self.datadir,
                "-U", self.user,
                "--auth=trust",
                "--encoding=UTF8",
                f"--locale={self.locale}",
                # ICU's en-US sorts linguistically ("a" < "B") whatever locales the machine has:
                # code that assumes byte order fails here as it would on a production server.
                "--locale-provider=icu",
                "--icu-locale=en-US",
                "--no-sync",  # the cluster is thrown away; syncing only costs time
            ]
        )
        # Appended, so these win over initdb's defaults (the last setting in the file counts).
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write("\n# trow tests: a fast, disposable server\n")
            for key, value in FAST_SETTINGS.items():
                f.write(f"{key} = {value}\n")

    def start(self) -> None:
        """Start the server (again) on the same port and wait until it accepts connections."""
        self._run(
            [
                self._bin("pg_ctl"),
                "-D", self.datadir,
                "-l", self.logfile,
                "-w",
                "-t", "60",
                "-o", f"-h 127.0.0.1 -p {self.port} -k {self.sockdir}",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode`` is pg_ctl's shutdown mode (smart, fast or immediate)."""
        self._run([self._bin("pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop"])

    @property
    def running(self) -> bool:
        """Whether the postmaster is up (pg_ctl status exits 0 only then)."""
        if not os.path.isdir(self.dir):
            return False
        result = subprocess.run(
            self._command([self._bin("pg_ctl"), "-D", self.datadir, "status"]),
            cwd=self.dir,
            capture_output=True,
        )
        return result.returncode == 0

    def destroy(self) -> None:
        """Stop the server if it runs and remove its temp dir; safe to call twice."""
        if not os.path.isdir(self.dir):
            return
        try:
            if os.path.exists(os.path.join(self.dir, "data", "postmaster.pid")) and self.running:
                # The data is about to be deleted, so skip the shutdown checkpoint.
                self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str = "postgres", search_path: str | None = None) -> str:
        """A libpq URL for ``dbname``; ``search_path`` sets that setting for every session."""
        url = f"postgresql://{self.user}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"
        if search_path is not None:
            # libpq passes "options" to the server as command-line switches: -c name=value.
            url += "?options=" + quote(f"-csearch_path={search_path}", safe="")
        return url

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        # CREATE DATABASE cannot run inside a transaction block.
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting its sessions first; no error if it is gone."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )

    def fresh_database(self) -> str:
        """Create a database with a name never used before on this server; return its URL."""
        return self.create_database(f"trow_test_{next(self._names)}")

    def fresh_name(self, prefix: str) -> str:
        """A name unique on this server, for schemas and other per-test objects."""
        return f"{prefix}{next(self._names)}"
