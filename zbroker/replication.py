"""The replication state machine of one partition replica: no sockets, no clock, no threads.

``ReplicaCore`` holds what a broker knows of one partition it is a replica of and decides what
to do about it, in Kafka's pull model. It is driven by events and returns effects; the broker's
loop (server.py, fetcher.py) carries the effects out, and the seeded simulator in ``tests/sim``
drives the same class with in-memory logs, a moved clock and a lossy network.

Events (``now_s`` is always given by the caller):

    on_partition_state(st, now_s)            the partition state in a new metadata image
    set_broker_epochs(epochs, shutting_down)  registered brokers' epochs (for fencing replicas)
                                              and those shutting down (not taken into the ISR)
    -- as leader --
    check_produce(acks)                       before an append: refuse acks=all below min ISR
    on_leader_append(now_s)                   the leader appended (the HW may move: ISR of one)
    wait_for_high_watermark(token, offset)    an acks=all produce waits for the HW to pass offset
    cancel_wait(token)                        the transport gave up on it (request timeout)
    on_follower_fetch(replica_id, replica_epoch, fetch_offset, last_fetched_epoch, now_s,
                      shutting_down, fetch_id, session)
                                              a follower's Fetch entry; returns a Diverging
                                              answer, or None to serve records from fetch_offset
    follower_left_session(replica_id)         the follower's fetch session no longer holds us
    on_isr_written(isr, version, epoch, now_s) / on_isr_write_failed(isr, epoch)
    tick(now_s, lag_max_s)                    shrink the ISR of followers that fell behind, and
                                              take in caught-up ones whose joining write failed
    -- as follower --
    next_request()                            what to ask the leader next: EpochQuery | FetchQuery
    on_epoch_end(leader_epoch, end_offset)    OffsetForLeaderEpoch's answer
    on_fetch_data(high_watermark, log_start, blob, diverging)   a Fetch entry's answer
    on_out_of_range(leader_log_start, leader_log_end)

Effects (NamedTuples below): ``WriteIsr`` (write this ISR to the partition state key with a check
of ``version``), ``HighWatermarkMoved`` (wake consumers and acks=all produces), ``ProduceDone``
(answer the produce waiting under ``token``, with ``error`` or None), ``Truncated`` (for logs).

The log is the core's one dependency: ``PartitionLog`` in the broker, ``MemoryLog`` in the
simulator. The core appends to it and truncates it directly (these are synchronous local calls);
everything that crosses the network or the coordinator is an effect.

Follower truncation (KIP-279 and KIP-320): a follower asks the leader where its latest epoch E
ends (OffsetForLeaderEpoch), and every Fetch carries the epoch of the follower's last batch so
the leader can answer with a diverging epoch instead of records. Either answer names (E', end):
the largest epoch the leader has that is <= E, and where it ends. When the follower has E' too, it
truncates to min(end, where E' ends in its own log) and is done. When it does not, the two logs
share nothing after the follower's last epoch below E': it truncates to where that epoch ends in
its own log and asks again with it. Each round drops at least one epoch, so it ends.

Fetch sessions (KIP-227, zbroker/broker/fetch_sessions.py): a follower in a session names a
partition only when its request changed, so an idle, caught-up follower's fetches do not reach
its partitions at all. The session stands in for them: a follower whose last fetch offset is the
leader's log end offset was caught up at the session's last fetch (the log end only grows while
leading, so it was no further then), which is what ``tick`` needs; and a follower that caught up
while another ISR change was pending is taken in once that change is done, instead of at its
next fetch of the partition, which may never come.

Fencing replicas: the leader serves a follower's fetch only from a replica of the partition
whose broker epoch (the creation zxid of its registration) is the registered one, so a restarted
or impostor process cannot move the high watermark or the ISR.
"""

from __future__ import annotations

import enum
from typing import Any, Iterable, NamedTuple

from zbroker import errors
from zbroker.storage.checkpoints import UNDEFINED_EPOCH

NO_LEADER = -1


class Role(enum.Enum):
    NONE = "none"               # no partition state applied yet
    LEADER = "leader"
    FOLLOWER = "follower"


class Phase(enum.Enum):
    """A follower's progress in its current leader epoch."""
    TRUNCATING = "truncating"   # finding where its log and the leader's part (OffsetForLeaderEpoch)
    FETCHING = "fetching"       # appending what the leader sends


# the transitions allowed between (role, phase) states, checked in one place
_TRANSITIONS = {
    (Role.NONE, None): {(Role.LEADER, None), (Role.FOLLOWER, Phase.TRUNCATING),
                        (Role.FOLLOWER, Phase.FETCHING)},
    (Role.LEADER, None): {(Role.LEADER, None), (Role.FOLLOWER, Phase.TRUNCATING),
                          (Role.FOLLOWER, Phase.FETCHING)},
    (Role.FOLLOWER, Phase.TRUNCATING): {(Role.LEADER, None), (Role.FOLLOWER, Phase.TRUNCATING),
                                        (Role.FOLLOWER, Phase.FETCHING)},
    (Role.FOLLOWER, Phase.FETCHING): {(Role.LEADER, None), (Role.FOLLOWER, Phase.TRUNCATING),
                                      (Role.FOLLOWER, Phase.FETCHING)},
}


class ReplicationBug(AssertionError):
    """An impossible state (two leaders in one epoch, an epoch going back): our bug or the
    controller's, never a client's. It stops what is running, loudly."""


# --- effects ----------------------------------------------------------------------------------

class WriteIsr(NamedTuple):
    isr: tuple
    version: int            # of the partition state key: the write is a compare-and-set
    leader_epoch: int
    controller_epoch: int
    reason: str             # "caught up" | "lagging"
    replicas: tuple         # the followers added or removed


class HighWatermarkMoved(NamedTuple):
    high_watermark: int


class ProduceDone(NamedTuple):
    token: Any
    error: errors.ZbError | None


class Truncated(NamedTuple):
    from_offset: int
    to_offset: int
    why: str


# --- a follower's requests and the leader's answers ---------------------------------------------

class EpochQuery(NamedTuple):
    """OffsetForLeaderEpoch: where does ``epoch`` end in the leader's log?"""
    current_leader_epoch: int
    epoch: int


class FetchQuery(NamedTuple):
    fetch_offset: int
    current_leader_epoch: int
    last_fetched_epoch: int


class Diverging(NamedTuple):
    """The leader's answer to a fetch whose last fetched epoch does not end where the follower's
    log does on the leader: the largest epoch it has <= that one, and where it ends."""
    epoch: int
    end_offset: int


class FollowerState:
    """What a leader knows of one follower (Kafka's Replica): its log end offset (its last fetch
    offset; -1 until it fetches in this leadership) and when it was last caught up."""

    __slots__ = ("log_end_offset", "last_caught_up_s", "last_fetch_s", "last_fetch_leader_leo",
                 "broker_epoch", "last_fetch_id", "session")

    def __init__(self, caught_up_s: float):
        self.log_end_offset = -1
        self.last_caught_up_s = caught_up_s
        self.last_fetch_s = 0.0
        self.last_fetch_leader_leo = -1
        self.broker_epoch = -1          # of the follower's life these fetches came from
        self.last_fetch_id = -1
        self.session = None             # its fetch session holding this partition (or None)

    def caught_up_s(self, leader_log_end: int) -> float:
        s = self.session
        if s is not None and not s.closed and self.log_end_offset >= leader_log_end:
            return max(self.last_caught_up_s, s.last_fetch_s)
        return self.last_caught_up_s


class ReplicaCore:
    """One partition as seen by the broker ``broker_id`` (see the module docstring)."""

    def __init__(self, broker_id: int, log, name: str = ""):
        self.broker_id = broker_id
        self.log = log
        self.name = name                        # "topic-partition", for messages
        self.role = Role.NONE
        self.phase: Phase | None = None
        self.leader_id = NO_LEADER
        self.leader_epoch = -1
        self.replicas: tuple = ()
        self.isr: tuple = ()
        self.state_version = -1
        self.state_zxid = -1                    # when the state was written (-1: not known)
        self.controller_epoch = 0
        self.high_watermark = max(log.log_start_offset,
                                  min(log.high_watermark_checkpoint, log.log_end_offset))
        self.min_insync_replicas = 1
        self.lag_max_s = 30.0                   # replica.lag.time.max.ms (tick() sets it too)
        # leader only
        self.followers: dict[int, FollowerState] = {}
        self.pending_isr: tuple | None = None
        self.epoch_start_offset = 0
        self._waits: dict[Any, int] = {}         # token -> offset the HW must reach
        self._broker_epochs: dict[int, int] = {}
        self._shutting_down: frozenset = frozenset()

    # --- state ----------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def _move(self, role: Role, phase: Phase | None) -> None:
        if (role, phase) not in _TRANSITIONS[(self.role, self.phase)]:
            raise ReplicationBug(f"{self.name}: no transition from {self.role.value}/"
                                 f"{self.phase} to {role.value}/{phase}")
        self.role, self.phase = role, phase

    def leads_in_this_life(self, broker_epoch: int) -> bool:
        """Leader, by a partition state written after this broker's registration (zxid
        ``broker_epoch``). A state written before it made an earlier life (or session) of this
        broker leader, which a power loss may have left with fewer records than its followers:
        the controller replaces it with a new leader epoch once it sees the new registration,
        and until then serving it would let followers truncate acknowledged records to our
        shorter log. (A state whose zxid is not known counts as this life's.)"""
        return self.role is Role.LEADER and not 0 <= self.state_zxid < broker_epoch

    def set_broker_epochs(self, epochs: dict[int, int],
                          shutting_down: frozenset = frozenset()) -> None:
        """The registered brokers and their epochs, and those shutting down (from the metadata
        image)."""
        self._broker_epochs = epochs
        self._shutting_down = shutting_down

    def on_partition_state(self, st, now_s: float) -> list:
        """Apply the partition state ``st`` (metadata.PartitionState) of a new image. Returns
        effects; ``self.role`` and ``self.leader_epoch`` tell the transport what changed."""
        me = self.broker_id
        if st.leader_epoch < self.leader_epoch:
            return []           # an older image than one already applied
        if st.leader_epoch == self.leader_epoch and self.role is not Role.NONE:
            if (st.leader == me) != self.is_leader or st.leader != self.leader_id:
                raise ReplicationBug(f"{self.name}: two leaders in leader epoch "
                                     f"{st.leader_epoch} ({self.leader_id} and {st.leader})")
            return self._adopt(st, now_s)
        if st.leader == me:
            return self._become_leader(st, now_s)
        return self._become_follower(st)

    def _become_leader(self, st, now_s: float) -> list:
        effects = self._lose_waits(None)
        self._move(Role.LEADER, None)
        self._take(st)
        self.pending_isr = None
        self.followers = {r: FollowerState(now_s if r in st.isr else 0.0)
                          for r in st.replicas if r != self.broker_id}
        cache = self.log.leader_epoch_cache
        if st.leader_epoch > cache.latest_epoch:
            # The epoch starts at our log end offset (Kafka assigns it at election), so a
            # follower asking where its older epoch ends gets our log end offset.
            cache.assign(st.leader_epoch, self.log.log_end_offset, durable=False)
        self.epoch_start_offset = self.log.log_end_offset
        self.high_watermark = min(self.high_watermark, self.log.log_end_offset)
        effects += self._advance_high_watermark()
        return effects

    def _become_follower(self, st) -> list:
        effects = self._lose_waits(st.leader)
        log = self.log
        # An epoch that starts at our log end has no records here (we led in it and wrote
        # nothing): it never happened as far as any log is concerned, and keeping it would make
        # the leader's batches of an older epoch look like going back.
        log.leader_epoch_cache.truncate_from_end(log.log_end_offset)
        phase = Phase.FETCHING if log.leader_epoch_cache.latest_epoch == UNDEFINED_EPOCH \
            else Phase.TRUNCATING
        self._move(Role.FOLLOWER, phase)
        self._take(st)
        self.followers = {}
        self.pending_isr = None
        return effects

    def _take(self, st) -> None:
        self.leader_id = st.leader
        self.leader_epoch = st.leader_epoch
        self.replicas = tuple(st.replicas)
        self.isr = tuple(st.isr)
        self.state_version = st.version
        self.state_zxid = getattr(st, "zxid", -1)
        self.controller_epoch = st.controller_epoch

    def _adopt(self, st, now_s: float) -> list:
        """A newer version of the state in the same epoch (the controller took a dead or departing
        broker out of the ISR, or our own ISR write came back)."""
        if st.version <= self.state_version:
            return []
        self.state_version = st.version
        self.state_zxid = getattr(st, "zxid", -1)
        self.controller_epoch = st.controller_epoch
        self.replicas = tuple(st.replicas)
        changed = tuple(st.isr) != self.isr
        self.isr = tuple(st.isr)
        if self.pending_isr is not None and self.pending_isr == self.isr:
            self.pending_isr = None
        if changed and self.is_leader:
            return self._advance_high_watermark(force=True) + self._take_in_caught_up(now_s)
        return []

    def stop(self) -> list:
        """The partition is closed here (reassigned away, topic deleted, broker stopping)."""
        return self._lose_waits(None)

    # --- leader: produce ------------------------------------------------------------------------
    def check_produce(self, acks: int) -> None:
        if acks == -1 and len(self.isr) < self.min_insync_replicas:
            raise errors.NotEnoughReplicas(
                f"{self.name} has {len(self.isr)} in-sync replicas "
                f"({','.join(map(str, self.isr))}); min.insync.replicas is "
                f"{self.min_insync_replicas}.")

    def on_leader_append(self) -> list:
        return self._advance_high_watermark()

    def wait_for_high_watermark(self, token, offset: int) -> list:
        """An acks=all produce is answered once the HW reaches ``offset`` (the log end offset
        after its batch). Returns its ProduceDone at once when that is already so."""
        if self.high_watermark >= offset:
            return [self._produce_done(token)]
        self._waits[token] = offset
        return []

    def cancel_wait(self, token) -> None:
        self._waits.pop(token, None)

    def _produce_done(self, token) -> ProduceDone:
        if len(self.isr) < self.min_insync_replicas:
            return ProduceDone(token, errors.NotEnoughReplicasAfterAppend(
                f"The ISR of {self.name} shrank below min.insync.replicas "
                f"({self.min_insync_replicas}) before the batch was replicated."))
        return ProduceDone(token, None)

    def _lose_waits(self, new_leader: int | None) -> list:
        if not self._waits:
            return []
        who = f"; broker {new_leader} leads it now" if new_leader not in (None, NO_LEADER) \
            else ""
        err = errors.NotLeaderOrFollower(
            f"Broker {self.broker_id} is no longer the leader of {self.name}{who}; the batch may "
            f"or may not be committed, retry.")
        out = [ProduceDone(t, err) for t in self._waits]
        self._waits = {}
        return out

    # --- leader: followers ----------------------------------------------------------------------
    def on_follower_fetch(self, replica_id: int, replica_epoch: int, fetch_offset: int,
                          last_fetched_epoch: int, now_s: float,
                          shutting_down: Iterable[int] = (),
                          fetch_id: int = -1, session=None) -> tuple[Diverging | None, list]:
        """A Fetch entry from follower ``replica_id``. Raises the error to answer with; returns
        (Diverging or None, effects). ``fetch_id`` increases with every fetch a follower's life
        sends: an older one that arrives late (queued on a connection the follower gave up on)
        must not count, since the follower may have truncated since. ``session``: the fetch
        session (``.last_fetch_s``, ``.closed``) the entry came in, which keeps the follower
        caught up while it does not name the partition again."""
        if not self.is_leader:
            raise errors.NotLeaderOrFollower(f"Broker {self.broker_id} does not lead {self.name}.")
        f = self.followers.get(replica_id)
        if f is None:
            raise errors.NotLeaderOrFollower(
                f"Broker {replica_id} is not a follower of {self.name}.")
        registered = self._broker_epochs.get(replica_id)
        if registered is None or replica_epoch != registered:
            raise errors.StaleBrokerEpoch(
                f"The fetch for {self.name} names broker {replica_id} with broker epoch "
                f"{replica_epoch}, which is not its registered one.")
        if f.broker_epoch != replica_epoch:
            f.broker_epoch, f.last_fetch_id = replica_epoch, -1     # a new life of the broker
        if fetch_id < f.last_fetch_id:
            raise errors.InvalidRequest(
                f"A fetch of {self.name} older than one already seen from broker {replica_id}.")
        f.last_fetch_id = fetch_id
        log = self.log
        leo = log.log_end_offset
        if last_fetched_epoch != UNDEFINED_EPOCH:
            epoch, end = log.leader_epoch_cache.end_offset_for_epoch(last_fetched_epoch, leo)
            if epoch != UNDEFINED_EPOCH and (epoch < last_fetched_epoch or end < fetch_offset):
                return Diverging(epoch, end), []
        if not log.log_start_offset <= fetch_offset <= leo:
            raise errors.OffsetOutOfRange(
                f"The offset {fetch_offset} is outside [{log.log_start_offset}, {leo}].")
        if fetch_offset >= leo:
            f.last_caught_up_s = now_s
        elif fetch_offset >= f.last_fetch_leader_leo:
            f.last_caught_up_s = max(f.last_caught_up_s, f.last_fetch_s)
        f.log_end_offset = fetch_offset
        f.last_fetch_s = now_s
        f.last_fetch_leader_leo = leo
        f.session = session
        effects = self._advance_high_watermark()
        if self.pending_isr is None and replica_id not in self.isr and \
                replica_id not in shutting_down and fetch_offset >= self.high_watermark and \
                fetch_offset >= self.epoch_start_offset:
            effects.append(self._write_isr(tuple(sorted((*self.isr, replica_id))), "caught up",
                                           (replica_id,)))
        return None, effects

    def follower_left_session(self, replica_id: int) -> None:
        f = self.followers.get(replica_id)
        if f is not None:
            f.session = None

    def tick(self, now_s: float, lag_max_s: float) -> list:
        """As leader: take followers out of the ISR that have not caught up for ``lag_max_s``."""
        self.lag_max_s = lag_max_s
        if not self.is_leader or self.pending_isr is not None:
            return []
        if len(self.isr) > 1:
            leo = self.log.log_end_offset
            followers = self.followers
            keep = tuple(r for r in self.isr if r == self.broker_id or
                         (r in followers and (now_s - followers[r].caught_up_s(leo) <= lag_max_s
                                              or self._left_its_life(r))))
            if len(keep) != len(self.isr):
                return [self._write_isr(keep, "lagging",
                                        tuple(sorted(set(self.isr) - set(keep))))]
        # a follower whose joining write failed: its session may never name us again
        return self._take_in_caught_up(now_s)

    def _left_its_life(self, replica_id: int) -> bool:
        """The follower's registration is gone or new since it last fetched: the controller
        takes it out of the ISR (at once, not after the lag time), and a write of ours would
        only race with it."""
        f = self.followers[replica_id]
        return f.broker_epoch >= 0 and self._broker_epochs.get(replica_id) != f.broker_epoch

    def _write_isr(self, isr: tuple, reason: str, who: tuple) -> WriteIsr:
        self.pending_isr = isr
        return WriteIsr(isr, self.state_version, self.leader_epoch, self.controller_epoch,
                        reason, who)

    def on_isr_written(self, isr: tuple, version: int, leader_epoch: int,
                       now_s: float) -> list:
        if not self.is_leader or leader_epoch != self.leader_epoch or self.pending_isr != isr:
            return []
        self.isr = isr
        self.state_version = version
        self.pending_isr = None
        return self._advance_high_watermark(force=True) + self._take_in_caught_up(now_s)

    def on_isr_write_failed(self, isr: tuple, leader_epoch: int) -> None:
        """The compare-and-set failed (the controller wrote first, or a newer epoch exists): the
        next metadata image brings the state to follow."""
        if self.is_leader and leader_epoch == self.leader_epoch and self.pending_isr == isr:
            self.pending_isr = None

    def _take_in_caught_up(self, now_s: float) -> list:
        """No ISR change is pending (any more): a follower that caught up meanwhile, and whose
        fetch session still fetches, joins now (its fetches may not name this partition
        again). One that stopped fetching (caught up at its last fetch, but that was more than
        the lag time ago) does not."""
        if not self.is_leader or self.pending_isr is not None:
            return []
        leo = self.log.log_end_offset
        for r, f in self.followers.items():
            if r not in self.isr and r not in self._shutting_down and f.session is not None \
                    and not f.session.closed and f.log_end_offset >= self.high_watermark and \
                    now_s - f.caught_up_s(leo) <= self.lag_max_s and \
                    f.log_end_offset >= self.epoch_start_offset and \
                    f.broker_epoch == self._broker_epochs.get(r):       # (this life's fetches)
                return [self._write_isr(tuple(sorted((*self.isr, r))), "caught up", (r,))]
        return []

    def maximal_isr(self) -> tuple:
        if self.pending_isr is None:
            return self.isr
        return tuple(sorted(set(self.isr) | set(self.pending_isr)))

    def _advance_high_watermark(self, force: bool = False) -> list:
        """HW = the lowest log end offset in the ISR, counting a member being added or removed
        right now; it never goes back while leading. ``force`` answers waits even when it did
        not move (the ISR changed, so min.insync.replicas may now fail them)."""
        if not self.is_leader:
            return []
        hw = self.log.log_end_offset
        for r in self.maximal_isr():
            if r == self.broker_id:
                continue
            f = self.followers.get(r)
            if f is None or f.log_end_offset < 0:
                hw = -1
                break
            hw = min(hw, f.log_end_offset)
        moved = hw > self.high_watermark
        if moved:
            self.high_watermark = hw
        if not moved and not force:
            return []
        effects: list = [HighWatermarkMoved(self.high_watermark)] if moved else []
        if self._waits:
            done = [t for t, offset in self._waits.items() if offset <= self.high_watermark]
            for t in done:
                del self._waits[t]
                effects.append(self._produce_done(t))
        return effects

    # --- follower -------------------------------------------------------------------------------
    def next_request(self) -> EpochQuery | FetchQuery | None:
        if self.role is not Role.FOLLOWER:
            return None
        latest = self.log.leader_epoch_cache.latest_epoch
        if self.phase is Phase.TRUNCATING:
            return EpochQuery(self.leader_epoch, latest)
        return FetchQuery(self.log.log_end_offset, self.leader_epoch, latest)

    def on_epoch_end(self, leader_epoch: int, end_offset: int) -> list:
        """OffsetForLeaderEpoch answered (leader_epoch, end_offset) for our latest epoch."""
        if self.phase is not Phase.TRUNCATING:
            return []
        effects, done = self._truncate_to_shared(leader_epoch, end_offset, "epoch end")
        if done:
            self._move(Role.FOLLOWER, Phase.FETCHING)
        return effects

    def on_fetch_data(self, high_watermark: int, leader_log_start: int, blob,
                      diverging: Diverging | None = None) -> list:
        """A Fetch entry answered without error: records from our log end offset (``blob``,
        possibly empty), or the epoch where our log and the leader's part. May raise the
        ZbError of an append that failed (the transport backs off and the follower checks
        its epochs again)."""
        if self.phase is not Phase.FETCHING:
            return []
        log = self.log
        if diverging is not None:
            effects, _ = self._truncate_to_shared(diverging.epoch, diverging.end_offset,
                                                  "diverging epoch")
            return effects      # the next fetch carries our new last epoch: it asks again
        if blob:
            try:
                log.append_as_follower(blob)
            except errors.ZbError:
                self._move(Role.FOLLOWER, Phase.TRUNCATING)
                raise
        new_hw = min(high_watermark, log.log_end_offset)
        effects: list = []
        if new_hw > self.high_watermark:
            self.high_watermark = new_hw
            effects.append(HighWatermarkMoved(new_hw))
        # The leader's log start offset moved (DeleteRecords, or a group coordinator's
        # snapshot): follow it, as far as what is known to be committed here.
        if leader_log_start > log.log_start_offset and \
                self.high_watermark > log.log_start_offset:
            log.delete_records_before(min(leader_log_start, self.high_watermark))
        return effects

    def on_out_of_range(self, leader_log_start: int, leader_log_end: int) -> list:
        """The leader has no records at our log end offset."""
        if self.phase is not Phase.FETCHING:
            return []
        log = self.log
        leo = log.log_end_offset
        if leader_log_start > leo:
            # its log starts after ours ends (retention ran while we were away): start over
            log.truncate_fully_and_start_at(leader_log_start)
            self.high_watermark = max(self.high_watermark, leader_log_start)
            return [Truncated(leo, leader_log_start, "the leader's log starts later"),
                    HighWatermarkMoved(self.high_watermark)]
        self._move(Role.FOLLOWER, Phase.TRUNCATING)     # we hold more than the leader: check
        return []

    def _truncate_to_shared(self, leader_epoch: int, leader_end: int,
                            why: str) -> tuple[list, bool]:
        """Truncate toward the end of the largest epoch both logs share; True when that end is
        reached (else ask again with our new latest epoch)."""
        log = self.log
        leo = log.log_end_offset
        cache = log.leader_epoch_cache
        done = True
        if leader_epoch == UNDEFINED_EPOCH or leader_end < 0:
            # The leader knows no epoch as old as ours: keep what is known committed.
            target = min(self.high_watermark, leo)
        else:
            mine, mine_end = cache.end_offset_for_epoch(leader_epoch, leo)
            if mine == leader_epoch:
                target = min(leader_end, mine_end, leo)
            elif mine == UNDEFINED_EPOCH:
                target = leo        # no epochs here at all: nothing of ours to compare
            else:
                # We never had the leader's epoch: what follows our own epoch ``mine`` cannot be
                # shared. Cut there and ask about ``mine``.
                target = min(mine_end, leo)
                done = False
        effects: list = []
        if target < leo:
            if target < log.log_start_offset:
                log.truncate_fully_and_start_at(target)
            else:
                log.truncate_to(target)
            effects.append(Truncated(leo, target, why))
        cache.truncate_from_end(log.log_end_offset)
        if self.high_watermark > log.log_end_offset:
            self.high_watermark = log.log_end_offset
        if cache.latest_epoch == UNDEFINED_EPOCH:
            done = True
        return effects, done
