"""Retention on a leader while a follower is stopped: the leader deletes the segments that hold
everything the follower has; the follower, resumed, finds its fetch offset below the leader's
log start (OFFSET_OUT_OF_RANGE), truncates its log fully, starts again at the leader's log start
offset, catches up and rejoins the ISR holding the same bytes as the leader, byte for byte."""

from __future__ import annotations

import os
import signal

import pytest

from tests.broker.helpers import Conn, batch, values_of
from tests.replication.helpers import FAST, batches_below, partition_info, segment_bytes, wait_isr
from zbroker import errors

pytestmark = pytest.mark.timeout(90)

SEGMENT_BYTES = 1024        # one ~600-byte batch per segment
RETENTION_BYTES = 3000      # about five segments kept
RECORDS_PER_BATCH = 5


def segments(log_dir, topic: str, p: int) -> list[tuple[int, int]]:
    """[(base offset, bytes)] of a replica's live segment files, oldest first (segments being
    deleted are renamed away from ``.log`` first)."""
    d = os.path.join(str(log_dir), f"{topic}-{p}")
    out = []
    for name in os.listdir(d):
        if name.endswith(".log"):
            out.append((int(name[:-len(".log")]), os.path.getsize(os.path.join(d, name))))
    return sorted(out)


def retention_done(log_dir, topic: str, p: int) -> bool:
    """Retention has nothing more to delete: without the oldest segment the log would be under
    retention.bytes."""
    segs = segments(log_dir, topic, p)
    return bool(segs) and sum(size for _, size in segs) - segs[0][1] < RETENTION_BYTES


def a_batch(i: int) -> bytes:
    return batch([b"%05d-%d-" % (i, j) + b"x" * 100 for j in range(RECORDS_PER_BATCH)])


def test_a_stopped_follower_behind_the_leaders_retention_starts_over_and_rejoins(cluster):
    # Sessions of 10 s: the stopped follower stays registered; it leaves the ISR because it
    # does not fetch (replica.lag.time.max.ms, 1.5 s here), not because its session expired.
    c = cluster(2, overrides={**FAST, "coordinator.session.timeout.ms": "10000",
                              "log.retention.check.interval.ms": "100"})
    c.create_topic("ret", 1, 2, {"segment.bytes": str(SEGMENT_BYTES),
                                 "retention.bytes": str(RETENTION_BYTES),
                                 "min.insync.replicas": "1"})
    wait_isr(c, "ret", 0, {1, 2})
    leader_id, *_ = partition_info(c, "ret", 0)
    leader = c.broker(leader_id)
    follower = next(b for b in c.brokers if b.broker_id != leader_id)
    conn = Conn(leader.port)
    try:
        # 1. Both replicas hold the first batches (acks=all: the follower has them).
        for i in range(3):
            r = conn.produce("ret", 0, [a_batch(i)], acks=-1)
            assert r[2] == 0 and r[3] == i * RECORDS_PER_BATCH, r
        follower_end = 3 * RECORDS_PER_BATCH
        first = batches_below(segment_bytes(leader.log_dir, "ret", 0), follower_end)
        c.wait_for(lambda: batches_below(segment_bytes(follower.log_dir, "ret", 0),
                                         follower_end) == first, 10, "the follower's copy")
        assert segments(follower.log_dir, "ret", 0)[0][0] == 0
        assert conn.list_offset("ret", 0, -2)[3] == 0          # nothing deleted yet

        # 2. The follower stops; the leader drops it from the ISR and writes on alone, and its
        # retention deletes the oldest segments: the leader's log now starts after the
        # follower's log end.
        os.kill(follower.proc.pid, signal.SIGSTOP)
        try:
            wait_isr(c, "ret", 0, {leader_id}, timeout_s=10, via=[leader])
            for i in range(3, 33):
                r = conn.produce("ret", 0, [a_batch(i)], acks=1)
                assert r[2] == 0, r
            end = 33 * RECORDS_PER_BATCH
            c.wait_for(lambda: retention_done(leader.log_dir, "ret", 0), 15,
                       "the leader's retention to reach retention.bytes")
            log_start = conn.list_offset("ret", 0, -2)[3]
            assert log_start == segments(leader.log_dir, "ret", 0)[0][0]
            assert follower_end < log_start < end, (follower_end, log_start, end)
        finally:
            os.kill(follower.proc.pid, signal.SIGCONT)

        # 3. Resumed, it starts over at the leader's log start and rejoins the ISR ...
        wait_isr(c, "ret", 0, {1, 2}, timeout_s=20)
        # ... with the same bytes as the leader, byte for byte, and nothing from before: its
        # old segments are gone, its log starts where the leader's does
        leader_bytes = batches_below(segment_bytes(leader.log_dir, "ret", 0), end)
        assert len(leader_bytes) > 0
        c.wait_for(lambda: batches_below(segment_bytes(follower.log_dir, "ret", 0), end) ==
                   leader_bytes, 10, "the follower's copy to match the leader's")
        assert segments(follower.log_dir, "ret", 0)[0][0] == log_start
        assert segment_bytes(follower.log_dir, "ret", 0).rstrip(b"\0") == \
            segment_bytes(leader.log_dir, "ret", 0).rstrip(b"\0")

        # 4. Consumers read the leader from its log start to the end, as written; below it
        # is out of range.
        meta, _ = conn.fetch("ret", 0, 0)
        assert meta[2] == errors.OffsetOutOfRange.code and meta[4] == log_start, meta
        got, offset = [], log_start
        while offset < end:
            meta, blob = conn.fetch("ret", 0, offset)
            assert meta[2] == 0 and meta[3] == end and blob, meta
            got += values_of(blob)
            offset = got[-1][0] + 1
        assert [o for o, _ in got] == list(range(log_start, end))
        assert [v for _, v in got] == [v for i in range(33) for _, v in values_of(a_batch(i))
                                       ][log_start:]
        # and acks=all, which now waits for the follower again, is answered
        r = conn.produce("ret", 0, [a_batch(33)], acks=-1)
        assert r[2] == 0 and r[3] == end, r
    finally:
        conn.close()


def test_retention_never_deletes_what_is_not_committed(cluster):
    # The follower stays in the ISR (a long lag limit) but is stopped: the leader's writes are
    # not committed. Retention must keep every segment at or above the high watermark, however
    # far over retention.bytes the log grows, and delete once the follower has them.
    import time
    c = cluster(2, overrides={**FAST, "log.retention.check.interval.ms": "100",
                              "replica.lag.time.max.ms": "60000",
                              "coordinator.session.timeout.ms": "20000"})
    c.create_topic("hold", 1, 2, {"segment.bytes": str(SEGMENT_BYTES),
                                  "retention.bytes": str(RETENTION_BYTES)})
    wait_isr(c, "hold", 0, {1, 2})
    leader_id, *_ = partition_info(c, "hold", 0)
    leader = c.broker(leader_id)
    follower = next(b for b in c.brokers if b is not leader)
    conn = Conn(leader.port)
    try:
        assert conn.produce("hold", 0, [batch([b"x" * 100] * RECORDS_PER_BATCH)], acks=-1)[2] == 0
        os.kill(follower.proc.pid, signal.SIGSTOP)
        for _ in range(30):
            assert conn.produce("hold", 0, [batch([b"y" * 100] * RECORDS_PER_BATCH)])[2] == 0

        def ends():
            start = conn.list_offset("hold", 0, -2)[3]
            hw = conn.list_offset("hold", 0, -1)[3]
            assert start <= hw, f"retention deleted up to {start}, past the high watermark {hw}"
            return start, hw
        # over 30 retention checks, nothing at or above the high watermark goes
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert ends()[1] == RECORDS_PER_BATCH
            time.sleep(0.05)
        assert len(segments(leader.log_dir, "hold", 0)) > 20
    finally:
        os.kill(follower.proc.pid, signal.SIGCONT)
    try:
        # committed now: retention deletes down to about retention.bytes
        c.wait_for(lambda: retention_done(leader.log_dir, "hold", 0) and
                   ends()[0] > RECORDS_PER_BATCH, 30, "retention after the commit")
    finally:
        conn.close()
