"""`fleet`: the operator's command line. It talks only to the gateway's REST API and
its event stream, so it works from any machine that reaches port 50809."""
