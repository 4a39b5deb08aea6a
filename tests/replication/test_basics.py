"""Replication with real processes: followers copy the leader byte for byte, the high watermark
bounds what consumers see, acks=all waits for the ISR and is refused below min.insync.replicas,
followers leave and rejoin the ISR."""

import time

import pytest

from tests.broker.helpers import Conn, batch
from tests.replication.helpers import (FAST, batches_below, partition_info, read_all,
                                       segment_bytes, wait_isr)
from zbroker import errors

pytestmark = pytest.mark.timeout(90)


def test_followers_copy_the_leader_and_acks_all_waits_for_the_isr(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("r3", 2, 3, {"min.insync.replicas": "2"})
    for p in (0, 1):
        wait_isr(c, "r3", p, {1, 2, 3})
    leader, epoch, replicas, isr = partition_info(c, "r3", 0)
    conn = Conn(c.broker(leader).port)
    try:
        for i in range(50):
            r = conn.produce("r3", 0, [batch([b"v%d-%d" % (i, j) for j in range(10)])], acks=-1)
            assert r[2] == 0 and r[3] == i * 10, r
        # acks=all answered: the high watermark passed the batch, so a consumer sees it all
        got, hw = read_all(c.broker(leader).port, "r3", 0)
        assert hw == 500 and [o for o, _ in got] == list(range(500))
        assert got[-1][1] == b"v49-9"
        # a follower serves no consumers
        follower = next(r for r in replicas if r != leader)
        meta, _ = Conn(c.broker(follower).port).fetch("r3", 0, 0)
        assert meta[2] == errors.NotLeaderOrFollower.code
    finally:
        conn.close()
    # every replica holds the same bytes below the high watermark
    leader_bytes = batches_below(segment_bytes(c.broker(leader).log_dir, "r3", 0), 500)
    assert len(leader_bytes) > 0
    for b in c.brokers:
        c.wait_for(lambda: batches_below(segment_bytes(b.log_dir, "r3", 0), 500) ==
                   leader_bytes, 10, f"broker {b.broker_id}'s copy")


def test_lone_leader_refuses_acks_all_serves_acks_1_and_followers_rejoin(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("lone", 1, 3, {"min.insync.replicas": "2"},)
    wait_isr(c, "lone", 0, {1, 2, 3})
    leader, *_ = partition_info(c, "lone", 0)
    followers = [b for b in c.brokers if b.broker_id != leader]
    conn = Conn(c.broker(leader).port)
    try:
        assert conn.produce("lone", 0, [batch([b"before"])], acks=-1)[2] == 0
        for f in followers:
            f.kill9()
        wait_isr(c, "lone", 0, {leader})
        r = conn.produce("lone", 0, [batch([b"refused"])], acks=-1)
        assert r[2] == errors.NotEnoughReplicas.code, r
        r = conn.produce("lone", 0, [batch([b"acks1"])], acks=1)
        assert r[2] == 0 and r[3] == 1, r
        for i in range(20):       # more while the followers are away
            assert conn.produce("lone", 0, [batch([b"x%d" % i] * 50)], acks=1)[2] == 0
        # one follower returns: it catches up, rejoins the ISR, acks=all works again
        followers[0].restart()
        wait_isr(c, "lone", 0, {leader, followers[0].broker_id})
        r = conn.produce("lone", 0, [batch([b"after"])], acks=-1)
        assert r[2] == 0, r
        got, hw = read_all(c.broker(leader).port, "lone", 0)
        assert [v for _, v in got][:2] == [b"before", b"acks1"] and got[-1][1] == b"after"
        end = r[3] + 1
        lb = batches_below(segment_bytes(c.broker(leader).log_dir, "lone", 0), end)
        c.wait_for(lambda: batches_below(segment_bytes(followers[0].log_dir, "lone", 0), end)
                   == lb, 10, "the returned follower's copy")
    finally:
        conn.close()


def test_leader_shrinks_a_stalled_follower_out_of_the_isr_and_takes_it_back(cluster):
    # A stopped follower (SIGSTOP) stays registered (6 s sessions here) but fetches nothing:
    # acks=all first times out, then the leader itself drops it from the ISR after
    # replica.lag.time.max.ms (a version-checked write), then refuses acks=all below
    # min.insync.replicas; resumed, the follower catches up and the leader adds it back.
    import os
    import signal
    c = cluster(2, overrides={**FAST, "coordinator.session.timeout.ms": "6000"})
    c.create_topic("slow", 1, 2, {"min.insync.replicas": "2"})
    wait_isr(c, "slow", 0, {1, 2})
    leader, *_ = partition_info(c, "slow", 0)
    follower = next(b for b in c.brokers if b.broker_id != leader)
    conn = Conn(c.broker(leader).port)
    try:
        os.kill(follower.proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        h, _ = conn.request("Produce", [batch([b"late"])], acks=-1, timeout_ms=500,
                            parts=[["slow", 0, -1]])
        assert h["parts"][0][2] == errors.RequestTimedOut.code, h
        assert time.monotonic() - t0 >= 0.5       # it waited its timeout_ms for the follower
        # written by the leader but not replicated: consumers do not see it yet
        meta, blob = conn.fetch("slow", 0, 0)
        assert meta[2] == 0 and meta[3] == 0 and meta[5] == 1 and blob == b"", meta
        wait_isr(c, "slow", 0, {leader}, timeout_s=5, via=[c.broker(leader)])
        meta, blob = conn.fetch("slow", 0, 0)      # alone in the ISR: committed now
        assert meta[3] == 1 and blob, meta
        assert conn.produce("slow", 0, [batch([b"refused"])], acks=-1)[2] == \
            errors.NotEnoughReplicas.code
        assert conn.produce("slow", 0, [batch([b"acks1"])], acks=1)[2] == 0
    finally:
        os.kill(follower.proc.pid, signal.SIGCONT)
    try:
        wait_isr(c, "slow", 0, {1, 2}, timeout_s=10)
        r = conn.produce("slow", 0, [batch([b"back"])], acks=-1)
        assert r[2] == 0, r
        got, _ = read_all(c.broker(leader).port, "slow", 0)
        assert [v for _, v in got] == [b"late", b"acks1", b"back"]
    finally:
        conn.close()
