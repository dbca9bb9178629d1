"""The REST gateway: the TikMatrix task API over NATS (commands and queries to the
scheduler), with API keys and plans, an event stream, and OpenAPI docs."""
