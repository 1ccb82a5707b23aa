"""The wire between busgate's processes: envelopes, errors and the config schema.

Pure data (msgspec only), shared by ``edge`` and ``adapters``, which never import each other.
"""
