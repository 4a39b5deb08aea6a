"""Consumer group membership on the client (KIP-848's consumer side).

``Membership`` is the member's state machine, without I/O: it decides what the next heartbeat
says and when it goes, takes the coordinator's answers, and hands the caller's thread *tasks*
(give up these partitions and take those; or: these partitions are lost) that run in
``Consumer.poll()``, where the rebalance listener is called. A partition is reported as no
longer owned only after its task ran, so the coordinator never gives it to another member while
this one may still hand out its records.

    UNSUBSCRIBED --subscribe--> JOINING --answer--> RECONCILING <-> STABLE
    any joined state --fenced, unknown member, no answer for a session--> FENCED
        (a "lost" task; once it ran: JOINING again, epoch 0)
    any joined state --poll() not called within max_poll_interval_ms--> STALE
        (leaves the group at once; the next poll() runs a "lost" task and joins again)
    LEAVING (close(), unsubscribe()) --answer or give up--> UNSUBSCRIBED
    an error no retry can fix --> FATAL (poll() raises it)

Heartbeats. A member that holds what the coordinator gave it sends its next heartbeat as soon as
the previous one is answered, with ``max_wait_ms`` = its heartbeat interval: the coordinator
holds it and answers at once when the assignment moves, else after the interval. While a task
waits for the caller, heartbeats go every interval without waiting (the answer would come back
at once). Only the answer to the latest heartbeat is acted on.

``GroupIO`` carries it out on the consumer's fetcher thread: finds the coordinator, sends the
heartbeats, commits and committed-offset lookups, and retries what can be retried.
"""

from __future__ import annotations

import base64
import collections
import enum
import os
import time
from typing import NamedTuple

from clients.errors import (BrokerConnectionError, CommitFailedError, IllegalStateError,
                            RequestTimedOut, ZbError)
from clients.structs import OffsetAndMetadata, TopicPartition
from zbroker import errors, protocol
from zbroker.futures import Future
from zbroker.logs import get_logger

log = get_logger("clients.group")

_monotonic = time.monotonic
COORDINATOR_RETRY_S = 0.1
BACKOFF_MAX_S = 1.0

# errors after which the member must give up its partitions and join again
_FENCING = (errors.FencedMemberEpoch, errors.UnknownMemberId, errors.GroupIdNotFound)
# errors that mean: find the coordinator again, then retry (the admin client's too)
COORDINATOR_MOVED = (errors.NotCoordinator, errors.CoordinatorNotAvailable,
                     BrokerConnectionError, RequestTimedOut, errors.CoordinatorLoadInProgress)


def new_member_id() -> str:
    """A member id chosen by the client (as Kafka 4.0's consumers do): 22 URL-safe characters."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()


class State(enum.Enum):
    UNSUBSCRIBED = "unsubscribed"
    JOINING = "joining"
    RECONCILING = "reconciling"
    STABLE = "stable"
    FENCED = "fenced"
    STALE = "stale"
    LEAVING = "leaving"
    FATAL = "fatal"


_JOINED = (State.JOINING, State.RECONCILING, State.STABLE)
_TRANSITIONS = {
    State.UNSUBSCRIBED: {State.JOINING, State.LEAVING},
    State.JOINING: {State.RECONCILING, State.STABLE, State.FENCED, State.STALE, State.LEAVING,
                    State.FATAL, State.JOINING},
    State.RECONCILING: {State.STABLE, State.FENCED, State.STALE, State.LEAVING, State.FATAL,
                        State.RECONCILING},
    State.STABLE: {State.RECONCILING, State.FENCED, State.STALE, State.LEAVING, State.FATAL,
                   State.STABLE},
    State.FENCED: {State.JOINING, State.LEAVING, State.FATAL},
    State.STALE: {State.JOINING, State.LEAVING, State.FATAL},
    State.LEAVING: {State.UNSUBSCRIBED, State.FATAL},
    State.FATAL: set(),
}
LOSE_MARGIN_S = 0.1         # a member gives up this much before its session could end


class Task(NamedTuple):
    """Work for the caller's thread: revoke (commit, tell the listener, stop reading) then
    assign; or, with ``lost``, drop every partition it holds without committing. A task of an
    earlier incarnation of the membership (lost or left since) is skipped."""
    revoke: frozenset
    assign: frozenset
    lost: bool = False
    incarnation: int = 0


class Membership:
    def __init__(self, group_id: str, *, member_id: str | None = None,
                 instance_id: str | None = None, rack_id: str | None = None,
                 client_id: str | None = None, assignor: str | None = None,
                 session_timeout_ms: int | None = None,
                 heartbeat_interval_ms: int | None = None,
                 rebalance_timeout_ms: int = 300000, retry_backoff_ms: int = 100):
        self.group_id = group_id
        self.member_id = member_id or new_member_id()
        self.instance_id, self.rack_id, self.client_id = instance_id, rack_id, client_id
        self.assignor = assignor
        self.asked_session_ms = session_timeout_ms
        self.asked_interval_ms = heartbeat_interval_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.state = State.UNSUBSCRIBED
        self.topics: tuple = ()
        self.regex: str | None = None
        self.epoch = 0
        self.incarnation = 0          # bumped whenever the membership is lost or left
        self.owned: frozenset = frozenset()       # what the caller's thread holds
        self.assigned: frozenset = frozenset()    # what the coordinator says we should hold
        self.session_s = (session_timeout_ms or 45000) / 1000
        self.interval_s = (heartbeat_interval_ms or 5000) / 1000
        self.tasks_open = 0                       # handed to the caller, not done yet
        self.pending_assign: frozenset = frozenset()   # what those tasks are about to take
        self.error: ZbError | None = None
        self.lose_at: float | None = None         # give everything up if no answer by then
        self._seq = 0
        self._latest = 0                          # the heartbeat whose answer counts
        self._sent_at: dict[int, float] = {}      # heartbeats not answered yet
        self._leave_seq = 0
        self._leave_epoch: int | None = None      # a leave to send
        self._leave_answered = False
        self._leave_until = 0.0                   # a STALE member's leave is tried until then
        self._fatal_after: ZbError | None = None  # once its partitions are dropped
        self._force = False                       # send even though one is outstanding
        self._resubscribe = False
        self._next_at = 0.0
        self._backoff_s = self.retry_backoff_s
        self._last_ok_sent: float | None = None

    # --- the one place states change ----------------------------------------------------------
    def _to(self, state: State) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise AssertionError(f"group member state {self.state.name} -> {state.name}")
        self.state = state

    @property
    def joined(self) -> bool:
        return self.state in _JOINED

    @property
    def task_open(self) -> bool:
        return self.tasks_open > 0

    # --- what the caller asks -----------------------------------------------------------------
    def subscribe(self, topics, regex: str | None, now: float) -> None:
        self.topics = tuple(sorted(set(topics)))
        self.regex = regex
        if self.state is State.UNSUBSCRIBED:
            self.epoch = 0
            self._to(State.JOINING)
        elif self.state is State.LEAVING:
            self._resubscribe = True
        self._next_at = now                       # tell the coordinator now

    def leave(self, now: float) -> None:
        """Leave the group (close, unsubscribe): a static member leaves "for now" (epoch -2)
        and keeps its partitions in the group for its session timeout."""
        if self.state in (State.UNSUBSCRIBED, State.LEAVING, State.FATAL):
            return
        # (a fenced or stale member may still be in the group: a self-fenced one, one whose
        # leave has not gone out yet: tell the coordinator, so its partitions move at once)
        was_member = (self.joined and self.epoch > 0) or \
            self.state in (State.FENCED, State.STALE)
        self._leave_epoch = protocol.LEAVE_GROUP_STATIC_MEMBER_EPOCH \
            if self.instance_id is not None else protocol.LEAVE_GROUP_MEMBER_EPOCH
        self._to(State.LEAVING)
        self._new_incarnation()
        self.owned = frozenset()                  # the caller let everything go first
        self._no_session()
        if not was_member:
            self._left()
        self._next_at = now

    def _new_incarnation(self) -> None:
        """Whatever the caller was asked to do for the membership before is void now."""
        self.incarnation += 1
        self.tasks_open = 0
        self.pending_assign = frozenset()
        self._fatal_after = None
        self._latest = 0                          # answers to what was sent before: ignored
        self._leave_seq = 0

    def _left(self) -> None:
        self._to(State.UNSUBSCRIBED)
        self.epoch = 0
        self.assigned = frozenset()
        self._leave_epoch = None
        self._no_session()
        if self._resubscribe:
            self._resubscribe = False
            self._to(State.JOINING)
            self._next_at = 0.0

    def poll_timed_out(self, now: float) -> Task | None:
        """The caller did not poll within max_poll_interval_ms: give everything up and leave
        now; join again once the caller has run the "lost" task (at its next poll)."""
        if not self.joined:
            return None
        log.warning("poll() was not called within max_poll_interval_ms; leaving the group so "
                    "its partitions go to other members", group=self.group_id,
                    member=self.member_id)
        task = self._lose("it was too slow between polls", State.STALE)
        # Leave at once (a caller that stopped polling may never let go), so the partitions
        # go to others; as in Kafka, records the caller already has may still be processed.
        self._leave_epoch = protocol.LEAVE_GROUP_MEMBER_EPOCH
        self._leave_answered = False
        self._leave_until = now + self.session_s
        self._next_at = now
        return task

    # --- heartbeats ---------------------------------------------------------------------------
    def next_heartbeat_at(self) -> float | None:
        if self.state in _JOINED or (self.state in (State.LEAVING, State.STALE) and
                                     self._leave_epoch is not None):
            return self._next_at
        return None

    def heartbeat(self, now: float) -> tuple[int, dict, int] | None:
        """(sequence, request fields, timeout_ms) when a heartbeat is due now, else None."""
        at = self.next_heartbeat_at()
        if at is None or now < at:
            return None
        if self.state in (State.LEAVING, State.STALE):
            return self._leave_request(now)
        if self._latest in self._sent_at and not self._force:
            self._next_at = now + self.interval_s  # the coordinator holds our last one
            return None
        self._force = False
        hold = self.state is State.STABLE and not self.task_open and \
            self.owned == self.assigned and self.epoch > 0
        wait_ms = int(self.interval_s * 1000) if hold else 0
        # What we hold, and what the caller is about to take: the coordinator must not give
        # those to anyone else before we report them gone.
        reported = (self.owned | self.pending_assign) if self.epoch > 0 else frozenset()
        fields = {
            "group_id": self.group_id, "member_id": self.member_id, "member_epoch": self.epoch,
            "instance_id": self.instance_id, "rack_id": self.rack_id,
            "client_id": self.client_id, "rebalance_timeout_ms": self.rebalance_timeout_ms,
            "session_timeout_ms": self.asked_session_ms or -1,
            "heartbeat_interval_ms": self.asked_interval_ms or -1,
            "subscribed_topic_names": list(self.topics), "subscribed_topic_regex": self.regex,
            "server_assignor": self.assignor, "topic_partitions": _to_list(reported),
            "max_wait_ms": wait_ms,
        }
        seq = self._sent(now)
        # No answer within the wait and a third of the session: try elsewhere.
        timeout_ms = wait_ms + max(1000, int(self.session_s * 1000 / 3))
        self._next_at = now + self.interval_s      # (rescheduled by the answer)
        return seq, fields, timeout_ms

    def _sent(self, now: float) -> int:
        self._seq += 1
        self._latest = self._seq
        self._sent_at[self._seq] = now
        if len(self._sent_at) > 16:
            for s in sorted(self._sent_at)[:-16]:
                del self._sent_at[s]
        return self._seq

    def _leave_request(self, now: float):
        fields = {"group_id": self.group_id, "member_id": self.member_id,
                  "member_epoch": self._leave_epoch, "instance_id": self.instance_id}
        self._leave_seq = self._sent(now)
        self._next_at = now + max(1.0, self.session_s / 3)    # tried again if not answered
        return self._leave_seq, fields, max(1000, int(self.session_s * 1000 / 3))

    def on_answer(self, seq: int, resp: dict | None, err: ZbError | None,
                  now: float) -> Task | None:
        """A heartbeat's answer (``resp``) or failure (``err``)."""
        sent = self._sent_at.pop(seq, now)
        if self.state in (State.LEAVING, State.STALE):
            if seq != self._leave_seq:
                return None
            if err is not None and isinstance(err, COORDINATOR_MOVED):
                self._next_at = now + self._backoff_s           # try the leave again
                self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
                return None
            self._leave_epoch = None
            if self.state is State.LEAVING:
                self._left()
                return None
            self._leave_answered = True
            self._maybe_rejoin(now)
            return None
        if seq != self._latest or not self.joined:
            return None
        if err is not None:
            return self._on_error(err, now)
        self._last_ok_sent = max(self._last_ok_sent or 0.0, sent)
        self.lose_at = self._last_ok_sent + self.session_s - LOSE_MARGIN_S
        self._backoff_s = self.retry_backoff_s
        self.epoch = resp["member_epoch"]
        if resp.get("heartbeat_interval_ms", 0) > 0:
            self.interval_s = resp["heartbeat_interval_ms"] / 1000
        if resp.get("session_timeout_ms", 0) > 0:
            self.session_s = resp["session_timeout_ms"] / 1000
            self.lose_at = self._last_ok_sent + self.session_s - LOSE_MARGIN_S
        if resp.get("assignment") is not None:
            self.assigned = frozenset(TopicPartition(t, p) for t, ps in resp["assignment"]
                                      for p in ps)
        return self._reconcile(now)

    def _reconcile(self, now: float) -> Task | None:
        if self.owned != self.assigned:
            self._to(State.RECONCILING)
            self._next_at = now + self.interval_s
            if self.task_open:
                return None                        # the caller is at it; next one after
            return self._task(Task(self.owned - self.assigned, self.assigned - self.owned))
        self._to(State.STABLE)
        self._next_at = now                        # held by the coordinator
        return None

    def _task(self, task: Task) -> Task:
        self.tasks_open += 1
        self.pending_assign = self.pending_assign | task.assign
        return task._replace(incarnation=self.incarnation)

    def _on_error(self, err: ZbError, now: float) -> Task | None:
        if isinstance(err, _FENCING):
            return self._lose(str(err), State.FENCED)
        if isinstance(err, errors.FencedInstanceId):
            # Another process took our instance id: drop everything, let the coordinator know
            # (so the partitions go to it at once), then stop for good.
            task = self._lose(str(err), State.STALE)
            self._fatal_after = err
            self._leave_epoch = protocol.LEAVE_GROUP_MEMBER_EPOCH
            self._leave_answered = False
            self._leave_until = now + self.session_s
            self._next_at = float("inf")          # not before the caller dropped everything
            return task
        if isinstance(err, COORDINATOR_MOVED) or err.retriable:
            self._next_at = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            return None
        self.error = err
        self._to(State.FATAL)
        log.error("the consumer group membership failed", group=self.group_id, error=str(err))
        return None

    def _lose(self, why: str, state: State) -> Task:
        """The membership is gone (or going): the caller must drop every partition before it
        returns another record, and before this member joins again."""
        log.warning("lost the group membership; its partitions are lost and it joins again",
                    group=self.group_id, member=self.member_id, reason=why)
        self._to(state)
        self.epoch = 0
        self.assigned = frozenset()
        held = self.owned | self.pending_assign
        self._new_incarnation()
        self._last_ok_sent = None
        self.lose_at = 0.0                        # no record is handed out until it ran
        return self._task(Task(held, frozenset(), lost=True))

    def _no_session(self) -> None:
        self._last_ok_sent = None
        self.lose_at = None

    def check(self, now: float) -> Task | None:
        """Timers: no answer for (almost) a whole session means the coordinator may be about to
        remove us: give everything up first."""
        if self.joined and self.lose_at is not None and now >= self.lose_at:
            return self._lose("no heartbeat was answered for a whole session timeout",
                              State.FENCED)
        if self.state is State.STALE and self._leave_epoch is not None and \
                now >= self._leave_until:
            self._leave_epoch = None            # the coordinator has dropped us by now anyway
            self._leave_answered = True
            self._maybe_rejoin(now)
        return None

    def _maybe_rejoin(self, now: float) -> None:
        if self.tasks_open or self.state not in (State.FENCED, State.STALE):
            return
        if self._fatal_after is not None:
            if self._leave_epoch is not None and not self._leave_answered:
                if self._next_at == float("inf"):
                    self._next_at = now         # everything dropped: tell the coordinator
                return
            self.error, self._fatal_after = self._fatal_after, None
            self._to(State.FATAL)
            return
        # (A leave still unanswered, or never sent for want of a coordinator, is left behind:
        # the join goes after it on the wire, and its answer is not taken for the join's.)
        self._leave_epoch = None
        self._latest = 0
        self.lose_at = None
        self._to(State.JOINING)
        self._next_at = now

    def task_done(self, owned: frozenset, now: float, incarnation: int) -> Task | None:
        """The caller's thread ran a task of ``incarnation``; it now holds ``owned``."""
        if incarnation != self.incarnation:
            return None                           # for a membership that is gone
        self.tasks_open = max(0, self.tasks_open - 1)
        self.owned = frozenset(owned)
        if not self.tasks_open:
            self.pending_assign = frozenset()
        if self.state in (State.FENCED, State.STALE):
            self._maybe_rejoin(now)
            return None
        if not self.joined or self.tasks_open:
            return None
        task = self._reconcile(now)
        self._force = True                         # tell the coordinator at once
        self._next_at = now
        return task


def _to_list(parts) -> list:
    by_topic: dict[str, list[int]] = {}
    for t, p in sorted(parts):
        by_topic.setdefault(t, []).append(p)
    return [[t, ps] for t, ps in by_topic.items()]


# --- the I/O side ---------------------------------------------------------------------------------

class _Commit:
    __slots__ = ("offsets", "future", "deadline", "member", "retry_at", "in_flight", "seq",
                 "incarnation", "sent", "waiting_on")

    def __init__(self, offsets: dict, future: Future, deadline: float, member: bool,
                 incarnation: int):
        self.offsets, self.future, self.deadline, self.member = offsets, future, deadline, member
        self.incarnation = incarnation      # of the membership whose positions these are
        self.retry_at = 0.0
        self.in_flight = False
        self.seq = 0                        # the order commits were asked for
        self.sent = False
        self.waiting_on: list = []          # newer commits that took over its partitions


class _Fetch:
    __slots__ = ("tps", "future", "deadline", "retry_at", "in_flight")

    def __init__(self, tps: list, future: Future, deadline: float):
        self.tps, self.future, self.deadline = tps, future, deadline
        self.retry_at = 0.0
        self.in_flight = False


class GroupIO:
    """Drives a Membership (when subscribed) and the group's commits and offset lookups on the
    consumer's fetcher thread, through its NetworkClient. ``submit_*`` may be called from any
    thread (they only queue); everything else runs on the fetcher thread."""

    def __init__(self, net, membership: Membership, on_task, retry_backoff_ms: int = 100):
        self.net = net
        self.membership = membership
        self.group_id = membership.group_id
        self.on_task = on_task              # called on the fetcher thread with each Task
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.coordinator: int | None = None
        self._finding = False
        self._find_at = 0.0
        self._commits: list[_Commit] = []
        self._fetches: list[_Fetch] = []
        self._incoming: collections.deque = collections.deque()   # from other threads
        self._commit_seq = 0
        self._newest: dict = {}             # partition -> the newest commit naming it

    # --- from the caller's thread ---------------------------------------------------------------
    def submit_commit(self, offsets: dict, timeout_s: float, member: bool) -> Future:
        fut = Future()
        self._incoming.append(_Commit(dict(offsets), fut, _monotonic() + timeout_s, member,
                                      self.membership.incarnation))
        return fut

    def submit_fetch(self, tps: list, timeout_s: float) -> Future:
        fut = Future()
        self._incoming.append(_Fetch(list(tps), fut, _monotonic() + timeout_s))
        return fut

    # --- on the fetcher thread ------------------------------------------------------------------
    def tick(self, now: float) -> float:
        """Do what is due; returns when to come back at the latest."""
        while self._incoming:
            item = self._incoming.popleft()
            if isinstance(item, _Commit):
                self._commit_seq += 1
                item.seq = self._commit_seq
                for tp in item.offsets:
                    self._newest[tp] = item
                self._commits.append(item)
            else:
                self._fetches.append(item)
        m = self.membership
        task = m.check(now)
        if task is not None:
            self.on_task(task)
        wake = now + 1.0
        if m.joined and m.lose_at is not None:
            wake = min(wake, max(m.lose_at, now + 0.005))
        if self.coordinator is None or not self._coordinator_known():
            self._find(now)
            if self.coordinator is None:
                self._expire(now)
                return min(wake, max(self._find_at, now + 0.01))
        if not self.net.ready(self.coordinator):
            self._expire(now)
            return now + 0.05
        hb = m.heartbeat(now)
        if hb is not None:
            self._send_heartbeat(*hb)
        at = m.next_heartbeat_at()
        if at is not None:
            wake = min(wake, max(at, now + 0.005))
        self._send_commits(now)
        self._send_fetches(now)
        self._expire(now)
        for item in self._commits + self._fetches:
            if not item.in_flight:
                wake = min(wake, max(item.retry_at, now + 0.005))
        return wake

    def _coordinator_known(self) -> bool:
        return self.coordinator in self.net.cluster.brokers

    def coordinator_moved(self, why: str) -> None:
        if self.coordinator is not None:
            log.info("group coordinator moved; finding it again", group=self.group_id,
                     reason=why)
        self.coordinator = None

    def _find(self, now: float) -> None:
        if self._finding or now < self._find_at:
            return
        nodes = self.net.metadata_nodes()
        ready = [n for n in nodes if self.net.ready(n)]
        if not ready:
            self._find_at = now + COORDINATOR_RETRY_S
            return
        self._finding = True
        self._find_at = now + COORDINATOR_RETRY_S

        def handler(header, blobs, error):
            self._finding = False
            if error is not None:
                return
            try:
                (e,) = protocol.decode_entries(protocol.CoordinatorEntry,
                                               header.get("coordinators"), "FindCoordinator")
            except (ValueError, ZbError):
                return
            if e.err:
                err = errors.make_error(e.err, e.msg)
                if not err.retriable:
                    self._fail_all(err)
                return
            if e.node_id not in self.net.cluster.brokers:
                self.net.request_metadata([])          # a broker we have not heard of yet
                return
            self.coordinator = e.node_id
            self._find_at = 0.0
        try:
            self.net.send(ready[0], "FindCoordinator", {"key_type": "group",
                                                        "keys": [self.group_id]},
                          handler=handler, timeout_ms=5000)
        except ZbError:
            self._finding = False

    def _fail_all(self, err: ZbError) -> None:
        for item in self._commits + self._fetches:
            if not item.future.done():
                item.future.set_exception(err)
        self._commits, self._fetches = [], []
        m = self.membership
        if m.state not in (State.FATAL, State.UNSUBSCRIBED):
            m.error = err
            m.state = State.FATAL

    def _send_heartbeat(self, seq: int, fields: dict, timeout_ms: int) -> None:
        node = self.coordinator

        def handler(header, blobs, error):
            if error is not None and isinstance(error, COORDINATOR_MOVED):
                self.coordinator_moved(str(error))
            task = self.membership.on_answer(seq, header, error, _monotonic())
            if task is not None:
                self.on_task(task)
        try:
            self.net.send(node, "ConsumerGroupHeartbeat", fields, handler=handler,
                          timeout_ms=timeout_ms)
        except ZbError as e:
            handler(None, None, e)

    # commits ----------------------------------------------------------------------------------
    def _send_commits(self, now: float) -> None:
        m = self.membership
        self._commits = [c for c in self._commits if not c.future.done()]
        for c in self._commits:
            if c.in_flight or c.retry_at > now or (c.waiting_on and not c.offsets):
                continue
            if c.member and c.incarnation != m.incarnation:
                c.future.set_exception(CommitFailedError(
                    f"The commit failed: this consumer lost its membership of group "
                    f"{self.group_id!r} since (its partitions may have been given to other "
                    f"members); the offsets it named are no longer its to commit."))
                continue
            if c.sent and self._superseded(c):
                continue
            if c.member and not m.joined:
                if m.state in (State.FENCED, State.STALE, State.UNSUBSCRIBED, State.LEAVING):
                    c.future.set_exception(CommitFailedError(
                        f"The commit failed: this consumer is not a member of group "
                        f"{self.group_id!r} right now (it was removed or is rejoining); its "
                        f"partitions may have moved to other members."))
                    c.deadline = -1.0
                continue
            fields = {"group_id": self.group_id,
                      "member_id": m.member_id if c.member else "",
                      "member_epoch": m.epoch if c.member else protocol.NO_MEMBER_EPOCH,
                      "parts": [[tp.topic, tp.partition, om.offset, om.leader_epoch,
                                 om.metadata] for tp, om in c.offsets.items()]}
            c.in_flight = True
            c.sent = True

            def handler(header, blobs, error, c=c):
                self._on_commit(c, header, error)
            try:
                self.net.send(self.coordinator, "OffsetCommit", fields, handler=handler)
            except ZbError as e:
                handler(None, None, e)
        self._commits = [c for c in self._commits if not c.future.done()]

    def _superseded(self, c: _Commit) -> bool:
        """Before a retry: partitions that a newer commit names are left to it (a retry must
        never overtake a newer commit and move an offset back). True when nothing is left; ``c``
        then ends as those newer commits end (failed if one of them failed)."""
        newer = {self._newest[tp] for tp in c.offsets
                 if tp in self._newest and self._newest[tp].seq > c.seq}
        if not newer:
            return False
        for o in newer:
            for tp in o.offsets:
                c.offsets.pop(tp, None)
        c.waiting_on = list(dict.fromkeys(
            c.waiting_on + [o.future for o in sorted(newer, key=lambda o: o.seq)]))
        if c.offsets:
            return False                 # the rest is retried now; it ends as they all end
        self._settle(c)
        return True

    def _settle(self, c: _Commit) -> None:
        """Complete ``c`` once the newer commits it waits on are done."""
        def one_done(_f=None, c=c):
            if c.future.done() or not all(f.done() for f in c.waiting_on):
                return
            err = next((f.exception() for f in c.waiting_on if f.exception()), None)
            if err is None:
                c.future.set_result(None)
            else:
                c.future.set_exception(err)
        for f in c.waiting_on:
            f.add_done_callback(one_done)
        one_done()

    def _on_commit(self, c: _Commit, header, error) -> None:
        c.in_flight = False
        now = _monotonic()
        if error is None:
            first = None
            for e in header.get("parts") or ():
                if e[2]:
                    err = errors.make_error(e[2], e[3])
                    first = first or err
            if first is None:
                if c.waiting_on:
                    self._settle(c)      # its partitions taken over by newer commits decide
                else:
                    c.future.set_result(None)
            elif isinstance(first, errors.UnassignedPartition):
                c.future.set_exception(CommitFailedError(
                    f"The commit failed: {first} It moved to another member in a rebalance."))
            else:
                c.future.set_exception(first)
            return
        if isinstance(error, COORDINATOR_MOVED):
            self.coordinator_moved(str(error))
            c.retry_at = now + self.retry_backoff_s
            return
        if isinstance(error, errors.StaleMemberEpoch):
            c.retry_at = now + self.retry_backoff_s     # the heartbeat brings the new epoch
            return
        if isinstance(error, _FENCING) or isinstance(error, errors.FencedInstanceId):
            c.future.set_exception(CommitFailedError(
                f"The commit failed: this consumer is no longer a member of group "
                f"{self.group_id!r} ({error}); its partitions were given to other members."))
            return
        if error.retriable:
            c.retry_at = now + self.retry_backoff_s
            return
        c.future.set_exception(error)

    # committed offsets ------------------------------------------------------------------------
    def _send_fetches(self, now: float) -> None:
        self._fetches = [f for f in self._fetches if not f.future.done()]
        for f in self._fetches:
            if f.in_flight or f.retry_at > now:
                continue
            f.in_flight = True

            def handler(header, blobs, error, f=f):
                self._on_fetch(f, header, error)
            try:
                self.net.send(self.coordinator, "OffsetFetch", {
                    "group_id": self.group_id,
                    "parts": [[tp.topic, tp.partition] for tp in f.tps]}, handler=handler)
            except ZbError as e:
                handler(None, None, e)
        self._fetches = [f for f in self._fetches if not f.future.done()]

    def _on_fetch(self, f: _Fetch, header, error) -> None:
        f.in_flight = False
        if error is None:
            try:
                entries = protocol.decode_entries(protocol.OffsetFetchEntry,
                                                  header.get("parts"), "OffsetFetch")
            except ZbError as e:
                f.future.set_exception(e)
                return
            out = {}
            for e in entries:
                if e.err:
                    f.future.set_exception(errors.make_error(e.err, None))
                    return
                out[TopicPartition(e.topic, e.partition)] = \
                    OffsetAndMetadata(e.offset, e.metadata, e.leader_epoch) \
                    if e.offset >= 0 else None
            f.future.set_result(out)
            return
        if isinstance(error, COORDINATOR_MOVED):
            self.coordinator_moved(str(error))
        if error.retriable or isinstance(error, COORDINATOR_MOVED):
            f.retry_at = _monotonic() + self.retry_backoff_s
            return
        f.future.set_exception(error)

    def _expire(self, now: float) -> None:
        for item in self._commits + self._fetches:
            if not item.future.done() and not item.in_flight and now > item.deadline:
                what = "commit" if isinstance(item, _Commit) else "committed-offset lookup"
                item.future.set_exception(RequestTimedOut(
                    f"The {what} for group {self.group_id!r} did not succeed in time (no "
                    f"group coordinator answered)."))
        self._commits = [c for c in self._commits if not c.future.done()]
        self._fetches = [f for f in self._fetches if not f.future.done()]

    def close(self) -> None:
        err = IllegalStateError("The consumer is closed.")
        for item in self._commits + self._fetches + list(self._incoming):
            if not item.future.done():
                item.future.set_exception(err)
        self._commits, self._fetches, self._incoming = [], [], []
