"""The idempotent producer through real processes: two producers with default settings write
counters over 6 partitions while brokers are killed with kill -9 and restarted and client
connections are cut; every acknowledged value is in the log exactly once, and each producer's
counters come in increasing order in every partition. A follower that becomes leader refuses a
duplicate the old leader had written; a broker restarted after kill -9 still knows its batches."""

import collections
import random
import subprocess
import threading
import time

import pytest

from clients import Producer
from tests.broker.helpers import Conn
from tests.clients.produce_spy import ProduceSpy
from tests.replication.helpers import FAST, partition_info, read_all, wait_isr
from zbroker import records

PARTITIONS = 6
FAULTS = 8


def cut_connections(port: int) -> None:
    """Kill every TCP connection to ``port`` on loopback (both ends see it go, as after a
    network fault); ZeroMQ reconnects by itself."""
    subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", str(port)],
                   capture_output=True, check=False)


class Counters:
    """Threads sending keyed values ``p<i>-<counter>`` with the producer's defaults."""

    def __init__(self, bootstrap: str, topic: str, n: int = 2, in_flight_max: int = 300):
        self.topic = topic
        self.acked: list[bytes] = []
        self.failed: list = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sem = threading.BoundedSemaphore(in_flight_max)
        self.producers = [Producer(bootstrap, linger_ms=2, request_timeout_ms=3000,
                                   retry_backoff_ms=50, delivery_timeout_ms=60000)
                          for _ in range(n)]
        assert all(p.enable_idempotence for p in self.producers)
        self.spies = [ProduceSpy(p) for p in self.producers]   # what was answered, for the log
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        p = self.producers[i]
        counter = 0
        while not self.stop.is_set():
            if not self.sem.acquire(timeout=0.1):
                continue
            value = b"p%d-%08d" % (i, counter)
            fut = p.send(self.topic, value, key=b"key-%d" % (counter % 24))
            counter += 1
            fut.add_callback(lambda md, v=value: self._done(v, None))
            fut.add_errback(lambda e, v=value: self._done(v, e))
            time.sleep(0.0005)

    def _done(self, value, error) -> None:
        with self.lock:
            if error is None:
                self.acked.append(value)
            else:
                self.failed.append((value, repr(error)))
        self.sem.release()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        for p in self.producers:
            p.flush(60)
            p.close()


@pytest.mark.timeout(180)
def test_exactly_once_and_in_order_through_kill9_and_cut_connections(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("counters", PARTITIONS, 3, {"min.insync.replicas": "2"})
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed={seed}")
    w = Counters(c.bootstrap, "counters")
    try:
        c.wait_for(lambda: len(w.acked) >= 300, 30, "the first acknowledged writes")
        for k in range(FAULTS):
            for p in range(PARTITIONS):
                wait_isr(c, "counters", p, {1, 2, 3}, 30)
            victim = c.broker(rng.choice([1, 2, 3]))
            before = len(w.acked)
            if k % 2 == 0:
                victim.kill9()
                time.sleep(rng.uniform(0.2, 0.8))
                victim.restart()
                what = "kill -9"
            else:
                for _ in range(3):          # answers in flight are lost, requests resent
                    cut_connections(victim.port)
                    time.sleep(rng.uniform(0.05, 0.3))
                what = "connections cut"
            c.wait_for(lambda: len(w.acked) >= before + 100, 30, "writes after the fault")
            print(f"fault {k + 1}: {what} at broker {victim.broker_id}, acked {before}")
    finally:
        w.finish()
    assert not w.failed, w.failed[:5]
    seen = collections.Counter()
    order_broken = []
    for p in range(PARTITIONS):
        wait_isr(c, "counters", p, {1, 2, 3}, 30)
        leader, *_ = partition_info(c, "counters", p)
        got, _hw = read_all(c.broker(leader).port, "counters", p)
        last = {}
        for _, v in got:
            seen[v] += 1
            producer, counter = v.split(b"-")
            if counter <= last.get(producer, b""):
                order_broken.append((p, last[producer], v))
            last[producer] = counter
    twice = [v for v, n in seen.items() if n > 1]
    lost = [v for v in w.acked if v not in seen]
    answered = sum((s.errors() for s in w.spies), collections.Counter())
    print(f"acked={len(w.acked)} records={sum(seen.values())} duplicates={len(twice)} "
          f"retried={dict(answered)}")
    assert not lost, f"{len(lost)} acknowledged values lost, e.g. {lost[:5]}"
    assert not twice, f"{len(twice)} values written more than once, e.g. {twice[:5]}"
    assert not order_broken, order_broken[:5]


def idempotent_batch(pid: int, seq: int, values: list[bytes], epoch: int = 0) -> bytes:
    b = records.BatchBuilder(producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    for v in values:
        b.append(v)
    return b.build()


def init_producer_id(port: int) -> int:
    conn = Conn(port)
    try:
        header, _ = conn.request("InitProducerId", transactional_id=None)
        assert header["err"] == 0 and header["producer_epoch"] == 0, header
        return header["producer_id"]
    finally:
        conn.close()


def produce(port: int, topic: str, blob: bytes) -> list:
    conn = Conn(port)
    try:
        return conn.produce(topic, 0, blob, acks=-1)
    finally:
        conn.close()


@pytest.mark.timeout(90)
def test_a_new_leader_refuses_a_duplicate_the_old_leader_wrote(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("dedup", 1, 3, {"min.insync.replicas": "2"})
    wait_isr(c, "dedup", 0, {1, 2, 3})
    leader, *_ = partition_info(c, "dedup", 0)
    pid = init_producer_id(c.broker(leader).port)
    first = idempotent_batch(pid, 0, [b"a", b"b"])
    second = idempotent_batch(pid, 2, [b"c"])
    for blob, offset in ((first, 0), (second, 2)):
        part = produce(c.broker(leader).port, "dedup", blob)
        assert part[2] == 0 and part[3] == offset, part
    c.broker(leader).kill9()
    new = c.wait_for(lambda: (lambda l: l if l not in (-1, leader) else None)(
        partition_info(c, "dedup", 0)[0]), 20, "a new leader")
    # the retried batches are answered with their first offsets and not written again
    for blob, offset in ((second, 2), (first, 0)):
        part = produce(c.broker(new).port, "dedup", blob)
        assert part[2] == 0 and part[3] == offset, part
    part = produce(c.broker(new).port, "dedup", idempotent_batch(pid, 3, [b"d"]))
    assert part[2] == 0 and part[3] == 3, part
    got, hw = read_all(c.broker(new).port, "dedup", 0)
    assert [v for _, v in got] == [b"a", b"b", b"c", b"d"] and hw == 4


@pytest.mark.timeout(90)
def test_a_broker_restarted_after_kill9_still_deduplicates(cluster):
    c = cluster(1, overrides={"log.segment.bytes": "1024"})   # rolls: snapshots and a replay
    c.create_topic("again", 1, 1)
    b = c.broker(1)
    pid = init_producer_id(b.port)
    batches = [idempotent_batch(pid, seq, [b"%d" % seq * 100]) for seq in range(30)]
    for seq, blob in enumerate(batches):
        assert produce(b.port, "again", blob)[3] == seq
    b.kill9()
    b.restart()
    c.wait_for(lambda: produce(b.port, "again", batches[-1])[2] == 0, 30,
               "the restarted broker leading again")
    for seq in (29, 27, 25):                # the last five batches are remembered
        part = produce(b.port, "again", batches[seq])
        assert part[2] == 0 and part[3] == seq, part
    part = produce(b.port, "again", idempotent_batch(pid, 30, [b"new"]))
    assert part[2] == 0 and part[3] == 30, part
    got, hw = read_all(b.port, "again", 0)
    assert hw == 31 and len(got) == 31
    # and the next id handed out is new: ids come in blocks claimed in the coordinator
    assert init_producer_id(b.port) > pid
