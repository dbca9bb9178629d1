"""The host's cache of library items: fetched once, verified, kept on disk, LRU-bounded.

Every phone on a host posts from the same cache, so an item is fetched from the
`materials` bucket at most once per host while it stays cached. A fetch writes to a
`.partial-*` file, hashing as it goes; only bytes whose SHA-256 is the item's name are
renamed into place, so a partial or corrupt download is never used (it is refused and
fetched again, once, before the run fails saying why). An item no longer in the
library fails the run with that reason.

The cache stays under `max_bytes` by evicting the least recently used items that no
run is using; an item in use is never evicted. Counters (hits, misses, fetched bytes,
refused downloads, evictions) go into each log line and the agent's heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog
from nats.js import JetStreamContext

from fleet_contracts.materials import MATERIALS_BUCKET, SHA256_HEX
from fleet_runtime.objects import DigestMismatch, live_info, read_chunks

log = structlog.get_logger(__name__)

PARTIAL = ".partial-"
FETCH_ATTEMPTS = 2


class MaterialGone(LookupError):
    """The item is not in the library any more (deleted)."""


class MaterialCorrupt(ValueError):
    """Every download of the item failed its digest check."""


Download = Callable[[str, Path], Awaitable[int]]
"""`await download(sha256, dest)`: write the item's bytes to `dest`, return the size;
MaterialGone when it is not in the library, DigestMismatch when the store says so."""


def store_download(js: JetStreamContext, bucket: str = MATERIALS_BUCKET) -> Download:
    """Downloads from the object store, a window of chunks at a time."""

    async def download(sha256: str, dest: Path) -> int:
        info = await live_info(js, bucket, sha256)
        if info is None:
            raise MaterialGone(sha256)
        size = 0
        with dest.open("wb") as out:
            async for chunk in read_chunks(js, info):
                await asyncio.to_thread(out.write, chunk)
                size += len(chunk)
        return size

    return download


@dataclass
class CacheCounts:
    hits: int = 0
    misses: int = 0
    fetched_bytes: int = 0
    refused: int = 0
    evictions: int = 0


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class MaterialCache:
    def __init__(self, directory: Path, max_bytes: int, download: Download) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._download = download
        self._entries: OrderedDict[str, int] = OrderedDict()  # sha256 -> size, LRU first
        self._pins: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.counts = CacheCounts()

    @property
    def size(self) -> int:
        return sum(self._entries.values())

    def status(self) -> dict[str, int]:
        return {**asdict(self.counts), "bytes": self.size, "items": len(self._entries)}

    def open(self) -> None:
        """Index what an earlier run left: finished items by last use, partials dropped."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        for path in self.directory.iterdir():
            if path.name.startswith(PARTIAL):
                path.unlink(missing_ok=True)
            elif SHA256_HEX.match(path.name) and path.is_file():
                stat = path.stat()
                found.append((stat.st_mtime, path.name, stat.st_size))
        for _, sha, size in sorted(found):
            self._entries[sha] = size
        self._evict()
        log.info("material.cache_opened", directory=str(self.directory), **self.status())

    def path_of(self, sha256: str) -> Path:
        return self.directory / sha256

    @contextlib.asynccontextmanager
    async def use(self, sha256: str) -> AsyncIterator[Path]:
        """The item's file, kept from eviction until the block ends."""
        path = await self.acquire(sha256)
        try:
            yield path
        finally:
            self.release(sha256)

    async def acquire(self, sha256: str) -> Path:
        """The item's verified file, fetched if not cached; pinned until `release`."""
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        async with lock:
            path = self.path_of(sha256)
            if sha256 in self._entries and path.exists():
                self._entries.move_to_end(sha256)
                self.counts.hits += 1
                self._pin(sha256)
                with contextlib.suppress(OSError):
                    os.utime(path)  # the order survives a restart
                log.info("material.cache_hit", sha256=sha256, **self.status())
                return path
            self._entries.pop(sha256, None)
            self.counts.misses += 1
            size = await self._fetch(sha256, path)
            self._entries[sha256] = size
            self._pin(sha256)
            self._evict()
            log.info("material.cache_miss", sha256=sha256, fetched=size, **self.status())
            return path

    def release(self, sha256: str) -> None:
        left = self._pins.get(sha256, 0) - 1
        if left > 0:
            self._pins[sha256] = left
        else:
            self._pins.pop(sha256, None)
        self._evict()

    def _pin(self, sha256: str) -> None:
        self._pins[sha256] = self._pins.get(sha256, 0) + 1

    async def _fetch(self, sha256: str, path: Path) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        problem = ""
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            partial = self.directory / f"{PARTIAL}{sha256}-{uuid.uuid4().hex[:8]}"
            try:
                size = await self._download(sha256, partial)
                actual = await asyncio.to_thread(_sha256_of, partial)
                if actual != sha256:
                    raise DigestMismatch(f"the bytes fetched hash to {actual}")
                partial.replace(path)
                self.counts.fetched_bytes += size
                return size
            except DigestMismatch as exc:
                self.counts.refused += 1
                problem = str(exc)
                log.warning(
                    "material.download_refused", sha256=sha256, attempt=attempt, reason=problem
                )
            finally:
                partial.unlink(missing_ok=True)
        raise MaterialCorrupt(problem)

    def _evict(self) -> None:
        over = self.size - self.max_bytes
        if over <= 0:
            return
        for sha in list(self._entries):
            if over <= 0:
                break
            if self._pins.get(sha):
                continue
            size = self._entries.pop(sha)
            self.path_of(sha).unlink(missing_ok=True)
            self.counts.evictions += 1
            over -= size
            log.info("material.cache_evicted", sha256=sha, size=size)
