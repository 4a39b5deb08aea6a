"""The record batch format: golden bytes, round trips, validation errors."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zbroker import records as r
from zbroker.errors import CorruptMessage, MessageTooLarge

# Two records (key, value, header; then all nulls), producer id 7, epoch 1, sequence 3, no codec.
GOLDEN = bytes.fromhex(
    "0000000000000000"  # base_offset 0
    "00000048"          # batch_length 72
    "ffffffff"          # partition_leader_epoch -1
    "02"                # magic
    "3dc920e3"          # crc: low 32 bits of xxh3_64(bytes[21:])
    "0000"              # attributes: no codec
    "00000001"          # last_offset_delta 1
    "00000000000003e8"  # base_timestamp 1000
    "00000000000003ea"  # max_timestamp 1002
    "0000000000000007"  # producer_id 7
    "0001"              # producer_epoch 1
    "00000003"          # base_sequence 3
    "00000002"          # records_count 2
    # msgpack: [[0, 0, b"k", b"v", [["h", b"x"]]], [1, 2, nil, nil, []]]
    "92" "95" "00" "00" "c4016b" "c40176" "91" "92" "a168" "c40178"
    "95" "01" "02" "c0" "c0" "90")


def golden_builder():
    b = r.BatchBuilder(producer_id=7, producer_epoch=1, base_sequence=3)
    b.append(b"v", key=b"k", headers=[("h", b"x")], timestamp_ms=1000)
    b.append(None, timestamp_ms=1002)
    return b


@pytest.mark.timeout(10)
def test_golden_bytes():
    assert golden_builder().build() == GOLDEN
    h = r.validate_batch(GOLDEN)
    assert h == r.BatchHeader(0, 72, -1, 2, 0x3dc920e3, 0, 1, 1000, 1002, 7, 1, 3, 2)
    assert h.size == len(GOLDEN) and h.last_offset == 1 and h.next_offset == 2
    assert r.decode_records(GOLDEN) == [r.Record(0, 1000, b"k", b"v", (("h", b"x"),)),
                                        r.Record(1, 1002, None, None, ())]


@pytest.mark.timeout(10)
def test_stamping_keeps_checksum_valid():
    buf = bytearray(GOLDEN)
    r.set_base_offset_and_epoch(buf, 1_000_000, 42)
    h = r.validate_batch(buf)
    assert (h.base_offset, h.partition_leader_epoch, h.crc) == (1_000_000, 42, 0x3dc920e3)
    assert [x.offset for x in r.decode_records(buf)] == [1_000_000, 1_000_001]
    # the prefix form the log writes with pwritev is the same bytes
    stamped = r.header_prefix(1_000_000, 72, 42) + GOLDEN[r.PREFIX_SIZE:]
    assert stamped == bytes(buf)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_round_trip_keys_values_headers_nulls(compression):
    b = r.BatchBuilder(compression)
    rows = [
        (b"value", b"key", [("a", b"1"), ("b", None), ("ünï", b"")], 5),
        (None, None, None, 3),            # a tombstone with no key, timestamp going back
        (b"", b"", [], 10),
        (bytes(range(256)) * 40, None, [("big", b"x" * 1000)], 10),
        (bytearray(b"ba"), memoryview(b"mv"), None, 7),
    ]
    for value, key, headers, ts in rows:
        b.append(value, key=key, headers=headers, timestamp_ms=ts)
    batch = b.build()
    h = r.validate_batch(batch)
    assert h.compression == (r.CODEC_ZLIB if compression == "zlib" else r.CODEC_NONE)
    assert (h.base_timestamp, h.max_timestamp, h.records_count) == (5, 10, 5)
    got = r.decode_records(batch)
    assert [x.offset for x in got] == list(range(5))
    assert [x.timestamp for x in got] == [5, 3, 10, 10, 7]
    assert [x.value for x in got] == [b"value", None, b"", bytes(range(256)) * 40, b"ba"]
    assert [x.key for x in got] == [b"key", None, b"", None, b"mv"]
    assert got[0].headers == (("a", b"1"), ("b", None), ("ünï", b""))
    assert got[1].headers == () and got[3].headers == (("big", b"x" * 1000),)
    if compression == "zlib":
        assert len(batch) < 4000  # the repetitive value compressed


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.none() | st.binary(max_size=64), st.none() | st.binary(max_size=16),
                               st.lists(st.tuples(st.text(max_size=5), st.none() | st.binary(max_size=5)),
                                        max_size=3),
                               st.integers(0, 2**40)), min_size=1, max_size=30),
       compression=st.sampled_from(["none", "zlib"]), base=st.integers(0, 2**40),
       epoch=st.integers(0, 2**31 - 1))
def test_round_trip_property(rows, compression, base, epoch):
    b = r.BatchBuilder(compression)
    for value, key, headers, ts in rows:
        b.append(value, key=key, headers=headers, timestamp_ms=ts)
    buf = bytearray(b.build())
    r.set_base_offset_and_epoch(buf, base, epoch)
    got = r.decode_records(buf)
    assert [(x.offset, x.timestamp, x.value, x.key, x.headers) for x in got] == [
        (base + i, ts, v, k, tuple(tuple(p) for p in h)) for i, (v, k, h, ts) in enumerate(rows)]
    h = r.validate_batch(buf)
    assert h.max_timestamp == max(ts for *_, ts in rows)


@pytest.mark.timeout(10)
def test_builder_refuses_wrong_types():
    b = r.BatchBuilder()
    with pytest.raises(TypeError):
        b.append("text")
    with pytest.raises(TypeError):
        b.append(b"v", key=5)
    with pytest.raises(TypeError):
        b.append(b"v", headers=[(b"k", b"v")])
    with pytest.raises(ValueError):
        b.build()  # no records
    with pytest.raises(ValueError):
        r.BatchBuilder("snappy")


@pytest.mark.timeout(10)
def test_validate_refuses_bad_input():
    with pytest.raises(CorruptMessage):
        r.validate_batch(GOLDEN[:40])                    # shorter than a header
    with pytest.raises(CorruptMessage):
        r.validate_batch(GOLDEN[:-1])                    # truncated
    bad = bytearray(GOLDEN)
    bad[-1] ^= 1
    with pytest.raises(CorruptMessage, match="checksum"):
        r.validate_batch(bad)                            # flipped bit in a record
    bad = bytearray(GOLDEN)
    bad[16] = 1
    with pytest.raises(CorruptMessage, match="magic"):
        r.validate_batch(bad)
    bad = bytearray(GOLDEN)
    struct.pack_into(">i", bad, 8, 10)
    with pytest.raises(CorruptMessage, match="shorter"):
        r.validate_batch(bad)
    with pytest.raises(MessageTooLarge):
        r.validate_batch(GOLDEN, max_bytes=len(GOLDEN) - 1)
    assert r.validate_batch(GOLDEN, max_bytes=len(GOLDEN)).size == len(GOLDEN)
    # a frame of batches: all good, or refused as a whole
    frame = GOLDEN * 3
    assert [p for p, _ in r.validate_batches(frame)] == [0, len(GOLDEN), 2 * len(GOLDEN)]
    with pytest.raises(CorruptMessage):
        r.validate_batches(frame + b"\0" * 5)
    with pytest.raises(CorruptMessage):
        r.validate_batches(b"")


@pytest.mark.timeout(10)
def test_decode_refuses_malformed_record_section():
    section = b"\x93\x01"  # an array of 3 with one element: truncated msgpack
    batch = r._assemble(section, attributes=0, last_offset_delta=0, base_timestamp=0,
                        max_timestamp=0, producer_id=-1, producer_epoch=-1, base_sequence=-1,
                        records_count=1)
    r.validate_batch(batch)  # the header and checksum are fine: the broker would take it
    with pytest.raises(CorruptMessage, match="malformed"):
        r.decode_records(batch)
    batch = r._assemble(b"\x91\x95\x00\x00\xc0\xc0\x90", attributes=r.CODEC_ZLIB,
                        last_offset_delta=0, base_timestamp=0, max_timestamp=0, producer_id=-1,
                        producer_epoch=-1, base_sequence=-1, records_count=1)
    with pytest.raises(CorruptMessage):
        r.decode_records(batch)  # says zlib, is not


@pytest.mark.timeout(10)
def test_iter_batches_skips_a_partial_tail():
    b1 = r.build_batch([b"a", b"b"], timestamp_ms=1)
    b2 = r.build_batch([b"c"], timestamp_ms=2)
    buf = bytearray(b1 + b2)
    r.set_base_offset_and_epoch(buf, 2, 0, pos=len(b1))
    assert [h.base_offset for h, _ in r.iter_batches(buf)] == [0, 2]
    assert [x.value for x in r.iter_records(buf)] == [b"a", b"b", b"c"]
    assert [h.base_offset for h, _ in r.iter_batches(buf[:-3])] == [0]
