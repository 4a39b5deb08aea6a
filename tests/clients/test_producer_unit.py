"""Producer I/O logic against an in-process fake broker: batching, linger, the sticky
partitioner, futures and callbacks, acks=0, retries and their order, timeouts, errors."""

import threading
import time

import pytest

from clients import (IllegalStateError, MessageTooLarge, NoBrokersAvailable, Producer,
                     RecordMetadata, RequestTimedOut, UnknownTopicOrPartition)
from clients.partitioner import partition_for_key
from tests.clients.produce_spy import OK, ProduceSpy
from tests.procs import free_port
from zbroker import errors, records

pytestmark = pytest.mark.timeout(30)


def batches_of(fb, topic, partition):
    return [records.read_header(b) for b in fb.logs[(topic, partition)]]


def test_send_returns_metadata_with_offsets_in_order(fake_broker):
    with Producer(fake_broker.bootstrap, linger_ms=1) as p:
        futs = [p.send("one", b"v%d" % i) for i in range(1000)]
        metas = [f.result(10) for f in futs]
    assert [m.offset for m in metas] == list(range(1000))
    assert all(isinstance(m, RecordMetadata) and m.topic == "one" and m.partition == 0
               for m in metas)
    assert [r.value for r in fake_broker.records("one", 0)] == [b"v%d" % i for i in range(1000)]


def test_keyed_records_follow_the_key_hash(fake_broker):
    with Producer(fake_broker.bootstrap) as p:
        metas = [p.send("t", b"x", key=b"key-%d" % i).result(10) for i in range(50)]
    for i, m in enumerate(metas):
        assert m.partition == partition_for_key(b"key-%d" % i, 3)


def test_keyless_records_stick_to_one_partition_per_batch(fake_broker):
    # linger_ms far beyond the test: only batch_size seals a batch, and flush() the last one
    with Producer(fake_broker.bootstrap, batch_size=2000, linger_ms=600_000) as p:
        futs = [p.send("t", b"x" * 50) for _ in range(200)]
        p.flush(10)
    metas = [f.result(0) for f in futs]
    runs = []                       # [partition, records] of consecutive sends
    for m in metas:
        if runs and runs[-1][0] == m.partition:
            runs[-1][1] += 1
        else:
            runs.append([m.partition, 1])
    full = runs[0][1]
    # every batch but the last filled up to batch_size, then the next went to another partition
    assert len(runs) == -(-200 // full) and len(runs) > 3, runs
    assert [n for _, n in runs] == [full] * (len(runs) - 1) + [200 - full * (len(runs) - 1)]
    assert all(a[0] != b[0] for a, b in zip(runs, runs[1:])), runs
    # the broker got exactly those batches, one per run, in order within each partition
    for part in range(3):
        assert [h.records_count for h in batches_of(fake_broker, "t", part)] == \
            [n for q, n in runs if q == part]
    next_offset = [0, 0, 0]
    for m in metas:
        assert m.offset == next_offset[m.partition]
        next_offset[m.partition] += 1


def test_batch_size_bounds_batches_and_linger_sends_a_lone_record(fake_broker):
    with Producer(fake_broker.bootstrap, batch_size=1024, linger_ms=50) as p:
        futs = [p.send("one", b"y" * 100) for _ in range(40)]
        p.flush(10)
        assert all(f.done() for f in futs)
        assert all(h.size <= 1024 + 200 for h in batches_of(fake_broker, "one", 0))
        start = time.monotonic()
        meta = p.send("one", b"alone").result(5)     # no flush: linger_ms sends it
        assert time.monotonic() - start < 2
        assert meta.offset == 40


def test_many_threads_send_safely(fake_broker):
    with Producer(fake_broker.bootstrap, linger_ms=2) as p:
        out = [[] for _ in range(4)]

        def work(i):
            for j in range(2000):
                out[i].append(p.send("one", b"%d-%d" % (i, j)))
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        offsets = [f.result(10).offset for fs in out for f in fs]
    assert sorted(offsets) == list(range(8000))


def test_callbacks_and_future_surface(fake_broker):
    seen, done_seen = [], []
    with Producer(fake_broker.bootstrap) as p:
        f = p.send("one", b"a", headers=[("h", b"1")], timestamp_ms=1234)
        f.add_callback(seen.append)
        f.add_done_callback(done_seen.append)
        meta = f.get(10)
        assert f.succeeded() and not f.failed() and f.exception() is None
        assert meta.timestamp == 1234
        late = []
        f.add_callback(late.append)            # already done: runs at once
        assert late == [meta]
    assert seen == [meta] and done_seen == [f]
    rec = fake_broker.records("one", 0)[0]
    assert rec.headers == (("h", b"1"),) and rec.timestamp == 1234


def test_acks_0_resolves_with_offset_minus_one(fake_broker):
    with Producer(fake_broker.bootstrap, acks=0) as p:
        metas = [p.send("one", b"z").result(10) for _ in range(10)]
    assert all(m.offset == -1 for m in metas)
    deadline = time.monotonic() + 5
    while len(fake_broker.records("one", 0)) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(fake_broker.records("one", 0)) == 10


def test_retriable_errors_are_retried_in_order_with_max_in_flight_1(fake_broker):
    fake_broker.produce_errors = [errors.NotLeaderOrFollower.code,
                                  errors.RequestTimedOut.code]
    with Producer(fake_broker.bootstrap, max_in_flight=1, retry_backoff_ms=10,
                  batch_size=200, linger_ms=0) as p:
        spy = ProduceSpy(p, keep_blobs=True)
        futs = [p.send("one", b"%d" % i) for i in range(300)]
        p.flush(10)
    assert fake_broker.produce_errors == []
    assert [f.result(0).offset for f in futs] == list(range(300))
    assert [r.value for r in fake_broker.records("one", 0)] == [b"%d" % i for i in range(300)]
    # the refused request was sent again, twice, before anything else; then all went through
    tp = ("one", 0)
    attempts = spy.ended()
    assert len(attempts) == len(spy.attempts)
    assert [a.outcome for a in attempts[:3]] == [{tp: "NotLeaderOrFollower"},
                                                 {tp: "RequestTimedOut"}, {tp: OK}]
    assert all(a.outcome == {tp: OK} for a in attempts[3:])
    assert spy.errors() == {"NotLeaderOrFollower": 1, "RequestTimedOut": 1}
    first = attempts[0].blobs[0]
    assert attempts[1].blobs[0].startswith(first) and attempts[2].blobs[0].startswith(first)
    assert spy.max_in_flight_per_partition == 1      # one request at a time: no reordering
    # NOT_LEADER_OR_FOLLOWER made the producer ask who leads before it sent the batch again
    produce_or_metadata = [r["api"] for r in fake_broker.requests
                           if r["api"] in ("Produce", "Metadata")]
    first_produce = produce_or_metadata.index("Produce")
    assert produce_or_metadata[first_produce + 1] == "Metadata", produce_or_metadata


def test_a_lost_request_times_out_and_is_retried(fake_broker):
    with Producer(fake_broker.bootstrap, request_timeout_ms=300, retry_backoff_ms=10) as p:
        fake_broker.drop_next = 1
        meta = p.send("one", b"once").result(10)
    assert meta.offset == 0


def test_non_retriable_error_fails_the_future(fake_broker):
    fake_broker.produce_errors = [errors.MessageTooLarge.code]
    with Producer(fake_broker.bootstrap) as p:
        f = p.send("one", b"x")
        with pytest.raises(MessageTooLarge):
            f.result(10)
        assert f.failed() and isinstance(f.exception(), MessageTooLarge)
        assert p.send("one", b"next").result(10).offset == 0


def test_delivery_timeout_bounds_retries(fake_broker):
    # Every answer is NOT_LEADER_OR_FOLLOWER. Attempts go out at about 0, 0.4 and 0.8 s; after
    # the third refusal a resend (at 1.2 s) would pass the 1 s delivery timeout, so the record
    # fails then with the error the broker gave, after exactly three attempts (each step has
    # some 200 ms of slack).
    fake_broker.produce_errors = [errors.NotLeaderOrFollower.code] * 1000
    with Producer(fake_broker.bootstrap, delivery_timeout_ms=1000, retry_backoff_ms=400) as p:
        spy = ProduceSpy(p)
        p.partitions_for("one")     # metadata first: its refreshes are retry_backoff_ms apart
        start = time.monotonic()
        f = p.send("one", b"x")
        with pytest.raises(errors.NotLeaderOrFollower, match="injected"):
            f.result(10)
        failed_after = time.monotonic() - start
        assert f.failed() and isinstance(f.exception(), errors.NotLeaderOrFollower)
    assert [a.outcome for a in spy.attempts] == [{("one", 0): "NotLeaderOrFollower"}] * 3
    assert sum(1 for r in fake_broker.requests if r["api"] == "Produce") == 3
    assert len(fake_broker.produce_errors) == 1000 - 3
    sent = [a.sent_at - start for a in spy.attempts]
    assert sent[1] - sent[0] >= 0.4 and sent[2] - sent[1] >= 0.4, sent    # the backoff
    assert sent[2] < 1.0, sent                      # nothing sent past the delivery timeout
    assert 0.8 <= failed_after < 5, failed_after    # failed at the last refusal, not later


def test_clear_errors_at_send(fake_broker):
    with Producer(fake_broker.bootstrap, unknown_topic_wait_ms=300) as p:
        start = time.monotonic()
        with pytest.raises(UnknownTopicOrPartition, match="'missing' does not exist"):
            p.send("missing", b"x")
        assert time.monotonic() - start < 5
        with pytest.raises(MessageTooLarge, match="max_request_size"):
            p.send("one", b"x" * 2_000_000)
        with pytest.raises(UnknownTopicOrPartition, match="no partition 7"):
            p.send("t", b"x", partition=7)
        with pytest.raises(TypeError):
            p.send("one", "not bytes")
        assert p.send("one", b"still fine").result(10).offset == 0
    with pytest.raises(IllegalStateError):
        p.send("one", b"after close")


def test_unreachable_bootstrap_fails_within_the_bound():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(NoBrokersAvailable, match=f"127.0.0.1:{port}"):
        Producer(f"127.0.0.1:{port}", bootstrap_timeout_ms=500)
    assert time.monotonic() - start < 3


def test_buffer_memory_blocks_then_times_out(fake_broker):
    p = Producer(fake_broker.bootstrap, buffer_memory=4096, batch_size=1024,
                 max_block_ms=300, request_timeout_ms=60000)
    p.partitions_for("one")
    fake_broker.drop_next = 10**6          # from now on nothing is answered
    try:
        with pytest.raises(RequestTimedOut, match="buffer"):
            for _ in range(1000):
                p.send("one", b"x" * 200)
    finally:
        p.close(0.5)


def test_short_and_general_send_paths_share_a_batch_and_keep_every_field(fake_broker):
    """Keyless records without headers take send()'s short path; the others go through
    records.make_row. Mixed in one batch they keep their order, fields and timestamps."""
    with Producer(fake_broker.bootstrap, linger_ms=50) as p:
        futs = [p.send("one", b"a"),
                p.send("one", b"b", headers=[("h", b"x")], timestamp_ms=1000),
                p.send("one", None),
                p.send("one", bytearray(b"c"), timestamp_ms=2000),
                p.send("one", b"d", partition=0, headers=[("n", None)])]
        metas = [f.result(10) for f in futs]
        with pytest.raises(TypeError):
            p.send("one", "not bytes")
    assert [m.offset for m in metas] == [0, 1, 2, 3, 4]
    assert metas[1].timestamp == 1000 and metas[3].timestamp == 2000
    got = fake_broker.records("one", 0)
    assert [(r.offset, r.key, r.value, r.headers) for r in got] == [
        (0, None, b"a", ()), (1, None, b"b", (("h", b"x"),)), (2, None, None, ()),
        (3, None, b"c", ()), (4, None, b"d", (("n", None),))]
    assert [r.timestamp for r in got] == [m.timestamp for m in metas]
    (h,) = batches_of(fake_broker, "one", 0)
    assert h.records_count == 5
    assert h.max_timestamp == max(m.timestamp for m in metas)
    assert h.base_timestamp == metas[0].timestamp
