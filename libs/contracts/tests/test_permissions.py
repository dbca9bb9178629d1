"""The permission lists, as data: each role names only its own subjects."""

from __future__ import annotations

from fleet_contracts.permissions import ROLES, inbox_prefix, permissions_for
from fleet_contracts.subjects import agent_run_subject, heartbeat_subject, report_subject


def test_an_agent_is_confined_to_its_own_subjects_even_with_dots_in_its_id() -> None:
    perms = permissions_for("agent", "rack.1")
    assert "agent.rack%2E1.>" in perms.subscribe
    assert agent_run_subject("rack.1").startswith("agent.rack%2E1.")
    assert "report.rack%2E1.>" in perms.publish
    assert heartbeat_subject("rack.1") in perms.publish
    assert report_subject("rack.1", "started").startswith("report.rack%2E1.")
    wide = [s for s in (*perms.publish, *perms.subscribe) if s in {">", "agent.>", "report.>"}]
    assert not wide
    assert perms.allow_responses


def test_only_schedulers_write_the_log_and_only_gateways_send_commands() -> None:
    writers = {role for role in ROLES if "evt.>" in permissions_for(role, "a").publish}
    senders = {role for role in ROLES if "cmd.>" in permissions_for(role, "a").publish}
    assert writers == {"scheduler"}
    assert senders == {"gateway"}


def test_every_role_reads_its_own_inbox_and_nobody_reads_them_all() -> None:
    for role in ROLES:
        perms = permissions_for(role, "a")
        assert f"{inbox_prefix(role, 'a')}.>" in perms.subscribe
        assert "_INBOX.>" not in perms.subscribe
        assert not any(s.startswith("$JS.API.STREAM.DELETE") for s in perms.publish)


def test_as_config_is_what_nats_server_reads() -> None:
    config = permissions_for("gateway").as_config()
    assert set(config) == {"publish", "subscribe"}
    assert config["publish"] == {"allow": list(permissions_for("gateway").publish)}
