"""The material library in the log: add / dedup / tag / delete, and picks at create."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg

from fleet_contracts.agent import RunTask
from fleet_contracts.codes import ErrorCode, TaskSource
from fleet_contracts.commands import AddMaterial, CreateTasks, DeleteMaterial, TagMaterial
from fleet_contracts.queries import GetMaterial, ListMaterials, TaskEvents
from fleet_contracts.rest import CreateTaskRequest
from fleet_scheduler.app import Scheduler
from fleet_scheduler.projections import rebuild

from .conftest import Bus, FakeAgent, eventually


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add(name: str, tags: list[str], content: str | None = None) -> AddMaterial:
    return AddMaterial(sha256=sha(content or name), size=100, name=name, tags=tags)


async def _run_of(agent: FakeAgent, task_id: int) -> RunTask | None:
    return next((r for r in agent.runs if r.task_id == task_id), None)


def create(**config: Any) -> CreateTasks:
    return CreateTasks(
        request=CreateTaskRequest.model_validate(
            {
                "script_name": "post",
                "serials": ["device_serial_1", "device_serial_2"],
                "script_config": config,
            }
        ),
        source=TaskSource.API,
    )


async def test_items_are_added_once_per_content_tagged_and_deleted(
    bus: Bus, scheduler: Scheduler, db: asyncpg.Connection
) -> None:
    first = await bus.command(add("cat.mp4", ["cats"]))
    assert first.ok and first.data["duplicate"] is False
    item_id = first.data["id"]
    assert first.data["ref"] == f"library:{item_id}"
    again = await bus.command(add("other-name.mp4", ["summer", "cats"], content="cat.mp4"))
    assert again.ok and again.data["duplicate"] is True
    assert again.data["id"] == item_id and again.data["tags"] == ["cats", "summer"]
    await bus.command(add("dog.jpg", ["dogs"]))

    page = (await bus.query(ListMaterials(tag="cats"))).data
    assert page["total"] == 1 and page["materials"][0]["name"] == "cat.mp4"
    assert (await bus.query(ListMaterials())).data["total"] == 2

    tagged = await bus.command(TagMaterial(material_id=item_id, tags=["pets"]))
    assert tagged.ok and tagged.data["tags"] == ["pets"]
    bad = await bus.command(TagMaterial(material_id=item_id, tags=["no spaces"]))
    assert bad.code == ErrorCode.INVALID_PARAMETERS and "tags" in bad.message

    gone = await bus.command(DeleteMaterial(material_id=item_id))
    assert gone.ok and gone.data["sha256"] == sha("cat.mp4")
    missing = await bus.query(GetMaterial(material_id=item_id))
    assert missing.code == ErrorCode.NOT_FOUND
    assert (await bus.command(DeleteMaterial(material_id=item_id))).code == ErrorCode.NOT_FOUND
    # The same bytes after a delete are a new item.
    back = await bus.command(add("cat.mp4", []))
    assert back.ok and back.data["id"] != item_id and back.data["duplicate"] is False

    history = [
        r["type"]
        for r in await db.fetch(
            "SELECT type FROM events WHERE stream_id = $1 ORDER BY version", f"material-{item_id}"
        )
    ]
    assert history == ["material.added", "material.tagged", "material.tagged", "material.deleted"]
    before = [dict(r) for r in await db.fetch("SELECT * FROM materials ORDER BY id")]
    await rebuild(db)
    assert [dict(r) for r in await db.fetch("SELECT * FROM materials ORDER BY id")] == before


async def test_bad_names_are_refused_naming_the_field(bus: Bus, scheduler: Scheduler) -> None:
    for name, problem in (("../x.mp4", "'..'"), ("notes.txt", "not a video or image")):
        result = await bus.command(add(name, []))
        assert result.code == ErrorCode.INVALID_PARAMETERS
        assert result.message.startswith("name: ") and problem in result.message


async def test_a_pick_is_made_once_per_task_and_recorded(bus: Bus, agent: FakeAgent) -> None:
    agent.answer = False
    cat = (await bus.command(add("cat.mp4", ["cats"]))).data
    await bus.command(add("cat2.mp4", ["cats"]))
    await bus.command(add("sun.mp4", ["summer"]))
    pic = (await bus.command(add("pic.jpg", ["cats"]))).data

    by_tag = await bus.command(create(materials_tags="cats"))
    assert by_tag.ok, by_tag.message
    for task_id in by_tag.data["task_ids"]:
        events = (await bus.query(TaskEvents(task_id=task_id))).data
        assert [e["type"] for e in events][:2] == ["task.created", "task.materials_picked"]
        picked = events[1]["data"]["materials"]
        assert len(picked) == 1 and picked[0]["name"] in ("cat.mp4", "cat2.mp4")
        assert events[1]["data"]["tags"] == ["cats"]
        config = events[0]["data"]["script_config"]
        assert config["material_list"] == [picked[0]["ref"]]
        assert picked[0]["ref"] == f"library:{picked[0]['sha256']}.mp4"

    # The agent is sent the resolved config: what a run of the first task carries.
    first_run = await eventually(
        lambda: _run_of(agent, by_tag.data["task_ids"][0]), what="a run request"
    )
    assert first_run.script_config["material_list"][0].startswith("library:")

    named = await bus.command(create(material_list=[f"library:{cat['id']}"]))
    assert named.ok
    for task_id in named.data["task_ids"]:
        events = (await bus.query(TaskEvents(task_id=task_id))).data
        assert events[0]["data"]["script_config"]["material_list"] == [
            f"library:{cat['sha256']}.mp4"
        ]
        assert [m["id"] for m in events[1]["data"]["materials"]] == [cat["id"]]

    problems = {
        "materials_tags": create(materials_tags="cats,nosuchtag"),
        "material_list[0]": create(material_list=["library:999"]),
        "image": create(material_list=[f"library:{pic['id']}"]),
        "holds 1 image": create(content_type=1, image_count=2, materials_tags="cats"),
    }
    for expected, cmd in problems.items():
        result = await bus.command(cmd)
        assert result.code == ErrorCode.INVALID_PARAMETERS, (expected, result)
        assert expected in result.message and "script_config." in result.message
