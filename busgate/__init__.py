"""The ``busgate`` command line and the embedded default (``busgate dev``).

This package sits beside the fixed top-level layout (contracts, bus, edge, adapters) because
the console script needs one home that may import them all; nothing else imports it.
"""
