"""Helpers for consumer group tests: broker settings that allow short sessions, a rebalance
listener that records what a member owned and when, and small produce/consume loops."""

from __future__ import annotations

import time

from clients import Producer
from tests.broker.helpers import Conn
from zbroker import errors, protocol

# Sessions down to 1 s and heartbeats down to 100 ms, so tests fail over fast.
GROUP_SETTINGS = {"group.consumer.min.session.timeout.ms": "1000",
                  "group.consumer.min.heartbeat.interval.ms": "100"}


class Recorder:
    """A rebalance listener keeping (monotonic time, partition) of every assignment and
    revocation (a lost partition counts as revoked)."""

    def __init__(self, name: str):
        self.name = name
        self.assigned: list[set] = []
        self.revoked: list[set] = []
        self.lost: list[set] = []
        self.events: list[tuple[float, str, object]] = []

    def on_partitions_assigned(self, parts):
        self.assigned.append(set(parts))
        now = time.monotonic()
        self.events += [(now, "+", tp) for tp in parts]

    def on_partitions_revoked(self, parts):
        self.revoked.append(set(parts))
        now = time.monotonic()
        self.events += [(now, "-", tp) for tp in parts]

    def on_partitions_lost(self, parts):
        self.lost.append(set(parts))
        now = time.monotonic()
        self.events += [(now, "-", tp) for tp in parts]

    def intervals(self, end: float | None = None) -> dict:
        """{partition: [(owned from, owned until), ...]}"""
        out: dict = {}
        open_: dict = {}
        for t, kind, tp in sorted(self.events, key=lambda e: e[0]):
            if kind == "+":
                open_[tp] = t
            elif tp in open_:
                out.setdefault(tp, []).append((open_.pop(tp), t))
        for tp, t in open_.items():
            out.setdefault(tp, []).append((t, end if end is not None else float("inf")))
        return out

    @staticmethod
    def assert_never_shared(recorders) -> None:
        assert_never_shared([r.intervals() for r in recorders],
                            [r.name for r in recorders])


def assert_never_shared(interval_maps: list[dict], names: list[str]) -> None:
    """No partition was owned by two members over overlapping times."""
    spans: dict = {}
    for name, intervals in zip(names, interval_maps):
        for tp, ivs in intervals.items():
            spans.setdefault(tp, []).extend((a, b, name) for a, b in ivs)
    for tp, ivs in spans.items():
        ivs.sort()
        for (a1, b1, n1), (a2, b2, n2) in zip(ivs, ivs[1:]):
            assert a2 >= b1, f"{tp} was owned by {n1} until {b1:.3f} and by {n2} from {a2:.3f}"


def produce_keys(bootstrap: str, topic: str, n: int, start: int = 0) -> list[bytes]:
    """n keyed records (values "v<i>") with acks=all; returns the values."""
    values = [b"v%d" % i for i in range(start, start + n)]
    with Producer(bootstrap_servers=bootstrap, acks="all") as p:
        for v in values:
            p.send(topic, v, key=v)
        p.flush(30)
    return values


def consume_until(consumers, done, timeout_s: float = 20.0) -> list:
    """Poll every consumer in turn until ``done(records so far)``; returns the records."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout_s}s ({len(got)} records)")
        for c in consumers:
            for recs in c.poll(50).values():
                got.extend(recs)
    return got


# --- raw group requests -----------------------------------------------------------------------

def find_coordinator(cluster, group, timeout_s=20.0):
    """(broker id, port) of the group's coordinator, once one is known."""
    def ask():
        b = cluster.live_brokers()[0]
        conn = Conn(b.port)
        try:
            header, _ = conn.request("FindCoordinator", key_type="group", keys=[group])
        finally:
            conn.close()
        e = protocol.CoordinatorEntry._make(header["coordinators"][0])
        if e.err:
            return None
        return e.node_id, e.port
    return cluster.wait_for(ask, timeout_s, f"a coordinator for {group}")


def call(cluster, group, api, timeout_s=20.0, **fields):
    """Send a group request to the group's coordinator, retrying while it moves or loads."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, port = find_coordinator(cluster, group)
        conn = Conn(port)
        try:
            header, _ = conn.request(api, timeout_s=10, **fields)
        except TimeoutError:
            header = {"err": errors.RequestTimedOut.code}
        finally:
            conn.close()
        if header["err"] in (errors.NotCoordinator.code, errors.CoordinatorNotAvailable.code,
                             errors.CoordinatorLoadInProgress.code,
                             errors.RequestTimedOut.code) and time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        return header


def committed_offsets(cluster, group: str, topic: str, partitions: int) -> dict[int, int]:
    """{partition: committed offset (-1: none)} through a raw OffsetFetch."""
    header = call(cluster, group, "OffsetFetch", group_id=group,
                  parts=[[topic, p] for p in range(partitions)])
    assert header["err"] == 0, header
    return {e[1]: e[2] for e in header["parts"]}


def log_end_offsets(cluster, topic: str, partitions: int) -> dict[int, int] | None:
    """{partition: high watermark} from each partition's leader; None while a leader is moving
    (no leader yet, or a restarted broker not yet elected anew refuses: for ``wait_for``). Any
    other error fails the test."""
    md = cluster.metadata([topic], allow_auto_create=False)["topics"][0][3]
    ports = {b.broker_id: b.port for b in cluster.live_brokers()}
    out = {}
    for p in md:
        if p[2] not in ports:
            return None
        conn = Conn(ports[p[2]])
        try:
            r = conn.list_offset(topic, p[0], protocol.LATEST_TIMESTAMP)
        finally:
            conn.close()
        if r[2] in (errors.NotLeaderOrFollower.code, errors.LeaderNotAvailable.code):
            return None
        assert r[2] == 0, r
        out[p[0]] = r[3]
    assert len(out) == partitions
    return out
