"""Every seed endpoint and the scheduling rules, end to end through HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fleet_devstack.stack import Stack
from tests.e2e.harness import Api, parse_time, post, wait_until

LONG = 3600  # upload wait (sim seconds): runs until stopped


def test_seed_example_then_every_task_endpoint(stack: Stack, api: Api, video: str) -> None:
    lic = api.ok("GET", "/license/check")
    assert lic["api_enabled"] is True

    # The seed's curl body, as is, with two serials and a file that exists.
    trace = f"seed-{uuid.uuid4().hex}"
    created = api.ok(
        "POST",
        "/task",
        headers={"X-Correlation-Id": trace},
        json={
            "serials": ["device_serial_1", "device_serial_2"],
            "script_name": "post",
            "script_config": {
                "content_type": 0,
                "captions": "Check out my new video! #viral #fyp",
                "material_list": [video],
                "upload_wait_time": 60,
            },
        },
    )
    assert created["created_count"] == 2 and len(created["task_ids"]) == 2
    done = api.wait_all_done(created["task_ids"])
    assert [t["status"] for t in done] == [2, 2]
    first = done[0]
    assert first["source"] == "api" and first["script_name"] == "post"
    assert first["started_at"] and first["finished_at"]
    assert {"task.created", "task.dispatched", "task.started", "task.completed"} <= set(
        api.history(first["id"])
    )
    # One correlation id follows the request through every service's log lines.
    for svc in (stack.api, stack.schedulers[0], stack.agents["host-1"]):
        assert svc is not None
        assert sum(trace in line for line in svc.output().splitlines()) >= 1, svc.name
    agent_lines = [ln for ln in stack.agents["host-1"].output().splitlines() if trace in ln]
    assert any("run.completed" in ln for ln in agent_lines)

    # A material that is not there fails naming the path; retry puts it back in line.
    [bad] = api.create(serials=["device_serial_3"], script_config=post("/nowhere/clip.mp4"))
    failed = api.wait_status(bad, 3)
    assert "/nowhere/clip.mp4" in failed["reason"]
    assert api.ok("POST", f"/task/{bad}/retry") is not None
    again = api.wait_status(bad, 3)
    assert again["retry_count"] == 1
    retried = api.ok("POST", "/task/retry-all")
    assert bad in retried["task_ids"]
    assert api.wait_status(bad, 3)["retry_count"] == 2

    # Retrying a completed task is the wrong state.
    status, body = api.call("POST", f"/task/{first['id']}/retry")
    assert (status, body["code"]) == (409, 40901)

    # List with every filter, pagination and the total clients read.
    page = api.ok("GET", "/task", params={"status": 2})
    assert page["total"] == 2 and {t["status"] for t in page["tasks"]} == {2}
    only = api.ok("GET", "/task", params={"serial": "device_serial_1"})
    assert [t["serial"] for t in only["tasks"]] == ["device_serial_1"]
    assert api.ok("GET", "/task", params={"script_name": "post"})["total"] == 3
    assert api.ok("GET", "/task", params={"source": "ui"})["total"] == 0
    second_page = api.ok("GET", "/task", params={"page": 2, "page_size": 1})
    assert (second_page["page"], second_page["page_size"], len(second_page["tasks"])) == (2, 1, 1)
    assert api.ok("GET", "/task/stats") == {
        "total": 3,
        "pending": 0,
        "running": 0,
        "completed": 2,
        "failed": 1,
    }

    # Delete one, batch delete the rest (and an id that never existed).
    api.ok("DELETE", f"/task/{bad}")
    status, body = api.call("GET", f"/task/{bad}")
    assert (status, body["code"]) == (404, 40401)
    gone = api.ok("DELETE", "/task/batch", json={"task_ids": [*created["task_ids"], 999999]})
    assert sorted(gone["deleted_ids"]) == sorted(created["task_ids"])
    assert gone["not_found_ids"] == [999999]
    assert api.ok("GET", "/task/stats")["total"] == 0


def test_username_mode_and_multi_account(api: Api, video: str) -> None:
    accounts = api.ok("GET", "/account")["accounts"]
    names = {a["username"]: a["serial"] for a in accounts}
    assert names["sim_1_a"] == "device_serial_1" and names["sim_2_b"] == "device_serial_2"

    ids = api.create(usernames=["sim_1_a", "sim_2_b"], script_config=post(video))
    tasks = api.wait_all_done(ids)
    assert {(t["username"], t["serial"], t["status"]) for t in tasks} == {
        ("sim_1_a", "device_serial_1", 2),
        ("sim_2_b", "device_serial_2", 2),
    }

    status, body = api.call(
        "POST",
        "/task",
        json={
            "usernames": ["sim_1_a", "ghost"],
            "script_name": "post",
            "script_config": post(video),
        },
    )
    assert (status, body["code"]) == (400, 40001) and "ghost" in body["message"]

    multi = api.create(
        serials=["device_serial_3"], enable_multi_account=True, script_config=post(video)
    )
    assert len(multi) == 2
    one, two = sorted(api.wait_all_done(multi), key=lambda t: t["started_at"])
    assert {one["username"], two["username"]} == {"sim_3_a", "sim_3_b"}
    # One task per device at a time: the second starts after the first finished.
    assert parse_time(two["started_at"]) >= parse_time(one["finished_at"])


def test_start_time_holds_a_task_until_its_time(api: Api, video: str) -> None:
    later = (datetime.now(UTC) + timedelta(hours=2)).strftime("%H:%M")
    [held] = api.create(serials=["device_serial_1"], start_time=later, script_config=post(video))
    [free] = api.create(serials=["device_serial_1"], script_config=post(video))
    assert api.wait_status(free, 2)
    task = api.task(held)
    assert task["status"] == 0
    assert "start_time" in task["reason"] and later in task["reason"]
    due = parse_time(task["due_at"])
    assert due.strftime("%H:%M") == later
    assert timedelta(hours=1, minutes=58) < due - datetime.now(UTC) <= timedelta(hours=2)


def test_interval_spaces_tasks_on_one_device(api: Api, video: str) -> None:
    [first] = api.create(serials=["device_serial_1"], script_config=post(video))
    [second] = api.create(
        serials=["device_serial_1"], min_interval=1, max_interval=1, script_config=post(video)
    )
    done = api.wait_status(first, 2)
    waiting = wait_until(
        lambda: (t := api.task(second))["due_at"] and "interval" in (t["reason"] or "") and t,
        what="the second task to wait out its interval",
    )
    assert waiting["status"] == 0
    gap = parse_time(waiting["due_at"]) - parse_time(done["finished_at"])
    assert timedelta(seconds=59) <= gap <= timedelta(seconds=61)


def test_stop_and_delete_a_running_task(api: Api, video: str) -> None:
    [running] = api.create(serials=["device_serial_1"], script_config=post(video, LONG))
    api.wait_status(running, 1)
    api.ok("POST", f"/task/{running}/stop")
    stopped = api.wait_status(running, 3)
    assert stopped["reason"] == "stopped"
    # The phone is free again: the next task on it runs.
    [after] = api.create(serials=["device_serial_1"], script_config=post(video))
    assert api.wait_status(after, 2)

    status, body = api.call("POST", f"/task/{running}/stop")
    assert (status, body["code"]) == (409, 40901)

    [doomed] = api.create(serials=["device_serial_2"], script_config=post(video, LONG))
    api.wait_status(doomed, 1)
    api.ok("DELETE", f"/task/{doomed}")
    status, _ = api.call("GET", f"/task/{doomed}")
    assert status == 404
    wait_until(
        lambda: (
            not next(
                d for d in api.ok("GET", "/device")["devices"] if d["serial"] == "device_serial_2"
            )["busy"]
        ),
        what="device_serial_2 to be free after its task was deleted",
    )


def test_devices_and_live_event_stream(api: Api, video: str) -> None:
    devices = api.wait_devices(8)
    assert len(devices) == 8 and all(d["online"] for d in devices)
    assert {d["agent_id"] for d in devices} == {"host-1"}

    [task_id] = api.create(serials=["device_serial_4"], script_config=post(video))
    api.wait_status(task_id, 2)
    seen: list[tuple[str, str]] = []
    with api.http.stream(
        "GET", "/events", params={"task_id": task_id, "since": 0}, timeout=10
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        event_id = ""
        for line in resp.iter_lines():
            if line.startswith("id:"):
                event_id = line[3:].strip()
            if line.startswith("event:"):
                seen.append((event_id, line[6:].strip()))
            if seen and seen[-1][1] == "task.completed":
                break
    types = [t for _, t in seen]
    assert types[0] == "task.created" and types[-1] == "task.completed"
    # Resuming after the created event replays the rest, not the created event again.
    with api.http.stream(
        "GET",
        "/events",
        params={"task_id": task_id},
        headers={"Last-Event-ID": seen[0][0]},
        timeout=10,
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith("event:"):
                assert line[6:].strip() != "task.created"
                break
