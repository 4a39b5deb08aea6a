"""When the coordinator service goes away, under acks=all load: a leader that loses contact with
it (the coordinator stopped with SIGSTOP) stops acting as leader before its session could have
expired elsewhere, and leads again when it is back; a coordinator killed with kill -9 and
restarted on its data keeps every session. Either way nothing acknowledged is lost."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from clients import Producer
from tests.broker.helpers import Conn, batch
from tests.replication.helpers import FAST, partition_info, read_all

pytestmark = pytest.mark.timeout(120)


class Writer:
    """One thread writing unique values with acks=all; keeps what was acknowledged."""

    def __init__(self, bootstrap: str, topic: str):
        self.acked: list[bytes] = []
        self.acked_at: list[float] = []          # monotonic time each ack was seen
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.producer = Producer(bootstrap, acks="all", linger_ms=2, request_timeout_ms=3000,
                                 retry_backoff_ms=50, delivery_timeout_ms=60000)
        self.thread = threading.Thread(target=self._run, args=(topic,), daemon=True)
        self.thread.start()

    def _run(self, topic):
        i = 0
        while not self.stop.is_set():
            futs = []
            for _ in range(20):
                v = b"v%08d" % i
                i += 1
                f = self.producer.send(topic, v, partition=0)
                # (the time the acknowledgement came, on the producer's I/O thread)
                f.add_callback(lambda md, v=v: self._ok(v))
                futs.append(f)
            for f in futs:
                try:
                    f.result(90)
                except Exception as e:       # not acknowledged: not promised either
                    self.errors.append(str(e))
            time.sleep(0.01)

    def _ok(self, value):
        self.acked_at.append(time.monotonic())
        self.acked.append(value)

    def close(self):
        self.stop.set()
        self.thread.join(90)
        self.producer.close()


def produce_code(port: int, topic: str) -> int:
    conn = Conn(port)
    try:
        return conn.produce(topic, 0, [batch([b"probe"])], acks=1)[2]
    finally:
        conn.close()


def test_a_leader_cut_off_from_the_coordinator_stops_leading_then_comes_back(cluster):
    from zbroker import errors
    c = cluster(3, overrides=FAST)
    c.create_topic("t", partitions=1, replication_factor=3, config={"min.insync.replicas": "2"})
    w = Writer(c.bootstrap, "t")
    try:
        c.wait_for(lambda: len(w.acked) > 200, 30, "acknowledged writes")
        leader, epoch, *_ = partition_info(c, "t", 0)
        port = c.broker(leader).port
        assert produce_code(port, "t") == 0
        stopped = time.monotonic()
        c.coordinator.proc.popen.send_signal(signal.SIGSTOP)
        try:
            # 2 s sessions: the leader stops leading after 2/3 of that without the coordinator
            c.wait_for(lambda: produce_code(port, "t") == errors.NotLeaderOrFollower.code, 10,
                       "the leader refusing produce")
            acked_while_cut_off = len(w.acked)
            time.sleep(2.5)
            resumed = time.monotonic()
        finally:
            c.coordinator.proc.popen.send_signal(signal.SIGCONT)
        # The safety promise: nothing acknowledged once the leader's session could have expired
        # elsewhere (the last heartbeat was before the stop, sessions are 2 s).
        late = [t for t in w.acked_at if stopped + 2.0 <= t < resumed]
        assert not late, f"{len(late)} writes acknowledged by a leader that may be deposed"
        c.wait_for(lambda: produce_code(c.broker(partition_info(c, "t", 0)[0]).port, "t") == 0,
                   30, "a leader producing again")
        c.wait_for(lambda: len(w.acked) > acked_while_cut_off + 200, 30, "writes going on")
    finally:
        w.close()
    leader = partition_info(c, "t", 0)[0]
    values = {v for _, v in read_all(c.broker(leader).port, "t", 0)[0]}
    missing = [v for v in w.acked if v not in values]
    assert not missing, f"{len(missing)} acknowledged records lost"


def test_coordinator_killed_and_restarted_under_acks_all_load(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("t", partitions=1, replication_factor=3, config={"min.insync.replicas": "2"})
    w = Writer(c.bootstrap, "t")
    try:
        c.wait_for(lambda: len(w.acked) > 200, 30, "acknowledged writes")
        before = {b.broker_id: b.metadata([])["brokers"] for b in c.brokers}
        c.coordinator.kill9()
        time.sleep(0.5)
        c.coordinator.start()                   # the same data directory: sessions recovered
        n = len(w.acked)
        c.wait_for(lambda: len(w.acked) > n + 300, 30, "writes going on after the restart")
        # every broker is still registered in its first life (no session expired)
        for b in c.brokers:
            assert b.alive
        c.wait_ready()
        assert {b.broker_id: b.metadata([])["brokers"] for b in c.brokers} == before
    finally:
        w.close()
    leader = partition_info(c, "t", 0)[0]
    values = [v for _, v in read_all(c.broker(leader).port, "t", 0)[0]]
    missing = [v for v in w.acked if v not in set(values)]
    assert not missing, f"{len(missing)} acknowledged records lost"

