"""Adapter services: take requests for a system off the bus, call its runners, answer.

Imports ``contracts`` and ``bus`` only; edge nodes are reached through the bus.
"""
