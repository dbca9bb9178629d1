"""The accounts table after a run of agents' account lists, decided in memory.

An agent reports, per phone, every account signed in on it (`device.accounts_reported`).
Applied one after another, each list removes the phone's agent-found accounts it no
longer names, then adds each account it names or moves it to this phone; an account
registered through the API (source `api`) is never moved or removed by an agent. An
agent starting with a thousand phones sends a thousand lists at once: folding them here
and writing only the difference takes two statements instead of one to three per list,
with the outcome of the one-by-one order (an account that moves between phones within
the run ends where the last list leaves it, or nowhere).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Account:
    platform: str
    serial: str
    source: str


AGENT = "agent"


def apply_lists(
    before: Mapping[str, Account], lists: Iterable[tuple[str, list[dict[str, str]]]]
) -> dict[str, Account]:
    """The accounts by username after applying each (serial, accounts) list in order.

    `before` must hold every row a list can touch: the agent-found accounts of the
    lists' phones and every account a list names."""
    after = dict(before)
    for serial, accounts in lists:
        listed = [a for a in accounts if a.get("username")]
        names = {a["username"] for a in listed}
        for username in [
            u for u, acc in after.items() if acc.serial == serial and acc.source == AGENT
        ]:
            if username not in names:
                del after[username]
        for account in listed:
            current = after.get(account["username"])
            if current is None or current.source == AGENT:
                platform = account.get("platform") or "tiktok"
                after[account["username"]] = Account(platform, serial, AGENT)
    return after


def difference(
    before: Mapping[str, Account], after: Mapping[str, Account]
) -> tuple[list[str], dict[str, Account]]:
    """What to write: the usernames gone, and the accounts added or changed."""
    gone = sorted(before.keys() - after.keys())
    changed = {u: acc for u, acc in sorted(after.items()) if before.get(u) != acc}
    return gone, changed
