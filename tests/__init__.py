"""Repository-level tests: the deployment files and the whole system end to end."""
