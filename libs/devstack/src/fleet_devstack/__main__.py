"""`python -m fleet_devstack run`: the whole system in the foreground (`make run`).

NATS and PostgreSQL keep their data under `.data/` between runs; the gateway listens on
127.0.0.1:50809; one agent serves a simulated fleet when no phone is attached. Ctrl-C
stops everything.

`python -m fleet_devstack creds …`: a deployment's NATS identities and certificates
(see deploy/README.md): `issue-agent ID`, `issue-service gateway|scheduler`,
`revoke NAME`, `list`, `tls NAME…`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from fleet_devstack.cli_creds import add_creds_parser, creds_main
from fleet_devstack.servers import port_or_free
from fleet_devstack.stack import AgentSpec, Stack, StackConfig

COLOURS = ["36", "35", "33", "32", "34", "31"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fleet-devstack")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start NATS, PostgreSQL and every service")
    run.add_argument("--data-dir", default=os.environ.get("FLEET_DEV_DATA_DIR", ".data"))
    run.add_argument("--api-port", type=int, default=int(os.environ.get("FLEET_API_PORT", 50809)))
    run.add_argument(
        "--sim-devices", type=int, default=int(os.environ.get("FLEET_AGENT_SIM_DEVICES", 8))
    )
    add_creds_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "creds":
        sys.exit(creds_main(args))

    lock = threading.Lock()
    colours: dict[str, str] = {}
    tty = sys.stdout.isatty()

    def sink(name: str, line: str) -> None:
        with lock:
            colour = colours.setdefault(name, COLOURS[len(colours) % len(COLOURS)])
            label = f"{name:>9} |"
            if tty:
                label = f"\x1b[{colour}m{label}\x1b[0m"
            print(f"{label} {line}", flush=True)

    data_dir = Path(args.data_dir).resolve()
    config = StackConfig(
        data_dir=data_dir,
        api_port=args.api_port,
        nats_port=port_or_free(4222),
        pg_port=port_or_free(54329),
        agents=[
            AgentSpec(
                agent_id=os.environ.get("FLEET_AGENT_ID", "local"), sim_devices=args.sim_devices
            )
        ],
        env={"FLEET_LOG_FORMAT": os.environ.get("FLEET_LOG_FORMAT", "console")},
        default_metrics_ports=True,
    )
    stack = Stack(config, sink=sink)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sink("devstack", f"data in {data_dir}")
        stack.start_infrastructure()
        shown = stack.database_url
        if stack.postgres.password:
            # The password stays in its file; a console or a pasted log never shows it.
            shown = shown.replace(stack.postgres.password, "***")
            shown += f"  (password in {stack.postgres.password_file})"
        sink("devstack", f"NATS {stack.nats.url}  PostgreSQL {shown}")
        stack.start_services()
        stack.wait_ready()
        sink(
            "devstack",
            f"ready: {stack.api_url}/api/v1  console {stack.api_url}/console"
            f"  docs {stack.api_url}/docs - Ctrl-C stops all",
        )
        for name, url in stack.metrics_urls().items():
            sink("devstack", f"metrics of {name}: {url}")
        while not stopping.is_set():
            for svc in stack.services():
                if not svc.running:
                    code = svc.proc.returncode if svc.proc else None
                    sink("devstack", f"{svc.name} exited with {code}; stopping everything")
                    stopping.set()
            time.sleep(0.2)
    except Exception as exc:  # a start failure: say what and stop what started
        sink("devstack", f"failed: {exc}")
        stack.stop()
        sys.exit(1)
    sink("devstack", "stopping")
    stack.stop()
    sink("devstack", "stopped")


if __name__ == "__main__":
    main()
