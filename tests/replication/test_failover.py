"""Failover with real processes: acks=all producers keep writing while brokers are killed with
kill -9 and restarted; afterwards every acknowledged value is there, offsets are contiguous and
every replica holds the same bytes below the high watermark. A controlled shutdown under acks=all
load shows the producer no error, and the preferred leaders come back."""

import random
import threading
import time

import pytest

from clients import Producer
from tests.replication.helpers import (FAST, batches_below, partition_info, read_all,
                                       segment_bytes, wait_isr)

KILLS = 10
PARTITIONS = 3


class Writers:
    """Threads sending unique values with acks=all through the client library's Producer."""

    def __init__(self, bootstrap: str, topic: str, n: int = 2, in_flight_max: int = 500):
        self.topic = topic
        self.acked: list[bytes] = []
        self.failed: list[tuple[bytes, str]] = []
        self.sent = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sem = threading.BoundedSemaphore(in_flight_max)
        self.producers = [Producer(bootstrap, acks="all", linger_ms=2, request_timeout_ms=3000,
                                   retry_backoff_ms=50, delivery_timeout_ms=120000)
                          for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, i: int) -> None:
        p = self.producers[i]
        seq = 0
        while not self.stop.is_set():
            if not self.sem.acquire(timeout=0.1):
                continue
            value = b"w%d-%08d" % (i, seq)
            seq += 1
            fut = p.send(self.topic, value, partition=seq % PARTITIONS)
            with self.lock:
                self.sent += 1
            fut.add_callback(lambda md, v=value: self._ok(v))
            fut.add_errback(lambda e, v=value: self._err(v, e))
            time.sleep(0.0005)

    def _ok(self, value):
        with self.lock:
            self.acked.append(value)
        self.sem.release()

    def _err(self, value, e):
        with self.lock:
            self.failed.append((value, repr(e)))
        self.sem.release()

    def finish(self, timeout_s: float = 60.0):
        self.stop.set()
        for t in self.threads:
            t.join(10)
        for p in self.producers:
            p.flush(timeout_s)
            p.close()


def check_everything(c, topic: str, acked: list[bytes]) -> dict:
    """Every acknowledged value is readable, offsets are contiguous, replicas agree below the
    high watermark. Returns {"duplicates": n, "records": n}."""
    seen: dict[bytes, int] = {}
    total = 0
    for p in range(PARTITIONS):
        wait_isr(c, topic, p, {b.broker_id for b in c.brokers}, 30)
        leader, *_ = partition_info(c, topic, p)
        got, hw = read_all(c.broker(leader).port, topic, p)
        assert [o for o, _ in got] == list(range(hw)), f"offsets of {topic}-{p} not contiguous"
        total += len(got)
        for _, v in got:
            seen[v] = seen.get(v, 0) + 1
        want = batches_below(segment_bytes(c.broker(leader).log_dir, topic, p), hw)
        for b in c.brokers:
            c.wait_for(lambda: batches_below(segment_bytes(b.log_dir, topic, p), hw) == want,
                       15, f"broker {b.broker_id}'s copy of {topic}-{p} below {hw}")
    lost = [v for v in acked if v not in seen]
    assert not lost, f"{len(lost)} acknowledged values lost, e.g. {lost[:5]}"
    return {"duplicates": sum(n - 1 for n in seen.values()), "records": total}


@pytest.mark.timeout(150)
def test_acks_all_loses_nothing_across_kill9_of_random_brokers(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("chaos", PARTITIONS, 3, {"min.insync.replicas": "2"})
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"seed={seed}")
    w = Writers(c.bootstrap, "chaos").start()
    t0 = time.monotonic()
    try:
        time.sleep(1.0)
        for k in range(KILLS):
            for p in range(PARTITIONS):     # let the last victim rejoin first
                wait_isr(c, "chaos", p, {1, 2, 3}, 30)
            victim = c.broker(rng.choice([1, 2, 3]))
            before = len(w.acked)
            victim.kill9()
            time.sleep(rng.uniform(0.2, 1.0))
            victim.restart()
            print(f"kill {k + 1}: broker {victim.broker_id}, acked so far {before}")
        time.sleep(1.0)
    finally:
        w.finish()
    elapsed = time.monotonic() - t0
    print(f"{KILLS} kills in {elapsed:.1f}s: sent={w.sent} acked={len(w.acked)} "
          f"failed={len(w.failed)}")
    assert len(w.acked) > 1000
    assert not w.failed, w.failed[:5]
    figures = check_everything(c, "chaos", w.acked)
    print(f"records={figures['records']} duplicates={figures['duplicates']}")


@pytest.mark.timeout(120)
def test_controlled_shutdown_under_acks_all_shows_no_error_and_leaders_come_back(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("calm", PARTITIONS, 3, {"min.insync.replicas": "2"})
    for p in range(PARTITIONS):
        wait_isr(c, "calm", p, {1, 2, 3})
    preferred = {p: partition_info(c, "calm", p)[2][0] for p in range(PARTITIONS)}
    w = Writers(c.bootstrap, "calm").start()
    try:
        time.sleep(1.0)
        victim = c.broker(preferred[0])
        t0 = time.monotonic()
        assert victim.terminate(20) == 0
        took = time.monotonic() - t0
        print(f"controlled shutdown of broker {victim.broker_id} took {took:.2f}s")
        assert took < 10
        for p in range(PARTITIONS):
            leader, *_ = partition_info(c, "calm", p)
            assert leader != victim.broker_id and leader >= 0
        acked = len(w.acked)
        time.sleep(1.0)
        assert len(w.acked) > acked        # still writing with two brokers
        victim.start()
        # the preferred replica catches up, rejoins the ISR and leads again
        c.wait_for(lambda: all(partition_info(c, "calm", p)[0] == preferred[p]
                               for p in range(PARTITIONS)), 30, "preferred leaders back")
        time.sleep(0.5)
    finally:
        w.finish()
    assert not w.failed, w.failed[:5]
    check_everything(c, "calm", w.acked)


@pytest.mark.timeout(120)
def test_clients_follow_a_leader_that_stays_dead(cluster):
    """kill -9 of a partition's leader, not restarted: the producer and the consumer must find
    the new leader on their own (metadata refresh while the old one cannot be reached)."""
    from clients import Consumer, TopicPartition
    c = cluster(3, overrides=FAST)
    c.create_topic("stay-dead", 1, 3, {"min.insync.replicas": "2"})
    wait_isr(c, "stay-dead", 0, {1, 2, 3})
    leader, *_ = partition_info(c, "stay-dead", 0)
    tp = TopicPartition("stay-dead", 0)
    with Producer(c.bootstrap, acks="all", linger_ms=1, request_timeout_ms=3000,
                  retry_backoff_ms=50) as producer, \
            Consumer(bootstrap_servers=c.bootstrap, auto_offset_reset="earliest",
                     request_timeout_ms=3000, retry_backoff_ms=50) as consumer:
        consumer.assign([tp])
        for i in range(100):
            producer.send("stay-dead", b"before-%d" % i).result(20)
        seen = []
        deadline = time.monotonic() + 20
        while len(seen) < 100 and time.monotonic() < deadline:
            seen += [r.value for r in consumer.poll(timeout_ms=200).get(tp, [])]
        assert len(seen) == 100
        c.broker(leader).kill9()
        t0 = time.monotonic()
        for i in range(100):                # blocks until the producer finds the new leader
            producer.send("stay-dead", b"after-%d" % i).result(30)
        took = time.monotonic() - t0
        print(f"first acks=all writes after the leader's kill -9 took {took:.1f}s")
        new_leader, *_ = partition_info(c, "stay-dead", 0)
        assert new_leader not in (leader, -1)
        deadline = time.monotonic() + 30
        while len(seen) < 200 and time.monotonic() < deadline:
            seen += [r.value for r in consumer.poll(timeout_ms=200).get(tp, [])]
        assert seen == [b"before-%d" % i for i in range(100)] + \
            [b"after-%d" % i for i in range(100)]
