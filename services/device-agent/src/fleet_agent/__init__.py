"""The device agent: drives the Android phones attached to one host (or a simulated
fleet) for the scheduler, over NATS. Run it with `python -m fleet_agent`.

Importing it first trims the optional packages its libraries would load at start
(`fleet_runtime.optional_imports`)."""

from fleet_runtime.optional_imports import trim

trim()
