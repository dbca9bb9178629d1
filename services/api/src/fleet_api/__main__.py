"""`python -m fleet_api`: serve the gateway, or manage API keys (see `fleet_api.cli`)."""

from __future__ import annotations

import sys

from fleet_api.cli import run
from fleet_api.settings import ApiSettings
from fleet_runtime.collector import settle
from fleet_runtime.logs import configure


def main() -> None:
    configure("api", ApiSettings().log_level)
    # Before the server starts: the gateway's own start-up state is small beside the
    # modules FastAPI and pydantic bring, which are what freezing keeps out of scans.
    settle()
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
