"""A seeded, deterministic simulation of one replicated partition: the real replication state
machine (zbroker.replication.ReplicaCore) on every broker, the real controller decision
(zbroker.broker.controller.decide_partition), a coordinator model with sessions, versioned
partition state and compare-and-set ISR writes, an idempotent producer writing acks=all (the
leaders check its sequences with the broker's own ProducerStateManager), and a network and
fault schedule chosen by the seed.

Time is simulated (``Sim.now``); nothing sleeps. Faults: messages dropped, delayed (so
reordered), duplicated (between brokers and the coordinator; a client's link is one TCP
connection: lost or slow, in order); links cut both ways for a while (a broker cut from its peers, or from the
coordinator); brokers killed (process crash: the log survives) and restarted, paused (SIGSTOP:
everything sent to them waits) and resumed, and powered off (the log keeps only what was
flushed). Faults never overlap so much that the configuration's promise is void: at most one
broker is down, paused, powered off or cut off at a time (RF=3, min.insync.replicas=2).

After every event the checker asserts:
- at most one broker appends as leader in any leader epoch;
- a broker's high watermark never goes back within one life;
- a record below any replica's high watermark never changes (same value, same epoch) on any
  replica that holds that offset, and offsets in every log are contiguous;
- every acks=all-acknowledged record is in the current leader's log at its offset.
At the end the faults heal, and every replica must converge to the same log, holding every
acknowledged record, each value once, in the order the producer sent them.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random

from zbroker import errors
from zbroker.broker import metadata as md
from zbroker.broker.controller import decide_partition
from zbroker.replication import (Diverging, EpochQuery, FetchQuery, HighWatermarkMoved,
                                 ProduceDone, ReplicaCore, Role, Truncated, WriteIsr)
from tests.sim.memlog import MemoryLog

TOPIC = "t"
SESSION_S = 2.0
HEARTBEAT_S = SESSION_S / 3
LAG_MAX_S = 1.0
FETCH_WAIT_S = 0.05
REQUEST_TIMEOUT_S = 0.5
PRODUCE_TIMEOUT_S = 1.0
PRODUCE_AFTER_HEAL_S = 3.0
CLIENT_TIMEOUT_S = 0.4          # the producer resends what got no answer (a lost message)
COORDINATOR = 0
CLIENT = -1


class InvariantBroken(AssertionError):
    pass


class Sim:
    def __init__(self, seed: int, n_brokers: int = 3, min_isr: int = 2, faults: bool = True):
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self._queue: list = []
        self._seq = itertools.count()
        self.trace: collections.deque = collections.deque(maxlen=80)
        self.faults = faults
        self.min_isr = min_isr
        self.drop_p = self.rng.choice([0.0, 0.01, 0.05]) if faults else 0.0
        self.dup_p = self.rng.choice([0.0, 0.01, 0.05]) if faults else 0.0
        self.cut: set[frozenset] = set()            # links cut (both ways)
        self._link_free: dict[tuple, float] = {}    # client link -> when its last message lands
        self.coordinator = Coordinator(self, list(range(1, n_brokers + 1)))
        self.brokers = {b: Broker(self, b) for b in range(1, n_brokers + 1)}
        self.producer = Producer(self)
        self.checker = Checker(self)
        self.trouble_until = 0.0                    # one fault at a time

    # --- scheduling ----------------------------------------------------------------------------
    def at(self, delay_s: float, fn, *args) -> None:
        heapq.heappush(self._queue, (self.now + delay_s, next(self._seq), fn, args))

    def log(self, what: str) -> None:
        self.trace.append(f"{self.now:8.3f} {what}")

    def run(self, duration_s: float = 20.0) -> "Sim":
        for b in self.brokers.values():
            b.start()
        self.coordinator.start()
        self.producer.start()
        if self.faults:
            self.at(0.5, self._inject)
        self.at(duration_s, self._heal)
        end = duration_s + 15.0
        while self._queue and self.now < end:
            t, _, fn, args = heapq.heappop(self._queue)
            self.now = t
            fn(*args)
            self.checker.after_event()
        self.checker.at_end()
        return self

    # --- the network ---------------------------------------------------------------------------
    def send(self, src: int, dst: int, msg: tuple) -> None:
        if frozenset((src, dst)) in self.cut or self.rng.random() < self.drop_p:
            return
        # A client talks to a broker over one TCP connection: its messages may be lost (the
        # connection drops) or slow, but never duplicated or reordered, which the producer
        # counts on (an answer to a resend tells the fate of the copies sent before it).
        client = CLIENT in (src, dst)
        copies = 2 if self.rng.random() < self.dup_p and not client else 1
        for _ in range(copies):
            delay = 0.0005 + self.rng.expovariate(1 / 0.002)
            if self.rng.random() < 0.02:
                delay += self.rng.uniform(0.05, 0.5)            # a slow path: reorders
            if client:
                link = (src, dst)
                delay = max(delay, self._link_free.get(link, 0.0) - self.now)
                self._link_free[link] = self.now + delay
            self.at(delay, self._deliver, src, dst, msg)

    def _deliver(self, src: int, dst: int, msg: tuple) -> None:
        if dst == COORDINATOR:
            self.coordinator.receive(src, msg)
        elif dst == CLIENT:
            self.producer.receive(src, msg)
        else:
            self.brokers[dst].receive(src, msg)

    # --- faults --------------------------------------------------------------------------------
    def _inject(self) -> None:
        if self.now >= self.trouble_until and not self._healing:
            kind = self.rng.choice(["kill", "kill", "pause", "power", "cut_peers",
                                    "cut_coordinator", "none"])
            b = self.brokers[self.rng.choice(list(self.brokers))]
            length = self.rng.uniform(0.1, 3.0 * SESSION_S)
            self.trouble_until = self.now + length + 2.0 * SESSION_S    # then time to recover
            if kind == "kill":
                b.crash(power_loss=False)
                self.at(length, b.start)
            elif kind == "power":
                b.crash(power_loss=True)
                self.at(length, b.start)
            elif kind == "pause":
                b.pause()
                self.at(length, b.resume)
            elif kind == "cut_peers":
                links = {frozenset((b.id, o)) for o in self.brokers if o != b.id}
                self.log(f"cut broker {b.id} from its peers for {length:.2f}s")
                self.cut |= links
                self.at(length, self._restore, links)
            elif kind == "cut_coordinator":
                links = {frozenset((b.id, COORDINATOR))}
                self.log(f"cut broker {b.id} from the coordinator for {length:.2f}s")
                self.cut |= links
                self.at(length, self._restore, links)
        self.at(self.rng.uniform(0.2, 1.5), self._inject)

    _healing = False

    def _restore(self, links) -> None:
        self.cut -= links

    def _heal(self) -> None:
        self.log("healing: no more faults")
        self._healing = True
        self.drop_p = self.dup_p = 0.0
        self.cut.clear()
        for b in self.brokers.values():
            if b.paused:
                b.resume()
            if not b.up:
                b.start()
        # the producer goes on a little in the healed cluster (so every seed has a healthy
        # stretch to acknowledge in), then stops, and the replicas must converge
        self.at(PRODUCE_AFTER_HEAL_S, lambda: setattr(self.producer, "stopping", True))


class Coordinator:
    """Sessions, the partition state key (with its version) and the controller, as one model:
    the controller's decisions are decide_partition's, taken whenever a session comes or goes."""

    def __init__(self, sim: Sim, replicas: list[int]):
        self.sim = sim
        self.replicas = tuple(replicas)
        self.sessions: dict[int, tuple[int, float]] = {}     # broker -> (epoch, last heard)
        self.epochs = itertools.count(100)
        self.state = md.PartitionState(TOPIC, 0, self.replicas, replicas[0], 0, self.replicas, 1,
                                       0)
        self._known_epochs: dict[int, int] = {}

    def start(self) -> None:
        self.sim.at(0.05, self._expire)
        self.sim.at(0.5, self._reread)

    def _reread(self) -> None:
        # the brokers' watchers also read the state again now and then (and on reconnects)
        self._publish()
        self.sim.at(0.5, self._reread)

    def broker_epochs(self) -> dict[int, int]:
        return {b: e for b, (e, _) in self.sessions.items()}

    def receive(self, src: int, msg: tuple) -> None:
        kind = msg[0]
        if kind == "register":
            if src in self.sessions:
                return      # the earlier life's session must expire first (the broker waits)
            epoch = next(self.epochs)
            self.sessions[src] = (epoch, self.sim.now)
            self.sim.log(f"coordinator: broker {src} registered, epoch {epoch}")
            self.sim.send(COORDINATOR, src, ("registered", epoch))
            self._decide()
        elif kind == "ping":
            epoch = msg[1]
            got = self.sessions.get(src)
            if got is None or got[0] != epoch:
                self.sim.send(COORDINATOR, src, ("expired", epoch))
                return
            self.sessions[src] = (epoch, self.sim.now)
            self.sim.send(COORDINATOR, src, ("pong", epoch, msg[2]))
        elif kind == "isr":
            _, isr, version, leader_epoch, ctl_epoch, req = msg
            st = self.state
            got = self.sessions.get(src)
            if got is None or version != st.version or st.leader != src or \
                    st.leader_epoch != leader_epoch:
                self.sim.send(COORDINATOR, src, ("isr_done", req, None))
                return
            self.state = st._replace(isr=tuple(isr), version=st.version + 1)
            self.sim.log(f"coordinator: ISR {isr} written by {src} (v{self.state.version})")
            self.sim.send(COORDINATOR, src, ("isr_done", req, self.state.version))
            self._publish()

    def _expire(self) -> None:
        for b, (epoch, heard) in list(self.sessions.items()):
            if self.sim.now - heard > SESSION_S:
                del self.sessions[b]
                self.sim.log(f"coordinator: session of broker {b} (epoch {epoch}) expired")
                self._decide()
        self.sim.at(0.05, self._expire)

    def _decide(self) -> None:
        epochs = self.broker_epochs()
        # a broker that came back with a new epoch counts as gone for this round
        live = {b for b, e in epochs.items() if self._known_epochs.get(b, e) == e}
        st = self.state
        for _ in range(2):
            got = decide_partition(self.replicas, st.leader, st.isr, live)
            if got is not None:
                leader, isr, bump = got
                st = st._replace(leader=leader, isr=tuple(isr),
                                 leader_epoch=st.leader_epoch + (1 if bump else 0),
                                 version=st.version + 1)
                self.sim.log(f"controller: leader {leader} epoch {st.leader_epoch} isr {isr}")
            live = set(epochs)
        self._known_epochs = epochs
        self.state = st
        self._publish()

    def _publish(self) -> None:
        """Every registered broker's watcher reads the new state, each after its own delay."""
        for b in self.sessions:
            self.sim.send(COORDINATOR, b, ("image", self.state, self.broker_epochs()))


class Broker:
    def __init__(self, sim: Sim, broker_id: int):
        self.sim = sim
        self.id = broker_id
        self.log = MemoryLog()
        self.up = False
        self.paused = False
        self.life = 0
        self.held: list = []

    # --- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.up:
            return
        self.up, self.paused = True, False
        self.life += 1
        self.core = ReplicaCore(self.id, self.log, f"{TOPIC}-0")
        self.core.min_insync_replicas = self.sim.min_isr
        self.epoch = -1                 # broker epoch, once registered
        self.last_contact = None
        self.registered = False
        self.fresh = False              # applied an image of this session
        self.in_flight = None           # (req id, leader, sent at)
        self.backoff_until = 0.0
        self.ids = itertools.count(1)
        self.waiting: dict = {}         # produce token -> (client, base offset)
        self.isr_requests: dict = {}    # request id -> WriteIsr
        self.last_ping = None
        self.epochs: dict = {}          # registered brokers' epochs, from the last image
        self.sim.log(f"broker {self.id} starts (life {self.life}, log end "
                     f"{self.log.log_end_offset})")
        self._tick_timer(self.life)

    def crash(self, power_loss: bool) -> None:
        if not self.up:
            return
        self.up = False
        self.paused = False
        self.held = []
        if power_loss:
            self.log.lose_unflushed()
        self.sim.log(f"broker {self.id} {'loses power' if power_loss else 'killed -9'} "
                     f"(log end now {self.log.log_end_offset})")

    def pause(self) -> None:
        if self.up and not self.paused:
            self.paused = True
            self.sim.log(f"broker {self.id} paused")

    def resume(self) -> None:
        if self.up and self.paused:
            self.paused = False
            self.sim.log(f"broker {self.id} resumed with {len(self.held)} messages waiting")
            held, self.held = self.held, []
            for src, msg in held:
                self.receive(src, msg)

    def serving(self) -> bool:
        """As leader: only while the session cannot have expired anywhere (2/3 of the timeout
        since the coordinator was last heard from) and with metadata of this session."""
        return self.core.is_leader and self.fresh and self.last_contact is not None and \
            self.sim.now - self.last_contact < SESSION_S * 2 / 3

    # --- timers --------------------------------------------------------------------------------
    def _tick_timer(self, life: int) -> None:
        if not self.up or self.life != life:
            return
        if not self.paused:
            self._tick()
        self.sim.at(0.02 + self.sim.rng.random() * 0.01, self._tick_timer, life)

    def _tick(self) -> None:
        now = self.sim.now
        if not self.registered:
            if self.sim.rng.random() < 0.2:
                self.sim.send(self.id, COORDINATOR, ("register",))
        elif self.last_ping is None or now - self.last_ping >= HEARTBEAT_S:
            self.last_ping = now
            self.sim.send(self.id, COORDINATOR, ("ping", self.epoch, now))
        if self.sim.rng.random() < 0.05:
            self.log.flush()
            self.log.high_watermark_checkpoint = min(self.core.high_watermark,
                                                     self.log.log_end_offset)
        if self.serving():
            self._carry_out(self.core.tick(now, LAG_MAX_S))
        self._fetch()

    # --- messages ------------------------------------------------------------------------------
    def receive(self, src: int, msg: tuple) -> None:
        if not self.up:
            return
        if self.paused:
            self.held.append((src, msg))
            return
        getattr(self, "on_" + msg[0])(src, *msg[1:])

    def on_registered(self, src, epoch) -> None:
        if self.registered:
            return
        self.registered, self.epoch, self.last_contact = True, epoch, self.sim.now
        self.last_ping = self.sim.now
        self.fresh = False

    def on_pong(self, src, epoch, sent_at) -> None:
        if epoch == self.epoch:
            self.last_contact = max(self.last_contact or 0.0, sent_at)

    def on_expired(self, src, epoch) -> None:
        if epoch != self.epoch or not self.registered:
            return
        self.sim.log(f"broker {self.id} learns its session expired; registering again")
        self.registered, self.fresh, self.last_contact = False, False, None

    def on_image(self, src, st, epochs) -> None:
        if not self.registered or epochs.get(self.id) != self.epoch:
            return          # an image read for a session we left
        self.fresh = True
        self.epochs = epochs
        self.core.set_broker_epochs(epochs)
        before = (self.core.role, self.core.leader_epoch)
        self._carry_out(self.core.on_partition_state(st, self.sim.now))
        if (self.core.role, self.core.leader_epoch) != before:
            self.in_flight = None
            self.sim.log(f"broker {self.id}: {self.core.role.value} in epoch "
                         f"{self.core.leader_epoch} (log end {self.log.log_end_offset})")
            if self.core.is_leader:
                self.sim.checker.became_leader(self)

    def on_isr_done(self, src, req, version) -> None:
        w = self.isr_requests.pop(req, None)
        if w is None:
            return
        if version is None:
            self.core.on_isr_write_failed(w.isr, w.leader_epoch)
        else:
            self._carry_out(self.core.on_isr_written(w.isr, version, w.leader_epoch,
                                                     self.sim.now))

    # --- as leader ---------------------------------------------------------------------------
    def on_produce(self, src, req, values, epoch, producer) -> None:
        core = self.core
        if not self.serving() or epoch != core.leader_epoch:
            self.sim.send(self.id, src, ("produce_done", req, "NotLeaderOrFollower"))
            return
        try:
            core.check_produce(-1)
            base, end, written = self.log.append(values, core.leader_epoch, producer)
        except errors.ZbError as e:
            self.sim.send(self.id, src, ("produce_done", req, type(e).__name__))
            return
        token = (self.life, req)
        self.waiting[token] = (src, base)
        if written:
            self.sim.checker.appended_as_leader(self, core.leader_epoch)
            self._carry_out(core.on_leader_append())
        self._carry_out(core.wait_for_high_watermark(token, end))    # a duplicate: its commit
        self.sim.at(PRODUCE_TIMEOUT_S, self._produce_timeout, token)

    def _produce_timeout(self, token) -> None:
        if self.up and token in self.waiting and token[0] == self.life:
            self.core.cancel_wait(token)
            src, _ = self.waiting.pop(token)
            self.sim.send(self.id, src, ("produce_done", token[1], "RequestTimedOut"))

    def on_fetch(self, src, req, replica_epoch, offset, leader_epoch, last_epoch) -> None:
        core = self.core
        if not self.serving() or leader_epoch != core.leader_epoch:
            self.sim.send(self.id, src, ("fetch_done", req, "NotLeaderOrFollower", None))
            return
        try:
            diverging, effects = core.on_follower_fetch(src, replica_epoch, offset, last_epoch,
                                                        self.sim.now, (), req)
        except errors.OffsetOutOfRange:
            self.sim.send(self.id, src, ("fetch_done", req, "OffsetOutOfRange",
                                         (self.log.log_start_offset, self.log.log_end_offset)))
            return
        except errors.ZbError as e:
            self.sim.send(self.id, src, ("fetch_done", req, type(e).__name__, None))
            return
        self._carry_out(effects)
        blob = () if diverging else self.log.read(offset, self.sim.rng.randint(1, 4))
        self.sim.send(self.id, src, ("fetch_done", req, None,
                                     (core.high_watermark, self.log.log_start_offset, blob,
                                      diverging)))

    def on_epoch_query(self, src, req, replica_epoch, leader_epoch, epoch) -> None:
        core = self.core
        if not self.serving() or leader_epoch != core.leader_epoch or \
                self.epochs.get(src) != replica_epoch:
            self.sim.send(self.id, src, ("epoch_done", req, "NotLeaderOrFollower", None))
            return
        got = self.log.leader_epoch_cache.end_offset_for_epoch(epoch, self.log.log_end_offset)
        self.sim.send(self.id, src, ("epoch_done", req, None, got))

    # --- as follower -------------------------------------------------------------------------
    def _fetch(self) -> None:
        core = self.core
        if core.role is not Role.FOLLOWER or not self.registered or \
                core.leader_id == md.NO_LEADER:
            return
        now = self.sim.now
        if self.in_flight is not None and now - self.in_flight[2] < REQUEST_TIMEOUT_S:
            return
        if now < self.backoff_until:
            return
        q = core.next_request()
        req = next(self.ids)
        self.in_flight = (req, core.leader_id, now)
        if isinstance(q, EpochQuery):
            self.sim.send(self.id, core.leader_id, ("epoch_query", req, self.epoch,
                                                    q.current_leader_epoch, q.epoch))
        elif isinstance(q, FetchQuery):
            self.sim.send(self.id, core.leader_id, ("fetch", req, self.epoch, q.fetch_offset,
                                                    q.current_leader_epoch,
                                                    q.last_fetched_epoch))

    def _answered(self, src, req) -> bool:
        if self.in_flight is None or self.in_flight[0] != req or self.in_flight[1] != src:
            return False
        self.in_flight = None
        return True

    def on_epoch_done(self, src, req, err, got) -> None:
        if not self._answered(src, req):
            return
        if err:
            self.backoff_until = self.sim.now + 0.05
            return
        self._carry_out(self.core.on_epoch_end(*got))
        self._fetch()

    def on_fetch_done(self, src, req, err, got) -> None:
        if not self._answered(src, req):
            return
        if err == "OffsetOutOfRange":
            self._carry_out(self.core.on_out_of_range(*got))
            self.backoff_until = self.sim.now + 0.05
            return
        if err:
            self.backoff_until = self.sim.now + 0.05
            return
        hw, log_start, blob, diverging = got
        try:
            effects = self.core.on_fetch_data(hw, log_start, blob,
                                              Diverging(*diverging) if diverging else None)
        except errors.ZbError:
            self.backoff_until = self.sim.now + 0.05
            return
        self._carry_out(effects)
        if blob or diverging:
            self._fetch()

    # --- effects -------------------------------------------------------------------------------
    def _carry_out(self, effects: list) -> None:
        for e in effects:
            if isinstance(e, WriteIsr):
                req = next(self.ids)
                self.isr_requests[req] = e
                self.sim.at(REQUEST_TIMEOUT_S, self.on_isr_done, COORDINATOR, req, None)
                self.sim.send(self.id, COORDINATOR, ("isr", e.isr, e.version, e.leader_epoch,
                                                     e.controller_epoch, req))
            elif isinstance(e, ProduceDone):
                got = self.waiting.pop(e.token, None)
                if got is not None:
                    src, base = got
                    err = type(e.error).__name__ if e.error else None
                    self.sim.send(self.id, src, ("produce_done", e.token[1], err, base))
            elif isinstance(e, (HighWatermarkMoved, Truncated)):
                if isinstance(e, Truncated):
                    self.sim.log(f"broker {self.id} truncated {e.from_offset} -> "
                                 f"{e.to_offset} ({e.why})")
            else:
                raise AssertionError(e)


class Producer:
    """An idempotent producer of single-record batches with acks=all, by the client library's
    rules: each batch carries its sequence, at most five are in flight, a batch is resent as it
    was until an answer without error acknowledges it (a duplicate is answered with its first
    offset). UNKNOWN_PRODUCER_ID or OUT_OF_ORDER_SEQUENCE_NUMBER on the oldest unacknowledged
    batch start a new epoch, once every batch sent without an answer has been resent and
    answered; the new epoch numbers what is left from 0."""

    PRODUCER_ID = 77

    def __init__(self, sim: Sim):
        self.sim = sim
        self.values = itertools.count()
        self.epoch = 0
        self.next_seq = 0
        self.unacked: list[list] = []           # [seq, values, fate unknown] in sequence order
        self.in_flight: dict[int, tuple] = {}   # req -> (seq, epoch, sent at)
        self.bump_wanted = False
        self.stopping = False
        self.ids = itertools.count(1)

    def start(self) -> None:
        self.sim.at(0.3, self._send)

    def _send(self) -> None:
        if self.stopping:
            return
        for req, (_, _, sent) in list(self.in_flight.items()):
            if self.sim.now - sent > CLIENT_TIMEOUT_S:
                del self.in_flight[req]         # no answer: its fate stays unknown
        if self.bump_wanted and not self.in_flight and not any(b[2] for b in self.unacked):
            self.epoch += 1
            self.bump_wanted = False
            for i, batch in enumerate(self.unacked):
                batch[0] = i
            self.next_seq = len(self.unacked)
            self.sim.log(f"producer: new epoch {self.epoch}")
        if len(self.unacked) < 5 and not self.bump_wanted:
            self.unacked.append([self.next_seq, (next(self.values),), False])
            self.next_seq += 1
        st = self.sim.coordinator.state       # the client's metadata (read straight away)
        busy = {seq for seq, _, _ in self.in_flight.values()}
        if st.leader != md.NO_LEADER:
            for batch in self.unacked:          # in sequence order, the oldest first
                seq, values, unknown = batch
                if len(self.in_flight) >= (1 if self.bump_wanted else 5):
                    break
                if seq in busy or (self.bump_wanted and not unknown):
                    continue
                req = next(self.ids)
                batch[2] = True
                self.in_flight[req] = (seq, self.epoch, self.sim.now)
                self.sim.send(CLIENT, st.leader, ("produce", req, values, st.leader_epoch,
                                                  (self.PRODUCER_ID, self.epoch, seq)))
        self.sim.at(self.sim.rng.uniform(0.005, 0.03), self._send)

    def receive(self, src: int, msg: tuple) -> None:
        _, req, err, *rest = msg
        got = self.in_flight.pop(req, None)
        if got is None:
            return
        seq, epoch, _ = got
        if epoch != self.epoch:
            return
        at = next((i for i, b in enumerate(self.unacked) if b[0] == seq), None)
        if at is None:
            return
        if err in ("UnknownProducerId", "OutOfOrderSequenceNumber", "NotLeaderOrFollower",
                   "NotEnoughReplicas", "InvalidProducerEpoch"):
            self.unacked[at][2] = False         # refused: not written
            if err in ("UnknownProducerId", "OutOfOrderSequenceNumber") and at == 0:
                self.bump_wanted = True
            return
        if err:
            return                              # e.g. a timeout after the append: unknown
        values = self.unacked.pop(at)[1]
        for j, v in enumerate(values):
            self.sim.checker.acked(v, rest[0] + j, src)


class Checker:
    def __init__(self, sim: Sim):
        self.sim = sim
        self.leaders: dict[int, set] = {}           # leader epoch -> brokers that appended
        self.committed: dict[int, tuple] = {}       # offset -> (epoch, value) below some HW
        self.acks: dict[int, int] = {}              # value -> offset
        self.checked: dict[tuple, int] = {}         # (broker, life) -> HW checked up to

    def fail(self, what: str) -> None:
        trace = "\n".join(self.sim.trace)
        raise InvariantBroken(f"seed {self.sim.seed}: {what}\nlast events:\n{trace}")

    def appended_as_leader(self, b: Broker, epoch: int) -> None:
        who = self.leaders.setdefault(epoch, set())
        who.add(b.id)
        if len(who) > 1:
            self.fail(f"two leaders appended in leader epoch {epoch}: {sorted(who)}")

    def acked(self, value: int, offset: int, by: int) -> None:
        self.acks[value] = offset
        st = self.sim.coordinator.state
        if st.leader != md.NO_LEADER:
            self._leader_holds(self.sim.brokers[st.leader], {value: offset})

    def became_leader(self, b: Broker) -> None:
        self._leader_holds(b, self.acks)

    def _leader_holds(self, b: Broker, acks: dict) -> None:
        if not (b.up and b.core.is_leader):
            return
        recs = b.log.records()
        for v, o in acks.items():
            if o >= b.log.log_start_offset and recs.get(o, (None, None))[1] != v:
                self.fail(f"acknowledged value {v} at offset {o} is not in leader {b.id}'s "
                          f"log in epoch {b.core.leader_epoch} (it holds {recs.get(o)})")

    def after_event(self) -> None:
        for b in self.sim.brokers.values():
            if not b.up:
                continue
            log = b.log
            key = (b.id, b.life)
            hw = b.core.high_watermark
            done = self.checked.get(key)
            if done is not None and hw < done:
                self.fail(f"broker {b.id}'s high watermark went back from {done} to {hw}")
            if hw > log.log_end_offset:
                self.fail(f"broker {b.id}'s high watermark {hw} is past its log end "
                          f"{log.log_end_offset}")
            start = log.log_start_offset if done is None else done
            if hw > start:
                log.check_contiguous()
                for o, r in log.records_between(start, hw).items():
                    seen = self.committed.setdefault(o, r)
                    if seen != r:
                        self.fail(f"offset {o} below broker {b.id}'s high watermark holds {r}, "
                                  f"but {seen} was committed there")
            self.checked[key] = hw

    def at_end(self) -> None:
        brokers = list(self.sim.brokers.values())
        ends = {b.id: b.log.log_end_offset for b in brokers}
        hws = {b.id: b.core.high_watermark for b in brokers}
        if len(set(ends.values())) != 1 or len(set(hws.values())) != 1 or \
                hws[brokers[0].id] != ends[brokers[0].id]:
            self.fail(f"replicas did not converge after healing: log ends {ends}, high "
                      f"watermarks {hws}")
        first = brokers[0].log.records()
        for b in brokers:
            b.log.check_contiguous()
            if b.log.records() != first:
                self.fail(f"broker {b.id}'s log differs from broker {brokers[0].id}'s")
        for v, o in self.acks.items():
            if first.get(o, (None, None))[1] != v:
                self.fail(f"acknowledged value {v} at offset {o} lost (holds {first.get(o)})")
        values = [first[o][1] for o in sorted(first)]
        if len(set(values)) != len(values):
            twice = sorted(v for v in set(values) if values.count(v) > 1)
            self.fail(f"values written more than once: {twice[:5]}")
        if values != sorted(values):
            self.fail("the producer's values are not in the order it sent them")
        if len(self.acks) < 5:     # (the producer waits for its oldest batch, in order)
            self.fail(f"only {len(self.acks)} values were acknowledged")


def run_seed(seed: int, duration_s: float = 20.0) -> Sim:
    return Sim(seed).run(duration_s)
