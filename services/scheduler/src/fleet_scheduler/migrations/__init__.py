"""The ordered SQL files that build the scheduler's schema."""
