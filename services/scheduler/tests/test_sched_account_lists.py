"""Agents' account lists folded in memory: the outcome of applying them one by one."""

from __future__ import annotations

from fleet_scheduler.account_lists import AGENT, Account, apply_lists, difference

API = "api"


def names(*users: str, platform: str | None = None) -> list[dict[str, str]]:
    return [{"username": u, **({"platform": platform} if platform else {})} for u in users]


def test_a_list_replaces_its_phones_agent_accounts_and_leaves_the_apis() -> None:
    before = {
        "old": Account("tiktok", "s1", AGENT),
        "kept": Account("tiktok", "s1", AGENT),
        "mine": Account("instagram", "s1", API),
        "other": Account("tiktok", "s2", AGENT),
    }
    after = apply_lists(before, [("s1", names("kept", "new", "mine", platform="instagram"))])
    assert after == {
        "kept": Account("instagram", "s1", AGENT),
        "new": Account("instagram", "s1", AGENT),
        "mine": Account("instagram", "s1", API),  # registered through the API: as it was
        "other": Account("tiktok", "s2", AGENT),
    }
    gone, changed = difference(before, after)
    assert gone == ["old"]
    assert list(changed) == ["kept", "new"]


def test_an_account_moving_between_phones_ends_where_the_last_list_leaves_it() -> None:
    # x on s2, then on s1, then s1 reports only z: one by one, x is gone at the end.
    lists = [("s2", names("x")), ("s1", names("x")), ("s1", names("z"))]
    after = apply_lists({}, lists)
    assert after == {"z": Account("tiktok", "s1", AGENT)}
    # The other way round it stays on s2.
    after = apply_lists({}, [("s1", names("x")), ("s2", names("x")), ("s1", names("z"))])
    assert after == {"x": Account("tiktok", "s2", AGENT), "z": Account("tiktok", "s1", AGENT)}


def test_blank_names_are_skipped_and_an_empty_list_clears_the_phone() -> None:
    before = {"a": Account("tiktok", "s1", AGENT)}
    after = apply_lists(before, [("s1", [{"username": ""}, {"platform": "tiktok"}])])
    assert after == {}
    assert difference(before, after) == (["a"], {})
    # A list naming what is there already writes nothing.
    assert difference(before, apply_lists(before, [("s1", names("a"))])) == ([], {})
