"""Process plumbing every service shares: logging, the NATS connection, streams."""
