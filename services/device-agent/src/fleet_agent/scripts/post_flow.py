"""The posting flow as data: which steps a given `post` config walks, in order.

A pure function of the config, the app table and the pushed files, so the choice of
steps (share intent or in-app upload, sound, caption, product link) is tested without
a phone. `PostScript` executes the steps against the device handle.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from fleet_agent.scripts.post_selectors import AppTable
from fleet_contracts.scripts.post import PostConfig

Action = Literal["app_start", "shell", "tap", "tap_optional", "type", "wait"]


@dataclass(frozen=True)
class Step:
    name: str
    action: Action
    element: str = ""
    text: str = ""
    seconds: float = 0.0
    command: str = ""
    instance: int | None = None


def _pick_media(table: AppTable, count: int) -> list[Step]:
    steps: list[Step] = []
    if count > 1:
        steps.append(Step("select multiple", "tap", "select_multiple"))
    # Newest first in the gallery: the scanner just indexed our files, so they lead.
    for i in range(count):
        steps.append(Step(f"pick media {i + 1}/{count}", "tap", "first_media", instance=i))
    return steps


def _share_intent(table: AppTable, remote_files: list[str], content_type: int) -> str:
    mime = "video/*" if content_type == 0 else "image/*"
    if len(remote_files) == 1:
        extra = f"--eu android.intent.extra.STREAM {shlex.quote('file://' + remote_files[0])}"
        action = "android.intent.action.SEND"
    else:
        uris = ",".join("file://" + f for f in remote_files)
        extra = f"--eua android.intent.extra.STREAM {shlex.quote(uris)}"
        action = "android.intent.action.SEND_MULTIPLE"
    return f"am start -a {action} -t {mime} {extra} -p {table.package}"


def plan(config: PostConfig, table: AppTable, remote_files: list[str]) -> list[Step]:
    """Every UI step of one post, after the media is on the phone and scanned."""
    steps: list[Step] = []
    media_count = len(remote_files)
    if config.post_way == "share":
        steps.append(
            Step(
                "share media to the app",
                "shell",
                command=_share_intent(table, remote_files, config.content_type),
            )
        )
        steps.append(Step("choose share target", "tap_optional", "share_target"))
    else:
        steps.append(Step("open app", "app_start"))
        steps.append(Step("dismiss popups", "tap_optional", "dismiss_popup"))
        if config.post_way == "useSound" and table.app == "tiktok":
            steps += [
                Step("open search", "tap", "search"),
                Step("search sound", "type", "search_input", text=config.sound_name),
                Step("sounds tab", "tap", "search_sounds_tab"),
                Step("open sound", "tap", "first_sound"),
                Step("use this sound", "tap", "use_sound"),
                Step("wait for sound", "wait", seconds=config.sound_wait_time),
                Step("upload", "tap", "upload"),
            ]
        else:
            steps.append(Step("create", "tap", "create"))
            if table.app == "instagram":
                tab = "story_tab" if config.placement == "story" else "reel_tab"
                steps.append(Step(f"{config.placement} tab", "tap", tab))
            else:
                steps.append(Step("upload", "tap", "upload"))
        steps += _pick_media(table, media_count)
    steps.append(Step("media chosen", "tap", "next"))

    wants_sound = config.add_sound in ("1", "custom") and config.post_way != "useSound"
    if wants_sound:
        steps.append(Step("add sound", "tap", "add_sound"))
        if config.add_sound == "custom":
            steps.append(
                Step("search sound", "type", "sound_search_input", text=config.custom_sound_keyword)
            )
        steps.append(Step("pick sound", "tap", "sound_first_result"))
        steps.append(Step("wait for sound", "wait", seconds=config.sound_wait_time))
        steps.append(Step("confirm sound", "tap_optional", "sound_confirm"))
    if (config.origin_sound_volume, config.add_sound_volume) != (50, 50):
        # The volume sheet has sliders without stable ids; opening it is as far as the
        # flow can go reliably, so the levels are reported, not dragged.
        steps.append(Step("volume", "tap_optional", "volume"))
    steps.append(Step("edit done", "tap", "next"))
    if config.captions:
        steps.append(Step("caption", "type", "caption", text=config.captions))
    if config.add_product_link == 1 and table.app == "tiktok":
        steps.append(Step("product link", "tap_optional", "product_link"))
    steps.append(Step("post", "tap", "post"))
    steps.append(Step("wait for upload", "wait", seconds=config.upload_wait_time))
    return steps
