"""One trow process per data dir: an exclusive C{flock} on C{<data-dir>/trow.lock}; or, with
C{--database}, many replicas on one shared data dir, which is then marked as theirs.

The server takes it at start-up and the one-shot C{python -m trow gc} takes it for its run, so a
garbage collection pass never deletes files under a server that is still linking them, and two
servers never share one sqlite database and blob store. The kernel drops the lock when the process
ends, however it ends (kill -9 included), so a crash never leaves a data dir locked.
"""

from __future__ import annotations

import fcntl
import os
import secrets

LOCK_NAME = "trow.lock"
# Present when the data dir's metadata is in PostgreSQL (replicas, or after python -m trow migrate):
# its trow.db, if any, is stale, so a server or gc command on sqlite must not run there.
SHARED_MARK = "trow.database"


class DataDirLocked(Exception):
    """Another process holds the data dir; the message says which dir and what to do."""


class DataDirLock:
    """A held lock on a data dir; L{release} (or process exit) lets it go."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Is the lock still held by this object?"""
        return self._fd is not None

    def release(self) -> None:
        """Unlock and close the lock file (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def lock_data_dir(data_dir: str, shared_with: str | None = None) -> DataDirLock:
    """Take the exclusive lock of C{data_dir} (created if need be) without waiting.

    Raises L{DataDirLocked} when another process holds it, or when the data dir is marked shared
    (unless for exactly C{shared_with}: C{python -m trow migrate} run again), and C{OSError} when
    the lock file cannot be created. Keep the returned object for as long as the data dir is in use.
    """
    os.makedirs(data_dir, exist_ok=True)
    where = shared_mark(data_dir)
    if where is not None and where != shared_with:
        raise DataDirLocked(
            f"data dir {os.path.abspath(data_dir)} belongs to trow replicas whose metadata is in PostgreSQL "
            f"({where}); start trow with --database (its garbage collection runs inside the replicas)"
        )
    path = os.path.join(data_dir, LOCK_NAME)
    # O_CLOEXEC: child processes (none today) must not keep the lock alive after trow exits.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(
            f"data dir {os.path.abspath(data_dir)} is in use by another trow process (it holds {path}); "
            "stop that process first"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return DataDirLock(path, fd)


def shared_mark(data_dir: str) -> str | None:
    """Where the metadata of a shared data dir is (a redacted URL), or None for a data dir of one
    process."""
    try:
        with open(os.path.join(data_dir, SHARED_MARK), encoding="utf-8") as handle:
            return handle.read().strip() or "PostgreSQL"
    except FileNotFoundError:
        return None


def mark_shared(data_dir: str, where: str) -> None:
    """Mark C{data_dir} as the shared volume of replicas whose metadata is at C{where} (a URL
    without its password). Written whole or not at all; rewriting it is harmless."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, SHARED_MARK)
    if shared_mark(data_dir) == where:
        return
    # A random name: replicas start at once, each as pid 1 of its container.
    temporary = f"{path}.{secrets.token_hex(8)}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(where + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
