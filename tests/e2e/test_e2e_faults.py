"""Faults survived: every test asserts nothing accepted is lost and nothing runs twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from fleet_devstack.stack import AgentSpec, ServiceProcess, Stack
from fleet_scheduler.partition_owners import holders
from tests.e2e.conftest import StackFactory
from tests.e2e.harness import Api, post, wait_until


def assert_ran_at_most_once(api: Api, ids: list[int]) -> None:
    for task_id in ids:
        history = Counter(api.history(task_id))
        assert history["task.completed"] <= 1, (task_id, history)
        # A task starts once per dispatch it was given; requeues and retries give more.
        assert history["task.started"] <= 1 + history["task.requeued"] + history["task.retried"]


def test_scheduler_killed_in_flight_and_restarted(stack: Stack, api: Api, video: str) -> None:
    ids = api.create(
        serials=[f"device_serial_{i}" for i in range(1, 9)], script_config=post(video, 20)
    )
    ids += api.create(
        serials=[f"device_serial_{i}" for i in range(1, 9)], script_config=post(video, 20)
    )
    wait_until(lambda: api.ok("GET", "/task/stats")["running"] > 0, what="tasks in flight")
    [scheduler] = stack.schedulers
    scheduler.kill()
    scheduler.start()
    tasks = api.wait_all_done(ids, timeout=90)
    assert len(tasks) == 16
    completed = [t for t in tasks if t["status"] == 2]
    # A task whose run command died with the scheduler may fail, but it says why.
    assert all(t["reason"] for t in tasks if t["status"] == 3)
    assert len(completed) >= 8
    assert_ran_at_most_once(api, ids)


def test_agent_killed_mid_task_fails_only_its_tasks(
    stack_factory: StackFactory, video: str
) -> None:
    stack = stack_factory(
        agents=[
            AgentSpec(agent_id="host-1", sim_devices=2, sim_speed=0.02),
            AgentSpec(
                agent_id="host-2",
                sim_devices=2,
                sim_speed=0.02,
                env={"FLEET_AGENT_SIM_SERIAL_PREFIX": "h2_serial_"},
            ),
        ]
    )
    api = Api(stack.api_url)
    [lost] = api.create(serials=["device_serial_1"], script_config=post(video, 3600))
    [kept] = api.create(serials=["h2_serial_1"], script_config=post(video, 300))
    api.wait_status(lost, 1)
    api.wait_status(kept, 1)
    stack.agents["host-1"].kill()
    failed = api.wait_status(lost, 3, timeout=20)
    assert failed["reason"].startswith("agent lost")
    assert api.wait_status(kept, 2, timeout=60)["status"] == 2
    devices = {d["serial"]: d for d in api.ok("GET", "/device")["devices"]}
    assert devices["device_serial_1"]["online"] is False
    assert devices["h2_serial_1"]["online"] is True
    assert_ran_at_most_once(api, [lost, kept])


def test_nats_restart_loses_no_command(stack: Stack, api: Api, video: str) -> None:
    before = api.create(serials=["device_serial_1", "device_serial_2"], script_config=post(video))
    stack.nats.restart()
    # Services reconnect on their own; the gateway answers again once they have.
    after = wait_until(
        lambda: api.create(serials=["device_serial_3"], script_config=post(video)),
        timeout=40,
        interval=0.5,
        what="a create to succeed after NATS came back",
    )
    tasks = api.wait_all_done(before + after, timeout=60)
    assert [t["status"] for t in tasks] == [2, 2, 2]
    assert_ran_at_most_once(api, before + after)


def test_postgres_restart_gives_503_then_recovers(stack: Stack, api: Api, video: str) -> None:
    [first] = api.create(serials=["device_serial_1"], script_config=post(video))
    api.wait_status(first, 2)
    stack.postgres.stop()
    status, body = api.call("GET", "/task/stats")
    assert (status, body["code"]) == (503, 50301)
    # A create accepted while the database is away is not lost: it is applied later.
    status, body = api.call(
        "POST",
        "/task",
        json={"serials": ["device_serial_2"], "script_name": "post", "script_config": post(video)},
    )
    assert (status, body["code"]) == (503, 50301)
    stack.postgres.start()
    wait_until(
        lambda: api.call("GET", "/task/stats")[0] == 200,
        timeout=40,
        interval=0.5,
        what="the stats query to answer again",
    )
    later = wait_until(
        lambda: (p := api.ok("GET", "/task", params={"serial": "device_serial_2"}))["total"] and p,
        timeout=30,
        what="the create accepted during the outage to be applied",
    )
    assert later["total"] == 1
    api.wait_status(later["tasks"][0]["id"], 2)


def test_same_create_twice_under_a_timeout_creates_once(stack: Stack, api: Api, video: str) -> None:
    key = str(uuid.uuid4())
    body = {
        "serials": ["device_serial_1", "device_serial_2"],
        "script_name": "post",
        "script_config": post(video),
    }
    [scheduler] = stack.schedulers
    scheduler.pause()
    # The client gives up before the stalled scheduler could answer; the gateway has
    # published the command by then, and it is applied once the scheduler is back.
    with pytest.raises(httpx.TimeoutException):
        api.http.post(
            "/task",
            json=body,
            timeout=3.0,
            headers={"Idempotency-Key": key, "X-Correlation-Id": "first-attempt"},
        )
    scheduler.resume()
    first = wait_until(
        lambda: (
            (r := api.http.post("/task", json=body, headers={"Idempotency-Key": key})).status_code
            == 200
            and r.json()["data"]
        ),
        timeout=40,
        interval=0.5,
        what="the retried create to answer",
    )
    again = api.ok("POST", "/task", json=body, headers={"Idempotency-Key": key})
    assert again == first and first["created_count"] == 2
    assert api.ok("GET", "/task/stats")["total"] == 2
    # What the retries returned is what the timed-out request created.
    created = api.ok("GET", f"/task/{first['task_ids'][0]}/events")[0]
    assert created["type"] == "task.created"
    assert created["correlation_id"] == "first-attempt"


# --- Judged against the agent's own record of what its phones ran -------------------


def agent_record(path: Path) -> tuple[Counter[int], set[int], set[int]]:
    """(runs begun per task, tasks its phones ran to completion, tasks whose outcome
    the agent got stored on REPORTS) from its run log (FLEET_AGENT_RUN_LOG), across all
    its processes."""
    begun: Counter[int] = Counter()
    completed: set[int] = set()
    reported: set[int] = set()
    if not path.exists():
        return begun, completed, reported
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["event"] == "run.begun":
            begun[entry["task_id"]] += 1
        elif entry["event"] == "task.completed":
            completed.add(entry["task_id"])
        elif entry["event"] == "reported":
            reported.add(entry["task_id"])
    return begun, completed, reported


def assert_record_matches_the_phones(api: Api, ids: list[int], log: Path) -> list[dict[str, Any]]:
    """Every task ended; none ran twice; recorded completed only if its phone ran it to
    the end, and always when the agent got that outcome to REPORTS (a process killed
    between a script's end and its report's ack takes that knowledge with it); a failed
    task names why."""
    tasks = api.wait_all_done(ids, timeout=90)
    begun, completed, reported = agent_record(log)
    twice = {t: n for t, n in begun.items() if n > 1}
    assert not twice, f"ran more than once: {twice}"
    recorded = {t["id"] for t in tasks if t["status"] == 2}
    assert recorded <= completed, f"recorded completed, never ran: {sorted(recorded - completed)}"
    missing = (completed & reported & set(ids)) - recorded
    assert not missing, f"the phone completed and the agent reported it: {sorted(missing)}"
    assert all(t["reason"] for t in tasks if t["status"] == 3)
    return tasks


def logged_agent(log: Path, devices: int = 4) -> AgentSpec:
    return AgentSpec(
        agent_id="host-1",
        sim_devices=devices,
        sim_speed=0.02,
        env={"FLEET_AGENT_RUN_LOG": str(log)},
    )


def restart_armed(service: ServiceProcess, failpoint: str | None) -> None:
    """Once `service` has killed itself at its failpoint, start it again with another
    failpoint armed (or none)."""
    wait_until(lambda: not service.running, timeout=30, what=f"{service.name} killed itself")
    service.env.pop("FLEET_FAILPOINT", None)
    if failpoint:
        service.env["FLEET_FAILPOINT"] = failpoint
    service.start()


def test_scheduler_killed_between_commit_and_ack_then_between_claim_and_send(
    stack_factory: StackFactory, video: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    stack = stack_factory(agents=[logged_agent(log)])
    [scheduler] = stack.schedulers
    # Armed once the stack is up, so the first command it meets is the test's create.
    scheduler.stop()
    scheduler.env["FLEET_FAILPOINT"] = "commands.after_commit:1"
    scheduler.start()
    stack.wait_ready()
    api = Api(stack.api_url)
    serials = [f"device_serial_{i}" for i in range(1, 5)]
    body = {"serials": serials, "script_name": "post", "script_config": post(video)}
    first_key, second_key = str(uuid.uuid4()), str(uuid.uuid4())
    # The create is committed, its tasks dispatched to the idle phones in the same
    # transaction; the scheduler dies before the ack, the reply and any RunTask.
    status, _ = api.call("POST", "/task", json=body, headers={"Idempotency-Key": first_key})
    assert status != 200
    wait_until(lambda: not scheduler.running, timeout=30, what="the scheduler killed itself")
    # With no scheduler running, a second create on the same phones is accepted all the
    # same (its caller hears no result yet).
    status, _ = api.call("POST", "/task", json=body, headers={"Idempotency-Key": second_key})
    assert status != 200
    # The next process finds the first create already applied and sends its unconfirmed
    # runs as it starts; the second create's tasks wait for those phones, are claimed
    # when they free, and the process dies before any of their RunTasks leaves.
    restart_armed(scheduler, "dispatch.after_claim:1")
    # The one after that sends those unconfirmed runs as it starts.
    restart_armed(scheduler, None)

    def answered(key: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            r = api.http.post("/task", json=body, headers={"Idempotency-Key": key})
            data: dict[str, Any] | None = r.json()["data"] if r.status_code == 200 else None
            return data

        return wait_until(probe, timeout=40, interval=0.5, what="the retried create to answer")

    first, second = answered(first_key), answered(second_key)
    assert first["created_count"] == second["created_count"] == 4
    assert api.ok("GET", "/task/stats")["total"] == 8
    tasks = assert_record_matches_the_phones(api, first["task_ids"] + second["task_ids"], log)
    # Sent again in time they run; one sent too late fails as never started, unrun.
    assert any(t["status"] == 2 for t in tasks)
    for t in tasks:
        if t["status"] == 3:
            assert t["reason"] == "agent host-1 never confirmed start", t


def test_agent_killed_in_a_flood_or_silent_past_its_lease_the_record_says_what_phones_did(
    stack_factory: StackFactory, video: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    stack = stack_factory(agents=[logged_agent(log, devices=8)])
    api = Api(stack.api_url)
    serials = [f"device_serial_{i}" for i in range(1, 9)]
    ids: list[int] = []
    for _ in range(5):
        ids += api.create(serials=serials, script_config=post(video, 10))
    wait_until(
        lambda: api.ok("GET", "/task/stats")["completed"] >= 8, timeout=60, what="a first wave"
    )
    agent = stack.agents["host-1"]
    agent.kill()
    agent.start()
    tasks = assert_record_matches_the_phones(api, ids, log)
    begun, completed, _ = agent_record(log)
    assert len(completed) >= 8
    # The runs the killed process had in hand failed with the restart, and said so.
    lost = [t for t in tasks if t["status"] == 3]
    assert all(t["reason"].startswith("agent lost") for t in lost if begun[t["id"]]), lost

    # A task failed by the lease whose phone goes on and completes it ends completed.
    [tid] = api.create(serials=["device_serial_1"], script_config=post(video, 250))
    api.wait_status(tid, 1)
    agent.pause()  # silent past the 3 s lease, the script frozen mid-run
    try:
        failed = api.wait_status(tid, 3, timeout=20)
        assert failed["reason"].startswith("agent lost: host-1 sent no heartbeat")
    finally:
        agent.resume()
    assert api.wait_status(tid, 2, timeout=30)["status"] == 2
    assert_record_matches_the_phones(api, [tid], log)
    history = api.ok("GET", f"/task/{tid}/events")
    kinds = [(e["type"], e["actor"]) for e in history]
    assert kinds[0] == ("task.created", "local")
    assert ("task.failed", "scheduler") in kinds
    assert "task.report_late" in [k for k, _ in kinds]
    assert kinds[-1] == ("task.completed", "agent:host-1")


def partition_holders(stack: Stack) -> dict[int, str]:
    """The serial partitions' live leases, by partition."""

    async def read() -> dict[int, str]:
        conn = await asyncpg.connect(stack.database_url)
        try:
            return await holders(conn)
        finally:
            await conn.close()

    return asyncio.run(read())


def test_one_of_three_schedulers_killed_in_a_flood_its_partitions_move_nothing_lost_or_rerun(
    stack_factory: StackFactory, video: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    stack = stack_factory(
        agents=[logged_agent(log, devices=16)],
        schedulers=3,
        # A start timeout well past the lease: a run the killed one claimed and never
        # sent must be sent by its partition's next holder, not failed by the timeout.
        env={
            "FLEET_SCHEDULER_PARTITION_LEASE_SECONDS": "2",
            "FLEET_SCHEDULER_START_TIMEOUT_SECONDS": "60",
        },
    )
    api = Api(stack.api_url)

    def shared_by(n: int, without: str | None = None) -> dict[int, str] | None:
        held = partition_holders(stack)
        owners = set(held.values())
        return held if len(held) == 16 and len(owners) == n and without not in owners else None

    held = wait_until(lambda: shared_by(3), timeout=30, what="the partitions shared by three")
    serials = [f"device_serial_{i}" for i in range(1, 17)]
    ids: list[int] = []
    for _ in range(8):
        ids += api.create(serials=serials, script_config=post(video, 10))
    wait_until(
        lambda: api.ok("GET", "/task/stats")["completed"] >= 16, timeout=60, what="a first wave"
    )
    victim = stack.schedulers[1]
    victim.kill()
    gone = "scheduler-2"
    assert gone in held.values()
    moved = wait_until(
        lambda: shared_by(2, without=gone), timeout=30, what="the killed one's partitions moved"
    )
    assert set(moved.values()) == {"scheduler-1", "scheduler-3"}
    tasks = assert_record_matches_the_phones(api, ids, log)
    assert [t["id"] for t in tasks if t["status"] != 2] == []
    begun, _, _ = agent_record(log)
    assert set(begun) == set(ids)
