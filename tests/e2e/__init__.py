"""Full-stack tests: every service as its own process, driven through HTTP only."""
