"""A leader whose log lost its tail (a power loss takes what the page cache held) comes back
while the partition state still names it leader: the controller is stopped (SIGSTOP), so it
has not yet elected anyone else. The broker must not lead from that earlier life's state, or
its followers, which have the lost records, would truncate them to its shorter log; once the
controller runs again it elects anew and every acknowledged record is still there."""

import os
import signal
import time

import pytest

from tests.broker.helpers import Conn, batch
from tests.procs import BrokerProc, Cluster, CoordinatorProc, broker_request
from tests.replication.helpers import FAST, partition_info, read_all, wait_isr
from zbroker import errors, records

pytestmark = pytest.mark.timeout(120)

BATCHES = 20
LOST = 8            # batches the power loss takes from the leader's log


def cut_log_tail(log_dir, topic: str, p: int, keep_batches: int) -> None:
    seg = os.path.join(str(log_dir), f"{topic}-{p}", f"{0:020d}.log")
    with open(seg, "rb") as f:
        data = f.read()
    pos = 0
    for i, (_, view) in enumerate(records.iter_batches(data)):
        if i == keep_batches:
            break
        pos += len(view)
    with open(seg, "r+b") as f:
        f.truncate(pos)


def test_a_leader_back_from_a_power_loss_does_not_lead_from_its_old_state(procs, tmp_path):
    coord = CoordinatorProc(procs, tmp_path / "coordinator").start()
    # broker 1 is the controller, with a session long enough to outlast the restart while it
    # is stopped (so that no other broker takes over as controller meanwhile)
    ctl = BrokerProc(procs, 1, coord.address, tmp_path / "b1",
                     {**FAST, "coordinator.session.timeout.ms": "15000"}).start()
    leader = BrokerProc(procs, 2, coord.address, tmp_path / "b2", FAST).start()
    follower = BrokerProc(procs, 3, coord.address, tmp_path / "b3", FAST).start()
    c = Cluster(coord, [ctl, leader, follower])
    c.wait_ready()
    c.wait_for(lambda: c.controller_id() == 1, 15, "broker 1 as controller")
    h, _ = broker_request(ctl.port, "CreateTopics", timeout_ms=10000, topics=[
        ["p", 1, -1, {"min.insync.replicas": "2"}, {0: [2, 3, 1]}]])
    assert h["topics"][0][1] == 0, h
    c.wait_topic("p", 1)
    wait_isr(c, "p", 0, {1, 2, 3})
    assert partition_info(c, "p", 0)[0] == 2
    conn = Conn(leader.port)
    for i in range(BATCHES):
        assert conn.produce("p", 0, [batch([b"v%d" % i])], acks=-1)[2] == 0   # acknowledged
    conn.close()
    c.wait_for(lambda: read_all(leader.port, "p", 0)[1] == BATCHES, 10,
               "the high watermark at the last acknowledged record")

    os.kill(ctl.proc.pid, signal.SIGSTOP)
    try:
        leader.kill9()
        cut_log_tail(leader.log_dir, "p", 0, BATCHES - LOST)    # the power loss
        leader.start(wait=False)    # registers again once its old registration expired
        # Back and registered, it sees a state naming it leader in its old epoch (the stopped
        # controller has not replaced it): it must refuse to act on it.
        conn = Conn(leader.port)

        def refused():
            try:
                got = conn.produce("p", 0, [batch([b"stale"])], acks=1)
            except TimeoutError:
                return False            # not listening yet
            assert got[2] != 0, "the restarted broker took a write in its earlier life's epoch"
            return got[2] == errors.NotLeaderOrFollower.code
        c.wait_for(refused, 30, "the restarted broker answering, and refusing to lead")
        # give the follower time to have fetched from it, had it led (it fetches every 200 ms)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert conn.produce("p", 0, [batch([b"stale"])], acks=1)[2] != 0
            time.sleep(0.1)
        conn.close()
    finally:
        os.kill(ctl.proc.pid, signal.SIGCONT)
    # the controller runs again: a leader is elected anew (and, once the broker that lost the
    # records is back in sync, the preferred leader election may hand it back: read from
    # whoever leads), and nothing acknowledged is gone
    def from_the_leader():
        now_leader, _, _, isr = partition_info(c, "p", 0)
        if now_leader < 0 or len(isr) < 2:
            return None
        try:
            return read_all(c.broker(now_leader).port, "p", 0)[0]
        except AssertionError:          # the leadership moved while reading
            return None
    got = c.wait_for(from_the_leader, 30, "a leader elected anew")
    assert [v for _, v in got][:BATCHES] == [b"v%d" % i for i in range(BATCHES)]
    # and the broker that lost them catches up again
    wait_isr(c, "p", 0, {1, 2, 3}, timeout_s=30)
    assert [v for _, v in c.wait_for(from_the_leader, 30, "reading again")][:BATCHES] == \
        [b"v%d" % i for i in range(BATCHES)]
