"""Failure evidence: a failed step's screenshot and UI hierarchy, kept where the API
can serve them.

Both go to the `artifacts` object store bucket as `task-<id>/<dispatch id>/
screenshot.png` and `.../hierarchy.xml` (the bucket's max age is the retention), before
the failed report is published, so whoever reads the failure can fetch its evidence.
Keeping evidence never changes a run's outcome: a failed upload is logged and skipped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from fleet_contracts.materials import ARTIFACTS_BUCKET, HIERARCHY, SCREENSHOT, artifact_name
from fleet_runtime.objects import ensure_bucket

log = structlog.get_logger(__name__)

UPLOAD_TIMEOUT = 15.0


class Evidence:
    def __init__(self, js: JetStreamContext, retention_hours: float) -> None:
        self._js = js
        self._retention_hours = retention_hours
        self._store: ObjectStore | None = None

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            # The gateway sets the retention; this only names it should we create it.
            self._store = await ensure_bucket(
                self._js,
                ARTIFACTS_BUCKET,
                max_age_seconds=self._retention_hours * 3600,
                enforce_age=False,
            )
        return self._store

    async def keep(
        self, task_id: int, dispatch_id: str, screenshot: Path | None, hierarchy: str | None
    ) -> list[str]:
        """Upload what there is; the names of the objects stored."""
        files: list[tuple[str, bytes]] = []
        if screenshot is not None:
            try:
                files.append((SCREENSHOT, await asyncio.to_thread(screenshot.read_bytes)))
            except OSError as exc:
                log.warning("evidence.unreadable", path=str(screenshot), error=str(exc))
        if hierarchy:
            files.append((HIERARCHY, hierarchy.encode()))
        kept: list[str] = []
        for file, data in files:
            name = artifact_name(task_id, dispatch_id, file)
            try:
                store = await self._bucket()
                await asyncio.wait_for(store.put(name, data), UPLOAD_TIMEOUT)
            except Exception as exc:
                self._store = None
                log.warning("evidence.not_kept", artifact=name, error=str(exc) or repr(exc))
                continue
            kept.append(name)
        if kept:
            log.info("evidence.kept", artifacts=kept)
        return kept
