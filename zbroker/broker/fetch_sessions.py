"""Incremental fetch sessions between a follower and its leader (after Kafka's KIP-227).

Without a session a follower names every partition it fetches from a leader in every Fetch,
and the leader reads and answers every one, twice a second each when nothing happens: with
thousands of partitions that is most of an idle broker's time. With a session both ends remember
what was asked last, so a Fetch names only partitions whose request changed (a new fetch offset,
leader epoch or last fetched epoch; ``forgotten`` lists those that left), and the leader answers
only the partitions named or with something new for the follower (records, a high watermark or
log start that moved, an error). An idle partition costs nothing per fetch at either end.

Wire (fields of Fetch; the response carries ``session_id``):
    session_epoch -1 (FINAL_EPOCH, the default)  no session: every partition named, as always
    session_epoch 0 (INITIAL_EPOCH)              open a session: a full request; the response
                                                 names the new session's id
    session_epoch n > 0 with session_id          the n-th incremental request of that session
A wrong epoch is INVALID_FETCH_SESSION_EPOCH and an unknown id FETCH_SESSION_ID_NOT_FOUND; the
follower then opens a new session with a full request. Only replicas use sessions here (one per
follower broker and life; a new full request from the same follower replaces its old session),
so the cache holds a session per follower broker; ``max.incremental.fetch.session.cache.slots``
bounds it all the same.

This module is bookkeeping only (no sockets, no logs): ``LeaderSessions`` is the leader's cache,
``FollowerSession`` is one follower fetcher's end. The broker (server.py, fetcher.py) moves
requests, reads logs and parks fetches on a session.
"""

from __future__ import annotations

import random
from typing import Iterable

from zbroker import errors
from zbroker.protocol import ReplicaFetchPart

FINAL_EPOCH = -1
INITIAL_EPOCH = 0
SESSION_ID_MAX = (1 << 31) - 1
SESSION_PARTS_MAX = 100_000         # partitions one session may hold


class LeaderSession:
    """One follower's session as its leader keeps it."""

    __slots__ = ("id", "replica_id", "replica_epoch", "next_epoch", "parts", "dirty", "parked",
                 "last_fetch_s", "closed")

    def __init__(self, session_id: int, replica_id: int, replica_epoch: int, now_s: float):
        self.id = session_id
        self.replica_id = replica_id
        self.replica_epoch = replica_epoch
        self.next_epoch = 1
        self.parts: dict[tuple[str, int], ReplicaFetchPart] = {}
        self.dirty: set[tuple[str, int]] = set()    # partitions with news for the follower
        self.parked = None                          # the fetch waiting for data (transport's)
        self.last_fetch_s = now_s                   # (read by the replication core: liveness)
        self.closed = False

    def __repr__(self) -> str:
        return (f"LeaderSession(id={self.id}, replica={self.replica_id}, "
                f"parts={len(self.parts)}, next_epoch={self.next_epoch})")


class LeaderSessions:
    """The leader's session cache. ``fetch()`` checks a request against it and says which
    partitions to read; ``mark()`` notes news on a partition for every session holding it."""

    def __init__(self, max_sessions: int = 1000, rng: random.Random | None = None):
        self.max_sessions = max(1, max_sessions)
        self.by_id: dict[int, LeaderSession] = {}
        self.by_replica: dict[int, LeaderSession] = {}
        self.by_part: dict[tuple[str, int], set[LeaderSession]] = {}
        self._rng = rng or random.Random()

    def __len__(self) -> int:
        return len(self.by_id)

    # --- requests -------------------------------------------------------------------------------
    def fetch(self, replica_id: int, replica_epoch: int, session_id: int, session_epoch: int,
              parts: list[ReplicaFetchPart], forgotten: Iterable, now_s: float
              ) -> tuple[LeaderSession, list[LeaderSession]]:
        """A replica's Fetch with ``session_epoch`` >= 0. Returns (its session, sessions closed
        by it, whose parked fetches the transport must answer). Raises the request's error."""
        closed: list[LeaderSession] = []
        if session_epoch == INITIAL_EPOCH:
            old = self.by_replica.get(replica_id)
            if old is not None:
                self._close(old)
                closed.append(old)
            if len(self.by_id) >= self.max_sessions:
                lru = min(self.by_id.values(), key=lambda s: s.last_fetch_s)
                self._close(lru)
                closed.append(lru)
            s = LeaderSession(self._new_id(), replica_id, replica_epoch, now_s)
            self.by_id[s.id] = s
            self.by_replica[replica_id] = s
            for p in parts:
                self._add(s, p)
            return s, closed
        s = self.by_id.get(session_id)
        if s is None:
            raise errors.FetchSessionIdNotFound(f"There is no fetch session {session_id} here.")
        if s.replica_id != replica_id or s.replica_epoch != replica_epoch:
            raise errors.FetchSessionIdNotFound(
                f"The fetch session {session_id} is not broker {replica_id}'s (epoch "
                f"{replica_epoch}).")
        if session_epoch != s.next_epoch:
            raise errors.InvalidFetchSessionEpoch(
                f"The fetch session {session_id} expects epoch {s.next_epoch}, not "
                f"{session_epoch}.")
        forgotten = [(topic, p) for topic, p in forgotten]
        new = sum(1 for p in parts if (p.topic, p.partition) not in s.parts)
        if len(s.parts) + new - len(forgotten) > SESSION_PARTS_MAX:
            raise errors.InvalidRequest(f"A fetch session may hold at most {SESSION_PARTS_MAX} "
                                        f"partitions.")
        s.next_epoch += 1
        s.last_fetch_s = now_s
        for key in forgotten:
            self._remove(s, key)
        for p in parts:
            self._add(s, p)
        return s, closed

    @staticmethod
    def take(s: LeaderSession, named: list[ReplicaFetchPart]) -> list[ReplicaFetchPart]:
        """The partitions of session ``s`` with news not among ``named``, as the follower's last
        request for each; they are no longer news once taken."""
        if not s.dirty:
            return []
        seen = {(p.topic, p.partition) for p in named} if named else ()
        out = [s.parts[k] for k in s.dirty if k not in seen and k in s.parts]
        s.dirty.clear()
        return out

    # --- news -----------------------------------------------------------------------------------
    def mark(self, key: tuple[str, int]) -> list[LeaderSession]:
        """Partition ``key`` has news (records, a moved high watermark, an error): every session
        holding it will include it in its next answer. Returns those sessions."""
        holders = self.by_part.get(key)
        if not holders:
            return []
        for s in holders:
            s.dirty.add(key)
        return list(holders)

    # --- membership -----------------------------------------------------------------------------
    def retain(self, epochs: dict[int, int]) -> list[LeaderSession]:
        """Close the sessions of brokers that are no longer registered in the life that opened
        them (``epochs``: broker id -> broker epoch). Returns them."""
        gone = [s for s in self.by_id.values() if epochs.get(s.replica_id) != s.replica_epoch]
        for s in gone:
            self._close(s)
        return gone

    def close_all(self) -> list[LeaderSession]:
        out = list(self.by_id.values())
        for s in out:
            self._close(s)
        return out

    def _new_id(self) -> int:
        while True:
            sid = self._rng.randint(1, SESSION_ID_MAX)
            if sid not in self.by_id:
                return sid

    def _add(self, s: LeaderSession, p: ReplicaFetchPart) -> None:
        key = (p.topic, p.partition)
        s.parts[key] = p
        self.by_part.setdefault(key, set()).add(s)

    def _remove(self, s: LeaderSession, key) -> None:
        if s.parts.pop(key, None) is None:
            return
        s.dirty.discard(key)
        holders = self.by_part.get(key)
        if holders is not None:
            holders.discard(s)
            if not holders:
                del self.by_part[key]

    def _close(self, s: LeaderSession) -> None:
        for key in list(s.parts):
            self._remove(s, key)
        s.closed = True
        self.by_id.pop(s.id, None)
        if self.by_replica.get(s.replica_id) is s:
            del self.by_replica[s.replica_id]


class FollowerSession:
    """A follower fetcher's end of its session with one leader: what the leader has as this
    follower's request for each partition, and the id and epoch of the next request."""

    def __init__(self):
        self.id = 0
        self.epoch = INITIAL_EPOCH
        self.sent: dict[tuple[str, int], ReplicaFetchPart] = {}
        self._pending: tuple | None = None

    @property
    def needs_full(self) -> bool:
        """The next request opens a session, so it must name every partition."""
        return self.epoch == INITIAL_EPOCH

    def build(self, wanted: dict[tuple[str, int], ReplicaFetchPart | None]
              ) -> tuple[int, int, list[ReplicaFetchPart], list[list]]:
        """The next request: (session_id, session_epoch, parts, forgotten). ``wanted`` holds,
        for the partitions that may have changed (every partition for a full request), the
        request to make now, or None for one that is not to be fetched any more. Takes effect
        when ``on_response`` says the leader took it."""
        if self.needs_full:
            parts = [p for p in wanted.values() if p is not None]
            self._pending = (True, parts, ())
            return 0, INITIAL_EPOCH, parts, []
        parts, forgotten = [], []
        for key, p in wanted.items():
            if p is None:
                if key in self.sent:
                    forgotten.append([key[0], key[1]])
            elif self.sent.get(key) != p:
                parts.append(p)
        self._pending = (False, parts, forgotten)
        return self.id, self.epoch, parts, forgotten

    def on_response(self, session_id: int) -> None:
        """The leader answered the last request built without a request-level error."""
        if self._pending is None:
            return
        full, parts, forgotten = self._pending
        self._pending = None
        if full:
            if not isinstance(session_id, int) or session_id <= 0:
                self.reset()        # a leader without sessions: stay full
                return
            self.id, self.sent = session_id, {}
        for topic, p in forgotten:
            self.sent.pop((topic, p), None)
        for p in parts:
            self.sent[(p.topic, p.partition)] = p
        self.epoch += 1

    def reset(self) -> None:
        """Open a new session with the next request (an error, a lost reply, a new socket)."""
        self.id = 0
        self.epoch = INITIAL_EPOCH
        self.sent = {}
        self._pending = None
