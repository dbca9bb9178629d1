"""The built-in `post` script: publish the operator's videos or images to TikTok or
Instagram.

Order matters: the materials are checked on this host before the phone is touched
(central-library items are taken from the host's cache, fetched and verified once);
then the media is pushed to `/sdcard/DCIM/fleet/<task>/`, the media scanner is told,
the flow from `post_flow.plan` is walked with the selectors of `post_selectors`, and
the pushed files are removed again whatever happened (success, failure, stop).
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any, ClassVar

import structlog
from pydantic import BaseModel

from fleet_agent.cache import MaterialCorrupt, MaterialGone
from fleet_agent.materials import MaterialError, check_file, select_materials
from fleet_agent.phone import ElementMissingError, PhoneError, Selector
from fleet_agent.scripts import CancelToken, Progress, ScriptFailure, ScriptHost, Target
from fleet_agent.scripts.post_flow import Step, plan
from fleet_agent.scripts.post_selectors import CURRENT, AppTable
from fleet_contracts.materials import is_library_ref, parse_library_ref
from fleet_contracts.scripts.post import PostConfig, media_suffix

log = structlog.get_logger(__name__)

REMOTE_ROOT = "/sdcard/DCIM/fleet"


def app_table(target: Target, config: PostConfig) -> AppTable:
    if target.platform == "instagram" or config.placement == "story":
        return CURRENT["instagram"]
    return CURRENT["tiktok"]


def remote_dir(task_id: int) -> str:
    return f"{REMOTE_ROOT}/{task_id}"


class PostScript:
    name: ClassVar[str] = "post"
    description: ClassVar[str] = (
        "Publish the operator's own videos or images to TikTok / Instagram."
    )
    config_model: ClassVar[type[BaseModel]] = PostConfig

    def __init__(self, host: ScriptHost) -> None:
        self._host = host

    async def run(
        self, target: Target, config: Any, progress: Progress, cancel: CancelToken
    ) -> dict[str, Any]:
        assert isinstance(config, PostConfig)
        await progress("check materials", 1, "")
        pinned: list[str] = []
        try:
            return await self._run(target, config, progress, cancel, pinned)
        finally:
            if self._host.library is not None:
                for sha256 in pinned:
                    self._host.library.release(sha256)

    async def _materials(
        self, config: PostConfig, pinned: list[str]
    ) -> tuple[list[Path], list[str]]:
        """The files to push, and the names they get on the phone."""
        if config.material_list and not any(map(is_library_ref, config.material_list)):
            picked = await self._host.checks.check(config.material_list, self._host.material_roots)
            return picked, [p.name for p in picked]
        if not config.material_list:
            # File checks may hit a slow network share: keep them off the event loop.
            picked = await asyncio.to_thread(
                select_materials,
                config,
                self._host.material_roots,
                self._host.material_library,
                self._host.rng,
            )
            return picked, [p.name for p in picked]
        files: list[Path] = []
        names: list[str] = []
        for i, entry in enumerate(config.material_list):
            where = f"material_list[{i}]"
            if not is_library_ref(entry):
                path = await asyncio.to_thread(check_file, entry, where, self._host.material_roots)
                files.append(path)
                names.append(path.name)
                continue
            files.append(await self._fetch(where, entry, pinned))
            names.append(f"{entry.removeprefix('library:')[:16]}{media_suffix(entry)}")
        return files, names

    async def _fetch(self, where: str, entry: str, pinned: list[str]) -> Path:
        cache = self._host.library
        ref = parse_library_ref(entry)
        if cache is None or ref.sha256 is None:
            raise MaterialError(
                f"{where}: {entry} was not resolved to a library item's digest "
                "(create the task through the gateway, which picks the item)"
            )
        try:
            path = await cache.acquire(ref.sha256)
        except MaterialGone as exc:
            raise MaterialError(
                f"{where}: library item {ref.sha256} is no longer in the material library "
                "(deleted after the task was created); upload it again or pick another"
            ) from exc
        except MaterialCorrupt as exc:
            raise MaterialError(
                f"{where}: library item {ref.sha256} failed its digest check on every "
                f"download ({exc}); nothing was posted"
            ) from exc
        pinned.append(ref.sha256)
        return path

    async def _run(
        self,
        target: Target,
        config: PostConfig,
        progress: Progress,
        cancel: CancelToken,
        pinned: list[str],
    ) -> dict[str, Any]:
        try:
            files, names = await self._materials(config, pinned)
            library = {i for i, e in enumerate(config.material_list) if is_library_ref(e)}
        except MaterialError as exc:
            raise ScriptFailure(str(exc), on_screen=False) from exc
        cancel.check()

        table = app_table(target, config)
        phone = target.phone
        folder = remote_dir(target.task_id)
        remote = [f"{folder}/{i}_{name}" for i, name in enumerate(names)]
        steps = plan(config, table, remote)
        total = len(steps) + 2
        created = False
        try:
            await progress("push media", 3, f"{len(files)} file(s) to {folder}")
            await phone.shell(f"mkdir -p {shlex.quote(folder)}")
            created = True
            for local, dest in zip(files, remote, strict=True):
                cancel.check()
                await phone.push(local, dest)
            cancel.check()
            await progress("media scanner", int(100 / total), "")
            for dest in remote:
                await phone.shell(
                    "am broadcast -a android.intent.action.MEDIA_SCANNER_SCAN_FILE "
                    f"-d {shlex.quote('file://' + dest)}"
                )
            for i, step in enumerate(steps, start=2):
                cancel.check()
                await progress(step.name, int(100 * i / total), step.text)
                await self._do(step, table, phone_target=target)
        except ElementMissingError as exc:
            raise ScriptFailure(
                f"post step {exc.step!r} failed: {exc} (selector table {table.app} {table.version})"
            ) from exc
        finally:
            if created:
                await self._cleanup(target, folder)
        return {
            "app": table.app,
            "selector_table": table.version,
            "files": [
                str(path) if i not in library else config.material_list[i]
                for i, path in enumerate(files)
            ],
            "post_way": config.post_way,
        }

    async def _do(self, step: Step, table: AppTable, *, phone_target: Target) -> None:
        phone = phone_target.phone
        timeout = self._host.ui_timeout
        selectors: list[Selector] = []
        if step.element:
            selectors = table.get(step.element)
            if step.instance is not None:
                selectors = [{**s, "instance": str(step.instance)} for s in selectors]
        if step.action == "app_start":
            await phone.app_start(table.package)
        elif step.action == "shell":
            await phone.shell(step.command)
        elif step.action == "tap":
            await phone.tap(step.name, selectors, timeout)
        elif step.action == "tap_optional":
            if await phone.present(selectors, self._host.optional_wait):
                await phone.tap(step.name, selectors, timeout)
        elif step.action == "type":
            await phone.type_text(step.name, selectors, step.text, timeout)
        elif step.action == "wait":
            await phone.wait(step.seconds)

    async def _cleanup(self, target: Target, folder: str) -> None:
        try:
            await target.phone.shell(f"rm -rf {shlex.quote(folder)}")
        except PhoneError as exc:
            log.warning("post.cleanup_failed", folder=folder, error=str(exc))
