"""Cluster metadata: the coordinator key layout, the immutable image every broker serves
Metadata from, and the watcher thread that keeps it fresh.

Coordinator keys (values are msgpack maps)::

    /cluster/id                    the cluster id (created by the first broker)
    /brokers/ids/<id>              ephemeral registration: {host, port, rack}; the key's czxid is
                                   the broker epoch (a restarted broker gets a new one)
    /brokers/topics/<name>         {id: topic id (hex), replicas: [[broker ids] per partition],
                                   config: {str: str}}  - written by the controller
    /brokers/topics/<name>/<p>     partition state {leader, leader_epoch, isr, controller_epoch}
                                   - written by the controller, always with its fence, and by
                                   the partition's leader when it shrinks or grows the ISR
                                   (same leader and epoch, with a check of the key's version)
    /brokers/shutdown/<id>         ephemeral: broker <id> is shutting down (controlled
                                   shutdown); the controller moves its leaderships away and
                                   keeps it out of ISRs and elections
    /controller, /controller_epoch the election (coordinator.election.Election)
    /admin/create_topics/<name>    a broker asking the controller to create a topic (Metadata
                                   auto-create): {partitions, replication_factor}

Watches: every broker watches ``/brokers`` and ``/controller``; a change marks the image dirty
and the watcher thread re-reads everything (requests pipelined) and publishes a new immutable
``ClusterImage``. Events that arrive during a read cause one more read, so the image converges
to the coordinator's state. The loop thread owns nothing here but the reference it was handed.
"""

from __future__ import annotations

import threading
from typing import Callable, NamedTuple

import msgpack

from coordinator.client import CoordinatorClient, NoNode, ZbError
from zbroker import protocol
from zbroker.logs import get_logger
from zbroker.protocol import BrokerEntry, PartitionMetadataEntry, TopicMetadataEntry

log = get_logger("zbroker.broker.metadata")

CLUSTER_ID_PATH = "/cluster/id"
BROKER_IDS = "/brokers/ids"
TOPICS = "/brokers/topics"
CONTROLLER = "/controller"
CONTROLLER_EPOCH = "/controller_epoch"
CREATE_TOPIC_REQUESTS = "/admin/create_topics"
SHUTDOWN = "/brokers/shutdown"

NO_LEADER = -1


def broker_path(broker_id: int) -> str:
    return f"{BROKER_IDS}/{broker_id}"


def shutdown_path(broker_id: int) -> str:
    return f"{SHUTDOWN}/{broker_id}"


def topic_path(name: str) -> str:
    return f"{TOPICS}/{name}"


def partition_path(name: str, partition: int) -> str:
    return f"{TOPICS}/{name}/{partition}"


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(raw: bytes):
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class BrokerInfo(NamedTuple):
    id: int
    host: str
    port: int
    rack: str | None
    epoch: int = -1         # the creation zxid of its registration: new for every life


class PartitionState(NamedTuple):
    topic: str
    partition: int
    replicas: tuple[int, ...]
    leader: int
    leader_epoch: int
    isr: tuple[int, ...]
    controller_epoch: int
    version: int            # of the coordinator key, for the controller's compare-and-set
    zxid: int = -1          # of the key's last write (-1: not known)


class TopicImage(NamedTuple):
    name: str
    topic_id: str
    partitions: tuple[PartitionState | None, ...]   # None: state not written yet
    replicas: tuple[tuple[int, ...], ...]
    config: dict
    version: int


def encode_registration(host: str, port: int, rack: str | None) -> bytes:
    return pack({"host": host, "port": port, "rack": rack or None})


def _int(v) -> bool:
    return type(v) is int


def decode_registration(broker_id: int, raw: bytes, epoch: int = -1) -> BrokerInfo:
    """ValueError for anything that is not a registration (anyone may write the key)."""
    d = unpack(raw)
    if not isinstance(d, dict) or not isinstance(d.get("host"), str) or \
            not _int(d.get("port")) or not 0 < d["port"] < 65536 or \
            not isinstance(d.get("rack"), (str, type(None))):
        raise ValueError(f"not a broker registration: {raw[:60]!r}")
    return BrokerInfo(broker_id, d["host"], d["port"], d.get("rack"), epoch)


def encode_topic(topic_id: str, replicas: list[list[int]], config: dict) -> bytes:
    return pack({"id": topic_id, "replicas": replicas, "config": config})


def encode_state(leader: int, leader_epoch: int, isr: list[int], controller_epoch: int) -> bytes:
    return pack({"leader": leader, "leader_epoch": leader_epoch, "isr": list(isr),
                 "controller_epoch": controller_epoch})


def decode_state(topic: str, partition: int, replicas, raw: bytes, version: int,
                 zxid: int = -1) -> PartitionState:
    d = unpack(raw)
    if not isinstance(d, dict) or not _int(d.get("leader")) or not _int(d.get("leader_epoch")) \
            or not _int(d.get("controller_epoch")) or not isinstance(d.get("isr"), list) or \
            not all(_int(b) for b in d["isr"]) or d["leader_epoch"] < 0:
        raise ValueError(f"not a partition state: {raw[:60]!r}")
    return PartitionState(topic, partition, tuple(replicas), d["leader"], d["leader_epoch"],
                          tuple(d["isr"]), d["controller_epoch"], version, zxid)


def decode_topic(raw: bytes) -> tuple[dict, list[tuple[int, ...]]]:
    """The topic record and its replica lists; ValueError for anything else."""
    rec = unpack(raw)
    if not isinstance(rec, dict) or not isinstance(rec.get("replicas"), list) or \
            not 0 < len(rec["replicas"]) <= protocol.PARTITIONS_PER_TOPIC_MAX or \
            not all(isinstance(r, list) and r and all(_int(b) for b in r)
                    for r in rec["replicas"]) or \
            not isinstance(rec.get("id", ""), str) or \
            not isinstance(rec.get("config") or {}, dict) or \
            not all(isinstance(k, str) and isinstance(v, str)
                    for k, v in (rec.get("config") or {}).items()):
        raise ValueError(f"not a topic record: {raw[:60]!r}")
    return rec, [tuple(r) for r in rec["replicas"]]


_warned: set = set()


def warn_once(what: str, path: str, zxid: int) -> None:
    """A key nobody should have written like that: say so once per version of it."""
    if (path, zxid) not in _warned:
        if len(_warned) > 10_000:
            _warned.clear()
        _warned.add((path, zxid))
        log.warning(f"unreadable {what}; ignored", path=path)


class ClusterImage:
    """One immutable view of the cluster's metadata. Never mutated after construction."""

    __slots__ = ("brokers", "topics", "controller_id", "controller_epoch", "cluster_id",
                 "shutting_down", "_metadata_entries", "changed")

    def __init__(self, brokers: dict[int, BrokerInfo], topics: dict[str, TopicImage],
                 controller_id: int, controller_epoch: int, cluster_id: str | None,
                 shutting_down: frozenset = frozenset()):
        self.brokers = brokers
        self.shutting_down = shutting_down
        self.topics = topics
        self.controller_id = controller_id
        self.controller_epoch = controller_epoch
        self.cluster_id = cluster_id
        self._metadata_entries: dict[str, list] = {}
        # the partitions whose state differs from the image this one was derived from, when
        # only partition states changed; None: anything may have changed (a full read)
        self.changed: frozenset | None = None

    def with_states(self, states: list[PartitionState]) -> "ClusterImage":
        """This image with the partition states ``states`` in place of the ones it has (each
        of a partition it knows); ``changed`` names them."""
        by_topic: dict[str, dict[int, PartitionState]] = {}
        for st in states:
            by_topic.setdefault(st.topic, {})[st.partition] = st
        topics = dict(self.topics)
        for name, new in by_topic.items():
            t = topics[name]
            parts = list(t.partitions)
            for p, st in new.items():
                parts[p] = st
            topics[name] = t._replace(partitions=tuple(parts))
        image = ClusterImage(self.brokers, topics, self.controller_id, self.controller_epoch,
                             self.cluster_id, self.shutting_down)
        image._metadata_entries = {n: e for n, e in self._metadata_entries.items()
                                   if n not in by_topic}
        image.changed = frozenset((st.topic, st.partition) for st in states)
        return image

    @classmethod
    def empty(cls) -> "ClusterImage":
        return cls({}, {}, -1, 0, None)

    def partition(self, topic: str, partition: int) -> PartitionState | None:
        t = self.topics.get(topic)
        if t is None or not 0 <= partition < len(t.partitions):
            return None
        return t.partitions[partition]

    def broker_list(self) -> list:
        return [BrokerEntry(b.id, b.host, b.port, b.rack) for b in sorted(self.brokers.values())]

    def topic_metadata(self, name: str) -> list:
        """The Metadata response entry of a known topic (cached: the image never changes)."""
        entry = self._metadata_entries.get(name)
        if entry is None:
            from zbroker import errors
            t = self.topics[name]
            parts = []
            for p, replicas in enumerate(t.replicas):
                st = t.partitions[p] if p < len(t.partitions) else None
                if st is None:
                    parts.append(PartitionMetadataEntry(p, errors.LeaderNotAvailable.code,
                                                        NO_LEADER, -1, list(replicas), [],
                                                        list(replicas)))
                    continue
                offline = [r for r in replicas if r not in self.brokers]
                err = 0 if st.leader != NO_LEADER else errors.LeaderNotAvailable.code
                parts.append(PartitionMetadataEntry(p, err, st.leader, st.leader_epoch,
                                                    list(replicas), list(st.isr), offline))
            entry = TopicMetadataEntry(name, 0, name.startswith("__"), parts)
            self._metadata_entries[name] = entry
        return entry


def read_image(client: CoordinatorClient, timeout_s: float = 10.0) -> ClusterImage:
    """Read the whole metadata from the coordinator, requests pipelined (two round trips)."""
    def result(fut):
        try:
            return fut.result(timeout_s)
        except NoNode:
            return None

    def children(path):
        try:
            return client.children(path)
        except NoNode:
            return []

    broker_ids = [int(c) for c in children(BROKER_IDS) if c.isdigit()]
    topic_names = children(TOPICS)
    shutting_down = frozenset(int(c) for c in children(SHUTDOWN) if c.isdigit())
    f_brokers = {b: client.get_with_stat_async(broker_path(b)) for b in broker_ids}
    f_topics = {t: client.get_async(topic_path(t)) for t in topic_names
                if protocol.TOPIC_NAME_RE.match(t)}
    f_controller = client.get_async(CONTROLLER)
    f_epoch = client.get_async(CONTROLLER_EPOCH)
    f_cluster = client.get_async(CLUSTER_ID_PATH)
    brokers = {}
    for b, fut in f_brokers.items():
        got = result(fut)
        if got is not None:
            try:
                brokers[b] = decode_registration(b, got[0], got[1].czxid)
            except Exception:
                warn_once("broker registration", broker_path(b), got[1].mzxid)
    topic_records = {}
    f_states = {}
    for t, fut in f_topics.items():
        got = result(fut)
        if got is None:
            continue
        try:
            rec, replicas = decode_topic(got[0])
        except Exception:
            warn_once("topic record", topic_path(t), -1)
            continue
        topic_records[t] = (rec, replicas, got[1])
        for p in range(len(replicas)):
            f_states[(t, p)] = client.get_with_stat_async(partition_path(t, p))
    states = {}
    for key, fut in f_states.items():
        got = result(fut)
        if got is not None:
            states[key] = got
    topics = {}
    for t, (rec, replicas, version) in topic_records.items():
        parts = []
        for p, reps in enumerate(replicas):
            got = states.get((t, p))
            st = None
            if got:
                try:
                    st = decode_state(t, p, reps, got[0], got[1].version, got[1].mzxid)
                except Exception:      # as if not written yet: the controller leaves it be
                    warn_once("partition state", partition_path(t, p), got[1].mzxid)
            parts.append(st)
        topics[t] = TopicImage(t, rec.get("id", ""), tuple(parts), tuple(replicas),
                               rec.get("config") or {}, version)
    controller_id = -1
    got = result(f_controller)
    if got is not None:
        try:
            controller_id = int(got[0])
        except ValueError:
            pass
    got = result(f_epoch)
    controller_epoch = int(got[0]) if got is not None and got[0].isdigit() else 0
    got = result(f_cluster)
    cluster_id = got[0].decode(errors="replace") if got is not None else None
    return ClusterImage(brokers, topics, controller_id, controller_epoch, cluster_id,
                        shutting_down)


class MetadataWatcher:
    """Watches the coordinator and publishes a fresh ClusterImage through ``publish`` (called on
    this class's thread) whenever anything under /brokers or /controller changes.

    When every change since the last image is a partition state written (the common case: ISR
    changes, elections), the new image is the last one with those states taken from the watch
    events themselves, which carry the value and version, and ``image.changed`` names them; any
    other change (brokers, topics, the controller, a resync) reads everything again. A state
    older than the one held (a full read already saw a later write) is ignored."""

    def __init__(self, client: CoordinatorClient, publish: Callable[[ClusterImage], None]):
        self.client = client
        self.publish = publish
        self._dirty = threading.Event()
        self._events: list = []
        self._events_lock = threading.Lock()
        self._full = True               # the next image must be read in full
        self._image: ClusterImage | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="metadata", daemon=True)

    def start(self) -> None:
        self.client.watch("/brokers", self._on_event)
        self.client.watch(CONTROLLER, self._on_event)
        self._dirty.set()
        self._thread.start()

    def poke(self) -> None:
        self._full = True
        self._dirty.set()

    def stop(self) -> None:
        self._stopping = True
        self._dirty.set()
        self._thread.join(5)

    def _on_event(self, event) -> None:
        with self._events_lock:
            self._events.append(event)
        self._dirty.set()

    def _states_from(self, events: list) -> list[PartitionState] | None:
        """The partition states the events wrote, or None when one is anything else."""
        image = self._image
        out: dict[tuple[str, int], PartitionState] = {}
        for e in events:
            if e.type not in ("created", "changed") or e.value is None or \
                    not e.path.startswith(TOPICS + "/"):
                return None
            name, sep, p = e.path[len(TOPICS) + 1:].partition("/")
            t = image.topics.get(name)
            if not sep or not p.isdigit() or t is None or int(p) >= len(t.replicas):
                return None
            p = int(p)
            try:
                st = decode_state(name, p, t.replicas[p], e.value, e.version, e.zxid)
            except Exception:
                return None
            held = out.get((name, p)) or t.partitions[p]
            if held is None or st.version > held.version:
                out[(name, p)] = st
        return list(out.values())

    def _main(self) -> None:
        while not self._stopping:
            if not self._dirty.wait(30):        # a periodic re-read as a safety net
                self._full = True
            if self._stopping:
                return
            self._dirty.clear()
            with self._events_lock:
                events, self._events = self._events, []
            if not self._full and self._image is not None:
                states = self._states_from(events)
                if states is not None:
                    if states:
                        self._image = self._image.with_states(states)
                        self.publish(self._image)
                    continue
            self._full = False
            try:
                image = read_image(self.client)
            except ZbError as e:
                log.warning("metadata read failed; retrying", error=str(e))
                self._full = True
                self._dirty.set()
                threading.Event().wait(0.2)
                continue
            except Exception:
                log.exception("metadata read failed; retrying")
                self._full = True
                self._dirty.set()
                threading.Event().wait(0.5)
                continue
            self._image = image
            self.publish(image)
