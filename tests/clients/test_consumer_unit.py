"""Consumer I/O and decoding against an in-process fake broker: positions and seeks, fetches
that start inside a batch, headers, nulls, compressed batches, out-of-range resets, iteration,
max_records, errors."""

import time

import pytest

from clients import (Consumer, ConsumerRecord, CorruptMessage, IllegalStateError,
                     InvalidGroupId, NoBrokersAvailable, OffsetOutOfRange, TopicPartition,
                     UnknownTopicOrPartition)
from tests.procs import free_port
from zbroker import records

pytestmark = pytest.mark.timeout(30)

TP = TopicPartition("one", 0)


def put(fb, topic, partition, batch: bytes) -> None:
    """Append a built batch to the fake broker's log, as its Produce would."""
    tp = (topic, partition)
    buf = bytearray(batch)
    h = records.read_header(buf)
    records.set_base_offset_and_epoch(buf, fb.next_offset[tp], 0)
    fb.logs[tp].append(buf)
    fb.next_offset[tp] += h.last_offset_delta + 1


def fill(fb, n=100, per_batch=10, compression="none", topic="one", partition=0):
    for start in range(0, n, per_batch):
        b = records.BatchBuilder(compression)
        for i in range(start, min(n, start + per_batch)):
            b.append(b"v%d" % i, key=b"k%d" % i, timestamp_ms=1000 + i)
        put(fb, topic, partition, b.build())


def consumer(fb, **kw):
    kw.setdefault("auto_offset_reset", "earliest")
    kw.setdefault("fetch_max_wait_ms", 50)
    return Consumer(bootstrap_servers=fb.bootstrap, **kw)


def read_all(c, n, timeout_s=10):
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for recs in c.poll(200).values():
            out.extend(recs)
    return out


def test_reads_everything_in_order_with_all_fields(fake_broker):
    fill(fake_broker, 100)
    with consumer(fake_broker) as c:
        c.assign([TP])
        got = read_all(c, 100)
        assert c.position(TP) == 100
        assert c.highwater(TP) == 100
    assert [r.offset for r in got] == list(range(100))
    r = got[7]
    assert isinstance(r, ConsumerRecord)
    assert (r.topic, r.partition, r.key, r.value, r.timestamp, r.headers) == \
        ("one", 0, b"k7", b"v7", 1007, ())


def test_seek_inside_a_batch_starts_exactly_there(fake_broker):
    fill(fake_broker, 100, per_batch=25)
    with consumer(fake_broker) as c:
        c.assign([TP])
        c.seek(TP, 37)
        got = read_all(c, 63)
        assert [r.offset for r in got] == list(range(37, 100))
        c.seek(TP, 5)                          # seeking back drops what was prefetched
        got = read_all(c, 3)
        assert got[0].offset == 5


def test_headers_nulls_and_zlib_batches(fake_broker):
    b = records.BatchBuilder("zlib")
    b.append(None, key=None, headers=[("a", b"1"), ("b", None)], timestamp_ms=5)
    b.append(b"", key=b"", timestamp_ms=6)
    put(fake_broker, "one", 0, b.build())
    fill(fake_broker, 20, compression="zlib")
    with consumer(fake_broker) as c:
        c.assign([TP])
        got = read_all(c, 22)
    assert got[0].value is None and got[0].key is None
    assert got[0].headers == (("a", b"1"), ("b", None))
    assert got[1].value == b"" and got[1].key == b""
    assert [r.value for r in got[2:]] == [b"v%d" % i for i in range(20)]
    assert [r.offset for r in got] == list(range(22))


def test_poll_honours_max_records_and_iteration_honours_consumer_timeout(fake_broker):
    fill(fake_broker, 50)
    with consumer(fake_broker, consumer_timeout_ms=300) as c:
        c.assign([TP])
        first = {}
        deadline = time.monotonic() + 5
        while not first and time.monotonic() < deadline:
            first = c.poll(200, max_records=7)
        assert sum(len(v) for v in first.values()) == 7
        start = time.monotonic()
        rest = list(c)
        assert time.monotonic() - start < 3
    assert [r.offset for r in rest] == list(range(7, 50))


def test_subscribe_reads_every_partition(fake_broker):
    for p in range(3):
        fill(fake_broker, 10, topic="t", partition=p)
    with Consumer("t", bootstrap_servers=fake_broker.bootstrap, auto_offset_reset="earliest",
                  consumer_timeout_ms=500, fetch_max_wait_ms=50) as c:
        got = list(c)
        assert c.assignment() == {TopicPartition("t", p) for p in range(3)}
    assert len(got) == 30
    for p in range(3):
        assert [r.offset for r in got if r.partition == p] == list(range(10))


def test_latest_reset_and_seek_to_beginning_and_end(fake_broker):
    fill(fake_broker, 30)
    with consumer(fake_broker, auto_offset_reset="latest") as c:
        c.assign([TP])
        assert c.position(TP) == 30
        assert c.poll(200) == {}
        c.seek_to_beginning(TP)
        assert c.position(TP) == 0
        c.seek_to_end()
        assert c.position(TP) == 30
        fill(fake_broker, 5)
        got = read_all(c, 5)
        assert [r.offset for r in got] == list(range(30, 35))


def test_offset_out_of_range_resets_by_policy(fake_broker):
    fill(fake_broker, 10)
    with consumer(fake_broker) as c:
        c.assign([TP])
        c.seek(TP, 1000)
        got = read_all(c, 10)
        assert [r.offset for r in got] == list(range(10))
    with consumer(fake_broker, auto_offset_reset="none") as c:
        c.assign([TP])
        with pytest.raises(OffsetOutOfRange):
            c.poll(1000)
        c.seek(TP, 1000)
        with pytest.raises(OffsetOutOfRange, match="out of range"):
            read_all(c, 1, timeout_s=3)


def test_corrupt_batch_is_a_clear_error(fake_broker):
    batch = bytearray(records.build_batch([b"a", b"b"]))
    batch[-1] ^= 0xFF
    put(fake_broker, "one", 0, bytes(batch))
    with consumer(fake_broker) as c:
        c.assign([TP])
        with pytest.raises(CorruptMessage, match="one-0"):
            read_all(c, 1, timeout_s=3)


def test_unknown_topic_unassigned_partition_and_bad_settings_are_clear_errors(fake_broker):
    with consumer(fake_broker, unknown_topic_wait_ms=200) as c:
        c.assign([TopicPartition("nope", 0)])
        with pytest.raises(UnknownTopicOrPartition, match="'nope' does not exist"):
            read_all(c, 1, timeout_s=5)
        with pytest.raises(IllegalStateError, match="not assigned"):
            c.seek(TP, 0)
    with pytest.raises(InvalidGroupId, match="non-empty"):
        Consumer(bootstrap_servers=fake_broker.bootstrap, group_id="")
    with pytest.raises(ValueError, match="group_instance_id needs a group_id"):
        Consumer(bootstrap_servers=fake_broker.bootstrap, group_instance_id="i")
    with pytest.raises(ValueError, match="at most a third"):
        Consumer(bootstrap_servers=fake_broker.bootstrap, group_id="g",
                 session_timeout_ms=6000, heartbeat_interval_ms=3000)
    port = free_port()
    with pytest.raises(NoBrokersAvailable, match=f"127.0.0.1:{port}"):
        Consumer(bootstrap_servers=f"127.0.0.1:{port}", bootstrap_timeout_ms=300)


def test_a_batch_larger_than_the_partition_limit_still_comes(fake_broker):
    b = records.BatchBuilder()
    for i in range(50):
        b.append(b"x" * 100)
    put(fake_broker, "one", 0, b.build())
    with consumer(fake_broker, max_partition_fetch_bytes=1024) as c:
        c.assign([TP])
        assert len(read_all(c, 50)) == 50


def test_consumer_records_are_tuples_with_fields_equality_and_pickling():
    import pickle
    cls = ConsumerRecord.of("one", 0)
    r = cls(5, 1000, b"k", b"v", (("h", b"x"),))
    assert tuple(r) == (5, 1000, b"k", b"v", (("h", b"x"),))
    assert (r.topic, r.partition, r.offset, r.timestamp, r.key, r.value) == \
        ("one", 0, 5, 1000, b"k", b"v")
    assert pickle.loads(pickle.dumps(r)) == r
    assert r != ConsumerRecord.of("one", 1)(5, 1000, b"k", b"v", (("h", b"x"),))
    plain = records.Record(5, 1000, b"k", b"v", ())
    assert pickle.loads(pickle.dumps(plain)) == plain and repr(plain).startswith("Record(")


def test_a_fetch_made_before_a_partition_was_given_back_is_not_taken_for_its_new_state(
        fake_broker):
    """A partition dropped and assigned again gets a new state; a fetch still parked at the
    broker for the old one must not be taken for it (once, their generations could collide,
    and the answer of the old fetch made the new one skip records)."""
    fill(fake_broker, 10)
    with consumer(fake_broker, fetch_max_wait_ms=1500) as c:
        c.assign([TP])
        assert [r.offset for r in read_all(c, 10)] == list(range(10))
        time.sleep(0.2)                     # the next fetch (from 10) is parked at the broker
        c.assign([])
        c.assign([TP])
        c.seek(TP, 0)
        fill(fake_broker, 10)               # the parked fetch will be answered with 10..19
        got = read_all(c, 20, timeout_s=10)
    assert [r.offset for r in got][:20] == list(range(20))
