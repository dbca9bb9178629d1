"""Peers: what a user might build instead, run by the bench on the same machine and the
same work, so the system's figures read as ratios against them."""
