"""Incremental fetch sessions (KIP-227) through real processes: a leader answers a session's
fetches with only the partitions that changed, parks them on the session, takes the follower's
offsets from what it named, refuses wrong epochs and unknown sessions, and a real follower whose
session was taken over opens a new one and catches up."""

import os
import signal
import time

import pytest

from coordinator.client import CoordinatorClient
from tests.broker.helpers import Conn, batch, values_of
from tests.replication.helpers import FAST, partition_info, wait_isr
from zbroker import errors

pytestmark = pytest.mark.timeout(120)

PARTS = 6


def test_a_session_fetch_names_and_answers_only_what_changed(cluster):
    c = cluster(2, overrides={**FAST, "replica.lag.time.max.ms": "30000"})
    c.create_topic("s", PARTS, 2)
    for p in range(PARTS):
        wait_isr(c, "s", p, {1, 2})
    leader_id, _, _, _ = partition_info(c, "s", 0)
    mine = {p: partition_info(c, "s", p)[1] for p in range(PARTS)
            if partition_info(c, "s", p)[0] == leader_id}   # partition -> leader epoch
    follower = next(b for b in c.brokers if b.broker_id != leader_id)
    with CoordinatorClient(c.coordinator.address, session_timeout_ms=4000) as client:
        registered = client.get_with_stat(f"/brokers/ids/{follower.broker_id}")[1].czxid
    conn = Conn(c.broker(leader_id).port)
    os.kill(follower.proc.pid, signal.SIGSTOP)      # we fetch in its place
    try:
        def fetch(session_id, session_epoch, parts, max_wait_ms=0, replica_epoch=registered,
                  **extra):
            return conn.request("Fetch", timeout_s=10, replica_id=follower.broker_id,
                                replica_epoch=replica_epoch, max_wait_ms=max_wait_ms,
                                min_bytes=1, max_bytes=1 << 20, session_id=session_id,
                                session_epoch=session_epoch,
                                parts=[["s", p, off, mine[p], 1 << 20, -1] for p, off in parts],
                                **extra)

        # a full request opens the session and is answered for every partition named
        h, _ = fetch(0, 0, [(p, 0) for p in mine])
        assert h["err"] == 0 and h["session_id"] > 0, h
        sid = h["session_id"]
        assert sorted(r[1] for r in h["parts"]) == sorted(mine)
        # nothing new: an incremental request naming nothing gets nothing
        h, _ = fetch(sid, 1, [])
        assert (h["err"], h["parts"], h["session_id"]) == (0, [], sid), h
        # a record on one partition: only that partition comes back, with the record
        p1, *rest = sorted(mine)
        assert conn.produce("s", p1, [batch([b"one"])], acks=1)[2] == 0
        h, blobs = fetch(sid, 2, [])
        assert [r[1] for r in h["parts"]] == [p1], h
        assert [v for _, v in values_of(blobs[0])] == [b"one"]
        assert conn.fetch("s", p1, 0)[0][3] == 0    # the HW waits for our fetch offset
        # the follower names the partition at its new offset: the leader believes it
        h, _ = fetch(sid, 3, [(p1, 1)])
        assert [r[1] for r in h["parts"]] == [p1] and h["parts"][0][2] == 0, h
        assert conn.fetch("s", p1, 0)[0][3] == 1
        h, _ = fetch(sid, 4, [])                    # (the HW that moved, for the follower)
        assert [(r[1], r[3]) for r in h["parts"]] in ([], [(p1, 1)]), h
        # a parked session fetch wakes for a record on any of its partitions
        if rest:
            p2 = rest[0]
            req = conn.send("Fetch", replica_id=follower.broker_id, replica_epoch=registered,
                            max_wait_ms=8000, min_bytes=1, max_bytes=1 << 20, session_id=sid,
                            session_epoch=5, parts=[])
            time.sleep(0.3)     # (parked, or answered at once: either way it must hold p2)
            producer = Conn(c.broker(leader_id).port)
            try:
                assert producer.produce("s", p2, [batch([b"two"])], acks=1)[2] == 0
            finally:
                producer.close()
            h, blobs = conn.recv(timeout_s=6)
            assert h["id"] == req and [r[1] for r in h["parts"]] == [p2], h
            assert [v for _, v in values_of(blobs[0])] == [b"two"]
            # a forgotten partition is not answered any more
            h, _ = fetch(sid, 6, [], forgotten=[["s", p2]])
            assert h["err"] == 0, h
            assert conn.produce("s", p2, [batch([b"three"])], acks=1)[2] == 0
            h, _ = fetch(sid, 7, [])
            assert p2 not in [r[1] for r in h["parts"]], h
            next_epoch = 8
        else:
            next_epoch = 5
        # refusals at the request level, which leave the session as it was
        h, _ = fetch(sid, next_epoch + 3, [])
        assert h["err"] == errors.InvalidFetchSessionEpoch.code, h
        h, _ = fetch(sid + 1, next_epoch, [])
        assert h["err"] == errors.FetchSessionIdNotFound.code, h
        h, _ = fetch(0, 0, [(p1, 1)], replica_epoch=registered + 1)
        assert h["err"] == errors.StaleBrokerEpoch.code, h
        h, _ = fetch(sid, -2, [])
        assert h["err"] == errors.InvalidFetchSessionEpoch.code, h
        h, _ = fetch(sid, next_epoch, [], forgotten=[["s"]])
        assert h["err"] == errors.InvalidRequest.code, h
        h, _ = fetch(sid, next_epoch, [])
        assert h["err"] == 0, h
        h, _ = conn.request("Fetch", max_wait_ms=0, min_bytes=1, max_bytes=1 << 20,
                            session_id=0, session_epoch=0, parts=[["s", p1, 0, -1, 1 << 20]])
        assert h["err"] == errors.InvalidRequest.code, "a consumer opened a fetch session"
    finally:
        os.kill(follower.proc.pid, signal.SIGCONT)
        conn.close()
    # the real follower's session was replaced by ours: it opens a new one and catches up
    conn = Conn(c.broker(leader_id).port)
    try:
        for p in mine:
            assert conn.produce("s", p, [batch([b"after"])], acks=1)[2] == 0

        def replicated():
            return all(conn.fetch("s", p, 0)[0][3] == conn.fetch("s", p, 0)[0][5]
                       for p in mine) or None
        c.wait_for(replicated, 20, "the follower replicating again")
    finally:
        conn.close()
    for p in mine:
        wait_isr(c, "s", p, {1, 2})
    assert c.broker(leader_id).alive and follower.alive
