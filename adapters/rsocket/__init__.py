"""The ``rsocket`` system type: runners reached over RSocket (tcp or websocket)."""
