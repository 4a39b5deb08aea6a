"""The idempotent producer's I/O logic against the fake broker, which checks sequences with the
broker's own ProducerStateManager: lost answers, failures with several requests in flight, an
epoch bump after the leader forgot the producer, and Kafka's configuration rules (KIP-679)."""

import collections
import time

import pytest

from clients import Producer
from clients.producer import _insert_in_order
from tests.clients.produce_spy import ProduceSpy
from zbroker import errors, records

pytestmark = pytest.mark.timeout(30)


def values(fb, topic, partition=0):
    return [r.value for r in fb.records(topic, partition)]


def producer_headers(fb, topic, partition=0):
    return [records.read_header(b) for b in fb.logs[(topic, partition)]]


def test_idempotence_is_the_default_with_acks_all(fake_broker):
    with Producer(fake_broker.bootstrap) as p:
        assert p.enable_idempotence and p.acks == -1
        p.send("one", b"a").result(10)
    h, = producer_headers(fake_broker, "one")
    assert h.producer_id >= 0 and h.producer_epoch == 0 and h.base_sequence == 0
    assert [r["api"] for r in fake_broker.requests].count("InitProducerId") == 1


@pytest.mark.parametrize("settings", [{"acks": 1}, {"acks": 0}, {"max_in_flight": 6},
                                      {"retries": 0}])
def test_settings_idempotence_cannot_work_with_turn_the_default_off(fake_broker, settings):
    with Producer(fake_broker.bootstrap, **settings) as p:
        assert not p.enable_idempotence
    with pytest.raises(ValueError, match="enable_idempotence=True"):
        Producer(fake_broker.bootstrap, enable_idempotence=True, **settings)


def test_off_sends_batches_without_a_producer_id(fake_broker):
    with Producer(fake_broker.bootstrap, enable_idempotence=False) as p:
        p.send("one", b"a").result(10)
    assert producer_headers(fake_broker, "one")[0].producer_id == -1
    assert "InitProducerId" not in [r["api"] for r in fake_broker.requests]


def test_lost_answers_do_not_write_twice(fake_broker):
    fake_broker.drop_responses = 3          # written, then the answer is lost
    with Producer(fake_broker.bootstrap, request_timeout_ms=300, retry_backoff_ms=10,
                  linger_ms=0, batch_size=100) as p:
        futs = [p.send("one", b"%d" % i) for i in range(200)]
        p.flush(20)
    assert fake_broker.drop_responses == 0
    assert values(fake_broker, "one") == [b"%d" % i for i in range(200)]
    assert [f.result(0).offset for f in futs] == list(range(200))


def test_a_failure_with_requests_in_flight_keeps_the_send_order(fake_broker):
    # the first answer says "not leader": the batches behind it, already in flight, are refused
    # as out of order, and everything is resent in its original order
    fake_broker.produce_errors = [errors.NotLeaderOrFollower.code]
    with Producer(fake_broker.bootstrap, retry_backoff_ms=10, linger_ms=0,
                  batch_size=100) as p:
        spy = ProduceSpy(p)
        futs = [p.send("one", b"%d" % i) for i in range(300)]
        p.flush(20)
    assert values(fake_broker, "one") == [b"%d" % i for i in range(300)]
    assert [f.result(0).offset for f in futs] == list(range(300))
    assert spy.errors()["NotLeaderOrFollower"] == 1
    seqs = [h.base_sequence for h in producer_headers(fake_broker, "one")]
    assert seqs == sorted(seqs) and seqs[0] == 0


def test_unknown_producer_bumps_the_epoch_and_numbers_again(fake_broker):
    with Producer(fake_broker.bootstrap, retry_backoff_ms=10, linger_ms=0) as p:
        p.send("one", b"first").result(10)
        fake_broker.producer_state.clear()      # the leader forgot the producer
        futs = [p.send("one", b"%d" % i) for i in range(50)]
        p.flush(20)
    assert values(fake_broker, "one") == [b"first"] + [b"%d" % i for i in range(50)]
    assert [f.result(0).offset for f in futs] == list(range(1, 51))
    hs = producer_headers(fake_broker, "one")
    assert hs[0].producer_epoch == 0
    assert {h.producer_epoch for h in hs[1:]} == {1} and hs[1].base_sequence == 0


def test_a_batch_that_failed_for_good_leaves_no_stuck_gap(fake_broker):
    # a non-retriable error on one batch: the ones after it are refused as out of order until
    # the producer starts a new epoch; they are then written, in order
    fake_broker.produce_errors = [errors.InvalidTopic.code]
    with Producer(fake_broker.bootstrap, retry_backoff_ms=10, linger_ms=0,
                  batch_size=100) as p:
        futs = [p.send("one", b"%d" % i) for i in range(100)]
        p.flush(20)
    failed = [i for i, f in enumerate(futs) if f.exception(0) is not None]
    assert failed and failed == list(range(len(failed)))    # the first batch, nothing else
    assert values(fake_broker, "one") == [b"%d" % i for i in range(len(failed), 100)]


def test_at_most_five_requests_of_a_partition_are_in_flight(fake_broker):
    fake_broker.produce_delay_s = 0.005     # answers are slow: the producer pipelines
    with Producer(fake_broker.bootstrap, linger_ms=0, batch_size=64, max_request_size=2048) as p:
        spy = ProduceSpy(p)
        for i in range(2000):
            p.send("one", b"%d" % i)
        p.flush(20)
    assert 1 < spy.max_in_flight_per_partition <= 5
    assert values(fake_broker, "one") == [b"%d" % i for i in range(2000)]


def test_resends_keep_the_order_the_batches_were_made_in():
    """Two responses fail one after the other: their batches go back in the order they were
    made (the old code put each failed response's batches at the head, reversing them)."""
    Batch = collections.namedtuple("Batch", "seq")
    q = collections.deque([Batch(9)])
    for b in (Batch(3), Batch(4), Batch(1), Batch(2)):   # the second failure, then the first
        _insert_in_order(q, b)
    assert [b.seq for b in q] == [1, 2, 3, 4, 9]


def test_a_batch_answered_not_leader_after_its_write_is_not_written_again(fake_broker):
    """A leader that loses its leadership answers the acks=all produces it had written with
    NOT_LEADER_OR_FOLLOWER. When an epoch bump is due at the same time (here: a batch of another
    partition failed for good), the producer must first learn that batch's fate by resending it
    as it was, not number it anew in the next epoch (which the leader would write again)."""
    fake_broker.errors_after_append[("t", 0)] = [errors.NotLeaderOrFollower.code]
    fake_broker.part_errors[("t", 1)] = [errors.InvalidTopic.code]
    with Producer(fake_broker.bootstrap, retry_backoff_ms=10, linger_ms=20) as p:
        a = p.send("t", b"a", partition=0)
        bad = p.send("t", b"bad", partition=1)
        assert a.result(10).offset == 0
        assert bad.exception(10) is not None
        assert p.send("t", b"b", partition=0).result(10).offset == 1
        p.send("t", b"c", partition=1).result(10)
    assert values(fake_broker, "t", 0) == [b"a", b"b"]
    assert [h.producer_epoch for h in producer_headers(fake_broker, "t", 0)] == [0, 1]
    assert values(fake_broker, "t", 1) == [b"c"]


def test_a_resend_behind_forgotten_runs_writes_only_what_is_new(fake_broker):
    """Answers lost again and again while another producer's records land between this one's
    batches (so each is a run of its own): a resend then starts with batches older than the
    five runs the leader remembers. They are answered as duplicates, and what is new behind
    them is written once, in order."""
    def landed(value):
        deadline = time.monotonic() + 5
        while value not in values(fake_broker, "one") and time.monotonic() < deadline:
            time.sleep(0.002)
    with Producer(fake_broker.bootstrap, linger_ms=0, retry_backoff_ms=10,
                  request_timeout_ms=300) as p, \
            Producer(fake_broker.bootstrap, linger_ms=0, acks=0) as other:
        p.send("one", b"warm").result(10)
        fake_broker.drop_responses = 12
        futs = []
        for i in range(12):
            futs.append(p.send("one", b"p%d" % i))
            landed(b"p%d" % i)
            other.send("one", b"o%d" % i)
            landed(b"o%d" % i)
        p.flush(30)
    assert fake_broker.drop_responses == 0
    mine = [v for v in values(fake_broker, "one") if v.startswith(b"p")]
    assert mine == [b"p%d" % i for i in range(12)]
    assert all(f.exception(0) is None for f in futs)
