"""Spintax: `{a|b|c}` in a caption picks one option per task, nesting allowed."""

from __future__ import annotations

import random


class SpintaxError(ValueError):
    pass


def check(text: str) -> None:
    """Raise SpintaxError naming the position of the first unbalanced brace."""
    depth = 0
    opened: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
            opened.append(i)
        elif ch == "}":
            if depth == 0:
                raise SpintaxError(f"unbalanced '}}' at position {i}")
            depth -= 1
            opened.pop()
    if depth:
        raise SpintaxError(f"unbalanced '{{' at position {opened[-1]}")


def spin(text: str, rng: random.Random) -> str:
    """Resolve every `{a|b}` group, innermost first, with the given random source."""
    check(text)
    while True:
        close = text.find("}")
        if close < 0:
            return text
        open_ = text.rfind("{", 0, close)
        options = text[open_ + 1 : close].split("|")
        text = text[:open_] + rng.choice(options) + text[close + 1 :]
