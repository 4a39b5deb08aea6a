"""Replica requests are fenced by broker epoch and leader epoch, through real processes: a Fetch
that claims to come from a follower moves neither the high watermark nor the ISR unless it
carries that follower's registered broker epoch (the creation zxid of its /brokers/ids key) and
names the current leader epoch. (Anyone who can read the coordinator can learn the epoch:
keeping impostors off the ports at all is the security issue's CURVE keys.)"""

import os
import signal

import pytest

from coordinator.client import CoordinatorClient
from tests.broker.helpers import Conn, batch
from tests.replication.helpers import FAST, partition_info, wait_isr
from zbroker import errors

pytestmark = pytest.mark.timeout(90)


def test_a_fetch_posing_as_a_follower_moves_nothing_without_its_broker_epoch(cluster):
    c = cluster(2, overrides={**FAST, "replica.lag.time.max.ms": "30000"})
    c.create_topic("f", 1, 2, {"min.insync.replicas": "2"})
    wait_isr(c, "f", 0, {1, 2})
    leader_id, epoch, _, _ = partition_info(c, "f", 0)
    follower = next(b for b in c.brokers if b.broker_id != leader_id)
    with CoordinatorClient(c.coordinator.address, session_timeout_ms=4000) as client:
        registered = client.get_with_stat(f"/brokers/ids/{follower.broker_id}")[1].czxid
    conn = Conn(c.broker(leader_id).port)
    os.kill(follower.proc.pid, signal.SIGSTOP)      # its own fetches stop
    try:
        assert conn.produce("f", 0, [batch([b"one"])], acks=1)[2] == 0
        assert conn.fetch("f", 0, 0)[0][3] == 0     # HW: the follower does not have it yet

        def spoof(replica_epoch, leader_epoch=epoch, **extra):
            fields = {"replica_id": follower.broker_id, "max_wait_ms": 0, "min_bytes": 1,
                      "max_bytes": 1 << 20,
                      "parts": [["f", 0, 1, leader_epoch, 1 << 20, 0]], **extra}
            if replica_epoch is not None:
                fields["replica_epoch"] = replica_epoch
            return conn.request("Fetch", **fields)[0]

        # no broker epoch at all: the request is refused as malformed
        h = spoof(None)
        assert h["err"] == errors.InvalidRequest.code and "replica_epoch" in h["msg"], h
        # a wrong one (an impostor, or an earlier life of the follower)
        for wrong in (registered - 1, registered + 1, 0):
            h = spoof(wrong)
            assert h["parts"][0][2] == errors.StaleBrokerEpoch.code, h
        # the right one, but no leader epoch: replicas must name the one they follow in
        h = spoof(registered, leader_epoch=-1)
        assert h["parts"][0][2] == errors.FencedLeaderEpoch.code, h
        assert conn.fetch("f", 0, 0)[0][3] == 0, "a refused fetch moved the high watermark"
        # the same request with the follower's registered epoch is believed: the refusals above
        # were for the epoch and nothing else
        h = spoof(registered)
        assert h["parts"][0][2] == 0, h
        assert conn.fetch("f", 0, 0)[0][3] == 1
    finally:
        os.kill(follower.proc.pid, signal.SIGCONT)
        conn.close()
    assert c.broker(leader_id).alive and follower.alive
