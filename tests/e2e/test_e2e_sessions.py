"""The custom-script API on the whole stack as `make run` starts it: what TikMatrix's
published Python client does, over plain HTTP (devices, lease, heartbeat, deviceInfo,
screenshot, hierarchy, release), and a registered program run as a task that drives
its phone back through the gateway with the session it was given."""

from __future__ import annotations

import struct
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.e2e.harness import Api, wait_until

PROGRAM = textwrap.dedent(
    """
    import json, os, urllib.request

    body = {"serial": os.environ["TIKMATRIX_SERIAL"], "method": "deviceInfo", "params": []}
    request = urllib.request.Request(
        os.environ["TIKMATRIX_API_BASE"] + "/api/v1/rpc/jsonrpc",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json",
                 "x-session-id": os.environ["TIKMATRIX_SESSION_ID"]},
    )
    info = json.load(urllib.request.urlopen(request, timeout=10))["data"]
    print("screen", info["displayWidth"], "x", info["displayHeight"])
    """
)


def test_published_client_flow_and_a_custom_script(api: Api, tmp_path: Path) -> None:
    devices = api.ok("GET", "/rpc/devices")
    serial = devices[0]["serial"]
    assert devices[0]["busy"] is False

    session = api.ok(
        "POST", "/rpc/session", json={"serial": serial, "label": "e2e", "ttl_secs": 120}
    )
    sid = session["session_id"]
    assert api.call("POST", "/rpc/session", json={"serial": serial})[0] == 409
    api.ok("POST", f"/rpc/session/{sid}/heartbeat", json={"ttl_secs": 120})
    headers = {"x-session-id": sid}
    body = {"serial": serial, "method": "deviceInfo", "params": [], "timeout": 10}
    assert api.ok("POST", "/rpc/jsonrpc", json=body, headers=headers)["displayWidth"] == 720

    shot = api.http.get("/rpc/screenshot", params={"serial": serial}, headers=headers)
    assert shot.status_code == 200 and shot.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", shot.content[16:24]) == (720, 1280)
    tree = api.http.get("/rpc/hierarchy", params={"serial": serial}, headers=headers)
    assert ET.fromstring(tree.content).tag == "hierarchy"
    api.ok("DELETE", f"/rpc/session/{sid}")
    assert api.call("POST", "/rpc/jsonrpc", json=body, headers=headers)[0] == 403

    program = tmp_path / "screen.py"
    program.write_text(PROGRAM)
    api.ok("POST", "/script", json={"name": "screen", "command": [sys.executable, str(program)]})
    [task_id] = api.create(serials=[serial], script_name="screen", script_config={"n": 1})
    api.wait_status(task_id, 2)
    log = wait_until(
        lambda: (text := api.http.get(f"/task/{task_id}/log").text) and text,
        what="the program's output in the task log",
    )
    assert "screen 720 x 1280" in log
