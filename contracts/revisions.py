"""Config revisions as the shared store keeps them (``busgate config push``), and what each
node reports about the revision it runs.

Kept as the TOML text that was pushed, not as parsed Structs: a node parses it with its own
environment overrides (``env:NAME`` secrets resolve on the node, never travel), and a newer
node reads an older revision exactly as its author wrote it.
"""

from __future__ import annotations

import msgspec


class ConfigRevision(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One pushed config: ``number`` counts pushes (1, 2, …; a rollback is a new push of an
    old text, and says which with ``rollback_of``)."""

    v: int = 1
    number: int
    text: str
    sha256: str
    pushed_at: float
    pushed_by: str = ""
    rollback_of: int = 0


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one node runs: the revision it applied last, and the error of one it could not
    apply (then it keeps running ``revision``)."""

    v: int = 1
    node: str
    role: str
    revision: int
    applied_at: float
    failed: int = 0
    """The revision it refused, 0 = none since ``revision``."""
    error: str = ""
