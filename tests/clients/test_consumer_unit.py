"""Consumer I/O and decoding against an in-process fake broker: positions and seeks, fetches
that start inside a batch, headers, nulls, compressed batches, out-of-range resets, iteration,
max_records, errors; corrupt and inconsistent batches, fetches that end inside a batch."""

import struct
import time

import pytest

from clients import (Consumer, ConsumerRecord, CorruptMessage, IllegalStateError,
                     InvalidGroupId, NoBrokersAvailable, OffsetOutOfRange, TopicPartition,
                     UnknownTopicOrPartition, ZbError)
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


# --- corrupt and inconsistent batches (issue #9) --------------------------------------------------

LAST_OFFSET_DELTA_AT = 23           # where records.py's batch header keeps last_offset_delta


def values_batch(first: int, n: int) -> bytes:
    """A batch of n records whose values name the offsets they will get (first, first + 1...)."""
    b = records.BatchBuilder()
    for i in range(first, first + n):
        b.append(b"v%d" % i, key=b"k%d" % i, timestamp_ms=1000 + i)
    return b.build()


def bad_checksum(batch: bytes) -> bytes:
    buf = bytearray(batch)
    buf[-1] ^= 0xFF
    return bytes(buf)


def rows_batch(deltas, last_offset_delta: int | None = None) -> bytes:
    """A batch whose records carry the offset deltas given, whatever its header says, with a
    checksum that passes: records.build_rows packs the rows as they are (its header says
    last_offset_delta = len(rows) - 1), and a patched last_offset_delta gets the checksum
    recomputed. Only the offsets are wrong, so only a consistency check can tell."""
    rows = [records.make_row(d, i, b"k%d" % i, b"v%d" % i, None)[0]
            for i, d in enumerate(deltas)]
    buf = bytearray(records.build_rows(rows, 1000))
    if last_offset_delta is not None:
        struct.pack_into(">i", buf, LAST_OFFSET_DELTA_AT, last_offset_delta)
        struct.pack_into(">I", buf, records.CRC_OFFSET, records.checksum(buf))
    h = records.validate_batch(buf)
    assert h.last_offset_delta == (len(deltas) - 1 if last_offset_delta is None
                                   else last_offset_delta)
    return bytes(buf)


def read_until_error(c, timeout_s=10):
    """Poll until poll() raises: (the records returned before, the error)."""
    out = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = c.poll(200)
        except ZbError as e:
            return out, e
        for recs in got.values():
            out.extend(recs)
    pytest.fail(f"poll() raised nothing in {timeout_s} s; it returned the offsets "
                f"{[r.offset for r in out]}")


def answers(fb) -> list:
    """Record the (offset, bytes) of every Fetch answer of the fake broker."""
    seen = []

    def hook(topic, partition, offset, data):
        seen.append((offset, len(data)))
        return data
    fb.fetch_hook = hook
    return seen


def assert_corrupt_at(err, offset: int, next_offset: int | None = None) -> None:
    assert isinstance(err, CorruptMessage), repr(err)
    text = str(err)
    assert "one-0" in text and f"at offset {offset} " in text, text
    assert "\n" not in text and "Traceback" not in text and text.endswith("."), text
    assert (err.topic_partition, err.offset) == (TP, offset)
    if next_offset is not None:
        assert err.next_offset == next_offset and f"seek to offset {next_offset}" in text, text


def test_a_corrupt_batch_is_an_error_at_exactly_its_offset_until_a_seek_past_it(fake_broker):
    """One fetch answer holds A (0-9), B (10-19, bad checksum) and C (20-29). Kafka's consumer
    returns the records before the corrupt batch, then raises at its offset on every poll until
    the user seeks past it ("seek past the record to continue consumption"); the position stays
    at B, and C is neither skipped nor returned ahead of B. (Once, the error came at the first
    poll, took A's records with it and named no offset, and the next poll went on after C.)"""
    a, b, c_ = values_batch(0, 10), bad_checksum(values_batch(10, 10)), values_batch(20, 10)
    for batch in (a, b, c_):
        put(fake_broker, "one", 0, batch)
    seen = answers(fake_broker)
    with consumer(fake_broker, consumer_timeout_ms=5000) as c:
        c.assign([TP])
        got, err = read_until_error(c)
        assert (0, len(a) + len(b) + len(c_)) in seen        # A, B and C in one answer
        assert [r.offset for r in got] == list(range(10))
        assert [r.value for r in got] == [b"v%d" % i for i in range(10)]
        assert_corrupt_at(err, 10, next_offset=20)
        assert c.position(TP) == 10
        for _ in range(3):                   # the same error at the same offset, every poll
            with pytest.raises(CorruptMessage, match="at offset 10 ") as again:
                c.poll(100)
            assert_corrupt_at(again.value, 10, next_offset=20)
            assert c.position(TP) == 10
        c.seek(TP, 15)                      # inside B: still B's error, and the position stays
        got, err = read_until_error(c)
        assert got == [] and c.position(TP) == 15
        assert_corrupt_at(err, 10, next_offset=20)
        c.seek(TP, err.next_offset)         # past B: C comes
        got = read_all(c, 10)
        assert [r.offset for r in got] == list(range(20, 30))
        assert [r.value for r in got] == [b"v%d" % i for i in range(20, 30)]
        assert c.position(TP) == 30
        c.seek(TP, 0)                       # iteration, one record at a time: the same
        it = []
        with pytest.raises(CorruptMessage, match="at offset 10 "):
            for rec in c:
                it.append(rec.offset)
        assert it == list(range(10)) and c.position(TP) == 10
        c.seek(TP, 0)                       # small polls: A in pieces, then the error
        pieces = []
        deadline = time.monotonic() + 10
        with pytest.raises(CorruptMessage, match="at offset 10 "):
            while time.monotonic() < deadline:
                for recs in c.poll(200, max_records=4).values():
                    pieces.append([r.offset for r in recs])
        assert pieces == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and c.position(TP) == 10


@pytest.mark.parametrize("deltas", [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 500],       # the last record beyond its header's range
    [0, 1, 2, 3, 500, 5, 6, 7, 8, 9],       # a record in the middle beyond it
    [-5, 1, 2, 3, 4, 5, 6, 7, 8, 9],        # the first record before it
    [0, 1, 2, 3, 3, 5, 6, 7, 8, 9],         # two records on one offset
], ids=["last-beyond", "middle-beyond", "first-before", "repeated"])
def test_a_batch_whose_records_leave_its_header_range_is_corrupt(fake_broker, deltas):
    """W (0-9), X (10-19 by its header, but a record's offset delta says otherwise, checksum
    valid) and Y (20-29). Positions come from batch headers; a batch whose records disagree
    with its header is corrupt (as Kafka treats an inconsistent batch): an error at X's base
    offset, the position at 10 (once it moved to 511, past Y, which was then skipped), and Y
    after a seek past X."""
    for batch in (values_batch(0, 10), rows_batch(deltas), values_batch(20, 10)):
        put(fake_broker, "one", 0, batch)
    with consumer(fake_broker) as c:
        c.assign([TP])
        got, err = read_until_error(c)
        assert [r.offset for r in got] == list(range(10))
        assert_corrupt_at(err, 10, next_offset=20)
        assert c.position(TP) == 10
        with pytest.raises(CorruptMessage, match="at offset 10 "):
            c.poll(100)
        c.seek(TP, 20)
        got = read_all(c, 10)
        assert [r.offset for r in got] == list(range(20, 30))
        assert c.position(TP) == 30


def test_a_malformed_batch_header_is_an_error_at_its_offset(fake_broker):
    """B's header is malformed (a wrong magic byte, which the checksum does not cover): A's
    records, then an error at the offset where B had to start. (Once, the fetcher's response
    handler raised on it, and the consumer refetched forever, returning nothing and raising
    nothing.)"""
    b = bytearray(values_batch(10, 10))
    b[16] = 7                                   # magic (records.py's header layout)
    for batch in (values_batch(0, 10), bytes(b), values_batch(20, 10)):
        put(fake_broker, "one", 0, batch)
    with consumer(fake_broker) as c:
        c.assign([TP])
        got, err = read_until_error(c)
        assert [r.offset for r in got] == list(range(10))
        assert_corrupt_at(err, 10)
        assert "header" in str(err) and c.position(TP) == 10
        with pytest.raises(CorruptMessage, match="at offset 10 "):
            c.poll(100)
        c.seek(TP, 20)
        assert [r.offset for r in read_all(c, 10)] == list(range(20, 30))


@pytest.mark.parametrize("cut", [1, 16, 60, 61, 62, -1],
                         ids=["1B", "in-prefix", "in-header", "header-only", "1B-of-records",
                              "1B-short"])
def test_a_fetch_that_ends_inside_a_batch_leaves_it_for_the_next_fetch(fake_broker, cut):
    """A fetch may end inside its last batch: that batch is neither an error nor skipped; the
    next fetch starts at it. (A guard: this worked before issue #9, and must keep working
    next to the corrupt-batch handling.)"""
    batches = [values_batch(i, 10) for i in (0, 10, 20)]
    for batch in batches:
        put(fake_broker, "one", 0, batch)
    seen = []

    def truncate_first(topic, partition, offset, data):
        seen.append(offset)
        if len(seen) == 1:
            return data[:len(batches[0]) + (cut if cut > 0 else len(batches[1]) + cut)]
        return data
    fake_broker.fetch_hook = truncate_first
    with consumer(fake_broker) as c:
        c.assign([TP])
        got = read_all(c, 30)
        assert [r.offset for r in got] == list(range(30))
        assert c.position(TP) == 30
    assert seen[:2] == [0, 10]


def test_the_position_after_a_batch_is_its_header_end_not_its_last_record(fake_broker):
    """A batch may end with offsets that hold no record (its header says 0-19, its records are
    0-9, as compaction leaves them): the position after it is 20, from the header, whether the
    records go out by poll(), by a poll() that ends exactly at the batch's end, or by iteration
    (once it was 10)."""
    put(fake_broker, "one", 0, rows_batch(range(10), last_offset_delta=19))
    with consumer(fake_broker, consumer_timeout_ms=500) as c:
        c.assign([TP])
        assert [r.offset for r in read_all(c, 10)] == list(range(10))
        assert c.position(TP) == 20
        c.seek(TP, 0)
        first = {}
        deadline = time.monotonic() + 5
        while not first and time.monotonic() < deadline:
            first = c.poll(200, max_records=4)
        assert [r.offset for r in first[TP]] == [0, 1, 2, 3] and c.position(TP) == 4
        rest = c.poll(1000, max_records=6)
        assert [r.offset for r in rest[TP]] == [4, 5, 6, 7, 8, 9] and c.position(TP) == 20
        c.seek(TP, 0)
        assert [r.offset for r in c] == list(range(10))
        assert c.position(TP) == 20
        c.seek(TP, 12)                      # inside the batch, after its last record
        assert c.poll(300) == {}
        assert c.position(TP) == 20         # nothing to return there, the position moves on
        put(fake_broker, "one", 0, values_batch(20, 10))
        got = read_all(c, 10)
        assert [r.offset for r in got] == list(range(20, 30)) and c.position(TP) == 30


def test_a_pending_corrupt_batch_holds_up_every_partition_until_paused(fake_broker):
    """As in Kafka, the corrupt batch stays next in line: other partitions' records wait
    behind it (poll() keeps raising) until its partition is sought past or paused."""
    bad, good = TopicPartition("t", 0), TopicPartition("t", 1)
    put(fake_broker, "t", 0, bad_checksum(values_batch(0, 10)))
    with consumer(fake_broker) as c:
        c.assign([bad, good])
        _, err = read_until_error(c)
        assert err.topic_partition == bad and err.offset == 0
        put(fake_broker, "t", 1, values_batch(0, 10))
        time.sleep(0.3)                     # fetched by now, and held up behind the error
        with pytest.raises(CorruptMessage, match="t-0 at offset 0 "):
            c.poll(100)
        c.pause(bad)
        got = read_all(c, 10)
        assert [(r.partition, r.offset) for r in got] == [(1, i) for i in range(10)]
        assert c.position(bad) == 0
        c.resume(bad)                       # still there, still the same error
        with pytest.raises(CorruptMessage, match="t-0 at offset 0 "):
            read_all(c, 1, timeout_s=5)


def test_unchecked_decoding_reads_the_same(fake_broker):
    fill(fake_broker, 100, per_batch=10)
    with consumer(fake_broker, check_crcs=False) as c:
        c.assign([TP])
        c.seek(TP, 35)
        got = read_all(c, 65)
        assert [r.offset for r in got] == list(range(35, 100)) and c.position(TP) == 100
