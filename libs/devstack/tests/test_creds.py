"""`python -m fleet_devstack creds`: what an operator runs to issue and revoke hosts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nkeys
import pytest

from fleet_devstack import creds
from fleet_devstack.__main__ import main


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Done]:
    """The command line, in this process: `run(dir, "issue-agent", "host-3")`."""

    def call(directory: Path, *args: str) -> Done:
        with pytest.raises(SystemExit) as stop:
            main(["creds", "--dir", str(directory), *args])
        out = capsys.readouterr()
        return Done(int(stop.value.code or 0), out.out, out.err)

    return call


def test_issue_list_and_revoke_an_agent_host(run: Callable[..., Done], tmp_path: Path) -> None:
    done = run(tmp_path, "issue-agent", "host-3")
    assert done.returncode == 0, done.stderr
    seed = creds.seed_path(tmp_path, "agent-host-3")
    assert oct(seed.stat().st_mode & 0o777) == "0o600"
    public = nkeys.from_seed(bytearray(seed.read_bytes().strip())).public_key.decode()
    auth = (tmp_path / "auth.conf").read_text()
    assert public in auth
    assert '"agent.host-3.>"' in auth and '"report.host-3.>"' in auth
    assert '"cmd.>"' not in auth

    again = run(tmp_path, "issue-agent", "host-3")
    assert again.returncode == 2
    assert "revoke it first" in again.stderr

    listed = run(tmp_path, "list")
    assert "agent-host-3" in listed.stdout and public in listed.stdout

    gone = run(tmp_path, "revoke", "agent-host-3")
    assert gone.returncode == 0, gone.stderr
    assert "reload" in gone.stdout
    assert public not in (tmp_path / "auth.conf").read_text()
    assert not seed.exists()
    assert json.loads((tmp_path / "identities.json").read_text()) == []

    unknown = run(tmp_path, "revoke", "agent-host-3")
    assert unknown.returncode == 2
    assert "no identity named" in unknown.stderr


def test_services_and_certificates(run: Callable[..., Done], tmp_path: Path) -> None:
    assert run(tmp_path, "issue-service", "gateway").returncode == 0
    assert run(tmp_path, "issue-service", "scheduler", "--name", "scheduler-2").returncode == 0
    names = [i.name for i in creds.load(tmp_path)]
    assert names == ["gateway", "scheduler-2"]
    done = run(tmp_path, "tls", "nats-1", "nats-2", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem"):
        assert (tmp_path / "tls" / name).exists()
    ca_before = (tmp_path / "tls" / "ca.pem").read_bytes()
    assert run(tmp_path, "tls", "nats-4").returncode == 0
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == ca_before, "the CA is kept"
