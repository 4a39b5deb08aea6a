"""Produce, Fetch and ListOffsets against real brokers, over raw DEALER sockets."""

import threading
import time

import pytest

from zbroker import errors, protocol
from tests.broker.helpers import Conn, batch, leaders, values_of

pytestmark = pytest.mark.timeout(60)


def test_six_partitions_over_three_brokers_produce_fetch_list_offsets(cluster):
    c = cluster(3)
    parts = c.create_topic("orders", 6)
    lead = leaders(parts)
    assert sorted(lead.values()) == [1, 1, 2, 2, 3, 3]          # leaders spread round-robin
    conns = {b.broker_id: Conn(b.port) for b in c.brokers}
    try:
        t0 = int(time.time() * 1000)
        for p, leader in lead.items():
            conn = conns[leader]
            r1 = conn.produce("orders", p, batch([b"a%d" % p, b"b%d" % p], timestamp_ms=t0))
            assert r1[2] == 0 and r1[3] == 0, r1
            r2 = conn.produce("orders", p, [batch([b"c%d" % p], timestamp_ms=t0 + 1000),
                                            batch([b"d%d" % p], timestamp_ms=t0 + 2000)])
            assert r2[2] == 0 and r2[3] == 2, r2
            meta, blob = conn.fetch("orders", p, 0)
            assert meta[2] == 0 and meta[3] == 4 and meta[4] == 0 and meta[5] == 4, meta
            assert values_of(blob) == [(0, b"a%d" % p), (1, b"b%d" % p), (2, b"c%d" % p),
                                       (3, b"d%d" % p)]
            meta, blob = conn.fetch("orders", p, 2)
            assert [o for o, _ in values_of(blob)][:1] == [2]
            meta, blob = conn.fetch("orders", p, 4)                     # at the end: nothing
            assert meta[2] == 0 and blob == b""
            meta, _ = conn.fetch("orders", p, 5)
            assert meta[2] == errors.OffsetOutOfRange.code
            assert conn.list_offset("orders", p, protocol.EARLIEST_TIMESTAMP)[3] == 0
            assert conn.list_offset("orders", p, protocol.LATEST_TIMESTAMP)[3] == 4
            by_time = conn.list_offset("orders", p, t0 + 1500)
            assert by_time[2] == 0 and by_time[3] == 3 and by_time[4] == t0 + 2000, by_time
            assert conn.list_offset("orders", p, t0 + 5000)[3] == -1
            # acks=0: no response, but the batch is written
            conn.send("Produce", [batch([b"e"])], acks=0, parts=[["orders", p, -1]])
            assert conn.list_offset("orders", p, protocol.LATEST_TIMESTAMP)[3] == 5

        # the wrong broker says so; unknown partitions are unknown
        p0_leader = lead[0]
        other = conns[next(b for b in conns if b != p0_leader)]
        assert other.produce("orders", 0, batch([b"x"]))[2] == errors.NotLeaderOrFollower.code
        assert other.fetch("orders", 0, 0)[0][2] == errors.NotLeaderOrFollower.code
        assert other.list_offset("orders", 0, -1)[2] == errors.NotLeaderOrFollower.code
        assert other.produce("orders", 99, batch([b"x"]))[2] == \
            errors.UnknownTopicOrPartition.code
        assert other.produce("nope", 0, batch([b"x"]))[2] == errors.UnknownTopicOrPartition.code

        # leader epochs: current passes, newer is unknown (older: see test_faults)
        epoch = parts[0][3]
        leader_conn = conns[p0_leader]
        assert leader_conn.produce("orders", 0, batch([b"f"]), leader_epoch=epoch)[2] == 0
        assert leader_conn.produce("orders", 0, batch([b"f"]), leader_epoch=epoch + 1)[2] == \
            errors.UnknownLeaderEpoch.code
        assert leader_conn.fetch("orders", 0, 0, leader_epoch=epoch + 1)[0][2] == \
            errors.UnknownLeaderEpoch.code
        meta, blob = leader_conn.fetch("orders", 0, 0, leader_epoch=epoch)
        assert meta[2] == 0 and len(values_of(blob)) == 6
    finally:
        for conn in conns.values():
            conn.close()


def test_long_poll_fetch_wakes_when_data_arrives_and_times_out_otherwise(cluster):
    c = cluster(1)
    c.create_topic("events", 1)
    port = c.brokers[0].port
    consumer, producer = Conn(port), Conn(port)
    try:
        # nothing to read: the answer comes after max_wait_ms, empty (the bound is liveness)
        started = time.monotonic()
        meta, blob = consumer.fetch("events", 0, 0, max_wait_ms=300, timeout_s=10)
        waited = time.monotonic() - started
        assert meta[2] == 0 and blob == b"" and waited >= 0.3, (meta, waited)

        # a parked fetch is answered when data arrives, long before its max_wait_ms
        req_id = consumer.send("Fetch", max_wait_ms=30000, min_bytes=1, max_bytes=1 << 20,
                               parts=[["events", 0, 0, -1, 1 << 20]])
        parked(consumer, req_id)
        started = time.monotonic()
        assert producer.produce("events", 0, batch([b"wake up"]))[2] == 0
        header, blobs = consumer.recv(timeout_s=15)
        assert header["id"] == req_id and time.monotonic() - started < 15
        assert values_of(blobs[0]) == [(0, b"wake up")]

        # min_bytes: one small batch is not enough, a second one completes it
        one = batch([b"x" * 100])
        req_id = consumer.send("Fetch", max_wait_ms=30000, min_bytes=len(one) + 1,
                               max_bytes=1 << 20, parts=[["events", 0, 1, -1, 1 << 20]])
        parked(consumer, req_id)
        assert producer.produce("events", 0, one)[2] == 0
        parked(consumer, req_id)                    # still parked after the first batch
        assert producer.produce("events", 0, one)[2] == 0
        header, blobs = consumer.recv(timeout_s=15)
        assert header["id"] == req_id and values_of(blobs[0]) == [(1, b"x" * 100),
                                                                  (2, b"x" * 100)]

        # max_bytes: the first batch comes whole even when larger; later ones respect the limit
        meta, blob = consumer.fetch("events", 0, 1, max_bytes=10)
        assert len(values_of(blob)) == 1
    finally:
        consumer.close()
        producer.close()


def parked(conn: Conn, fetch_id: int) -> None:
    """Show that the fetch ``fetch_id`` sent on ``conn`` is parked at the broker: a request
    sent after it on the same connection is answered first. The broker takes a connection's
    requests in order and answers or parks each before the next, and answers come back in the
    order they were sent, so an answer to the fetch would have come before this one."""
    marker = conn.send("ApiVersions")
    header, _ = conn.recv(timeout_s=10)
    assert header["id"] == marker, f"the fetch {fetch_id} was answered: {header}"


def test_many_pipelined_produces_and_concurrent_fetchers(cluster):
    c = cluster(1)
    c.create_topic("pipe", 2)
    port = c.brokers[0].port
    conn = Conn(port)
    got: dict[int, list] = {0: [], 1: []}

    def consume(p):
        cons = Conn(port)
        offset = 0
        try:
            while offset < 200:
                meta, blob = cons.fetch("pipe", p, offset, max_wait_ms=2000)
                vals = values_of(blob)
                got[p] += vals
                if vals:
                    offset = vals[-1][0] + 1
        finally:
            cons.close()
    threads = [threading.Thread(target=consume, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    try:
        ids = []
        for i in range(100):
            for p in (0, 1):
                ids.append(conn.send("Produce", [batch([b"%d-%d" % (p, 2 * i), b"%d-%d" % (p, 2 * i + 1)])],
                                     acks=1, parts=[["pipe", p, -1]]))
        seen = set()
        for _ in ids:
            header, _ = conn.recv()
            assert header["parts"][0][2] == 0
            seen.add(header["id"])
        assert seen == set(ids)
        for t in threads:
            t.join(20)
        for p in (0, 1):
            assert [v for _, v in got[p]] == [b"%d-%d" % (p, i) for i in range(200)]
            assert [o for o, _ in got[p]] == list(range(200))
    finally:
        conn.close()
