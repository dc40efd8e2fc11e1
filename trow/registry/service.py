"""The OCI rules for local (pushed) repositories, on top of the stores.

L{Registry} is what the API layer calls. It checks names, digests and manifests, orders the writes
so that nothing unverified or partial ever becomes visible, and raises L{RegistryError} with the
spec's code for everything a client did wrong. The pull-through cache wraps the same interface.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol, Sequence, Union

import attrs
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IConsumer

from trow.registry.cache import LinkMemo, ManifestCache
from trow.registry.errors import RegistryError
from trow.registry.manifests import OCI_INDEX, ParsedManifest, accepts, parse_manifest
from trow.registry.names import Digest, check_name, check_tag, is_digest, is_tag
from trow.storage.blobs import BlobStore, SpooledBody
from trow.storage.metadata import ManifestRecord, Metadata, MetadataUnavailable
from trow.storage.reader import FileRangeProducer
from trow.storage.uploads import UploadFiles

Body = Union[SpooledBody, bytes]

# PATCH Content-Range: the spec's "start-end"; "bytes start-end/total" is tolerated too.
_CONTENT_RANGE = re.compile(r"^\s*(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?\s*$")

# Page size for _catalog when the client gives no n, and the most any page may hold.
DEFAULT_PAGE = 1000
MAX_PAGE = 10000

# A filtered catalog page (a client who may pull only some repositories) looks at up to this many
# names per name asked for, and never more than CATALOG_SCAN_MAX in one request: full pages for a
# client who sees 1 repository in 100, and a bounded cost for one who sees almost none (a short
# page whose Link goes on after the last name looked at).
CATALOG_SCAN_PER_NAME = 100
CATALOG_SCAN_MAX = 50_000
# The most names one db call fetches while filling a filtered page.
CATALOG_CHUNK_MAX = 10_000

# Advertised as OCI-Chunk-Min-Length: trow takes chunks of any size, this only asks clients that
# care not to send tiny ones (each chunk costs a request and an fsync-free append).
CHUNK_MIN_LENGTH = 1 << 16


@attrs.frozen
class Manifest:
    """A manifest to serve: its metadata and exact bytes."""

    record: ManifestRecord
    content: bytes


class RangeProducer(Protocol):
    """Streams part of a blob to a consumer (a twisted.web request)."""

    def start(self, consumer: IConsumer) -> "Deferred[None]":
        """Fire when all is written or the consumer went away; fail if the content went bad."""


@attrs.frozen
class BlobSource:
    """A blob to serve: its digest, its size, and how to stream a range of it."""

    digest: Digest
    size: int
    open_range: Callable[[int, int], RangeProducer]


@attrs.frozen
class BlobCreated:
    """A blob is now visible in the repository (monolithic upload, finished upload or mount)."""

    digest: Digest


@attrs.frozen
class UploadStarted:
    """An upload session was opened."""

    upload_id: str


@attrs.frozen
class ManifestStored:
    """A manifest was stored."""

    digest: Digest
    subject: Digest | None
    tags: tuple[str, ...] = ()


@attrs.frozen
class Page:
    """One page of a list, and the C{last} value for the next page if there is one."""

    items: list[str]
    next_last: str | None


def body_size(body: Body) -> int:
    """The length of a request body, spooled or in memory."""
    return len(body) if isinstance(body, bytes) else body.size


def discard(body: Body | None) -> None:
    """Free a request body that will not be stored."""
    if isinstance(body, SpooledBody):
        body.discard()


def parse_content_range(value: str) -> tuple[int, int]:
    """Parse a PATCH C{Content-Range} into inclusive (start, end)."""
    match = _CONTENT_RANGE.match(value)
    if not match or int(match.group(2)) < int(match.group(1)):
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"invalid Content-Range {value!r}: expected <start>-<end>",
            status=416,
        )
    return int(match.group(1)), int(match.group(2))


def _check_chunk(content_range: str | None, offset: int, body: Body) -> None:
    """Refuse (416) a chunk that does not start where the upload ends or whose length is off."""
    if content_range is None:
        return
    start, end = parse_content_range(content_range)
    current = {"Range": f"0-{max(offset - 1, 0)}"}
    if start != offset:
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"chunk starts at {start} but the upload holds {offset} bytes: send chunks in order",
            {"offset": offset},
            status=416,
            headers=current,
        )
    if end - start + 1 != body_size(body):
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"Content-Range {content_range} covers {end - start + 1} bytes but the body has {body_size(body)}",
            {"offset": offset},
            status=416,
            headers=current,
        )


def page_size(n: str | None, default: int | None) -> int | None:
    """Check an C{n} query parameter."""
    if n is None or n == "":
        return default
    if not n.isdigit():
        raise RegistryError("SIZE_INVALID", f"n must be a non-negative integer, got {n!r}", status=400)
    return min(int(n), MAX_PAGE)


class Registry:
    """OCI distribution rules for repositories stored in this registry."""

    def __init__(
        self,
        blobs: BlobStore,
        uploads: UploadFiles,
        metadata: Metadata,
        max_manifest_size: int,
        shared: bool = False,
        writer: str = "local",
    ) -> None:
        self.blobs = blobs
        self.uploads = uploads
        self.metadata = metadata
        self.max_manifest_size = max_manifest_size
        # shared: other replicas write the same metadata, so nothing this process remembers can
        # answer whether a manifest or a link exists (a delete there must be seen here at once);
        # the memories below then only hold immutable content, and serve during a database outage.
        self.shared = shared
        # Who claims upload sessions for writing (the replica's id with --database).
        self.writer = writer
        self._upload_locks: dict[str, DeferredLock] = {}
        self._cache = ManifestCache()
        self._links = LinkMemo()
        # Blobs being looked up or streamed right now, by digest: garbage collection keeps them.
        self.reading: Counter[str] = Counter()

    @contextmanager
    def reading_blob(self, digest: str) -> Iterator[None]:
        """Around a blob's lookup and streaming: garbage collection leaves it alone meanwhile."""
        self.reading[digest] += 1
        try:
            yield
        finally:
            self.reading[digest] -= 1
            if self.reading[digest] <= 0:
                del self.reading[digest]

    def blobs_in_use(self) -> set[str]:
        """The digests being looked up or streamed right now."""
        return set(self.reading)

    async def unready(self) -> str | None:
        """Why this registry cannot serve now, or None: the data dir must take a durable write
        (a full or read-only disk says no) and the metadata must answer (with --database:
        PostgreSQL is reachable and migrated)."""
        try:
            await self.blobs.check_writable()
        except OSError as e:
            return f"data dir is not writable: {e.strerror or e}"
        try:
            await self.metadata.ping()
        except MetadataUnavailable as e:
            return str(e)
        return None

    def forget_manifest(self, repo: str, digest: str) -> None:
        """Drop a manifest from the in-memory cache (garbage collection removed it)."""
        self._cache.discard(repo, digest)

    # -- pull -------------------------------------------------------------------------------

    async def _find_manifest(self, repo: str, reference: str) -> ManifestRecord:
        check_name(repo)
        if is_digest(reference):
            digest = Digest.parse(reference, code="DIGEST_INVALID")
            record = await self.metadata.get_manifest(repo, str(digest))
        elif is_tag(reference):
            record = await self.metadata.resolve_tag(repo, reference)
        else:
            record = None
        if record is None:
            raise RegistryError(
                "MANIFEST_UNKNOWN", f"manifest {reference} is not in repository {repo}", {"name": repo, "reference": reference}
            )
        return record

    async def get_manifest(self, repo: str, reference: str, accept: list[str]) -> Manifest:
        """The manifest for a tag or digest, byte-exact, if the client accepts its media type."""
        by_digest = is_digest(reference)
        manifest = self._cache.get(repo, reference) if by_digest and not self.shared else None
        if manifest is None:
            try:
                record = await self._find_manifest(repo, reference)
            except MetadataUnavailable:
                # The database is down: a manifest this replica served by digest still stands.
                manifest = self._cache.get(repo, reference) if by_digest else None
                if manifest is None:
                    raise
                record = manifest.record
            manifest = self._cache.get(repo, record.digest)
            if manifest is None:
                content = await self.blobs.read_bytes(Digest.parse(record.digest))
                if content is None:
                    raise RegistryError("MANIFEST_UNKNOWN", f"manifest {record.digest} content is missing from the store")
                manifest = Manifest(record, content)
                self._cache.put(manifest)
        if not accepts(accept, manifest.record.media_type):
            raise RegistryError(
                "MANIFEST_UNKNOWN",
                f"manifest {reference} is {manifest.record.media_type}, which the request's Accept header does not include",
                {"mediaType": manifest.record.media_type},
            )
        return manifest

    async def has_manifest(self, repo: str, digest: str) -> bool:
        """Is the manifest C{digest} stored in C{repo}?"""
        return await self.metadata.get_manifest(repo, digest) is not None

    async def tag_manifest(self, repo: str, tag: str, digest: str) -> None:
        """Point C{repo:tag} at a manifest already stored there (the cache following its upstream)."""
        await self.metadata.put_tag(repo, tag, digest)

    async def blob_source(self, repo: str, reference: str) -> BlobSource:
        """Where to stream a blob visible in C{repo} from."""
        digest, size = await self.stat_blob(repo, reference)
        return self.stored_source(digest, size)

    def stored_source(self, digest: Digest, size: int) -> BlobSource:
        """A source reading a blob already in the store."""

        def open_range(offset: int, length: int) -> RangeProducer:
            # Opened and read on the disk worker: on a network volume, an open or a read may stall.
            return FileRangeProducer(None, offset, length, self.blobs.worker, lambda: self.blobs.open_existing(digest))

        return BlobSource(digest, size, open_range)

    async def stat_blob(self, repo: str, reference: str) -> tuple[Digest, int]:
        """The digest and size of a blob visible in C{repo}."""
        check_name(repo)
        digest = Digest.parse(reference)
        key = str(digest)
        linked = await self.blob_linked(repo, key)
        if not linked:
            linked = await self.metadata.get_manifest(repo, key) is not None
        size = await self.blobs.stat_size(digest) if linked else None
        if size is None:
            raise RegistryError("BLOB_UNKNOWN", f"blob {key} is not in repository {repo}", {"digest": key})
        return digest, size

    async def blob_linked(self, repo: str, digest: str) -> bool:
        """Is the blob visible in C{repo}? While the database cannot be reached, a link this
        replica saw lately still answers yes, so that nodes keep pulling what they pulled."""
        try:
            linked = await self.metadata.blob_linked(repo, digest)
        except MetadataUnavailable:
            if self._links.has(repo, digest):
                return True
            raise
        if linked and self.shared:
            self._links.add(repo, digest)  # only a shared database goes away under a replica
        return linked

    async def link_blob(self, repo: str, digest: str) -> None:
        """Make a stored blob visible in C{repo} (the cache links what it fetched or confirmed)."""
        await self.metadata.link_blob(repo, digest)

    # -- push: blobs ------------------------------------------------------------------------

    async def _verify_and_commit(self, body: Body, digest: Digest) -> None:
        """Check C{body} against C{digest} and store it; on a mismatch nothing is kept."""
        if isinstance(body, bytes):
            if Digest.of(body, digest.algorithm) != digest:
                raise self._mismatch(digest)
            await self.blobs.put_bytes(body, digest)
            return
        if digest.algorithm == "sha256":
            actual = body.sha256.hexdigest()
        else:
            actual = await self.blobs.hash_file(body.path, digest.algorithm)
        if actual != digest.hex:
            body.discard()
            raise self._mismatch(digest, f"{digest.algorithm}:{actual}")
        await self.blobs.commit(body.path, digest)

    @staticmethod
    def _mismatch(digest: Digest, actual: str | None = None) -> RegistryError:
        message = f"uploaded content does not match digest {digest}"
        if actual:
            message += f" (it hashes to {actual})"
        return RegistryError("DIGEST_INVALID", message + "; nothing was stored", {"digest": str(digest)})

    async def put_blob(self, repo: str, digest_param: str, body: Body) -> BlobCreated:
        """Monolithic upload: C{POST ?digest=} with the whole blob as body."""
        try:
            check_name(repo)
            digest = Digest.parse(digest_param)
            await self._verify_and_commit(body, digest)
        except BaseException:
            discard(body)
            raise
        await self.metadata.link_blob(repo, str(digest))
        return BlobCreated(digest)

    async def start_upload(self, repo: str, mount: str | None, source: str | None) -> BlobCreated | UploadStarted:
        """Open an upload session, or mount an existing blob instead of uploading it."""
        check_name(repo)
        if mount is not None:
            digest = Digest.parse(mount)
            if await self._mountable(digest, source):
                await self.metadata.link_blob(repo, str(digest))
                return BlobCreated(digest)
        upload_id = str(uuid.uuid4())
        # The row first: a crash in between leaves a session with no file, which answers
        # BLOB_UPLOAD_UNKNOWN and expires, never a file that a peer's cleanup cannot place.
        await self.metadata.create_upload(upload_id, repo)
        await self.uploads.create(upload_id)
        return UploadStarted(upload_id)

    async def _mountable(self, digest: Digest, source: str | None) -> bool:
        if await self.blobs.stat_size(digest) is None:
            return False
        if source is None:
            # Automatic content discovery: the registry already holds these verified bytes.
            return True
        check_name(source)
        return await self.metadata.blob_linked(source, str(digest))

    def _lock(self, upload_id: str) -> DeferredLock:
        lock = self._upload_locks.get(upload_id)
        if lock is None:
            lock = self._upload_locks[upload_id] = DeferredLock()
        return lock

    def _unlock(self, upload_id: str, lock: DeferredLock) -> None:
        lock.release()
        if not lock.locked and not lock.waiting:
            self._upload_locks.pop(upload_id, None)

    async def _session(self, repo: str, upload_id: str) -> int:
        """The session's offset, from the metadata: the one view every replica shares."""
        check_name(repo)
        record = await self.metadata.get_upload(upload_id)
        on_disk = await self.uploads.stat_size(upload_id)
        if record is None or record.repo != repo or on_disk is None:
            raise RegistryError(
                "BLOB_UPLOAD_UNKNOWN", f"upload {upload_id} is not in progress for repository {repo}", {"uuid": upload_id}
            )
        # -1: a session an older trow started, whose offset was its file's size.
        return on_disk if record.size < 0 else record.size

    async def upload_status(self, repo: str, upload_id: str) -> int:
        """How many bytes the session holds."""
        return await self._session(repo, upload_id)

    async def append_upload(
        self, repo: str, upload_id: str, body: Body, content_range: str | None
    ) -> int:
        """PATCH a chunk onto the session; returns the new offset."""
        lock = self._lock(upload_id)
        await lock.acquire()
        try:
            offset = await self._session(repo, upload_id)
            _check_chunk(content_range, offset, body)
            await self._claim(upload_id, offset)
            try:
                new_offset = await self.uploads.append(upload_id, body, offset)
                advanced = await self.metadata.advance_upload(upload_id, offset, new_offset, self.writer)
            except BaseException:
                # Never leave the claim standing: this replica lives on, and no other could
                # write the session until it stopped.
                self.uploads.forget(upload_id)
                await self._release_claim(upload_id)
                raise
            if not advanced:
                # The claim was void by then (this replica was taken for dead): the chunk is not
                # counted, and the client sends it again from the offset the session holds.
                self.uploads.forget(upload_id)
                raise self._busy_upload(upload_id, await self._offset_now(upload_id, offset))
            return new_offset
        except BaseException:
            discard(body)
            raise
        finally:
            self._unlock(upload_id, lock)

    async def _claim(self, upload_id: str, offset: int) -> None:
        """Take the session's write claim at C{offset}, or refuse the request (416): another
        request, perhaps on another replica, is writing it, or moved it since we looked."""
        if not await self.metadata.claim_upload(upload_id, offset, self.writer):
            raise self._busy_upload(upload_id, await self._offset_now(upload_id, offset))

    async def _release_claim(self, upload_id: str) -> None:
        try:
            await self.metadata.release_upload(upload_id, self.writer)
        except MetadataUnavailable:
            pass  # the database is gone: the claim goes with this replica's heartbeat

    async def _offset_now(self, upload_id: str, seen: int) -> int:
        """The session's offset as the metadata holds it now (for a 416's Range), else C{seen}."""
        try:
            record = await self.metadata.get_upload(upload_id)
        except MetadataUnavailable:
            return seen
        return seen if record is None or record.size < 0 else record.size

    @staticmethod
    def _busy_upload(upload_id: str, offset: int) -> RegistryError:
        return RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"upload {upload_id} is being written by another request, or moved while this one waited: "
            "send chunks one at a time, in order, from the offset in Range",
            {"uuid": upload_id},
            status=416,
            headers={"Range": f"0-{max(offset - 1, 0)}"},
        )

    async def finish_upload(
        self, repo: str, upload_id: str, digest_param: str | None, body: Body | None, content_range: str | None = None
    ) -> BlobCreated:
        """PUT: append the last chunk (if any), verify the whole upload, and make it visible.

        An out-of-order last chunk is refused with 416 before the digest is looked at, and the
        session stays usable, as for PATCH.
        """
        lock = self._lock(upload_id)
        await lock.acquire()
        try:
            offset = await self._session(repo, upload_id)
            if body is not None and body_size(body) > 0:
                _check_chunk(content_range, offset, body)
            if not digest_param:
                raise RegistryError("DIGEST_INVALID", "the digest query parameter is required to finish an upload")
            digest = Digest.parse(digest_param)
            # Claimed to the end: no other request may write the session while it is checked.
            await self._claim(upload_id, offset)
            try:
                if body is not None and body_size(body) > 0:
                    offset = await self.uploads.append(upload_id, body, offset)
                    body = None
                actual = await self.uploads.digest_hex(upload_id, digest.algorithm, offset)
                if actual != digest.hex:
                    # A failed upload is gone: the client must start again, and nothing wrong is kept.
                    await self._forget_upload(upload_id)
                    raise self._mismatch(digest, f"{digest.algorithm}:{actual}")
                # Always, on the worker: a stat may be cached (NFS), and a tail a killed writer
                # left past the offset must not end up in the blob.
                await self.uploads.truncate(upload_id, offset)
                await self.blobs.commit(self.uploads.path(upload_id), digest)
            except BaseException:
                await self._release_claim(upload_id)
                raise
            self.uploads.forget(upload_id)
            await self.metadata.finish_upload(upload_id, repo, str(digest))
            return BlobCreated(digest)
        finally:
            discard(body)
            self._unlock(upload_id, lock)

    async def _forget_upload(self, upload_id: str) -> None:
        """Drop a session and its bytes (the caller holds its lock)."""
        await self.metadata.delete_upload(upload_id)
        await self.uploads.delete(upload_id)

    async def cancel_upload(self, repo: str, upload_id: str) -> None:
        """DELETE an upload session and its bytes."""
        lock = self._lock(upload_id)
        await lock.acquire()
        try:
            await self._session(repo, upload_id)
            await self._forget_upload(upload_id)
        finally:
            self._unlock(upload_id, lock)

    # -- push: manifests --------------------------------------------------------------------

    async def read_manifest_body(self, body: Body) -> bytes:
        """The bytes of a pushed manifest, refusing ones above the configured limit with 413."""
        size = body_size(body)
        if size > self.max_manifest_size:
            discard(body)
            raise RegistryError(
                "SIZE_INVALID",
                f"manifest is {size} bytes, more than this registry's limit of {self.max_manifest_size} bytes",
                {"size": size, "limit": self.max_manifest_size},
                status=413,
            )
        if isinstance(body, bytes):
            return body
        return await self.blobs.take_spooled(body)

    async def put_manifest(
        self, repo: str, reference: str, content_type: str | None, body: Body, extra_tags: Sequence[str] = ()
    ) -> ManifestStored:
        """Check and store a manifest under a tag or digest, plus any C{?tag=} parameters."""
        try:
            check_name(repo)
            tags = [check_tag(t) for t in extra_tags]
            digest: Digest | None = None
            if is_digest(reference):
                digest = Digest.parse(reference)
            else:
                tags.insert(0, check_tag(reference))
        except BaseException:
            discard(body)
            raise
        content = await self.read_manifest_body(body)
        actual = Digest.of(content, digest.algorithm if digest else "sha256")
        if digest is not None and actual != digest:
            raise RegistryError(
                "DIGEST_INVALID",
                f"manifest content hashes to {actual}, not to the digest {digest} it was pushed under",
                {"digest": str(digest)},
            )
        parsed = parse_manifest(content, content_type)
        await self._check_references(repo, parsed)
        return await self.store_manifest(repo, content, parsed, actual, tags)

    async def store_manifest(
        self, repo: str, content: bytes, parsed: ParsedManifest, digest: Digest, tags: Sequence[str]
    ) -> ManifestStored:
        """Store verified manifest bytes and their metadata, and point C{tags} at them.

        The caller checked the digest and, for pushes, the references (the cache fetches a
        manifest's blobs lazily, so it stores manifests whose blobs are not here yet).
        """
        actual = digest
        await self.blobs.put_bytes(content, actual)
        record = ManifestRecord(
            repo=repo,
            digest=str(actual),
            media_type=parsed.media_type,
            size=len(content),
            subject=str(parsed.subject.digest) if parsed.subject else None,
            artifact_type=parsed.artifact_type,
            annotations=parsed.annotations,
        )
        children = [str(d.digest) for d in parsed.blobs + parsed.children]
        await self.metadata.put_manifest(record, children, tags)
        return ManifestStored(actual, parsed.subject.digest if parsed.subject else None, tuple(tags))

    async def _check_references(self, repo: str, parsed: ParsedManifest) -> None:
        wanted_blobs = {str(d.digest) for d in parsed.blobs if not d.foreign}
        wanted_children = {str(d.digest) for d in parsed.children}
        missing_blobs = wanted_blobs - await self.metadata.blobs_linked(repo, wanted_blobs)
        missing_children = wanted_children - await self.metadata.manifest_known(repo, wanted_children)
        missing = sorted(missing_blobs | missing_children)
        if missing:
            kind = "manifests" if missing_children and not missing_blobs else "blobs" if not missing_children else "blobs and manifests"
            raise RegistryError(
                "MANIFEST_BLOB_UNKNOWN",
                f"manifest references {kind} not in repository {repo}: {', '.join(missing)}; push them first",
                [{"digest": d} for d in missing],
            )

    # -- content discovery ------------------------------------------------------------------

    async def list_tags(self, repo: str, n: str | None, last: str | None) -> Page:
        """A page of C{repo}'s tags in lexical order."""
        check_name(repo)
        limit = page_size(n, None)
        if not await self.metadata.repo_exists(repo):
            raise RegistryError("NAME_UNKNOWN", f"repository {repo} is not known to this registry", {"name": repo})
        return await self._page(lambda lim: self.metadata.list_tags(repo, lim, last), limit)

    async def catalog(self, n: str | None, last: str | None, visible: Callable[[str], bool] | None = None) -> Page:
        """A page of repository names in lexical order; with C{visible}, only the names it
        accepts (those the client may pull), as many as asked for while the scan budget lasts."""
        limit = page_size(n, DEFAULT_PAGE)
        if visible is None or limit is None:
            return await self._page(lambda lim: self.metadata.catalog(lim, last), limit)
        return await self._filtered_catalog(limit, last, visible)

    async def _filtered_catalog(self, limit: int, last: str | None, visible: Callable[[str], bool]) -> Page:
        """Read the catalog after C{last} in growing chunks until C{limit} visible names and one
        more are found (a full page, and more to come), the list ends, or the budget is spent.

        The next page starts after the last name returned when the page is full, else after the
        last name looked at: no name is skipped or listed twice."""
        if limit == 0:
            return Page([], None)
        budget = max(limit + 1, min(limit * CATALOG_SCAN_PER_NAME, CATALOG_SCAN_MAX))
        found: list[str] = []
        scanned = 0
        cursor = last
        chunk = limit + 1
        while True:
            names = await self.metadata.catalog(chunk, cursor)
            for name in names:
                scanned += 1
                cursor = name
                if visible(name):
                    if len(found) == limit:
                        return Page(found, found[-1])
                    found.append(name)
                if scanned >= budget:
                    return Page(found, cursor)
            if len(names) < chunk:
                return Page(found, None)
            # Few visible so far: fetch more at once (fewer round trips), within the budget.
            chunk = min(chunk * 2, budget - scanned, CATALOG_CHUNK_MAX)

    @staticmethod
    async def _page(fetch: Callable[[int | None], "Deferred[list[str]]"], limit: int | None) -> Page:
        """One page of C{limit} items (None: all), asking for one more to know if more remain."""
        if limit == 0:
            return Page([], None)
        items = await fetch(None if limit is None else limit + 1)
        if limit is not None and len(items) > limit:
            return Page(items[:limit], items[limit - 1])
        return Page(items, None)

    async def referrers(self, repo: str, reference: str, artifact_type: str | None) -> bytes:
        """The referrers index for C{reference}: every manifest whose subject it is."""
        check_name(repo)
        subject = Digest.parse(reference)
        records = await self.metadata.referrers(repo, str(subject))
        manifests = []
        for record in records:
            if artifact_type is not None and record.artifact_type != artifact_type:
                continue
            descriptor: dict[str, object] = {
                "mediaType": record.media_type,
                "digest": record.digest,
                "size": record.size,
            }
            if record.artifact_type:
                descriptor["artifactType"] = record.artifact_type
            if record.annotations:
                descriptor["annotations"] = record.annotations
            manifests.append(descriptor)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return json.dumps(index, separators=(",", ":")).encode()

    # -- content management -----------------------------------------------------------------

    async def delete_manifest(self, repo: str, reference: str) -> None:
        """Delete a manifest by digest (and its tags), or only a tag."""
        check_name(repo)
        if is_digest(reference):
            digest = Digest.parse(reference)
            gone = await self.metadata.delete_manifest(repo, str(digest))
            self._cache.discard(repo, str(digest))
            self._links.discard_repo_digest(repo, str(digest))
        else:
            check_tag(reference)
            gone = await self.metadata.delete_tag(repo, reference)
        if not gone:
            raise RegistryError(
                "MANIFEST_UNKNOWN", f"manifest {reference} is not in repository {repo}", {"name": repo, "reference": reference}
            )

    async def delete_blob(self, repo: str, reference: str) -> None:
        """Remove a blob from C{repo}. Its bytes go when garbage collection finds them unused."""
        check_name(repo)
        digest = Digest.parse(reference)
        self._links.discard_repo_digest(repo, str(digest))
        if not await self.metadata.unlink_blob(repo, str(digest)):
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in repository {repo}", {"digest": str(digest)})
