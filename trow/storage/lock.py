"""One trow process per data dir: an exclusive C{flock} on C{<data-dir>/trow.lock}.

The server takes it at start-up and the one-shot C{python -m trow gc} takes it for its run, so a
garbage collection pass never deletes files under a server that is still linking them, and two
servers never share one sqlite database and blob store. The kernel drops the lock when the process
ends, however it ends (kill -9 included), so a crash never leaves a data dir locked.
"""

from __future__ import annotations

import fcntl
import os

LOCK_NAME = "trow.lock"


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


def lock_data_dir(data_dir: str) -> DataDirLock:
    """Take the exclusive lock of C{data_dir} (created if need be) without waiting.

    Raises L{DataDirLocked} when another process holds it, and C{OSError} when the lock file
    cannot be created. Keep the returned object for as long as the data dir is in use.
    """
    os.makedirs(data_dir, exist_ok=True)
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
