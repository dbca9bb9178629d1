"""The gateway's two JetStream KV buckets (`api_keys`, `scripts`): opening them and
keeping an in-memory copy current with a watcher.

Agents create `scripts` too, so opening first looks the bucket up and only creates it
when missing; a racing creator's bucket is then simply used.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, Error
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = structlog.get_logger(__name__)

T = TypeVar("T")


async def open_bucket(
    js: JetStreamContext, bucket: str, config: KeyValueConfig | None = None
) -> KeyValue:
    """The bucket; created from `config` (settings' `kv_config`) when missing."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(config or KeyValueConfig(bucket=bucket, history=1))
    except Error:
        return await js.key_value(bucket)


class Mirror(Generic[T]):
    """Every live key of one bucket, as `parse` made it, kept current by a watcher.

    Entries `parse` refuses (returns None for) are logged and left out.
    """

    def __init__(self, bucket: str, parse: Callable[[str, bytes], T | None]) -> None:
        self.bucket = bucket
        self.entries: dict[str, T] = {}
        self.loaded = asyncio.Event()
        self._parse = parse
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    async def start(self, kv: KeyValue) -> None:
        self._watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow(self._watcher), name=f"kv-{self.bucket}")

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the watcher's marker: every existing key has been seen
                self.loaded.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                self.entries.pop(entry.key, None)
                continue
            value = self._parse(entry.key, entry.value or b"")
            if value is None:
                log.warning("kv.entry_ignored", bucket=self.bucket, key=entry.key)
                self.entries.pop(entry.key, None)
            else:
                self.entries[entry.key] = value

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
