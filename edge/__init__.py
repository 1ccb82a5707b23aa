"""The HTTP edge node: turns public API calls into bus requests and replies into responses.

Imports ``contracts`` and ``bus`` only; adapters are reached through the bus.
"""
