"""Every bad request is a 400 (or 404/405) in the envelope, names what is wrong, and
sends nothing to the scheduler."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

from fleet_contracts.scripts import ScriptSpec
from fleet_contracts.subjects import COMMANDS, KV_SCRIPTS

from .conftest import Served

GOOD: dict[str, Any] = {
    "serials": ["device_serial_1"],
    "script_name": "post",
    "script_config": {"content_type": 0, "material_list": ["/tmp/v.mp4"]},
}


async def commands_sent(bus: Client) -> int:
    info = await bus.jetstream().stream_info(COMMANDS.name)
    return int(info.state.messages)


# Each table runs against one gateway: a case per request, named in the failure.
BAD_CREATES: list[tuple[Any, int, str]] = [
    ({**GOOD, "serials": []}, 40001, "serials: must hold at least one serial"),
    ({**GOOD, "usernames": []}, 40001, "serials or usernames, not both"),
    ({k: v for k, v in GOOD.items() if k != "serials"}, 40001, "serials"),
    ({**GOOD, "serials": None, "usernames": []}, 40001, "usernames: must hold at least one"),
    ({**GOOD, "serials": ["a", "a"]}, 40001, "serials[1]: 'a' is listed twice"),
    ({**GOOD, "serials": "device_serial_1"}, 40001, "serials: Input should be a valid list"),
    ({**GOOD, "min_interval": 10, "max_interval": 5}, 40001, "min_interval: 10 is greater"),
    ({**GOOD, "min_interval": -1}, 40001, "min_interval:"),
    ({**GOOD, "min_interval": "soon"}, 40001, "min_interval:"),
    ({**GOOD, "start_time": "24:00"}, 40001, "start_time: '24:00' is not a time of day"),
    ({**GOOD, "start_time": "9:5"}, 40001, "start_time:"),
    ({**GOOD, "enable_multi_account": "maybe"}, 40001, "enable_multi_account:"),
    (
        {**GOOD, "serials": None, "usernames": ["u"], "enable_multi_account": True},
        40001,
        "enable_multi_account: only applies to device mode",
    ),
    ({k: v for k, v in GOOD.items() if k != "script_name"}, 40002, "script_name: required"),
    ({**GOOD, "script_name": ""}, 40002, "script_name: required"),
    ({**GOOD, "script_name": "follow"}, 40003, "'follow' is not a supported script"),
    (
        {**GOOD, "script_config": {"content_type": 2}},
        40001,
        "script_config.content_type:",
    ),
    (
        {**GOOD, "script_config": {"post_way": "useSound"}},
        40001,
        "script_config.sound_name: required when post_way is useSound",
    ),
    (
        {**GOOD, "script_config": {"material_list": ["/tmp/a.txt"]}},
        40001,
        "script_config.material_list[0]:",
    ),
    (
        {**GOOD, "script_config": {"origin_sound_volume": 101}},
        40001,
        "script_config.origin_sound_volume:",
    ),
    (
        {**GOOD, "script_config": {"colour": "red"}},
        40001,
        "script_config.colour: unknown field",
    ),
    ({**GOOD, "script_config": [1]}, 40001, "script_config:"),
    ([GOOD], 40001, "body: must be a JSON object"),
    ({**GOOD, "serials": ["a\x00b"]}, 40001, "serials[0]: must not contain NUL"),
    (
        {**GOOD, "script_config": {"captions": "hi\x00"}},
        40001,
        "script_config.captions: must not contain NUL",
    ),
]


async def test_bad_create_is_400_naming_the_field_and_sends_nothing(
    api: Served, bus: Client
) -> None:
    for body, code, words in BAD_CREATES:
        r = await api.client.post("/api/v1/task", json=body)
        assert r.status_code == 400, (body, r.text)
        envelope = r.json()
        assert envelope["code"] == code, (body, envelope)
        assert words in envelope["message"], (body, envelope)
        assert envelope["data"] is None
    assert await commands_sent(bus) == 0


async def test_malformed_json_is_400_in_the_envelope(api: Served, bus: Client) -> None:
    r = await api.client.post(
        "/api/v1/task", content=b'{"serials": [', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["code"] == 40001
    assert r.json()["message"].startswith("body: malformed JSON")
    assert await commands_sent(bus) == 0


async def test_body_without_json_content_type_is_told_how_to_send_it(api: Served) -> None:
    r = await api.client.post("/api/v1/task", content=b"serials=a")
    assert r.status_code == 400
    assert "Content-Type: application/json" in r.json()["message"]


async def test_plugin_script_config_is_checked_against_its_announced_schema(
    api: Served, bus: Client
) -> None:
    spec = ScriptSpec(
        name="follow",
        config_schema={
            "type": "object",
            "properties": {"count": {"type": "integer", "minimum": 1}},
            "required": ["count"],
        },
    )
    kv = await bus.jetstream().key_value(KV_SCRIPTS)
    await kv.put("follow", spec.model_dump_json().encode())

    async def listed() -> bool:
        r = await api.client.get("/api/v1/script")
        return "follow" in [s["name"] for s in r.json()["data"]]

    from .conftest import poll_until

    await poll_until(listed, what="the plugin in the catalogue")
    body = {**GOOD, "script_name": "follow", "script_config": {"count": 0}}
    r = await api.client.post("/api/v1/task", json=body)
    assert r.status_code == 400
    assert r.json()["message"].startswith("script_config.count:")
    # A valid config passes validation and reaches the bus, where no scheduler answers.
    body["script_config"] = {"count": 3}
    r = await api.client.post("/api/v1/task", json=body)
    assert r.status_code == 503
    assert await commands_sent(bus) == 0


BAD_LISTS = [
    ("status=4", "status: Input should be less than or equal to 3"),
    ("status=-1", "status:"),
    ("status=done", "status:"),
    ("source=cli", "source: Input should be 'ui' or 'api'"),
    ("page=0", "page: Input should be greater than or equal to 1"),
    ("page_size=0", "page_size: Input should be greater than or equal to 1"),
    ("page_size=101", "page_size: Input should be less than or equal to 100"),
    ("page_size=ten", "page_size:"),
]


async def test_bad_list_filters_are_400_naming_the_parameter(api: Served) -> None:
    for query, words in BAD_LISTS:
        r = await api.client.get(f"/api/v1/task?{query}")
        assert r.status_code == 400, (query, r.text)
        assert r.json()["code"] == 40001
        assert words in r.json()["message"], (query, r.text)


BAD_IDS = [
    ("GET", "/api/v1/task/abc"),
    ("GET", "/api/v1/task/1.5"),
    ("GET", "/api/v1/task/0"),
    ("DELETE", "/api/v1/task/xyz"),
    ("POST", "/api/v1/task/xyz/stop"),
    ("POST", "/api/v1/task/xyz/retry"),
    ("GET", "/api/v1/task/xyz/events"),
]


async def test_a_non_integer_task_id_is_400_naming_task_id(api: Served) -> None:
    for method, path in BAD_IDS:
        r = await api.client.request(method, path)
        assert r.status_code == 400, (method, path, r.text)
        assert r.json()["code"] == 40001
        assert r.json()["message"].startswith("task_id:"), (method, path, r.text)


async def test_fixed_task_paths_are_never_read_as_an_id(api: Served) -> None:
    # With no scheduler each reaches the bus and answers 503, never "task_id: ..." 400.
    for method, path, body in [
        ("GET", "/api/v1/task/stats", None),
        ("POST", "/api/v1/task/retry-all", None),
        ("DELETE", "/api/v1/task/batch", {"task_ids": [1, 2]}),
    ]:
        r = await api.client.request(method, path, json=body)
        assert r.status_code == 503, (path, r.text)
        assert r.json()["code"] == 50301


BAD_BATCHES: list[tuple[Any, str]] = [
    ({"task_ids": []}, "task_ids: List should have at least 1 item"),
    ({"task_ids": ["a"]}, "task_ids[0]:"),
    ({}, "task_ids: required"),
    ({"task_ids": [1, -5]}, "task_ids[1]: -5 is not a task id"),
    ({"task_ids": [2**64]}, "task_ids[0]:"),
]


async def test_bad_batch_delete_is_400(api: Served, bus: Client) -> None:
    for body, words in BAD_BATCHES:
        r = await api.client.request("DELETE", "/api/v1/task/batch", json=body)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["message"], (body, r.text)
    assert await commands_sent(bus) == 0


BAD_ACCOUNTS: list[tuple[Any, str]] = [
    ({"username": "u"}, "serial: required"),
    ({"username": "u", "serial": "s", "platform": "myspace"}, "platform:"),
    ({"username": "", "serial": "s"}, "username:"),
    ({"username": "u", "serial": "s", "extra": 1}, "extra: unknown field"),
    ({"username": "u\x00", "serial": "s"}, "username: must not contain NUL"),
]


async def test_bad_account_is_400(api: Served, bus: Client) -> None:
    for body, words in BAD_ACCOUNTS:
        r = await api.client.post("/api/v1/account", json=body)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["message"], (body, r.text)
    assert await commands_sent(bus) == 0


async def test_unknown_path_and_wrong_method_answer_in_the_envelope(api: Served) -> None:
    r = await api.client.get("/api/v1/nothing-here")
    assert r.status_code == 404
    assert r.json() == {
        "code": 40401,
        "message": "no such endpoint: GET /api/v1/nothing-here (see /docs)",
        "data": None,
    }
    r = await api.client.put("/api/v1/task/stats")
    assert r.status_code == 405
    assert r.json()["code"] == 40501
    assert "allowed: GET" in r.json()["message"]
    assert r.headers["allow"] == "GET"
    r = await api.client.delete("/api/v1/task/stats")  # not read as a task id
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_the_catalogue_leaves_out_broken_or_shadowing_plugins() -> None:
    from fleet_api.catalogue import parse_spec

    def spec(name: str, schema: dict[str, Any]) -> bytes:
        return ScriptSpec(name=name, config_schema=schema).model_dump_json().encode()

    assert parse_spec("x", spec("x", {"type": "nonsense"})) is None
    assert parse_spec("post", spec("post", {"type": "object"})) is None
    assert parse_spec("x", b"not json") is None
    found = parse_spec("follow", spec("follow", {"type": "object"}))
    assert found is not None and found.name == "follow"
