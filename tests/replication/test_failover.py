"""Failover with real processes: acks=all producers keep writing while brokers are killed with
kill -9 and restarted; afterwards every acknowledged value is there, offsets are contiguous and
every replica holds the same bytes below the high watermark. A controlled shutdown under acks=all
load shows the producer no error, and the preferred leaders come back."""

import collections
import random
import threading
import time

import msgpack
import pytest

from clients import Producer
from tests.clients.produce_spy import ProduceSpy
from tests.replication.helpers import (FAST, batches_below, partition_info, read_all,
                                       segment_bytes, wait_isr)
from zbroker import records

KILLS = 10
PARTITIONS = 3


class Writers:
    """Threads sending unique values with acks=all through the client library's Producer."""

    def __init__(self, bootstrap: str, topic: str, n: int = 2, in_flight_max: int = 500,
                 delivery_timeout_ms: int = 30000):
        self.topic = topic
        self.acked: list[bytes] = []
        self.failed: list[tuple[bytes, str]] = []
        self.sent = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sem = threading.BoundedSemaphore(in_flight_max)
        self.producers = [Producer(bootstrap, acks="all", linger_ms=2, request_timeout_ms=3000,
                                   retry_backoff_ms=50, delivery_timeout_ms=delivery_timeout_ms)
                          for _ in range(n)]
        # every Produce request and how it ended: each error answered is one retry (or, when
        # the producer gives up, one failed record batch, which also shows in ``failed``)
        self.spies = [ProduceSpy(p) for p in self.producers]
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

    def errors(self) -> collections.Counter:
        """Error name -> partitions of Produce requests answered with it, over all producers."""
        total = collections.Counter()
        for spy in self.spies:
            total += spy.errors()
        return total

    def attempts(self) -> list:
        return [a for spy in self.spies for a in spy.ended()]

    def finish(self, timeout_s: float = 60.0):
        self.stop.set()
        for t in self.threads:
            t.join(10)
        for p in self.producers:
            p.flush(timeout_s)
            p.close()


def batch_ranges(blob: bytes) -> list[tuple[int, int]]:
    """(first offset, last offset) of each whole batch in ``blob``."""
    return [(h.base_offset, h.base_offset + h.last_offset_delta)
            for h, _ in records.iter_batches(blob)]


def check_everything(c, topic: str, acked: list[bytes]) -> dict:
    """Every acknowledged value is readable, offsets are contiguous, every replica reaches the
    high watermark and holds the same bytes below it. Returns {"duplicates": n, "records": n}."""
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
        ranges = batch_ranges(want)
        # the leader's whole batches below the HW run from 0 to the HW without a gap
        assert ranges and ranges[0][0] == 0 and ranges[-1][1] == hw - 1, (ranges[:3], hw)
        assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:])), f"{topic}-{p} gaps"
        for b in c.brokers:
            def reached(b=b):
                mine = batch_ranges(batches_below(segment_bytes(b.log_dir, topic, p), hw))
                return mine and mine[-1][1] == hw - 1
            c.wait_for(reached, 15, f"broker {b.broker_id}'s copy of {topic}-{p} reaching the "
                                    f"high watermark {hw}")
            assert batches_below(segment_bytes(b.log_dir, topic, p), hw) == want, \
                f"broker {b.broker_id}'s copy of {topic}-{p} differs below {hw}"
    lost = [v for v in acked if v not in seen]
    assert not lost, f"{len(lost)} acknowledged values lost, e.g. {lost[:5]}"
    return {"duplicates": sum(n - 1 for n in seen.values()), "records": total}


def leaders_at_the_coordinator(c, topic: str) -> dict[int, int]:
    """partition -> leader, as the controller wrote it (not a broker's cached image)."""
    from coordinator.client import CoordinatorClient
    with CoordinatorClient(c.coordinator.address, session_timeout_ms=4000) as client:
        return {p: msgpack.unpackb(client.get(f"/brokers/topics/{topic}/{p}")[0])["leader"]
                for p in range(PARTITIONS)}


# What a producer may be told, and retry, while brokers are killed and restarted: the leader is
# gone (connection lost, no answer) or moved, or a restarted broker does not know the partition
# yet; with min.insync.replicas=2 and three brokers, never more than one down, the ISR may also
# drop to one for a moment (a follower still catching up after a restart is dropped after
# replica.lag.time.max.ms while another is down). The producers are idempotent (the default): a
# batch that reaches a leader while an earlier one of its partition is being resent is refused
# as out of order (or, at a leader that has none of the producer's batches yet, as an unknown
# producer) and resent after it.
RETRIED_ON_KILL = {"BrokerConnectionError", "RequestTimedOut", "NotLeaderOrFollower",
                   "LeaderNotAvailable", "UnknownTopicOrPartition", "FencedLeaderEpoch",
                   "UnknownLeaderEpoch", "NotEnoughReplicas", "OutOfOrderSequenceNumber",
                   "UnknownProducerId"}


@pytest.mark.timeout(150)
def test_acks_all_loses_nothing_across_kill9_of_random_brokers(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("chaos", PARTITIONS, 3, {"min.insync.replicas": "2"})
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"seed={seed}")
    # a record that is not acknowledged within 30 s fails, and fails the test: failover after a
    # kill -9 is a pause of about a session timeout (2 s here), retried, not an error
    w = Writers(c.bootstrap, "chaos", delivery_timeout_ms=30000).start()
    t0 = time.monotonic()
    try:
        c.wait_for(lambda: len(w.acked) >= 200, 30, "the first acknowledged writes")
        for k in range(KILLS):
            for p in range(PARTITIONS):     # let the last victim rejoin first
                wait_isr(c, "chaos", p, {1, 2, 3}, 30)
            victim = c.broker(rng.choice([1, 2, 3]))
            before = len(w.acked)
            victim.kill9()
            time.sleep(rng.uniform(0.2, 1.0))       # the fault schedule: down for a while
            victim.restart()
            print(f"kill {k + 1}: broker {victim.broker_id}, acked so far {before}")
        for p in range(PARTITIONS):
            wait_isr(c, "chaos", p, {1, 2, 3}, 30)
        after = len(w.acked)
        c.wait_for(lambda: len(w.acked) >= after + 200, 30, "writes after the last restart")
    finally:
        w.finish()
    elapsed = time.monotonic() - t0
    retried = w.errors()
    print(f"{KILLS} kills in {elapsed:.1f}s: sent={w.sent} acked={len(w.acked)} "
          f"failed={len(w.failed)} retried={dict(retried)}")
    assert not w.failed, w.failed[:5]                   # no error reached the application
    assert len(w.acked) == w.sent
    # the kills hit requests in flight, and each of those was retried for a reason a failover
    # gives; none was refused for anything else
    assert sum(retried.values()) > 0, retried
    assert set(retried) <= RETRIED_ON_KILL, retried
    figures = check_everything(c, "chaos", w.acked)
    print(f"records={figures['records']} duplicates={figures['duplicates']}")
    assert figures["duplicates"] == 0      # idempotent producers (the default)


@pytest.mark.timeout(120)
def test_controlled_shutdown_under_acks_all_shows_no_error_and_leaders_come_back(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("calm", PARTITIONS, 3, {"min.insync.replicas": "2"})
    for p in range(PARTITIONS):
        wait_isr(c, "calm", p, {1, 2, 3})
    preferred = {p: partition_info(c, "calm", p)[2][0] for p in range(PARTITIONS)}
    # "a pause, not an error": a record not acknowledged within 10 s fails the test
    w = Writers(c.bootstrap, "calm", delivery_timeout_ms=10000).start()
    try:
        c.wait_for(lambda: len(w.acked) >= 200, 30, "the first acknowledged writes")
        victim = c.broker(preferred[0])
        t0 = time.monotonic()
        assert victim.terminate(20) == 0        # 20 s: a liveness bound, not a speed target
        gone = time.monotonic() - t0
        print(f"controlled shutdown of broker {victim.broker_id} took {gone:.2f}s")
        # it left only once its leaderships had moved (the coordinator's record of them)
        moved = leaders_at_the_coordinator(c, "calm")
        assert all(leader not in (victim.broker_id, -1) for leader in moved.values()), moved
        c.wait_for(lambda: all(partition_info(c, "calm", p)[0] == moved[p]
                               for p in range(PARTITIONS)), 15, "brokers showing the new leaders")
        acked = len(w.acked)
        c.wait_for(lambda: len(w.acked) >= acked + 200, 20,
                   "acks=all writes going on with two brokers")
        victim.start()
        # the preferred replica catches up, rejoins the ISR and leads again
        c.wait_for(lambda: all(partition_info(c, "calm", p)[0] == preferred[p]
                               for p in range(PARTITIONS)), 30, "preferred leaders back")
        acked = len(w.acked)
        c.wait_for(lambda: len(w.acked) >= acked + 200, 20, "writes to the preferred leaders")
    finally:
        w.finish()
    retried = w.errors()
    print(f"sent={w.sent} acked={len(w.acked)} failed={len(w.failed)} retried={dict(retried)}")
    assert not w.failed, w.failed[:5]                   # no error reached the application
    assert len(w.acked) == w.sent
    # Behind the pause, only two things are retried. A request that reached a leader after its
    # leadership moved (away at the shutdown, back at the preferred leader election) is
    # answered NOT_LEADER_OR_FOLLOWER and sent to the new leader. And a request that reached
    # the victim after it had handed its leaderships over (sent on metadata not yet refreshed)
    # is not read any more: it fails when the victim's connection closes at its exit, and is
    # sent again. Nothing else: no request went unanswered (a timeout), none was refused for
    # want of in-sync replicas, and no surviving broker dropped a connection.
    assert retried["NotLeaderOrFollower"] > 0, retried
    assert set(retried) <= {"NotLeaderOrFollower", "BrokerConnectionError"}, retried
    dropped = [(a.node, round(a.sent_at - t0, 3), round(a.answered_at - t0, 3))
               for a in w.attempts() if "BrokerConnectionError" in a.outcome.values()]
    assert {node for node, _, _ in dropped} <= {victim.broker_id}, (dropped, gone)
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
