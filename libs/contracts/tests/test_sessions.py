"""The session contracts: what a session id turns into where others can see it, and the
bounds on a JSON-RPC call's body."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleet_contracts.sessions import (
    MAX_PARAMS_BYTES,
    JsonRpcRequest,
    lease_id_of,
    loggable_path,
    new_session_id,
)


def test_a_session_id_never_reaches_the_log_only_its_lease_id() -> None:
    secret = new_session_id()
    path = loggable_path(f"/api/v1/rpc/session/{secret}/heartbeat")
    assert secret not in path and lease_id_of(secret) in path
    assert loggable_path("/api/v1/rpc/session") == "/api/v1/rpc/session"


def test_a_method_must_be_a_string_and_params_are_bounded() -> None:
    with pytest.raises(ValidationError) as not_text:
        JsonRpcRequest.model_validate({"serial": "s", "method": 7})
    assert not_text.value.errors()[0]["loc"] == ("method",)
    with pytest.raises(ValidationError) as too_big:
        JsonRpcRequest.model_validate(
            {"serial": "s", "method": "click", "params": ["x" * MAX_PARAMS_BYTES]}
        )
    assert too_big.value.errors()[0]["loc"] == ("params",)
    ok = JsonRpcRequest.model_validate({"serial": "s", "method": "deviceInfo"})
    assert ok.params == [] and ok.timeout == 10.0
