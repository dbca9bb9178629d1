"""`python -m fleet_devstack creds`: issue and revoke NATS identities, make certificates.

  creds issue-agent host-3               seed for the agent whose FLEET_AGENT_ID is host-3
  creds issue-service gateway [--name N] seed for a gateway (or scheduler) identity
  creds revoke agent-host-3              remove it; then reload the NATS servers
  creds list
  creds tls nats-1 nats-2 nats-3 fleet-nats.example.internal
                                         a CA (kept if present) and the servers' certificate

The directory is `--dir`, else $FLEET_CREDS_DIR, else deploy/secrets.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fleet_devstack import creds, pki


def add_creds_parser(sub: Any) -> None:
    parser = sub.add_parser("creds", help="NATS identities and certificates of a deployment")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("FLEET_CREDS_DIR", "deploy/secrets")),
        help="credentials directory (default: $FLEET_CREDS_DIR or deploy/secrets)",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    agent = actions.add_parser("issue-agent", help="an identity for one agent host")
    agent.add_argument("agent_id", help="the agent's FLEET_AGENT_ID")
    service = actions.add_parser("issue-service", help="an identity for a gateway or scheduler")
    service.add_argument("role", choices=["gateway", "scheduler"])
    service.add_argument("--name", help="identity name (default: the role)")
    revoke = actions.add_parser("revoke", help="revoke an identity (then reload NATS)")
    revoke.add_argument("name")
    actions.add_parser("list", help="issued identities")
    tls = actions.add_parser("tls", help="a CA and a certificate for the NATS servers")
    tls.add_argument("names", nargs="+", help="DNS names / IP addresses of the servers")


def creds_main(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    try:
        if args.action == "issue-agent":
            path = creds.issue(directory, "agent", agent_id=args.agent_id)
            _issued(path, directory)
        elif args.action == "issue-service":
            path = creds.issue(directory, args.role, name=args.name)
            _issued(path, directory)
        elif args.action == "revoke":
            ident = creds.revoke(directory, args.name)
            print(f"revoked {ident.name} ({ident.role}); {directory / creds.AUTH_CONF} rewritten")
            print("reload the NATS servers now: docker compose kill -s HUP nats-1 nats-2 nats-3")
        elif args.action == "list":
            print(f"{'name':<28} {'role':<10} {'issued_at':<26} public key")
            for ident in creds.load(directory):
                print(f"{ident.name:<28} {ident.role:<10} {ident.issued_at:<26} {ident.public_key}")
        elif args.action == "tls":
            tls_dir = directory / "tls"
            ca = pki.CertFiles(tls_dir / "ca.pem", tls_dir / "ca-key.pem")
            if not ca.cert.exists():
                ca = pki.make_ca(tls_dir)
            server = pki.issue_cert(ca, args.names, tls_dir, "server")
            print(f"CA {ca.cert} (keep {ca.key} offline); server certificate {server.cert}")
    except creds.CredsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _issued(path: Path, directory: Path) -> None:
    print(f"seed written to {path} (0600): copy it to its host, then delete it here")
    print(f"{directory / creds.AUTH_CONF} rewritten; reload the NATS servers to apply it")
