"""Login sessions, shared by every edge node through the bus's store (``bus.store``).

A session is one login: its subject and claims (to mint new access tokens on refresh), the id
of its current refresh token (rotation; an older one presented again is a reuse, and revokes
the session), when it started (refresh is refused past the token's ``session_max_age``) and
whether it is revoked. Two kinds in the store:

- ``sessions``: session id → :class:`Session`, each expiring with its refresh lifetime.
  Rotation is a compare-and-set on the key's revision.
- ``subjects``: a hash of the subject → :class:`SubjectEnd`, written when an account is
  deleted: every session of that subject that started before it is revoked, including
  sessions another edge created a moment ago and this one has not heard of when it wrote
  the mark. It expires with the longest session lifetime, when no such session is left.

Each edge's view holds every session and mark, so the hot path's revocation check is two
dict lookups and a logout or deletion on one edge is refused by every other within
milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any

import msgspec

from busgate.bus.store import Change, MemoryBackend, Store, open_store

if TYPE_CHECKING:
    from busgate.bus.base import Bus


class Session(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One login, as stored on the bus (MessagePack; unknown fields tolerated)."""

    v: int = 1
    id: str
    subject: str
    token: str = ""
    """The ``tokens.NAME`` that issued it."""
    claims: dict[str, Any] = {}
    refresh_id: str = ""
    created: float = 0.0
    expires: float = 0.0
    """Absolute, seconds since the epoch: the end of its refresh lifetime."""
    remember: bool = False
    revoked: bool = False


class SubjectEnd(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every session of ``subject`` created before ``before`` is revoked."""

    v: int = 1
    subject: str
    before: float


def subject_key(subject: str) -> str:
    """Subjects may hold any character; store keys may not."""
    return hashlib.sha256(subject.encode()).hexdigest()[:40]


class Sessions:
    """The sessions store and the subject marks, with the lookups the edge needs."""

    def __init__(self, sessions: Store[Session], subjects: Store[SubjectEnd], max_age: float):
        self.store = sessions
        self.subjects = subjects
        self.max_age = max_age
        """The longest a session lives (the stores' max age, the marks' lifetime)."""
        self._ended: dict[str, float] = {}
        """subject → before, kept from the marks' view by watching (raw subjects: no hash
        on the hot path)."""
        self._by_subject: dict[str, set[str]] = {}
        self._changed = asyncio.Event()
        sessions.watch(self._on_session)
        subjects.watch(self._on_subject)

    @classmethod
    def open(
        cls, bus: Bus | None, *, max_age: float, backend: MemoryBackend | None = None
    ) -> Sessions:
        """The sessions that go with ``bus`` (see ``bus.store.open_store``)."""
        return cls(
            open_store(bus, "sessions", Session, max_age=max_age, backend=backend),
            open_store(bus, "subjects", SubjectEnd, max_age=max_age, backend=backend),
            max_age,
        )

    @classmethod
    def in_memory(cls, max_age: float = 31 * 86_400) -> Sessions:
        return cls.open(None, max_age=max_age)

    async def start(self) -> None:
        await asyncio.gather(self.store.start(), self.subjects.start())

    async def close(self) -> None:
        await asyncio.gather(self.store.close(), self.subjects.close())

    # -- the local view (hot path) ---------------------------------------------------

    def _on_session(self, change: Change[Session]) -> None:
        if change.entry is not None:
            self._by_subject.setdefault(change.entry.value.subject, set()).add(change.key)
        else:
            for ids in self._by_subject.values():
                ids.discard(change.key)
        self._wake()

    def _on_subject(self, change: Change[SubjectEnd]) -> None:
        if change.entry is not None:
            self._ended[change.entry.value.subject] = change.entry.value.before
        else:
            self._ended = {e.value.subject: e.value.before for e in self.subjects.items()}
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def is_revoked(self, session_id: str, subject: str = "") -> bool:
        """Revoked itself, or its subject was deleted after it started."""
        entry = self.store.view.get(session_id)
        if entry is None:
            return False
        session = entry.value
        if session.revoked:
            return True
        before = self._ended.get(subject or session.subject)
        return before is not None and session.created <= before

    @property
    def size(self) -> int:
        """Sessions in the local view (the ``busgate_sessions`` gauge)."""
        return len(self.store.view)

    def cached(self, session_id: str) -> Session | None:
        return self.store.value(session_id)

    def of_subject(self, subject: str) -> list[Session]:
        """The sessions of ``subject`` in the view (an index kept by watching)."""
        found = (self.store.value(sid) for sid in self._by_subject.get(subject, ()))
        return [s for s in found if s is not None]

    async def wait_until(self, condition: Any) -> None:
        """Until ``condition()`` holds, checked after each change (bound it with
        ``asyncio.timeout``)."""
        while not condition():
            await self._changed.wait()

    def prune(self, now: float | None = None) -> int:
        return self.store.prune(now) + self.subjects.prune(now)

    # -- the shared store ------------------------------------------------------------

    async def get(self, session_id: str) -> tuple[Session, int] | None:
        """The latest record and its revision, from the shared store."""
        entry = await self.store.get(session_id)
        return None if entry is None else (entry.value, entry.revision)

    async def create(self, session: Session) -> int:
        return await self.store.put(session.id, session, expires=session.expires)

    async def replace(self, session: Session, revision: int) -> bool:
        """Store ``session`` only if ``revision`` is still its latest; False if it lost."""
        new = await self.store.compare_and_set(
            session.id, session, revision, expires=session.expires
        )
        return new is not None

    async def revoke(self, session_id: str, subject: str = "", expires: float = 0.0) -> None:
        """Revoke a session, known or not (its access tokens stop working everywhere)."""
        found = await self.store.get(session_id)
        if found is not None:
            session = msgspec.structs.replace(found.value, revoked=True)
        else:
            session = Session(
                id=session_id,
                subject=subject,
                expires=expires or time.time() + 86_400,
                revoked=True,
            )
        await self.store.put(session_id, session, expires=session.expires)

    async def revoke_subject(self, subject: str) -> int:
        """Revoke every session of ``subject`` (its account is gone), on every edge; the
        number of sessions this edge knew of."""
        now = time.time()
        mark = SubjectEnd(subject=subject, before=now)
        await self.subjects.put(subject_key(subject), mark, expires=now + self.max_age)
        known = [s for s in self.of_subject(subject) if not s.revoked]
        for session in known:  # the refresh path sees it on the record too
            await self.revoke(session.id)
        return len(known)
