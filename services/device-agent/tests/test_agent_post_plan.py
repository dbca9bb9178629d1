"""Which steps a `post` config walks: decided from the config alone, before any phone."""

from __future__ import annotations

from typing import Any

from fleet_agent.phone import Phone
from fleet_agent.scripts import Target
from fleet_agent.scripts.post import app_table
from fleet_agent.scripts.post_flow import Step, plan
from fleet_agent.scripts.post_selectors import (
    CURRENT,
    INSTAGRAM_PACKAGE,
    TIKTOK_34,
    TIKTOK_PACKAGE,
)
from fleet_contracts.scripts.post import PostConfig

VIDEO = ["/sdcard/DCIM/fleet/9/0_a.mp4"]


def names(steps: list[Step]) -> list[str]:
    return [s.name for s in steps]


def config(**values: Any) -> PostConfig:
    return PostConfig(**{"material_list": ["/m/a.mp4"], **values})


def test_share_hands_the_file_to_the_app_by_intent() -> None:
    steps = plan(config(captions="hi"), TIKTOK_34, VIDEO)
    first = steps[0]
    assert first.action == "shell"
    assert first.command == (
        "am start -a android.intent.action.SEND -t video/* "
        f"--eu android.intent.extra.STREAM file://{VIDEO[0]} -p {TIKTOK_PACKAGE}"
    )
    assert "open app" not in names(steps)
    assert names(steps)[-3:] == ["caption", "post", "wait for upload"]
    assert steps[-1].seconds == 30


def test_several_images_share_as_one_multiple_intent() -> None:
    files = [f"/sdcard/DCIM/fleet/9/{i}_p.jpg" for i in range(3)]
    cfg = PostConfig(content_type=1, image_count=3, material_list=["/m/p.jpg"] * 3)
    first = plan(cfg, TIKTOK_34, files)[0]
    assert "android.intent.action.SEND_MULTIPLE -t image/*" in first.command
    assert "--eua android.intent.extra.STREAM" in first.command


def test_add_button_picks_each_image_in_the_gallery() -> None:
    files = [f"/sdcard/DCIM/fleet/9/{i}_p.jpg" for i in range(2)]
    cfg = PostConfig(
        content_type=1, image_count=2, post_way="addButton", material_list=["/m/p.jpg"] * 2
    )
    steps = plan(cfg, TIKTOK_34, files)
    assert names(steps)[:7] == [
        "open app",
        "dismiss popups",
        "create",
        "upload",
        "select multiple",
        "pick media 1/2",
        "pick media 2/2",
    ]
    assert [s.instance for s in steps if s.element == "first_media"] == [0, 1]
    assert "caption" not in names(steps)  # no caption given


def test_use_sound_searches_the_named_sound_first() -> None:
    steps = plan(config(post_way="useSound", sound_name="lofi beat"), TIKTOK_34, VIDEO)
    search = next(s for s in steps if s.name == "search sound")
    assert (search.element, search.text) == ("search_input", "lofi beat")
    assert names(steps).index("use this sound") < names(steps).index("upload")
    assert "add sound" not in names(steps)


def test_custom_sound_waits_for_it_to_load() -> None:
    cfg = config(add_sound="custom", custom_sound_keyword="rain", sound_wait_time=7)
    steps = plan(cfg, TIKTOK_34, VIDEO)
    assert [s.text for s in steps if s.name == "search sound"] == ["rain"]
    assert [s.seconds for s in steps if s.name == "wait for sound"] == [7]
    assert "volume" not in names(steps)
    assert "volume" in names(plan(config(add_sound_volume=80), TIKTOK_34, VIDEO))


def test_product_link_is_tiktok_only() -> None:
    assert "product link" in names(plan(config(add_product_link=1), TIKTOK_34, VIDEO))
    instagram = CURRENT["instagram"]
    assert "product link" not in names(plan(config(add_product_link=1), instagram, VIDEO))


def test_instagram_story_when_placement_or_account_says_so() -> None:
    phone: Phone = None  # type: ignore[assignment]
    story = config(placement="story", post_way="addButton")
    assert app_table(Target(phone, 1), story).package == INSTAGRAM_PACKAGE
    assert app_table(Target(phone, 1, "bob", "instagram"), config()).package == INSTAGRAM_PACKAGE
    assert app_table(Target(phone, 1, "alice", "tiktok"), config()).package == TIKTOK_PACKAGE
    steps = plan(story, CURRENT["instagram"], VIDEO)
    assert "story tab" in names(steps)
    assert "upload" not in names(steps)


def test_every_element_the_flows_use_is_in_each_table() -> None:
    variants = [
        config(),
        config(post_way="addButton", add_sound="custom", custom_sound_keyword="x"),
        config(post_way="useSound", sound_name="s", add_product_link=1, add_sound_volume=1),
        config(post_way="addButton", placement="story", add_sound="1"),
    ]
    for table in CURRENT.values():
        for cfg in variants:
            for step in plan(cfg, table, VIDEO):
                if step.element:
                    assert table.get(step.element), (table.app, step.element)
