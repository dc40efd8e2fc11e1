"""Upload session files: C{uploads/<uuid>}, holding the bytes of a session up to its offset.

The offset is the metadata's (L{trow.storage.metadata.UploadRecord.size}), not the file's size:
with several replicas on one shared volume, the chunks of one session may be written by different
processes, and one replica's view of another's file size can lag. Each chunk is written at the
offset the metadata gave (never blindly appended), and the file is closed, which on NFS publishes
it to the next opener.

A session's bytes are hashed as they are written, with the hasher kept in memory beside its
offset. After a restart, on another replica, or if the offsets ever disagree, the file is simply
hashed again (up to the offset) on the worker at the end, so resuming an upload costs time,
never correctness.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from twisted.internet.defer import Deferred

from trow.storage.blobs import BlobStore, SpooledBody, discard_file, remove_entries
from trow.workers import Worker

_CHUNK = 1 << 20


class UploadFiles:
    """The files of upload sessions, and the running sha256 of each."""

    def __init__(self, root: str, blobs: BlobStore, worker: Worker) -> None:
        self.root = os.path.join(root, "uploads")
        os.makedirs(self.root, exist_ok=True)
        self._blobs = blobs
        self._worker = worker
        # uuid -> (offset the hasher has seen, hasher)
        self._hashers: dict[str, tuple[int, Any]] = {}

    def path(self, upload_id: str) -> str:
        """The data file of a session."""
        return os.path.join(self.root, upload_id)

    def create(self, upload_id: str) -> "Deferred[None]":
        """Create the empty data file of a new session."""
        self._hashers[upload_id] = (0, hashlib.sha256())
        return self._worker.run(lambda: open(self.path(upload_id), "wb").close())

    def stat_size(self, upload_id: str) -> "Deferred[int | None]":
        """L{size} on the worker: a stat on a network volume can stall."""
        return self._worker.run(self.size, upload_id)

    def size(self, upload_id: str) -> int | None:
        """The session's offset: how many bytes it holds, or None if it has no file."""
        try:
            return os.stat(self.path(upload_id)).st_size
        except FileNotFoundError:
            return None

    def append(self, upload_id: str, body: SpooledBody | bytes, offset: int) -> "Deferred[int]":
        """Write a chunk at C{offset} (where the session ends) and return the new offset. The
        chunk's file (if any) is consumed."""
        state = self._hashers.get(upload_id)
        if state is not None and state[0] != offset:
            state = None
        if isinstance(body, SpooledBody) and offset == 0:
            # The common monolithic PATCH: the spool already is the data, and its hash is ours.
            self._hashers[upload_id] = (body.size, body.sha256)
            return self._worker.run(self._replace, body.path, self.path(upload_id)).addCallback(lambda _: body.size)
        # Hash into a copy: a chunk that fails half-way must leave the session's hash untouched.
        hasher = state[1].copy() if state is not None else None
        return self._worker.run(self._append_sync, upload_id, body, hasher, offset).addCallbacks(
            self._appended, self._append_failed, callbackArgs=(upload_id, hasher), errbackArgs=(upload_id,)
        )

    def _appended(self, new_offset: int, upload_id: str, hasher: Any) -> int:
        if hasher is not None:
            self._hashers[upload_id] = (new_offset, hasher)
        else:
            self._hashers.pop(upload_id, None)
        return new_offset

    def _append_failed(self, failure: Any, upload_id: str) -> Any:
        # The file was truncated back to its offset; the stored hasher still matches it.
        return failure

    @staticmethod
    def _replace(source: str, target: str) -> None:
        os.replace(source, target)

    def _append_sync(self, upload_id: str, body: SpooledBody | bytes, hasher: Any, start: int) -> int:
        path = self.path(upload_id)
        with open(path, "r+b") as out:
            # Whatever lies past the offset is not the session's (a chunk that failed half-way).
            out.truncate(start)
            out.seek(start)
            try:
                if isinstance(body, bytes):
                    out.write(body)
                    if hasher is not None:
                        hasher.update(body)
                else:
                    with open(body.path, "rb") as source:
                        while chunk := source.read(_CHUNK):
                            out.write(chunk)
                            if hasher is not None:
                                hasher.update(chunk)
            except BaseException:
                # Never leave half a chunk behind: the offset must stay where the client saw it.
                out.truncate(start)
                raise
            finally:
                if isinstance(body, SpooledBody):
                    body.discard()
            return out.tell()

    def digest_hex(self, upload_id: str, algorithm: str, offset: int) -> "Deferred[str]":
        """The hex digest of the session's first C{offset} bytes (all it holds), from memory
        when this process wrote them all."""
        state = self._hashers.get(upload_id)
        if algorithm == "sha256" and state is not None and state[0] == offset:
            return self._worker.run(lambda: state[1].copy().hexdigest())
        return self._blobs.hash_file(self.path(upload_id), algorithm, limit=offset)

    def truncate(self, upload_id: str, offset: int) -> "Deferred[None]":
        """Cut the session's file to C{offset} bytes, so that it can be committed as a blob."""

        def cut() -> None:
            with open(self.path(upload_id), "r+b") as handle:
                handle.truncate(offset)

        return self._worker.run(cut)

    def forget(self, upload_id: str) -> None:
        """Drop the in-memory state of a session (its file is gone or committed)."""
        self._hashers.pop(upload_id, None)

    def delete(self, upload_id: str) -> "Deferred[None]":
        """Remove a session's file."""
        self.forget(upload_id)
        return self._worker.run(discard_file, self.path(upload_id))

    def existing_ids(self) -> list[str]:
        """Session files on disk (start-up cleaning)."""
        return os.listdir(self.root)

    def remove_orphans(self, known: set[str], older_than: float | None = None) -> int:
        """Delete files of sessions the metadata does not know (a crash between the two), or with
        C{older_than}, only those last modified more than that many seconds ago: on a shared
        volume, a peer may have just created a session's file. Blocking."""
        if older_than is None:
            return remove_entries(self.root, keep=known)
        cutoff = time.time() - older_than
        removed = 0
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            try:
                if name in known or os.stat(path).st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            discard_file(path)
            removed += 1
        return removed
