"""The controller: one broker of the cluster, elected through the coordinator with a fencing
epoch (coordinator.election.Election on /controller). It

- assigns the partitions of new topics to live brokers (leaders spread round-robin, replicas
  spread across racks when brokers have one) and writes the topic record and every partition's
  state (leader, leader_epoch, isr, controller_epoch);
- keeps partition leaders right as brokers come and go (``decide_partition``): a broker whose
  registration disappeared (or that came back with a new broker epoch) leaves every ISR; a
  partition whose leader went gets the first live in-sync replica with a bumped leader epoch or,
  when there is none, leader -1 until an in-sync replica returns (unless the topic sets
  unclean.leader.election.enable=true: then any live replica, which may lose records);
- controlled shutdown: a broker shutting down (``/brokers/shutdown/<id>``) hands its leaderships
  to other in-sync replicas and leaves every ISR, and is not elected while it goes;
- preferred leaders: every leader.imbalance.check.interval.seconds (with
  auto.leader.rebalance.enable) a partition whose first replica is alive and in sync but not
  leading is handed back to it;
- answers the admin APIs (CreateTopics, DeleteTopics, CreatePartitions) and auto-create requests
  written under /admin/create_topics.

Every write carries ``election.fence()`` in the same multi, so a deposed controller's writes fail
all or nothing. The controller runs on its own thread (its coordinator calls block); the broker's
loop hands it admin requests through ``submit`` and gets the reply back through a callback.

``assign_replicas``, ``elect_leader`` and ``decide_partition`` are pure functions, testable
without processes.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from typing import Callable

from coordinator.client import (BadVersion, CoordinatorClient, FencedEpoch, NodeExists, NoNode,
                                Op, ZbError)
from coordinator.election import Election
from zbroker import acl, errors, protocol
from zbroker.broker import acls
from zbroker.broker import metadata as md
from zbroker.broker.config import check_topic_config, topic_unclean_election
from zbroker.config import ConfigError
from zbroker.logs import get_logger

log = get_logger("zbroker.broker.controller")

MULTI_OPS_MAX = 900         # below the coordinator's 1000-op limit, leaving room for the fence


# --- pure parts -------------------------------------------------------------------------------

def rack_alternated(brokers: dict[int, str | None]) -> list[int]:
    """Broker ids ordered so that consecutive ids are on different racks where possible (Kafka's
    getRackAlternatedBrokerList). Without racks: ids sorted."""
    if not any(brokers.values()):
        return sorted(brokers)
    by_rack: dict[str, list[int]] = {}
    for b in sorted(brokers):
        by_rack.setdefault(brokers[b] or "", []).append(b)
    racks = sorted(by_rack)
    out = []
    for i in range(max(len(v) for v in by_rack.values())):
        for r in racks:
            if i < len(by_rack[r]):
                out.append(by_rack[r][i])
    return out


def assign_replicas(brokers: dict[int, str | None], num_partitions: int, replication_factor: int,
                    start_index: int = 0, first_partition: int = 0) -> list[list[int]]:
    """Replica lists for partitions first_partition .. first_partition+num_partitions-1: the
    leader of partition p is broker (start + p) of the rack-alternated list, the followers the
    next ones after a per-round shift (Kafka's scheme), so leaders spread round-robin and
    replicas of one partition sit on different brokers (and racks where possible)."""
    order = rack_alternated(brokers)
    n = len(order)
    if not 1 <= replication_factor <= n:
        raise errors.InvalidReplicationFactor(
            f"The replication factor {replication_factor} must be between 1 and the number of "
            f"live brokers ({n}).")
    n_racks = len({brokers[b] for b in order}) if any(brokers.values()) else 0
    out = []
    for p in range(first_partition, first_partition + num_partitions):
        first = (start_index + p) % n
        shift = 1 + (p // n) % max(1, n - 1)
        replicas = [order[first]]
        racks_used = {brokers[order[first]]}
        for j in range(1, replication_factor):
            idx = (first + shift * j) % n
            chosen = None
            for k in range(2 * n):          # first pass: a new rack; second: any broker
                cand = order[(idx + k) % n]
                if cand in replicas:
                    continue
                if k < n and n_racks and len(racks_used) < n_racks and \
                        brokers[cand] in racks_used:
                    continue
                chosen = cand
                break
            replicas.append(chosen)
            racks_used.add(brokers[chosen])
        out.append(replicas)
    return out


def elect_leader(replicas, isr, live) -> int:
    """The first live replica that is in sync (no unclean election), else -1."""
    for r in replicas:
        if r in isr and r in live:
            return r
    return md.NO_LEADER


def decide_partition(replicas, leader: int, isr, live, shutting_down=frozenset(),
                     unclean: bool = False, preferred: bool = False):
    """The partition state the controller should write: (leader, isr, bump_epoch) or None for
    no change. ``live``: brokers registered now, in their current life (a broker that came back
    with a new broker epoch counts as gone for this round: it lost its place in the ISR).
    Pure: no I/O."""
    isr = list(isr)
    isr_live = [r for r in isr if r in live]

    def keep_out(new_leader):
        # shutting-down brokers leave the ISR, unless one is the only leader we have
        return [r for r in isr_live if r not in shutting_down or r == new_leader]

    if leader != md.NO_LEADER and leader in live and leader not in shutting_down:
        if preferred and replicas and replicas[0] != leader and replicas[0] in isr_live and \
                replicas[0] not in shutting_down:
            return replicas[0], keep_out(replicas[0]), True
        new_isr = keep_out(leader)
        return None if new_isr == isr else (leader, new_isr, False)
    candidates = [r for r in replicas if r in isr_live and r not in shutting_down]
    if candidates:
        return candidates[0], keep_out(candidates[0]), True
    if leader != md.NO_LEADER and leader in live:
        # leading and shutting down, with nobody in sync to take over: it stays
        new_isr = keep_out(leader)
        return None if new_isr == isr else (leader, new_isr, False)
    if unclean:
        anyone = [r for r in replicas if r in live and r not in shutting_down]
        if anyone:
            return anyone[0], [anyone[0]], True
    if leader == md.NO_LEADER:
        return None
    # No in-sync replica is alive: no leader until one returns. The ISR keeps its last members,
    # so the first of them to come back can lead without losing acknowledged records.
    return md.NO_LEADER, isr, True


def registered_after(st: md.PartitionState, live: dict) -> set:
    """The leader and ISR members of ``st`` whose registration (``live``: id -> (rack, broker
    epoch = creation zxid)) is newer than the state's last write. None for a partition without
    a leader: there the first in-sync replica to come back leads again (decide_partition), as
    it always could."""
    if st.zxid < 0 or st.leader == md.NO_LEADER:
        return set()
    return {b for b in (st.leader, *st.isr) if b in live and live[b][1] > st.zxid}


# --- the controller thread --------------------------------------------------------------------

def _check_request_size(api: str, partitions: int) -> None:
    """One admin request creates at most PARTITIONS_PER_REQUEST_MAX partitions (as counted
    before anything is written), so no single client request can make the controller write
    millions of keys."""
    if partitions > protocol.PARTITIONS_PER_REQUEST_MAX:
        raise errors.InvalidRequest(
            f"One {api} request may create at most {protocol.PARTITIONS_PER_REQUEST_MAX} "
            f"partitions, not {partitions}; use several requests.")


def _topic_record(name: str, raw: bytes):
    try:
        return md.decode_topic(raw)
    except ValueError:
        raise errors.UnknownServerError(f"The coordinator's record of the topic {name!r} is "
                                        f"unreadable.") from None


class Controller:
    def __init__(self, client: CoordinatorClient, broker_id: int, cfg,
                 reply: Callable[[bytes, list, object], None]):
        """``reply(ident, frames, wait_for)`` hands a response to the loop; ``wait_for`` is None
        or (kind, topic names) the loop waits to see in its own metadata first."""
        self.client = client
        self.broker_id = broker_id
        self.cfg = cfg
        self.reply = reply
        self.election = Election(client, md.CONTROLLER, identifier=str(broker_id).encode())
        self.active = False             # read by the loop thread: answer admin APIs or not
        self.epoch = 0
        self._events: queue.Queue = queue.Queue(maxsize=10000)
        self._stopping = False
        self._broker_epochs: dict[int, int] = {}    # id -> czxid of its registration
        self._settled = None        # the brokers (and those shutting down) last reconciled for
        self._thread = threading.Thread(target=self._main, name="controller", daemon=True)

    def start(self) -> None:
        self.client.watch(md.BROKER_IDS, lambda ev: self._put(("brokers",)))
        self.client.watch(md.SHUTDOWN, lambda ev: self._put(("brokers",)))
        self.client.watch(md.CREATE_TOPIC_REQUESTS, lambda ev: self._put(("auto_create",)))
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._put(("stop",))
        self._thread.join(5)
        if self.active:
            self.active = False
            try:
                self.election.resign()
            except Exception:
                pass

    def submit(self, ident: bytes, header: dict) -> bool:
        """An admin request from the loop; False when the queue is full."""
        return self._put(("admin", ident, header))

    def _put(self, item) -> bool:
        try:
            self._events.put_nowait(item)
            return True
        except queue.Full:
            return False

    # --- main ---------------------------------------------------------------------------------
    def _main(self) -> None:
        while not self._stopping:
            try:
                epoch = self.election.run(timeout_s=0.5)
            except TimeoutError:
                self._refuse_pending()
                continue
            except ZbError as e:
                log.warning("controller election failed; retrying", error=str(e))
                time.sleep(0.5)
                continue
            self.epoch = epoch
            self.active = True
            log.info("became controller", controller_epoch=epoch)
            try:
                while True:
                    try:
                        self._reconcile()
                        break
                    except FencedEpoch:
                        raise
                    except ZbError as e:
                        log.warning("controller start-up read failed; retrying", error=str(e))
                        time.sleep(0.5)
                self._serve()
            except FencedEpoch:
                log.warning("another broker is controller now; stepping down")
            except Exception:
                if not self._stopping:
                    log.exception("controller failed; stepping down")
            self.active = False
            try:
                self.election.resign()
            except Exception:
                pass
            self.election.epoch = None
            time.sleep(0.2)

    def _refuse_pending(self) -> None:
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return
            if item[0] == "admin":
                self.reply(item[1], protocol.encode_error(item[2]["id"], errors.NotController()),
                           None)

    def _serve(self) -> None:
        """Handle events while this broker is controller. Only FencedEpoch (another controller
        won) ends it; a coordinator hiccup (ConnectionLoss) is retried: our /controller key
        lives as long as our session, and the fence keeps a stale write out either way."""
        retry_reconcile = False
        interval_s = self.cfg["leader.imbalance.check.interval.seconds"]
        next_rebalance = time.monotonic() + interval_s
        while not self._stopping:
            now = time.monotonic()
            if self.cfg["auto.leader.rebalance.enable"] and now >= next_rebalance:
                next_rebalance = now + interval_s
                self._put(("rebalance",))
            wait = min(0.5 if retry_reconcile else 5, max(next_rebalance - now, 0.01))
            try:
                item = self._events.get(timeout=wait)
            except queue.Empty:
                if time.monotonic() >= next_rebalance or \
                        (not retry_reconcile and self._unchanged_since_settled()):
                    continue
                item = ("brokers",)     # a safety net: the watches should have told us
            kind = item[0]
            if kind == "stop":
                return
            try:
                if kind == "brokers":
                    self._drain_kind("brokers")
                    retry_reconcile = True
                    retry_reconcile = not self._reconcile()
                elif kind == "rebalance":
                    self._reconcile(preferred=True)
                elif kind == "auto_create":
                    self._drain_kind("auto_create")
                    self._auto_create()
                elif kind == "admin":
                    self._admin(item[1], item[2])
            except FencedEpoch:
                raise
            except ZbError as e:
                log.warning("controller step failed; will retry", event=kind, error=str(e))
                if kind == "admin":
                    self.reply(item[1], protocol.encode_error(item[2]["id"], errors.RequestTimedOut(
                        f"The controller could not reach the coordinator: {e}")), None)
                elif kind == "auto_create":
                    time.sleep(0.2)
                    self._put(("auto_create",))

    def _drain_kind(self, kind: str) -> None:
        """Coalesce queued events of one kind (one re-read serves them all)."""
        keep = []
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                break
            if item[0] != kind:
                keep.append(item)
        for item in keep:
            self._put(item)

    def _multi(self, ops: list) -> None:
        """Write ops fenced by this controller's epoch, in chunks the coordinator accepts."""
        for i in range(0, len(ops), MULTI_OPS_MAX):
            self.client.multi([self.election.fence(), *ops[i:i + MULTI_OPS_MAX]])

    # --- leaders as brokers come and go -------------------------------------------------------
    def _live_brokers(self) -> dict[int, tuple[str | None, int]]:
        """id -> (rack, broker epoch) of every registered broker."""
        live = {}
        try:
            ids = self.client.children(md.BROKER_IDS)
        except NoNode:
            return live
        for c in ids:
            if not c.isdigit():
                continue
            try:
                raw, stat = self.client.get_with_stat(md.broker_path(int(c)))
            except NoNode:
                continue
            try:
                info = md.decode_registration(int(c), raw)
            except ValueError:
                md.warn_once("broker registration", md.broker_path(int(c)), stat.mzxid)
                continue        # not a broker: garbage someone wrote under /brokers/ids
            live[int(c)] = (info.rack, stat.czxid)
        return live

    def _unchanged_since_settled(self) -> bool:
        try:
            return self._settled is not None and self._brokers_seen() == self._settled
        except ZbError:
            return False

    def _brokers_seen(self) -> tuple:
        """The registered brokers with their epochs and those shutting down: what partition
        states are decided by, read cheaply (a few keys, not every partition's state)."""
        try:
            down = frozenset(self.client.children(md.SHUTDOWN))
        except NoNode:
            down = frozenset()
        return self._live_brokers(), down

    def _reconcile(self, preferred: bool = False) -> bool:
        for _attempt in range(10):
            seen = self._brokers_seen()
            live = seen[0]
            image = md.read_image(self.client)
            restarted = {b for b, (_, ep) in live.items()
                         if b in self._broker_epochs and self._broker_epochs[b] != ep}
            ops = []
            newer = False
            for t in image.topics.values():
                unclean = topic_unclean_election(self.cfg, t.config)
                for st in t.partitions:
                    if st is None:
                        continue
                    # A leader or ISR member registered after this state was written is a new
                    # life of that broker (which a power loss may have left with fewer
                    # records), whether or not this controller saw its earlier epoch: it leaves
                    # the ISR, and a leader is elected anew with a new leader epoch.
                    mine = restarted | registered_after(st, live)
                    newer = newer or mine != restarted
                    op = self._leader_change(st, live, mine, image.shutting_down, unclean,
                                             preferred)
                    if op is not None:
                        ops.append(op)
            try:
                if ops:
                    self._multi(ops)
                    log.info("partition states changed", partitions=len(ops),
                             live=sorted(live), shutting_down=sorted(image.shutting_down),
                             preferred=preferred)
            except BadVersion:
                # A leader changed its ISR meanwhile. Write the others one by one (each fenced)
                # so one busy partition does not hold up the rest, then read again.
                stale = 0
                for op in ops:
                    try:
                        self.client.multi([self.election.fence(), op])
                    except BadVersion:
                        stale += 1
                if stale:
                    time.sleep(0.01)
                    continue
            # A restarted broker was taken out of the ISRs above; from now on it counts as live.
            self._broker_epochs = {b: ep for b, (_, ep) in live.items()}
            if (restarted or newer) and ops:
                continue        # a second pass may elect it where nobody else is in sync
            self._settled = seen if not ops else None
            return True
        log.warning("could not settle partition states after 10 attempts; will retry")
        return False

    def _leader_change(self, st: md.PartitionState, live, restarted, shutting_down,
                       unclean: bool, preferred: bool) -> list | None:
        alive = {b for b in live if b not in restarted}
        decision = decide_partition(st.replicas, st.leader, st.isr, alive, shutting_down,
                                    unclean, preferred)
        if decision is None:
            return None
        leader, isr, bump = decision
        if leader != st.leader or bump:
            log.info("partition leader changed", topic=st.topic, partition=st.partition,
                     leader=leader, was=st.leader, leader_epoch=st.leader_epoch + 1,
                     isr=isr)
        return Op.set(md.partition_path(st.topic, st.partition),
                      md.encode_state(leader, st.leader_epoch + (1 if bump else 0), isr,
                                      self.epoch),
                      st.version)

    # --- topics ----------------------------------------------------------------------------------
    def _admin(self, ident: bytes, header: dict) -> None:
        api, req_id = header["api"], header["id"]
        try:
            if api == "CreateTopics":
                results, wait = self._create_topics(header)
            elif api == "DeleteTopics":
                results, wait = self._delete_topics(header)
            elif api == "CreatePartitions":
                results, wait = self._create_partitions(header)
            elif api in ("CreateAcls", "DeleteAcls"):
                results = self._create_acls(header) if api == "CreateAcls" else \
                    self._delete_acls(header)
                self.reply(ident, protocol.encode_response(req_id, results=results), None)
                return
            else:
                raise errors.InvalidRequest(f"{api} is not an admin API.")
        except FencedEpoch:
            self.reply(ident, protocol.encode_error(req_id, errors.NotController()), None)
            raise
        except errors.ConnectionLoss:
            raise                   # _serve answers REQUEST_TIMED_OUT
        except errors.ZbError as e:
            self.reply(ident, protocol.encode_error(req_id, e), None)
            return
        except Exception as e:      # our bug, met by a request: answer it, keep the controller
            log.exception("an admin request failed", api=api)
            self.reply(ident, protocol.encode_error(req_id, errors.UnknownServerError(
                f"The controller failed on this {api} request ({type(e).__name__}).")), None)
            return
        frames = protocol.encode_response(req_id, topics=results)
        self.reply(ident, frames, (api, wait, header.get("timeout_ms", 30000)))

    def _write_one(self, fn, name, wait: list | None = None):
        """Run fn() for one topic; a ZbError becomes that topic's [name, code, sentence]. On
        success, (name, fn's result = partitions to expect) goes on ``wait``."""
        try:
            count = fn()
        except FencedEpoch:
            raise
        except errors.ZbError as e:
            if e.code >= errors.NoNode.code:      # the coordinator's own errors: not for clients
                log.warning("coordinator write failed", topic=name, error=str(e))
                return [name, errors.RequestTimedOut.code,
                        f"The controller's write to the coordinator failed ({e.name}); the "
                        f"outcome may be unknown, retry."]
            return [name, e.code, str(e)]
        if wait is not None and count is not None:
            wait.append((name, count))
        return [name, 0, None]

    def _create_topics(self, header: dict):
        entries = header["topics"]
        protocol.check_entries("CreateTopics", "topics", entries, protocol.CREATE_TOPIC)
        _check_request_size("CreateTopics", sum(
            len(e[4]) if isinstance(e[4], dict) else
            (e[1] if e[1] > 0 else self.cfg["num.partitions"]) for e in entries))
        validate_only = bool(header.get("validate_only", False))
        live = self._live_brokers()
        results, created = [], []
        seen = set()
        refused = header.get("_refused") or {}
        for name, partitions, rf, config, assignment in entries:
            if name in refused:
                results.append([name, *refused[name]])
                continue
            if name in seen:
                results.append([name, errors.InvalidRequest.code,
                                f"The topic {name!r} is named twice in one request."])
                continue
            seen.add(name)
            results.append(self._write_one(
                lambda: self._create_topic(name, partitions, rf, config or {}, assignment, live,
                                           validate_only), name, created))
        return results, created

    def _create_topic(self, name, partitions, rf, config, assignment, live, validate_only):
        protocol.check_topic_name(name)
        if partitions == -1:
            partitions = self.cfg["num.partitions"]
        if rf == -1:
            rf = self.cfg["default.replication.factor"]
        try:
            check_topic_config(config)
        except ConfigError as e:
            raise errors.InvalidConfig(str(e)) from None
        if assignment is not None:
            replicas = self._check_assignment(assignment, live)
        else:
            if not 1 <= partitions <= protocol.PARTITIONS_PER_TOPIC_MAX:
                raise errors.InvalidPartitions(
                    f"A topic needs between 1 and {protocol.PARTITIONS_PER_TOPIC_MAX} "
                    f"partitions, not {partitions}.")
            if not live:
                raise errors.BrokerNotAvailable("No broker is registered.")
            replicas = assign_replicas({b: r for b, (r, _) in live.items()}, partitions, rf,
                                       random.randrange(len(live)))
        if self.client.exists(md.topic_path(name)) is not None:
            raise errors.TopicAlreadyExists(f"The topic {name!r} already exists.")
        if validate_only:
            return None
        ops = [Op.create(md.topic_path(name),
                         md.encode_topic(os.urandom(8).hex(), replicas, dict(config)))]
        ops += self._new_partition_ops(name, 0, replicas, live)
        try:
            self._multi(ops)
        except NodeExists:
            raise errors.TopicAlreadyExists(f"The topic {name!r} already exists.") from None
        log.info("topic created", topic=name, partitions=len(replicas),
                 replication_factor=len(replicas[0]))
        return len(replicas)

    def _new_partition_ops(self, name, first, replicas, live) -> list:
        ops = []
        for p, reps in enumerate(replicas, first):
            leader = elect_leader(reps, reps, live)
            # every replica starts empty, so every live one is in sync
            isr = [r for r in reps if r in live] if leader != md.NO_LEADER else [reps[0]]
            ops.append(Op.create(md.partition_path(name, p),
                                 md.encode_state(leader, 0, isr, self.epoch)))
        return ops

    def _check_assignment(self, assignment: dict, live) -> list[list[int]]:
        n = len(assignment)
        if not 1 <= n <= protocol.PARTITIONS_PER_TOPIC_MAX or \
                not all(type(p) is int for p in assignment) or \
                sorted(assignment) != list(range(n)):
            raise errors.InvalidPartitions("A replica assignment must name partitions 0..n-1.")
        replicas = [assignment[p] for p in range(n)]
        rf = None
        for reps in replicas:
            if not isinstance(reps, list) or not reps or \
                    len(reps) > protocol.REPLICAS_PER_PARTITION_MAX or \
                    not all(type(b) is int for b in reps):
                raise errors.InvalidReplicationFactor(
                    "Each partition's replicas must be a non-empty list of broker ids.")
            if len(set(reps)) != len(reps):
                raise errors.InvalidReplicationFactor("A partition names a broker twice.")
            if rf is not None and len(reps) != rf:
                raise errors.InvalidReplicationFactor(
                    "Every partition must have the same number of replicas.")
            rf = len(reps)
            unknown = [b for b in reps if b not in live]
            if unknown:
                raise errors.BrokerNotAvailable(f"The broker(s) {unknown} are not registered.")
        return replicas

    def _delete_topics(self, header: dict):
        names = header["topics"]
        if len(names) > protocol.TOPICS_PER_REQUEST_MAX or \
                not all(isinstance(n, str) for n in names):
            raise errors.InvalidRequest("DeleteTopics takes a list of topic names.")
        results, deleted = [], []
        refused = header.get("_refused") or {}
        for name in dict.fromkeys(names):
            if name in refused:
                results.append([name, *refused[name]])
                continue
            results.append(self._write_one(lambda: self._delete_topic(name), name, deleted))
        return results, deleted

    def _delete_topic(self, name: str) -> None:
        if not self.cfg["delete.topic.enable"]:
            raise errors.TopicDeletionDisabled()
        if name in protocol.INTERNAL_TOPICS:
            raise errors.InvalidTopic(f"The topic {name} is internal and cannot be deleted.")
        try:
            raw, version = self.client.get(md.topic_path(name))
        except NoNode:
            raise errors.UnknownTopicOrPartition(f"The topic {name!r} does not exist.") from None
        n = len(_topic_record(name, raw)[1])
        ops = [Op.delete(md.partition_path(name, p)) for p in range(n)
               if self.client.exists(md.partition_path(name, p)) is not None]
        # states first (chunked if many), then the topic record with its version check
        for i in range(0, len(ops), MULTI_OPS_MAX):
            self.client.multi([self.election.fence(), *ops[i:i + MULTI_OPS_MAX]])
        self.client.multi([self.election.fence(), Op.delete(md.topic_path(name), version)])
        log.info("topic deleted", topic=name)
        return 0

    # --- ACLs (zbroker/broker/acls.py) -----------------------------------------------------------
    def _create_acls(self, header: dict) -> list:
        """[code, sentence] per creation; the valid ones are stored together."""
        results, new = [], []
        for entry in acls.checked_list(header["creations"], "creations"):
            try:
                new.append(acl.AclBinding.checked(entry))
                results.append([0, None])
            except errors.ZbError as e:
                results.append([e.code, str(e)])
        if new:
            acls.change_acls(self.client, self.election.fence, lambda held: held + new)
            log.info("ACLs created", count=len(new))
        return results

    def _delete_acls(self, header: dict) -> list:
        """[code, sentence, [the bindings it matched]] per filter."""
        filters, results = [], []
        for entry in acls.checked_list(header["filters"], "filters"):
            try:
                filters.append(acl.AclFilter.checked(entry))
            except errors.ZbError as e:
                filters.append(e)
        before = acls.change_acls(
            self.client, self.election.fence,
            lambda held: [b for b in held if not any(
                isinstance(f, acl.AclFilter) and f.matches(b) for f in filters)])
        for f in filters:
            if isinstance(f, errors.ZbError):
                results.append([f.code, str(f), []])
            else:
                results.append([0, None, [list(b) for b in before if f.matches(b)]])
        return results

    def _create_partitions(self, header: dict):
        entries = header["topics"]
        protocol.check_entries("CreatePartitions", "topics", entries, protocol.CREATE_PARTITIONS)
        live = self._live_brokers()
        results, grown = [], []
        budget = [protocol.PARTITIONS_PER_REQUEST_MAX]     # new partitions this request may add
        refused = header.get("_refused") or {}
        for name, total in entries:
            if name in refused:
                results.append([name, *refused[name]])
                continue
            results.append(self._write_one(lambda: self._grow(name, total, live, budget), name,
                                           grown))
        return results, grown

    def _grow(self, name: str, total: int, live, budget: list) -> None:
        if name in protocol.INTERNAL_TOPICS:
            raise errors.InvalidPartitions(f"The topic {name} is internal; its partition count "
                                           f"is fixed.")
        try:
            raw, version = self.client.get(md.topic_path(name))
        except NoNode:
            raise errors.UnknownTopicOrPartition(f"The topic {name!r} does not exist.") from None
        rec, replicas = _topic_record(name, raw)
        replicas = [list(r) for r in replicas]
        if total <= len(replicas):
            raise errors.InvalidPartitions(f"The topic {name!r} has {len(replicas)} partitions; "
                                           f"it can only grow, not to {total}.")
        if total > protocol.PARTITIONS_PER_TOPIC_MAX:
            raise errors.InvalidPartitions(f"A topic may have at most "
                                           f"{protocol.PARTITIONS_PER_TOPIC_MAX} partitions.")
        if total - len(replicas) > budget[0]:
            raise errors.InvalidPartitions(
                f"One CreatePartitions request may add at most "
                f"{protocol.PARTITIONS_PER_REQUEST_MAX} partitions; use several requests.")
        budget[0] -= total - len(replicas)
        if not live:
            raise errors.BrokerNotAvailable("No broker is registered.")
        racks = {b: r for b, (r, _) in live.items()}
        order = rack_alternated(racks)
        start = order.index(replicas[0][0]) if replicas[0][0] in order else 0
        new = assign_replicas(racks, total - len(replicas), min(len(replicas[0]), len(live)),
                              start, first_partition=len(replicas))
        rec["replicas"] = replicas + new
        ops = [Op.set(md.topic_path(name), md.pack(rec), version)]
        ops += self._new_partition_ops(name, len(replicas), new, live)
        try:
            self._multi(ops)
        except BadVersion:
            raise errors.InvalidPartitions(f"The topic {name!r} changed meanwhile; "
                                           f"retry.") from None
        log.info("partitions created", topic=name, total=total)
        return total

    def _auto_create(self) -> None:
        try:
            names = self.client.children(md.CREATE_TOPIC_REQUESTS)
        except NoNode:
            return
        if not names:
            return
        live = self._live_brokers()
        for name in names:
            path = f"{md.CREATE_TOPIC_REQUESTS}/{name}"
            config = {}
            try:
                raw, _ = self.client.get(path)
                req = md.unpack(raw)
                partitions = int(req.get("partitions", -1))
                rf = min(int(req.get("replication_factor", -1)), len(live))
                config = {str(k): str(v) for k, v in (req.get("config") or {}).items()}
            except NoNode:
                continue
            except Exception:
                partitions, rf = -1, -1
            r = self._write_one(lambda: self._create_topic(name, partitions, rf, config, None,
                                                           live, False), name)
            if r[1] not in (0, errors.TopicAlreadyExists.code):
                log.warning("auto-create failed", topic=name, error=r[2])
            try:
                self.client.delete(path)
            except NoNode:
                pass

