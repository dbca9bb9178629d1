"""Streaming puts and reads on a real JetStream Object Store, and what nats-py sees."""

from __future__ import annotations

import hashlib
import os

import pytest
from nats.js.api import ObjectInfo

from fleet_runtime.bus import connect
from fleet_runtime.objects import (
    ChunkUpload,
    DigestMismatch,
    chunk_subject,
    delete,
    ensure_bucket,
    live_info,
    read_chunks,
    sha256_hex,
    stream_name,
)


async def _read_all(js: object, info: ObjectInfo) -> bytes:
    out = bytearray()
    async for chunk in read_chunks(js, info):  # type: ignore[arg-type]
        out += chunk
    return bytes(out)


async def test_a_streamed_upload_is_named_by_digest_and_read_back(nats_url: str) -> None:
    nc = await connect(nats_url, "t")
    try:
        js = nc.jetstream()
        store = await ensure_bucket(js, "lib")
        data = os.urandom(300_000)
        upload = ChunkUpload(js, "lib", chunk_size=64 * 1024)
        for i in range(0, len(data), 10_000):
            await upload.write(data[i : i + 10_000])
        stored = await upload.commit()
        sha = hashlib.sha256(data).hexdigest()
        assert stored.sha256 == sha and stored.size == len(data) and not stored.duplicate
        # nats-py's own reader agrees with what we wrote (layout and digest).
        got = await store.get(sha)
        assert got.data == data
        assert sha256_hex(got.info) == sha
        info = await live_info(js, "lib", sha)
        assert info is not None
        assert await _read_all(js, info) == data

        again = ChunkUpload(js, "lib")
        await again.write(data)
        second = await again.commit()
        assert second.duplicate and second.info.nuid == info.nuid
        # The duplicate's chunks are gone: only one copy's bytes stay in the stream.
        state = (await js.stream_info(stream_name("lib"))).state
        assert state.messages == info.chunks + 1  # chunks + one meta

        assert await delete(js, "lib", sha)
        assert await live_info(js, "lib", sha) is None
    finally:
        await nc.close()


async def test_an_aborted_upload_leaves_nothing_and_a_damaged_object_is_refused(
    nats_url: str,
) -> None:
    nc = await connect(nats_url, "t")
    try:
        js = nc.jetstream()
        await ensure_bucket(js, "lib")
        upload = ChunkUpload(js, "lib", chunk_size=1024)
        await upload.write(b"x" * 5000)
        await upload.abort()
        state = (await js.stream_info(stream_name("lib"))).state
        assert state.messages == 0

        good = ChunkUpload(js, "lib", chunk_size=1024)
        await good.write(os.urandom(4096))
        stored = await good.commit()
        # One chunk lost (a partly purged object): the reader must not pass it as good.
        await js.purge_stream(
            stream_name("lib"), subject=chunk_subject("lib", stored.info.nuid), keep=2
        )
        info = await live_info(js, "lib", stored.sha256)
        assert info is not None
        with pytest.raises(DigestMismatch, match="chunks"):
            await _read_all(js, info)
    finally:
        await nc.close()
