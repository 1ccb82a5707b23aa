"""The benchmark: busgate against the least code that makes the same hops, in one run.

``python -m bench`` (or ``make bench``) starts a broker, the floor processes and the busgate
processes on loopback ports, drives them with ``wrk`` in alternation (A B A B) so machine
noise hits both sides alike, and writes ``bench/results/latest.json``.
"""
