"""A scheduler start imports none of the packages it only needs later or never: they
were most of its import time, which every restart pays whatever the size of the log."""

from __future__ import annotations

import os
import subprocess
import sys

LATER_OR_NEVER = ("aiohttp", "rich", "httpx", "click", "jsonschema", "pygments")


def test_importing_the_scheduler_loads_no_optional_package() -> None:
    code = (
        "import sys, fleet_scheduler.__main__\n"
        f"print(sorted(m for m in {LATER_OR_NEVER!r} if m in sys.modules))"
    )
    env = {**os.environ, "FLEET_LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
