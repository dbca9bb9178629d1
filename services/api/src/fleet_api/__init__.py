"""The REST gateway: the TikMatrix task API over NATS (commands and queries to the
scheduler), with API keys and plans, an event stream, and OpenAPI docs.

Importing it first trims the optional packages its libraries would load at start
(`fleet_runtime.optional_imports`)."""

from fleet_runtime.optional_imports import trim

trim()
