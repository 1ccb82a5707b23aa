"""Certificates and TLS contexts, shared by the edge (server side), the adapters (client side,
to runners) and the bus (NATS over TLS).

A package of its own rather than part of ``edge`` or ``bus``: the edge and the adapters may
not import each other, and certificates are neither wire data (``contracts``) nor messaging
(``bus``). It imports nothing of busgate but ``contracts``.
"""
