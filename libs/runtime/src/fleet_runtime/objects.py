"""Content-addressed files on the JetStream Object Store, streamed both ways.

nats-py's `ObjectStore.put` reads from a synchronous reader in a thread and names the
object before the first byte, and `ObjectStore.get` without `writeinto` gathers the
whole object in memory. A library upload arrives as an async HTTP body whose name (its
SHA-256) is known only at the end, and a download goes out as an HTTP stream, so both
directions are done here on the bucket's own layout, which nats-py (and every other
client) reads and writes the same way:

- chunks are messages on `$O.<bucket>.C.<nuid>`, at most `CHUNK_SIZE` bytes each;
- the object's meta (name, nuid, size, chunk count, `SHA-256=<base64url>` digest) is the
  last message on `$O.<bucket>.M.<base64url(name)>`, published with a rollup header.

`ChunkUpload` publishes chunks as bytes arrive (one chunk buffered, never the whole
file), and `commit(name)` writes the meta only if no live object holds that name
already, with an expected-last-subject-sequence guard so two uploads of the same bytes
cannot both win; the loser's chunks are purged and the existing object is kept.
`read_chunks` pulls a few chunks at a time through an ephemeral consumer and checks
the digest as it goes, so a reader never holds more than a small window either.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    Header,
    ObjectInfo,
    ObjectMetaOptions,
    ObjectStoreConfig,
    StorageType,
)
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ObjectNotFoundError,
    ServiceUnavailableError,
)
from nats.js.object_store import ObjectStore
from nats.nuid import NUID

log = structlog.get_logger(__name__)

CHUNK_SIZE = 128 * 1024
READ_WINDOW = 8
"""Chunks asked for at once when reading: the most a reader holds (~1 MiB)."""
FETCH_TIMEOUT = 10.0
LEADER_WAIT_ATTEMPTS = 50
LEADER_WAIT_SECONDS = 0.1
_WRONG_LAST_SEQUENCE = 10071
_nuid = NUID()


class DigestMismatch(ValueError):
    """The bytes read (or uploaded) do not have the digest they were meant to have."""


def stream_name(bucket: str) -> str:
    return f"OBJ_{bucket}"


def chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


def meta_subject(bucket: str, name: str) -> str:
    encoded = base64.urlsafe_b64encode(name.encode()).decode()
    return f"$O.{bucket}.M.{encoded}"


def digest_field(sha256: bytes) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(sha256).decode()


def sha256_hex(info: ObjectInfo) -> str | None:
    """The lowercase hex SHA-256 an object's meta records, if it records one."""
    digest = info.digest or ""
    if not digest.upper().startswith("SHA-256="):
        return None
    raw = digest.split("=", 1)[1]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()


async def ensure_bucket(
    js: JetStreamContext,
    bucket: str,
    *,
    max_age_seconds: float | None = None,
    description: str = "",
    replicas: int = 1,
    enforce_age: bool = True,
) -> ObjectStore:
    """The bucket, created if missing; an age limit given here is applied to it.

    `enforce_age=False` uses the age limit only when creating: an agent must not undo
    the retention its operator set through the gateway.
    """
    try:
        store = await js.object_store(bucket)
    except BucketNotFoundError:
        config = ObjectStoreConfig(
            bucket=bucket,
            description=description or None,
            ttl=max_age_seconds,
            storage=StorageType.FILE,
            replicas=replicas,
        )
        try:
            return await js.create_object_store(bucket, config=config)
        except BadRequestError:
            store = await js.object_store(bucket)  # another process made it meanwhile
    if max_age_seconds is not None and enforce_age:
        info = await js.stream_info(stream_name(bucket))
        if info.config.max_age != max_age_seconds:
            info.config.max_age = max_age_seconds
            await js.update_stream(info.config)
            log.info("bucket.retention_set", bucket=bucket, max_age_seconds=max_age_seconds)
    return store


async def live_info(js: JetStreamContext, bucket: str, name: str) -> ObjectInfo | None:
    """The object's meta, or None when it was never stored or has been deleted."""
    store = ObjectStore(bucket, stream_name(bucket), js)
    try:
        return await store.get_info(name)
    except (ObjectNotFoundError, NotFoundError):
        return None


@dataclass(frozen=True)
class Stored:
    info: ObjectInfo
    sha256: str
    size: int
    duplicate: bool


class ChunkUpload:
    """One object being written chunk by chunk; `commit` names it, `abort` drops it."""

    def __init__(self, js: JetStreamContext, bucket: str, chunk_size: int = CHUNK_SIZE) -> None:
        self._js = js
        self.bucket = bucket
        self._chunk_size = chunk_size
        self.nuid = _nuid.next().decode()
        self._subject = chunk_subject(bucket, self.nuid)
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self.size = 0
        self.chunks = 0
        self._published = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)
        self._buffer += data
        while len(self._buffer) >= self._chunk_size:
            await self._send(bytes(self._buffer[: self._chunk_size]))
            del self._buffer[: self._chunk_size]

    async def _send(self, payload: bytes) -> None:
        self._published = True
        await self._js.publish(self._subject, payload)
        self.chunks += 1

    async def abort(self) -> None:
        """Drop every chunk sent: nothing of this upload stays in the bucket."""
        self._buffer.clear()
        if self._published:
            try:
                await self._js.purge_stream(stream_name(self.bucket), subject=self._subject)
            except Exception as exc:
                # Orphan chunks are invisible (no meta names them) and cost only space.
                log.warning("upload.purge_failed", bucket=self.bucket, error=str(exc))

    async def commit(self, name: str | None = None) -> Stored:
        """Publish the meta under `name` (default: the hex SHA-256), unless it exists."""
        if self._buffer:
            await self._send(bytes(self._buffer))
            self._buffer.clear()
        name = name or self.sha256
        subject = meta_subject(self.bucket, name)
        for _ in range(3):
            try:
                last = await self._js.get_last_msg(stream_name(self.bucket), subject)
                last_seq = int(last.seq or 0)
                existing = ObjectInfo.from_response(json.loads(last.data or b"{}"))
            except NotFoundError:
                last_seq, existing = 0, None
            if existing is not None and not existing.deleted:
                await self.abort()
                return Stored(existing, self.sha256, int(existing.size or 0), duplicate=True)
            info = ObjectInfo(
                name=name,
                bucket=self.bucket,
                nuid=self.nuid,
                size=self.size,
                chunks=self.chunks,
                digest=digest_field(self._hash.digest()),
                mtime=datetime.now(UTC).isoformat(),
                options=ObjectMetaOptions(max_chunk_size=self._chunk_size),
            )
            try:
                await self._js.publish(
                    subject,
                    json.dumps(info.as_dict()).encode(),
                    headers={
                        Header.ROLLUP: "sub",
                        Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last_seq),
                    },
                )
            except APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    continue  # another upload named it first: look again
                await self.abort()
                raise
            return Stored(info, self.sha256, self.size, duplicate=False)
        await self.abort()
        raise RuntimeError(f"object {name} kept changing while it was being stored")


async def _fetch(sub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
    """`fetch`, riding out the 503 a consumer just made on a replicated stream answers
    until its own leader is elected (seen on a three-node cluster)."""
    for _ in range(LEADER_WAIT_ATTEMPTS - 1):
        try:
            return await sub.fetch(batch, timeout=FETCH_TIMEOUT)
        except ServiceUnavailableError:
            await asyncio.sleep(LEADER_WAIT_SECONDS)
    return await sub.fetch(batch, timeout=FETCH_TIMEOUT)


async def read_chunks(js: JetStreamContext, info: ObjectInfo) -> AsyncIterator[bytes]:
    """The object's bytes in order, a window of chunks at a time.

    Raises DigestMismatch at the end when the bytes do not have the recorded digest or
    size (a damaged or partly purged object), so a caller never keeps them as good.
    """
    bucket = info.bucket
    expected_chunks = int(info.chunks or 0)
    if expected_chunks == 0:
        if info.size:
            raise DigestMismatch(f"object {info.name} records {info.size} bytes but no chunks")
        return
    stream = stream_name(bucket)
    consumer = _nuid.next().decode()
    await js.add_consumer(
        stream,
        ConsumerConfig(
            name=consumer,
            filter_subject=chunk_subject(bucket, info.nuid),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=300.0,  # a slow HTTP reader pauses between windows
            mem_storage=True,
        ),
    )
    digest = hashlib.sha256()
    size = 0
    seen = 0
    try:
        sub = await js.pull_subscribe_bind(consumer=consumer, stream=stream)
        try:
            while seen < expected_chunks:
                batch = min(READ_WINDOW, expected_chunks - seen)
                try:
                    msgs = await _fetch(sub, batch)
                except TimeoutError as exc:
                    raise DigestMismatch(
                        f"object {info.name}: chunk {seen + 1} of {expected_chunks} is missing"
                    ) from exc
                for msg in msgs:
                    seen += 1
                    size += len(msg.data)
                    digest.update(msg.data)
                    yield msg.data
                    # Chunks are all stored before the meta names them: none pending
                    # while some are still due means they are gone.
                    if msg.metadata.num_pending == 0 and seen < expected_chunks:
                        raise DigestMismatch(
                            f"object {info.name}: holds {seen} of its {expected_chunks} chunks"
                        )
        finally:
            await sub.unsubscribe()
    finally:
        try:
            await js.delete_consumer(stream, consumer)
        except Exception as exc:
            # It goes by itself after `inactive_threshold`.
            log.debug("read.consumer_left", consumer=consumer, error=str(exc))
    if digest_field(digest.digest()) != info.digest or size != info.size:
        raise DigestMismatch(
            f"object {info.name}: the bytes read do not match its recorded digest and size"
        )


async def delete(js: JetStreamContext, bucket: str, name: str) -> bool:
    """Delete the object (meta marked deleted, chunks purged); False if not there."""
    store = ObjectStore(bucket, stream_name(bucket), js)
    try:
        await store.delete(name)
    except (ObjectNotFoundError, NotFoundError):
        return False
    return True
