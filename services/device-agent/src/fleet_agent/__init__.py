"""The device agent: drives the Android phones attached to one host (or a simulated
fleet) for the scheduler, over NATS. Run it with `python -m fleet_agent`."""
