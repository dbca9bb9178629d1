"""Bad input is refused with a message naming the field and the problem."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from fleet_contracts.rest import CreateTaskRequest
from fleet_contracts.scripts import (
    ScriptConfigError,
    UnknownScriptError,
    personalise,
    validate_script_config,
)
from fleet_contracts.validation import describe


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"script_name": "post"}, "serials: give serials (device mode) or usernames"),
        ({"serials": [], "script_name": "post"}, "serials: must hold at least one serial"),
        ({"usernames": [], "script_name": "post"}, "usernames: must hold at least one"),
        ({"serials": ["a"], "usernames": ["b"], "script_name": "post"}, "not both"),
        ({"serials": ["a", "a"], "script_name": "post"}, "serials[1]: 'a' is listed twice"),
        (
            {"serials": ["a"], "script_name": "post", "min_interval": 5, "max_interval": 1},
            "min_interval: 5 is greater than max_interval 1",
        ),
        ({"serials": ["a"], "script_name": "post", "start_time": "9:70"}, "start_time: '9:70'"),
        ({"serials": ["a"], "script_name": "post", "min_interval": -1}, "min_interval: Input"),
        ({"serials": "abc", "script_name": "post"}, "serials: Input should be a valid list"),
        (
            {"usernames": ["u"], "script_name": "post", "enable_multi_account": True},
            "enable_multi_account: only applies to device mode",
        ),
        (
            {"serials": ["a", "s" * 201], "script_name": "post"},
            "serials[1]: String should have at most 200 characters",
        ),
        (
            {"usernames": ["u" * 201], "script_name": "post"},
            "usernames[0]: String should have at most 200 characters",
        ),
        (
            {"serials": ["a"], "script_name": "p" * 101},
            "script_name: String should have at most 100 characters",
        ),
        (
            {"serials": ["a"] * 1001, "script_name": "post"},
            "serials: List should have at most 1000 items",
        ),
    ],
)
def test_create_request_rules(body: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        CreateTaskRequest.model_validate(body)
    assert expected in describe(err.value)


def test_valid_create_request_keeps_its_fields() -> None:
    req = CreateTaskRequest.model_validate(
        {
            "serials": [" s1 ", "s2"],
            "script_name": "post",
            "start_time": "23:59",
            "min_interval": 1,
            "max_interval": 3,
        }
    )
    assert req.serials == ["s1", "s2"]
    assert req.start_time == "23:59"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"post_way": "useSound"}, "script_config.sound_name: required when post_way is useSound"),
        ({"add_sound": "custom"}, "script_config.custom_sound_keyword: required"),
        ({"material_source": "localFolder"}, "script_config.material_path: required"),
        ({"content_type": 2}, "script_config.content_type:"),
        ({"post_way": "fax"}, "script_config.post_way:"),
        ({"origin_sound_volume": 101}, "script_config.origin_sound_volume:"),
        ({"add_sound_volume": -1}, "script_config.add_sound_volume:"),
        ({"placement": "feed"}, "script_config.placement:"),
        ({"add_product_link": 3}, "script_config.add_product_link:"),
        ({"upload_wait_time": -5}, "script_config.upload_wait_time:"),
        ({"captions": "{a|b"}, "script_config.captions: bad spintax"),
        ({"material_list": ["clip.txt"]}, "script_config.material_list[0]: 'clip.txt'"),
        ({"content_type": 1, "material_list": ["a.mp4"]}, "is not a image file"),
        ({"material_list": ["a.mp4", "b.mp4"]}, "holds one video"),
        ({"caption": "typo"}, "script_config.caption: unknown field"),
        ({"image_count": 0}, "script_config.image_count:"),
    ],
)
def test_post_config_rules(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(ScriptConfigError) as err:
        validate_script_config("post", config)
    assert expected in str(err.value)


def test_post_config_defaults_and_seed_example() -> None:
    cfg = validate_script_config(
        "post",
        {
            "content_type": 0,
            "captions": "Check out my new video! #viral #fyp",
            "material_list": ["C:/Videos/video1.mp4"],
            "upload_wait_time": 60,
            "add_sound": -1,
        },
    )
    assert cfg["upload_wait_time"] == 60
    assert cfg["post_way"] == "share"
    assert cfg["add_sound"] == "-1"
    assert cfg["origin_sound_volume"] == 50


def test_material_list_overrides_local_folder_rule() -> None:
    cfg = validate_script_config(
        "post", {"material_source": "localFolder", "material_list": ["/m/a.MP4"]}
    )
    assert cfg["material_list"] == ["/m/a.MP4"]


def test_unknown_script_names_the_known_ones() -> None:
    with pytest.raises(UnknownScriptError, match="'like' is not a supported script"):
        validate_script_config("like", {})


def test_plugin_script_checked_against_its_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"count": {"type": "integer", "minimum": 1}},
        "required": ["count"],
    }
    assert validate_script_config("warmup", {"count": 2}, {"warmup": schema}) == {"count": 2}
    with pytest.raises(ScriptConfigError, match=r"script_config\.count: 0 is less than"):
        validate_script_config("warmup", {"count": 0}, {"warmup": schema})


def test_spintax_picks_one_option_per_task_reproducibly() -> None:
    cfg = {"captions": "{Hi|Hello} {world|{there|folks}}!"}
    seen = {personalise("post", cfg, random.Random(seed))["captions"] for seed in range(50)}
    assert seen <= {
        "Hi world!",
        "Hello world!",
        "Hi there!",
        "Hello there!",
        "Hi folks!",
        "Hello folks!",
    }
    assert len(seen) > 2
    assert personalise("post", cfg, random.Random(1)) == personalise("post", cfg, random.Random(1))


@pytest.mark.parametrize(
    ("config", "field", "limit"),
    [
        ({"material_path": "/m/" + "d" * 4096}, "material_path", 4096),
        ({"material_list": ["/m/" + "v" * 4096 + ".mp4"]}, "material_list[0]", 4096),
        ({"materials_tags": "t," * 1001}, "materials_tags", 2000),
        ({"sound_name": "s" * 2001, "post_way": "useSound"}, "sound_name", 2000),
        ({"custom_sound_keyword": "k" * 2001, "add_sound": "custom"}, "custom_sound_keyword", 2000),
        ({"captions": "字" * 4001}, "captions", 4000),
    ],
)
def test_every_post_string_has_a_length_bound(
    config: dict[str, Any], field: str, limit: int
) -> None:
    with pytest.raises(ScriptConfigError) as err:
        validate_script_config("post", config)
    assert f"script_config.{field}: String should have at most {limit} characters" in str(err.value)
