"""Raft for the coordinator ensemble, as a state machine that does no I/O (issue #11, step one).

One ``RaftCore`` per member. It takes events (``tick(now)``, ``receive(message, now)``,
``propose(data)``, ``read(token)``, ``compacted(index, term)``) and returns a list of effects for
the transport to carry out **in order**; an effect that persists (``Persist``, ``AppendLog``,
``RestoreSnapshot``) must be durable before any effect after it is carried out, so a member
never answers, votes or acknowledges on the strength of something a crash could take back
(term and vote on disk before any answer; entries on disk before they are acknowledged or
counted). Time, randomness (the election timeouts) and messages come in from outside, so a
test drives it deterministically.

What it does (the Raft paper, with the pre-vote and ReadIndex of its author's thesis, as
etcd/raft has them):

- Elections: a follower that hears nothing from a leader for its randomized election timeout
  (``election_timeout_s`` to twice that) first asks for pre-votes at term + 1 without changing
  its term; only with a majority of them does it become a candidate (term + 1, vote for
  itself, persisted) and ask for real votes. A member grants a pre-vote or a vote only to a
  log at least as up to date as its own, grants at most one vote per term, and refuses
  pre-votes while it hears from a leader (so a member that was cut off cannot disrupt a
  healthy leader when it comes back).
- Replication: a new leader appends an empty entry of its term (entries of earlier terms are
  committed only through one of its own, Raft's rule 5.4.2), then sends each follower what it
  lacks from its ``next_index``; a follower whose log does not match at ``prev_index`` answers
  with where its log ends or where the conflicting term starts, so the leader skips back a
  term at a time. An entry is committed once a majority (the leader counted) holds it and it
  is of the leader's term.
- Reads (linearizable, ReadIndex): ``read(token)`` records the commit index, and the token is
  answered (``ReadReady``) once a majority has acknowledged a heartbeat sent after the read
  and the leader has committed an entry of its own term; a deposed leader never answers.
- Snapshots: ``compacted(index, term)`` drops the log up to a snapshot the transport took; a
  follower that needs what was dropped gets ``SendSnapshot`` (the transport sends the
  snapshot's bytes as an ``InstallSnapshot``) and, on receiving one, ``RestoreSnapshot``.
- CheckQuorum: a leader that has not heard an answer from a majority for two election
  timeouts steps down (its term unchanged), so a leader cut off from its peers stops holding clients.
- Answers that claim what this leader never sent (a probe round not yet started, an index past
  its log) are ignored.
- Membership is static (``members``): changing it is a rolling restart with the new list.

Log indexes start at 1; index 0 term 0 is the empty log.
"""

from __future__ import annotations

import enum
import random
from typing import NamedTuple


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class RaftBug(AssertionError):
    """An impossible state (two leaders in one term): our bug, or a faulty peer's. ``effects``
    holds what the event had already produced (a Persist of a newer term, say): the transport
    must still carry them out."""
    effects: list = []


# --- messages --------------------------------------------------------------------------------

class VoteRequest(NamedTuple):
    term: int               # the candidate's term (for a pre-vote: the term it would take)
    candidate: int
    last_index: int
    last_term: int
    pre_vote: bool


class VoteResponse(NamedTuple):
    term: int
    voter: int
    granted: bool
    pre_vote: bool


class Append(NamedTuple):
    term: int
    leader: int
    prev_index: int
    prev_term: int
    entries: tuple          # ((term, data), ...)
    commit: int
    probe: int              # the leader's heartbeat round (ReadIndex), echoed back


class AppendResponse(NamedTuple):
    term: int
    follower: int
    success: bool
    match_index: int        # success: the last index the follower holds from this leader
    hint_index: int         # failure: where the leader should try next
    probe: int


class InstallSnapshot(NamedTuple):
    term: int
    leader: int
    last_index: int
    last_term: int
    data: bytes


class SnapshotResponse(NamedTuple):
    term: int
    follower: int
    last_index: int


# --- effects -----------------------------------------------------------------------------------

class Send(NamedTuple):
    to: int
    message: tuple


class Persist(NamedTuple):
    """Make the term and vote durable (before anything after it)."""
    term: int
    voted_for: int | None


class AppendLog(NamedTuple):
    """Drop the log from ``first_index`` on, then append ``entries`` there (durably)."""
    first_index: int
    entries: tuple


class Committed(NamedTuple):
    """Everything up to ``index`` is committed: apply it."""
    index: int


class SendSnapshot(NamedTuple):
    to: int


class RestoreSnapshot(NamedTuple):
    """Replace the state and the log with the snapshot up to ``last_index`` (durably)."""
    last_index: int
    last_term: int
    data: bytes


class ReadReady(NamedTuple):
    """The read ``token`` may be answered once everything up to ``index`` is applied."""
    token: object
    index: int


class ReadFailed(NamedTuple):
    token: object
    leader: int | None      # who leads now, when known


class RoleChanged(NamedTuple):
    role: Role
    term: int
    leader: int | None


class Proposal(NamedTuple):
    index: int
    term: int


class NotLeader(Exception):
    def __init__(self, leader: int | None):
        super().__init__(f"not the leader (the leader is {leader})")
        self.leader = leader


NO_VOTE = None
APPEND_ENTRIES_MAX = 256        # entries per Append message


class RaftCore:
    def __init__(self, me: int, members: list[int], *, election_timeout_s: float = 0.3,
                 heartbeat_s: float = 0.05, rng: random.Random | None = None,
                 term: int = 0, voted_for: int | None = NO_VOTE, log: list | None = None,
                 snapshot_index: int = 0, snapshot_term: int = 0, now: float = 0.0):
        """``term``, ``voted_for``, ``log`` ([(term, data)] after the snapshot) and the
        snapshot's index and term are what the member had on disk."""
        if me not in members or len(set(members)) != len(members):
            raise ValueError("members must be distinct and include this member")
        if heartbeat_s * 3 > election_timeout_s:
            raise ValueError("heartbeat_s must be at most a third of election_timeout_s")
        self.me = me
        self.members = tuple(sorted(members))
        self.peers = tuple(m for m in self.members if m != me)
        self.quorum = len(self.members) // 2 + 1
        self.election_timeout_s = election_timeout_s
        self.heartbeat_s = heartbeat_s
        self.rng = rng or random.Random()
        self.term = term
        self.voted_for = voted_for
        self.log: list[tuple[int, object]] = list(log or [])
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.commit_index = snapshot_index
        self.role = Role.FOLLOWER
        self.leader: int | None = None
        self._last_heard = now              # from a leader (or when we started)
        self._election_at = now + self._random_timeout()
        self._votes: set[int] = set()
        # leader state
        self.next_index: dict[int, int] = {}
        self.match_index: dict[int, int] = {}
        self._heartbeat_at = 0.0
        self._probe = 0                     # heartbeat round, for ReadIndex
        self._acked_probe: dict[int, int] = {}
        self._heard_from: dict[int, float] = {}     # when each follower last answered
        self._leader_since = 0.0
        self._reads: list[tuple[object, int, int]] = []     # (token, index, probe)
        self._snapshot_sent: dict[int, float] = {}

    # --- the log ----------------------------------------------------------------------------
    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.log)

    @property
    def last_term(self) -> int:
        return self.log[-1][0] if self.log else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None when it is not held (compacted or past)."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self.log[index - self.snapshot_index - 1][0]

    def entries_from(self, index: int, limit: int = APPEND_ENTRIES_MAX) -> tuple:
        start = index - self.snapshot_index - 1
        return tuple(self.log[start:start + limit])

    def _random_timeout(self) -> float:
        return self.election_timeout_s * (1 + self.rng.random())

    # --- events -------------------------------------------------------------------------------
    def tick(self, now: float) -> list:
        out: list = []
        if self.role is Role.LEADER:
            if self._lost_quorum(now):
                # CheckQuorum: a leader that has not heard from a majority for an election
                # timeout steps down, so its clients move on instead of waiting on it forever
                self.role = Role.FOLLOWER
                self.leader = None
                self._election_at = now + self._random_timeout()
                self._fail_reads(out)
                out.append(RoleChanged(self.role, self.term, None))
                return out
            if now >= self._heartbeat_at:
                self._broadcast(out, now)
            return out
        if now >= self._election_at:
            self._start_pre_vote(out, now)
        return out

    def propose(self, data, now: float, replicate: bool = True) -> tuple[Proposal, list]:
        """Append ``data`` as the leader; raises NotLeader otherwise. With ``replicate=False``
        nothing is sent yet: the transport proposes a batch, then calls ``replicate`` once, so
        the batch travels in one Append per follower."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        out: list = []
        index = self._append_own(out, data)
        if replicate:
            self._replicate_all(out, now)
            self._advance_commit(out)
        return Proposal(index, self.term), out

    def replicate(self, now: float) -> list:
        """Send the followers what they lack (after proposals made with replicate=False)."""
        if self.role is not Role.LEADER:
            return []
        out: list = []
        self._replicate_all(out, now)
        self._advance_commit(out)
        return out

    def read(self, token, now: float) -> list:
        """A linearizable read: ReadReady(token, index) once it is safe; ReadFailed when this
        member cannot serve it (not the leader, or deposed before it was confirmed)."""
        if self.role is not Role.LEADER:
            return [ReadFailed(token, self.leader)]
        # counts only acknowledgements of heartbeats sent from now on (the next round)
        self._reads.append((token, self.commit_index, self._probe + 1))
        out: list = []
        self._broadcast(out, now)
        self._release_reads(out)        # (a single member is its own majority)
        return out

    def peer_lost(self, peer: int, now: float) -> list:
        """The transport saw its connection to ``peer`` close (the process died, the kernel
        reset it). When that is our leader, stop counting it as heard from and stand for
        election after a short random delay instead of a whole election timeout. Safe when the
        leader is in fact alive: a pre-vote changes no term and needs a majority that no longer
        hears the leader either."""
        if self.role is Role.FOLLOWER and peer == self.leader:
            self.leader = None
            self._last_heard = now - self.election_timeout_s
            self._election_at = min(self._election_at,
                                    now + self.heartbeat_s * (1 + 2 * self.rng.random()))
            return [RoleChanged(self.role, self.term, None)]
        return []

    def compacted(self, index: int, term: int) -> None:
        """The transport took a snapshot of the state up to ``index`` (committed)."""
        if index <= self.snapshot_index:
            return
        if index > self.commit_index or self.term_at(index) != term:
            raise RaftBug(f"a snapshot at {index} (term {term}) is not of the committed log")
        del self.log[:index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term

    def receive(self, msg, now: float) -> list:
        out: list = []
        try:
            self._receive(out, msg, now)
        except RaftBug as e:
            e.effects = out
            raise
        return out

    def _receive(self, out: list, msg, now: float) -> None:
        term = msg.term
        if isinstance(msg, VoteRequest) and msg.pre_vote:
            # a pre-vote never changes our term (that is its point)
            out.append(Send(msg.candidate, self._answer_pre_vote(msg, now)))
            return
        if isinstance(msg, VoteResponse) and msg.pre_vote:
            if self.role is Role.PRE_CANDIDATE and term == self.term + 1 and msg.granted:
                self._votes.add(msg.voter)
                if len(self._votes) >= self.quorum:
                    self._become_candidate(out, now)
            elif term > self.term + 1 or (not msg.granted and term > self.term):
                self._step_down(out, term, None, now)   # someone is further along
            return
        if term > self.term:
            leader = msg.leader if isinstance(msg, (Append, InstallSnapshot)) else None
            self._step_down(out, term, leader, now)
        elif term < self.term:
            self._answer_stale(out, msg)
            return
        if isinstance(msg, VoteRequest):
            self._on_vote_request(out, msg, now)
        elif isinstance(msg, VoteResponse):
            if self.role is Role.CANDIDATE and msg.granted:
                self._votes.add(msg.voter)
                if len(self._votes) >= self.quorum:
                    self._become_leader(out, now)
        elif isinstance(msg, Append):
            self._on_append(out, msg, now)
        elif isinstance(msg, AppendResponse):
            if self.role is Role.LEADER:
                self._on_append_response(out, msg, now)
        elif isinstance(msg, InstallSnapshot):
            self._on_install_snapshot(out, msg, now)
        elif isinstance(msg, SnapshotResponse):
            if self.role is Role.LEADER and msg.last_index <= self.last_index:
                self._snapshot_sent.pop(msg.follower, None)
                self._heard_from[msg.follower] = now
                if msg.last_index > self.match_index.get(msg.follower, 0):
                    self.match_index[msg.follower] = msg.last_index
                self.next_index[msg.follower] = max(self.next_index.get(msg.follower, 1),
                                                    msg.last_index + 1)
                self._replicate(out, msg.follower, now)
                self._advance_commit(out)
        else:
            raise TypeError(f"not a Raft message: {msg!r}")

    def _lost_quorum(self, now: float) -> bool:
        window = 2 * self.election_timeout_s     # (liveness only: a stall must not depose)
        if now - self._leader_since < window:
            return False
        heard = 1 + sum(1 for p in self.peers
                        if now - self._heard_from.get(p, -1e18) < window)
        return heard < self.quorum

    # --- elections ----------------------------------------------------------------------------
    def _log_ok(self, last_index: int, last_term: int) -> bool:
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def _hears_leader(self, now: float) -> bool:
        return self.role is Role.LEADER or (
            self.leader is not None and now - self._last_heard < self.election_timeout_s)

    def _answer_pre_vote(self, msg: VoteRequest, now: float) -> VoteResponse:
        granted = (msg.term > self.term and self._log_ok(msg.last_index, msg.last_term)
                   and not self._hears_leader(now))
        return VoteResponse(msg.term if granted else self.term, self.me, granted, True)

    def _on_vote_request(self, out: list, msg: VoteRequest, now: float) -> None:
        granted = (self.voted_for in (NO_VOTE, msg.candidate) and
                   self._log_ok(msg.last_index, msg.last_term) and
                   self.role is not Role.LEADER)
        if granted and self.voted_for != msg.candidate:
            self.voted_for = msg.candidate
            out.append(Persist(self.term, self.voted_for))
        if granted:
            self._election_at = now + self._random_timeout()
        out.append(Send(msg.candidate, VoteResponse(self.term, self.me, granted, False)))

    def _start_pre_vote(self, out: list, now: float) -> None:
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._votes = {self.me}
        self._election_at = now + self._random_timeout()
        out.append(RoleChanged(self.role, self.term, None))
        if len(self._votes) >= self.quorum:
            self._become_candidate(out, now)
            return
        req = VoteRequest(self.term + 1, self.me, self.last_index, self.last_term, True)
        out.extend(Send(p, req) for p in self.peers)

    def _become_candidate(self, out: list, now: float) -> None:
        self.role = Role.CANDIDATE
        self.term += 1
        self.voted_for = self.me
        self.leader = None
        self._votes = {self.me}
        self._election_at = now + self._random_timeout()
        out.append(Persist(self.term, self.me))
        out.append(RoleChanged(self.role, self.term, None))
        if len(self._votes) >= self.quorum:
            self._become_leader(out, now)
            return
        req = VoteRequest(self.term, self.me, self.last_index, self.last_term, False)
        out.extend(Send(p, req) for p in self.peers)

    def _become_leader(self, out: list, now: float) -> None:
        self.role = Role.LEADER
        self.leader = self.me
        self.next_index = {p: self.last_index + 1 for p in self.peers}
        self.match_index = {p: 0 for p in self.peers}
        self._acked_probe = {}
        self._snapshot_sent = {}
        self._heard_from = {}
        self._leader_since = now
        out.append(RoleChanged(self.role, self.term, self.me))
        self._append_own(out, None)          # the no-op of this term
        self._broadcast(out, now)
        self._advance_commit(out)

    def _step_down(self, out: list, term: int, leader: int | None, now: float) -> None:
        was = self.role
        if term > self.term:
            self.term = term
            self.voted_for = NO_VOTE
            out.append(Persist(self.term, NO_VOTE))
        self.role = Role.FOLLOWER
        self.leader = leader
        if leader is not None:
            self._last_heard = now
        self._election_at = now + self._random_timeout()
        if was is Role.LEADER:
            self._fail_reads(out)
        if was is not Role.FOLLOWER or leader is not None:
            out.append(RoleChanged(self.role, self.term, leader))

    def _answer_stale(self, out: list, msg) -> None:
        """A message from an older term: tell its sender ours, so it steps down."""
        if isinstance(msg, VoteRequest):
            out.append(Send(msg.candidate, VoteResponse(self.term, self.me, False, False)))
        elif isinstance(msg, Append):
            out.append(Send(msg.leader, AppendResponse(self.term, self.me, False, 0, 0,
                                                       msg.probe)))
        elif isinstance(msg, InstallSnapshot):
            out.append(Send(msg.leader, SnapshotResponse(self.term, self.me, 0)))

    # --- replication: follower ------------------------------------------------------------------
    def _heard_leader(self, out: list, leader: int, now: float) -> None:
        if self.role is Role.LEADER:
            raise RaftBug(f"two leaders in term {self.term}: {self.me} and {leader}")
        if self.role is not Role.FOLLOWER or self.leader != leader:
            self.role = Role.FOLLOWER
            self.leader = leader
            out.append(RoleChanged(self.role, self.term, leader))
        self._last_heard = now
        self._election_at = now + self._random_timeout()

    def _on_append(self, out: list, msg: Append, now: float) -> None:
        self._heard_leader(out, msg.leader, now)
        prev_term = self.term_at(msg.prev_index)
        if msg.prev_index > self.last_index:
            out.append(Send(msg.leader, AppendResponse(self.term, self.me, False, 0,
                                                       self.last_index + 1, msg.probe)))
            return
        if prev_term is None:       # below our snapshot: those are committed, skip them
            skip = self.snapshot_index - msg.prev_index
            entries = msg.entries[skip:] if skip < len(msg.entries) else ()
            prev_index = self.snapshot_index
            if skip > len(msg.entries):
                out.append(Send(msg.leader, AppendResponse(self.term, self.me, True,
                                                           self.snapshot_index, 0, msg.probe)))
                return
        elif prev_term != msg.prev_term:
            # the first index of the conflicting term: the leader skips the whole term
            hint = msg.prev_index
            while hint - 1 > self.snapshot_index and self.term_at(hint - 1) == prev_term:
                hint -= 1
            out.append(Send(msg.leader, AppendResponse(self.term, self.me, False, 0,
                                                       max(hint, self.commit_index + 1),
                                                       msg.probe)))
            return
        else:
            entries, prev_index = msg.entries, msg.prev_index
        # find the first entry we do not have (or that conflicts), keep what matches
        index = prev_index
        i = 0
        while i < len(entries):
            have = self.term_at(index + 1)
            if have is None or have != entries[i][0]:
                break
            index += 1
            i += 1
        if i < len(entries):
            first = index + 1
            if first <= self.commit_index:
                raise RaftBug(f"a leader would overwrite committed entry {first}")
            del self.log[first - self.snapshot_index - 1:]
            new = tuple(entries[i:])
            self.log.extend(new)
            out.append(AppendLog(first, new))
        match = prev_index + len(entries)
        if msg.commit > self.commit_index:
            new_commit = min(msg.commit, match)
            if new_commit > self.commit_index:
                self.commit_index = new_commit
                out.append(Committed(new_commit))
        out.append(Send(msg.leader, AppendResponse(self.term, self.me, True, match, 0,
                                                   msg.probe)))

    def _on_install_snapshot(self, out: list, msg: InstallSnapshot, now: float) -> None:
        self._heard_leader(out, msg.leader, now)
        if msg.last_index <= self.commit_index:
            out.append(Send(msg.leader, SnapshotResponse(self.term, self.me, self.commit_index)))
            return
        if self.term_at(msg.last_index) == msg.last_term:
            del self.log[:msg.last_index - self.snapshot_index]     # keep what follows it
        else:
            self.log = []
        self.snapshot_index, self.snapshot_term = msg.last_index, msg.last_term
        self.commit_index = msg.last_index
        out.append(RestoreSnapshot(msg.last_index, msg.last_term, msg.data))
        out.append(Send(msg.leader, SnapshotResponse(self.term, self.me, msg.last_index)))

    # --- replication: leader --------------------------------------------------------------------
    def _append_own(self, out: list, data) -> int:
        entry = (self.term, data)
        self.log.append(entry)
        out.append(AppendLog(self.last_index, (entry,)))
        return self.last_index

    def _broadcast(self, out: list, now: float) -> None:
        self._probe += 1
        self._heartbeat_at = now + self.heartbeat_s
        for p in self.peers:
            self._replicate(out, p, now, force=True)

    def _replicate_all(self, out: list, now: float) -> None:
        for p in self.peers:
            self._replicate(out, p, now)

    def _replicate(self, out: list, peer: int, now: float, force: bool = False) -> None:
        nxt = self.next_index.get(peer, self.last_index + 1)
        if nxt <= self.snapshot_index:
            sent = self._snapshot_sent.get(peer)
            if sent is None or now - sent > self.election_timeout_s:
                self._snapshot_sent[peer] = now
                out.append(SendSnapshot(peer))
            return
        if nxt > self.last_index and not force:
            return
        prev = nxt - 1
        entries = self.entries_from(nxt)
        out.append(Send(peer, Append(self.term, self.me, prev, self.term_at(prev), entries,
                                     self.commit_index, self._probe)))
        if entries:     # pipelined: the next send continues after these
            self.next_index[peer] = nxt + len(entries)

    def _on_append_response(self, out: list, msg: AppendResponse, now: float) -> None:
        peer = msg.follower
        if msg.probe > self._probe or msg.match_index > self.last_index:
            return          # claims what was never sent: not an answer of this leader's
        self._heard_from[peer] = now
        if msg.probe > self._acked_probe.get(peer, 0):
            self._acked_probe[peer] = msg.probe
        if msg.success:
            if msg.match_index > self.match_index.get(peer, 0):
                self.match_index[peer] = msg.match_index
            if self.next_index.get(peer, 0) <= msg.match_index:
                self.next_index[peer] = msg.match_index + 1
            self._advance_commit(out)
            if self.next_index[peer] <= self.last_index:
                self._replicate(out, peer, now)
        else:
            self.next_index[peer] = max(1, min(msg.hint_index, self.last_index + 1),
                                        self.match_index.get(peer, 0) + 1)
            self._replicate(out, peer, now, force=True)
        self._release_reads(out)

    def _advance_commit(self, out: list) -> None:
        matches = sorted([self.last_index, *self.match_index.values()], reverse=True)
        n = matches[self.quorum - 1]
        if n > self.commit_index and self.term_at(n) == self.term:
            self.commit_index = n
            out.append(Committed(n))
            self._release_reads(out)

    def _release_reads(self, out: list) -> None:
        if not self._reads or self.role is not Role.LEADER:
            return
        if self.term_at(self.commit_index) != self.term:
            return          # not yet an entry of this term committed: the index may be stale
        keep = []
        for token, index, probe in self._reads:
            acks = 1 + sum(1 for p in self.peers if self._acked_probe.get(p, 0) >= probe)
            if acks >= self.quorum:
                out.append(ReadReady(token, max(index, self.commit_index)))
            else:
                keep.append((token, index, probe))
        self._reads = keep

    def _fail_reads(self, out: list) -> None:
        for token, _, _ in self._reads:
            out.append(ReadFailed(token, self.leader))
        self._reads = []


__all__ = ["RaftCore", "Role", "RaftBug", "NotLeader", "VoteRequest", "VoteResponse", "Append",
           "AppendResponse", "InstallSnapshot", "SnapshotResponse", "Send", "Persist",
           "AppendLog", "Committed", "SendSnapshot", "RestoreSnapshot", "ReadReady",
           "ReadFailed", "RoleChanged", "Proposal", "APPEND_ENTRIES_MAX"]
