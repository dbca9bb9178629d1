"""schemathesis against the served OpenAPI: no 500s, and every response (status,
content type, headers, body) matches what the schema documents."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js.kv import KeyValue

from fleet_contracts.codes import Plan
from fleet_scheduler.app import Scheduler
from fleet_scheduler.settings import SchedulerSettings

from .conftest import Served, new_key, poll_until

# What every run checks: no 500s, and every response (status, content type, headers,
# body) is what the schema documents; a 405 names exactly the documented methods.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",
    "allow_header_conformance",
]
# With a scheduler answering, also: whatever the schema forbids is refused, a required
# header left out is refused, and a request with a key where the schema asks for one
# is not served without it.
STRICT = [*CHECKS, "negative_data_rejection", "missing_required_header", "ignored_auth"]


async def run_schemathesis(
    api: Served, tmp_path: Path, allow_503: bool, checks: list[str], phases: str
) -> tuple[int, str]:
    config = tmp_path / "schemathesis.toml"
    # Without a scheduler every bus-backed endpoint answers a documented 503; a 500 is
    # always a failure.
    config.write_text(
        '[checks.not_a_server_error]\nexpected-statuses = ["2XX", "4XX", "503"]\n'
        if allow_503
        else ""
    )
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{api.url}/openapi.json",
        "--checks",
        ",".join(checks),
        "--max-examples",
        "15",
        "--seed",
        "4",
        "--exclude-path",
        "/api/v1/events",  # an endless stream: covered by test_api_events
        # Creating a key turns the keyless gateway keyed mid-run, and every later case
        # would only see 401s; the key routes have their own tests (test_api_keys).
        "--exclude-path-regex",
        "^/api/v1/keys",
        "--exclude-path",
        "/api/v1/heartbeats",  # endless too: covered by test_api_console_routes
        "--phases",
        phases,
        "--request-timeout",
        "10",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_the_served_schema_holds_for_generated_requests(api: Served, tmp_path: Path) -> None:
    # The coverage phase's edge cases run once, below, where they reach the scheduler.
    code, output = await run_schemathesis(api, tmp_path, True, CHECKS, "examples,fuzzing")
    assert code == 0, output[-6000:]


async def test_docs_document_the_envelope_for_every_error(api: Served) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    create = schema["paths"]["/api/v1/task"]["post"]
    for status in ("200", "400", "401", "403", "500", "503"):
        assert status in create["responses"], status
    assert "422" not in create["responses"]
    assert create["responses"]["400"]["content"]["application/json"]["example"]["code"] == 40001
    body = schema["components"]["schemas"]["CreateTaskRequest"]
    assert body["examples"][0]["script_name"] == "post"
    assert "409" in schema["paths"]["/api/v1/task/{task_id}/retry"]["post"]["responses"]
    assert (await api.client.get("/docs")).status_code == 200


async def test_the_schema_holds_with_a_scheduler_answering(
    serve: Callable[..., Awaitable[Served]], nats_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    settings = SchedulerSettings(nats_url=nats_url, database_url=pg_dsn)
    async with Scheduler(settings):
        api = await serve()
        code, output = await run_schemathesis(
            api, tmp_path, False, STRICT, "examples,coverage,fuzzing"
        )
    assert code == 0, output[-6000:]


async def test_the_schema_says_which_requests_need_a_key(
    serve: Callable[..., Awaitable[Served]], keys_kv: KeyValue
) -> None:
    api = await serve()
    schema = (await api.client.get("/openapi.json")).json()
    create = schema["paths"]["/api/v1/task"]["post"]
    # Keyless loopback gateway: anonymous ({}) is one of the accepted requirements.
    assert {} in create["security"] and {"HTTPBearer": []} in create["security"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    # Exactly one of serials / usernames, as the server decides it.
    modes = schema["components"]["schemas"]["CreateTaskRequest"]["oneOf"]
    assert [m["required"] for m in modes] == [["serials"], ["usernames"]]
    await new_key(keys_kv, "ops", Plan.PRO)

    async def keyed() -> bool:
        doc = (await api.client.get("/openapi.json")).json()
        return {} not in doc["paths"]["/api/v1/task"]["post"]["security"]

    await poll_until(keyed, what="the served schema to require a key once one exists")
    r = await api.client.post("/api/v1/task/retry-all")
    assert r.status_code == 401
