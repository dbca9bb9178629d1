"""The built-in `post` script: publish the operator's videos or images to TikTok or
Instagram.

Order matters: the materials are checked on this host before the phone is touched;
then the media is pushed to `/sdcard/DCIM/fleet/<task>/`, the media scanner is told,
the flow from `post_flow.plan` is walked with the selectors of `post_selectors`, and
the pushed files are removed again whatever happened (success, failure, stop).
"""

from __future__ import annotations

import asyncio
import shlex
from typing import Any, ClassVar

import structlog
from pydantic import BaseModel

from fleet_agent.materials import MaterialError, select_materials
from fleet_agent.phone import ElementMissingError, PhoneError, Selector
from fleet_agent.scripts import CancelToken, Progress, ScriptFailure, ScriptHost, Target
from fleet_agent.scripts.post_flow import Step, plan
from fleet_agent.scripts.post_selectors import CURRENT, AppTable
from fleet_contracts.scripts.post import PostConfig

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
        try:
            # File checks may hit a slow network share: keep them off the event loop.
            files = await asyncio.to_thread(
                select_materials,
                config,
                self._host.material_roots,
                self._host.material_library,
                self._host.rng,
            )
        except MaterialError as exc:
            raise ScriptFailure(str(exc), on_screen=False) from exc
        cancel.check()

        table = app_table(target, config)
        phone = target.phone
        folder = remote_dir(target.task_id)
        remote = [f"{folder}/{i}_{path.name}" for i, path in enumerate(files)]
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
            "files": [str(p) for p in files],
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
