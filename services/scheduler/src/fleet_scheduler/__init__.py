"""The event-sourced scheduler (see README.md). Importing it first trims the optional
packages its libraries would load at start (`fleet_runtime.optional_imports`)."""

from fleet_runtime.optional_imports import trim

trim()
