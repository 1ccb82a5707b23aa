"""Small real runners shipped for the demo and the tests (separate processes, real HTTP)."""
