"""PartitionLog: appends, reads, indexes, rolls, reopen, retention, truncation, checkpoints."""

import builtins
import os
import time

import pytest

from zbroker import records as r
from zbroker.errors import CorruptMessage, MessageTooLarge, OffsetOutOfRange
from zbroker.storage import (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET, LeaderEpochCache,
                             PartitionLog, log_config)

pytestmark = pytest.mark.timeout(60)


def batch(n=1, ts=1000, size=10, tag=b"", compression="none"):
    b = r.BatchBuilder(compression)
    for i in range(n):
        b.append((tag + b"%d:" % i).ljust(size, b"."), key=b"k%d" % i, timestamp_ms=ts)
    return b.build()


def offsets_of(data):
    return [rec.offset for rec in r.iter_records(data)]


def check_whole_batches(data):
    """Every byte belongs to a whole, valid batch, with offsets contiguous."""
    pos, prev = 0, None
    while pos < len(data):
        h = r.validate_batch(data, pos)
        assert prev is None or h.base_offset == prev
        prev = h.next_offset
        pos += h.size
    assert pos == len(data)


class Clock:
    def __init__(self, now=10_000_000):
        self.now = now

    def __call__(self):
        return self.now


def open_log(path, **props):
    return PartitionLog(str(path), props, clock_ms=props.pop("clock", Clock()))


def test_append_assigns_offsets_and_reads_round_trip(tmp_path):
    log = PartitionLog(str(tmp_path / "p0"))
    b = r.BatchBuilder("zlib")
    b.append(b"v", key=b"k", headers=[("h", b"x"), ("n", None)], timestamp_ms=5)
    b.append(None, timestamp_ms=6)
    assert log.append(b.build(), leader_epoch=3)[:3] == (0, 1, 1)
    frame = batch(3, tag=b"a") + batch(2, tag=b"b")  # one produce frame, two batches
    res = log.append(frame, leader_epoch=3)
    assert (res.base_offset, res.last_offset, res.batches) == (2, 6, 2)
    assert (log.log_start_offset, log.log_end_offset) == (0, 7)
    data = log.read(0, 1 << 20)
    check_whole_batches(data)
    recs = list(r.iter_records(data))
    assert [x.offset for x in recs] == list(range(7))
    assert recs[0].headers == (("h", b"x"), ("n", None)) and recs[1].value is None
    assert [h.partition_leader_epoch for h, _ in r.iter_batches(data)] == [3, 3, 3]
    with pytest.raises(ValueError):
        log.append(batch(), leader_epoch=2)  # epochs never go back
    assert log.log_end_offset == 7
    assert log.read(7, 100) == b""
    with pytest.raises(OffsetOutOfRange):
        log.read(8, 100)
    log.close()


def test_input_buffer_is_not_mutated(tmp_path):
    log = PartitionLog(str(tmp_path))
    log.append(batch(), leader_epoch=0)
    frame = bytearray(batch(2))
    before = bytes(frame)
    log.append(frame, leader_epoch=0)
    assert bytes(frame) == before
    assert offsets_of(log.read(1, 1000)) == [1, 2]


def test_refused_frames_write_nothing(tmp_path):
    log = open_log(tmp_path, **{"message.max.bytes": 2000})
    log.append(batch(), leader_epoch=0)
    size = log.size_in_bytes()
    big = batch(1, size=3000)
    with pytest.raises(MessageTooLarge):
        log.append(big, leader_epoch=0)
    bad = bytearray(batch(2))
    bad[-1] ^= 0xFF
    with pytest.raises(CorruptMessage):
        log.append(bytes(bad), leader_epoch=0)
    with pytest.raises(CorruptMessage):  # a good batch followed by a bad one: neither written
        log.append(batch(2) + bytes(bad), leader_epoch=0)
    with pytest.raises(MessageTooLarge):
        log.append(batch(2) + big, leader_epoch=0)
    with pytest.raises(CorruptMessage):
        log.append(batch(2)[:-4], leader_epoch=0)
    assert log.log_end_offset == 1 and log.size_in_bytes() == size
    assert os.path.getsize(tmp_path / "00000000000000000000.log") == size
    assert log.append(batch(), leader_epoch=0).base_offset == 1


def test_offsets_continue_across_rolls_and_reopen(tmp_path):
    log = open_log(tmp_path, **{"segment.bytes": 1000})
    for i in range(30):
        log.append(batch(3, tag=b"%d" % i), leader_epoch=0)
    assert log.segment_count > 2
    bases = log.segment_base_offsets()
    assert bases[0] == 0 and all(b % 3 == 0 for b in bases)
    log.close()
    log = open_log(tmp_path, **{"segment.bytes": 1000})
    assert not log.recovered_unclean and log.log_end_offset == 90
    assert log.append(batch(2), leader_epoch=0).base_offset == 90
    # reopen without close (as after a crash): recovery gives the same log
    log2 = open_log(tmp_path, **{"segment.bytes": 1000})
    assert log2.recovered_unclean and log2.log_end_offset == 92
    got, off = [], 0
    while off < 92:
        data = log2.read(off, 1 << 20)
        check_whole_batches(data)
        got += offsets_of(data)
        off = got[-1] + 1
    assert got == list(range(92))


@pytest.mark.parametrize("reopen", ["no", "clean", "unclean"])
def test_index_lookup_at_every_offset(tmp_path, reopen):
    props = {"segment.bytes": 4000, "index.interval.bytes": 150}
    log = open_log(tmp_path, **props)
    sizes = {}
    for i in range(400):
        n = 1 + i % 4
        res = log.append(batch(n, size=5 + i % 17), leader_epoch=0)
        for o in range(res.base_offset, res.last_offset + 1):
            sizes[o] = res.base_offset
    end = log.log_end_offset
    if reopen == "clean":
        log.close()
        log = open_log(tmp_path, **props)
    elif reopen == "unclean":
        log = open_log(tmp_path, **props)
        assert log.recovered_unclean
    assert log.segment_count > 10
    for off in range(end):
        one = log.read(off, 1)  # smaller than any batch: exactly the batch holding off
        (h, _), = r.iter_batches(one)
        assert h.base_offset == sizes[off] <= off <= h.last_offset
        many = log.read(off, 700)
        assert len(many) <= 700
        check_whole_batches(many)
        assert r.read_header(many).base_offset == sizes[off]


def test_read_limits(tmp_path):
    log = PartitionLog(str(tmp_path))
    log.append(batch(5, size=1000), leader_epoch=0)       # offsets 0-4, ~5 KB
    for _ in range(10):
        log.append(batch(1, size=100), leader_epoch=0)    # offsets 5-14
    first = r.validate_batch(log.read(0, 1)).size
    assert first > 5000
    assert len(log.read(0, 10)) == first                   # the first batch whole, over max_bytes
    assert log.read(0, 10, min_one_batch=False) == b""
    small = r.validate_batch(log.read(5, 1)).size
    assert len(log.read(5, 3 * small + 5)) == 3 * small    # only whole batches
    assert offsets_of(log.read(0, 1 << 20, max_offset=7)) == list(range(7))  # high watermark
    assert offsets_of(log.read(0, 1 << 20, max_offset=3)) == []  # bound inside the first batch
    assert log.read(7, 1 << 20, max_offset=7) == b""
    assert offsets_of(log.read(3, 1 << 20, max_offset=6)) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(OffsetOutOfRange):
        log.read(-1, 100)


def test_offset_for_timestamp(tmp_path):
    log = open_log(tmp_path, **{"segment.bytes": 600, "index.interval.bytes": 0})
    stamps = [100, 300, 200, 300, 500, 400, 900, 900, 1000]
    for ts in stamps:
        b = r.BatchBuilder()
        b.append(b"a", timestamp_ms=ts)
        b.append(b"b", timestamp_ms=ts + 1)
        log.append(b.build(), leader_epoch=0)
    record_ts = [t + d for t in stamps for d in (0, 1)]

    def expected(target):
        return next((i for i, t in enumerate(record_ts) if t >= target), None)
    assert log.segment_count > 1
    for target in [0, 100, 101, 102, 150, 250, 301, 302, 450, 501, 502, 899, 901, 902, 1001, 1002]:
        assert log.offset_for_timestamp(target) == expected(target), target
    log.delete_records_before(5)
    assert log.offset_for_timestamp(0) == 5


def test_roll_by_time(tmp_path):
    clock = Clock()
    log = PartitionLog(str(tmp_path), {"segment.ms": 1000}, clock_ms=clock)
    log.append(batch(ts=5000), leader_epoch=0)
    log.append(batch(ts=5900), leader_epoch=0)
    assert log.segment_count == 1
    log.append(batch(ts=6001), leader_epoch=0)  # 1001 ms after the segment's first batch
    assert log.segment_base_offsets() == [0, 2]


def test_retention_by_time(tmp_path):
    clock = Clock(now=100_000)
    log = PartitionLog(str(tmp_path), {"segment.bytes": 300, "retention.ms": 10_000},
                       clock_ms=clock)
    for i in range(12):
        log.append(batch(2, ts=10_000 * i), leader_epoch=0)
    bases = log.segment_base_offsets()
    assert len(bases) > 3
    assert log.apply_retention(now_ms=0) == 0
    # segments whose newest record is older than now - 10 s go, whole and oldest first
    deleted = log.apply_retention(now_ms=75_000)
    assert deleted >= 1
    assert log.log_start_offset == log.segment_base_offsets()[0] > 0
    with pytest.raises(OffsetOutOfRange):
        log.read(0, 100)
    first = r.iter_records(log.read(log.log_start_offset, 1 << 20))
    assert next(first).timestamp >= 60_000
    # everything expired: the active segment goes too, the log end offset stays
    log.apply_retention(now_ms=10**9)
    assert log.log_start_offset == log.log_end_offset == 24
    assert log.append(batch(), leader_epoch=0).base_offset == 24
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".log")) == [
        "00000000000000000024.log"]


def test_retention_by_size(tmp_path):
    log = PartitionLog(str(tmp_path), {"segment.bytes": 500, "retention.bytes": 1200,
                                       "retention.ms": -1})
    for _ in range(40):
        log.append(batch(1, size=60), leader_epoch=0)
    total = log.size_in_bytes()
    assert total > 2000
    deleted = log.apply_retention()
    assert deleted > 0
    # Kafka's rule: a segment goes only if what stays is still at least retention.bytes
    assert 1200 <= log.size_in_bytes() < 1200 + 500
    assert log.log_start_offset == log.segment_base_offsets()[0]
    assert offsets_of(log.read(log.log_start_offset, 1 << 20))[0] == log.log_start_offset
    # the deleted segments were renamed at once; the background worker unlinks them
    kept = {f"{b:020d}{suffix}" for b in log.segment_base_offsets()
            for suffix in (".log", ".index", ".timeindex", ".snapshot")}
    deadline = time.monotonic() + 10
    while any(f.endswith(".deleted") for f in os.listdir(tmp_path)):
        assert time.monotonic() < deadline, sorted(os.listdir(tmp_path))
        time.sleep(0.01)
    segment_files = {f for f in os.listdir(tmp_path) if f.split(".")[0].isdigit()}
    assert {f for f in segment_files if f.endswith(".log")} == \
        {f"{b:020d}.log" for b in log.segment_base_offsets()}
    assert segment_files <= kept, sorted(segment_files - kept)


def test_delete_records_before(tmp_path):
    log = PartitionLog(str(tmp_path), {"segment.bytes": 400})
    for _ in range(20):
        log.append(batch(2), leader_epoch=0)
    assert log.delete_records_before(13) == 13
    assert log.segment_base_offsets()[0] <= 13
    with pytest.raises(OffsetOutOfRange):
        log.read(12, 100)
    assert offsets_of(log.read(13, 1))[0] == 12  # served by whole batch: the consumer skips 12
    assert log.delete_records_before(5) == 13    # never goes back
    with pytest.raises(OffsetOutOfRange):
        log.delete_records_before(41)
    log.close()
    log = PartitionLog(str(tmp_path), {"segment.bytes": 400})
    assert log.log_start_offset == 13


@pytest.mark.parametrize("reopen", [False, True])
def test_truncate_to_then_append(tmp_path, reopen):
    props = {"segment.bytes": 500, "index.interval.bytes": 50}
    log = open_log(tmp_path, **props)
    for i in range(40):
        log.append(batch(2, ts=1000 + i), leader_epoch=i // 10)
    assert log.segment_count > 3
    log.truncate_to(50)      # a batch boundary in a middle segment
    assert log.log_end_offset == 50
    log.truncate_to(47)      # inside the batch 46-47: it goes whole
    assert log.log_end_offset == 46
    assert log.leader_epoch_cache.entries() == [(0, 0), (1, 20), (2, 40)]
    log.truncate_to(100)     # past the end: nothing
    assert log.log_end_offset == 46
    if reopen:
        log.close()
        log = open_log(tmp_path, **props)
    for _ in range(5):
        log.append(batch(2, tag=b"new"), leader_epoch=5)
    assert log.leader_epoch_cache.entries() == [(0, 0), (1, 20), (2, 40), (5, 46)]
    got, off = [], 0
    while off < log.log_end_offset:
        data = log.read(off, 1 << 20)
        check_whole_batches(data)
        got += list(r.iter_records(data))
        off = got[-1].offset + 1
    assert [x.offset for x in got] == list(range(56))
    assert all(x.value.startswith(b"new") for x in got[46:])
    assert log.offset_for_timestamp(1022) == 44
    log.truncate_to(0)
    assert (log.log_start_offset, log.log_end_offset, log.segment_count) == (0, 0, 1)
    assert log.append(batch(), leader_epoch=6).base_offset == 0


def test_truncate_fully_and_start_at(tmp_path):
    log = PartitionLog(str(tmp_path))
    log.append(batch(3), leader_epoch=1)
    log.truncate_fully_and_start_at(1000)
    assert (log.log_start_offset, log.log_end_offset) == (1000, 1000)
    assert log.append(batch(2), leader_epoch=2).base_offset == 1000
    log.close()
    log = PartitionLog(str(tmp_path))
    assert (log.log_start_offset, log.log_end_offset) == (1000, 1002)
    assert log.segment_base_offsets() == [1000]


def test_follower_append(tmp_path):
    leader = PartitionLog(str(tmp_path / "leader"))
    leader.append(batch(2), leader_epoch=1)
    leader.append(batch(3), leader_epoch=2)
    follower = PartitionLog(str(tmp_path / "follower"))
    data = leader.read(0, 1 << 20)
    assert follower.append_as_follower(data)[:3] == (0, 4, 2)
    assert follower.read(0, 1 << 20) == data
    assert follower.leader_epoch_cache.entries() == [(1, 0), (2, 2)]
    with pytest.raises(CorruptMessage):
        follower.append_as_follower(data)  # offsets must continue the log
    assert follower.leader_epoch_cache.end_offset_for_epoch(1, follower.log_end_offset) == (1, 2)


def test_leader_epoch_cache(tmp_path):
    path = str(tmp_path / "leader-epoch-checkpoint")
    c = LeaderEpochCache(path)
    assert c.end_offset_for_epoch(0, 10) == (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
    c.assign(1, 0)
    c.assign(1, 5)            # same epoch, later: no change
    c.assign(3, 10)
    c.assign(5, 20)
    assert c.entries() == [(1, 0), (3, 10), (5, 20)]
    assert c.end_offset_for_epoch(5, 30) == (5, 30)   # latest: ends at the log end
    assert c.end_offset_for_epoch(3, 30) == (3, 20)
    assert c.end_offset_for_epoch(4, 30) == (3, 20)   # unknown: the largest epoch below it
    assert c.end_offset_for_epoch(0, 30) == (0, 0)    # older than all
    assert c.end_offset_for_epoch(6, 30) == (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
    assert LeaderEpochCache(path).entries() == c.entries()  # checkpointed
    c.assign(4, 15)           # a new leader's epoch that overrides a later-starting entry
    assert c.entries() == [(1, 0), (3, 10), (4, 15)]
    c.truncate_from_end(12)
    assert c.entries() == [(1, 0), (3, 10)]
    c.truncate_from_start(11)
    assert c.entries() == [(3, 11)]
    assert LeaderEpochCache(path).entries() == [(3, 11)]
    with open(path, "w") as f:
        f.write("garbage")
    assert LeaderEpochCache(path).entries() == []


def test_high_watermark_and_recovery_point_checkpoints(tmp_path):
    log = PartitionLog(str(tmp_path))
    for _ in range(5):
        log.append(batch(2), leader_epoch=0)
    log.write_high_watermark(6)
    with pytest.raises(ValueError):
        log.write_high_watermark(11)
    log.close()
    log = PartitionLog(str(tmp_path))
    assert log.high_watermark_checkpoint == 6 and log.recovery_point == 10
    log.truncate_to(4)
    assert log.high_watermark_checkpoint == 4


def test_flush_policy(tmp_path, monkeypatch):
    fsyncs = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd)))
    log = PartitionLog(str(tmp_path / "default"))
    log.append(batch(5), leader_epoch=0)
    fsyncs.clear()  # the leader epoch checkpoint was written
    for _ in range(20):
        log.append(batch(5), leader_epoch=0)
    assert fsyncs == [] and log.recovery_point == 0  # by default the OS decides
    log = PartitionLog(str(tmp_path / "msgs"), {"flush.messages": 12})
    for _ in range(5):
        log.append(batch(5), leader_epoch=0)
    assert log.recovery_point == 15   # flushed after 15 >= 12 records
    clock = Clock()
    log = PartitionLog(str(tmp_path / "ms"), {"flush.ms": 1000}, clock_ms=clock)
    log.append(batch(5), leader_epoch=0)
    assert log.recovery_point == 0 and not log.maybe_flush()
    clock.now += 1000
    assert log.maybe_flush() and log.recovery_point == 5


def test_rolled_segments_are_fsynced_in_the_background(tmp_path):
    log = PartitionLog(str(tmp_path), {"segment.bytes": 300})
    for _ in range(10):
        log.append(batch(2), leader_epoch=0)
    deadline = time.monotonic() + 5
    while log.recovery_point < log.segment_base_offsets()[-1] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.recovery_point == log.segment_base_offsets()[-1]
    assert PartitionLog(str(tmp_path), {"segment.bytes": 300}).recovery_point == \
        log.segment_base_offsets()[-1]  # the checkpoint file (opened as after a crash)


@pytest.mark.parametrize("damage", ["missing", "garbage", "wrong_positions"])
def test_damaged_index_is_rebuilt(tmp_path, damage):
    props = {"segment.bytes": 3000, "index.interval.bytes": 100}
    log = open_log(tmp_path, **props)
    for i in range(100):
        log.append(batch(2, size=20), leader_epoch=0)
    log.close()
    for name in os.listdir(tmp_path):
        path = tmp_path / name
        if name.endswith(".index"):
            if damage == "missing":
                path.unlink()
            elif damage == "garbage":
                path.write_bytes(b"\xff" * 13)
            else:  # plausible, increasing, and wrong
                entries = bytes(path.read_bytes())
                shifted = bytearray(entries)
                for j in range(4, len(shifted), 8):
                    shifted[j] = (shifted[j] + 7) % 256 if j + 4 < len(shifted) else shifted[j]
                path.write_bytes(bytes(shifted))
    log = open_log(tmp_path, **props)
    assert not log.recovered_unclean
    for off in range(200):
        (h, _), = r.iter_batches(log.read(off, 1))
        assert h.base_offset <= off <= h.last_offset


def test_open_of_1000_segments_reads_nothing(tmp_path, monkeypatch):
    log = open_log(tmp_path, **{"segment.bytes": 1})  # every batch rolls
    one = batch()
    for _ in range(1000):
        log.append(one, leader_epoch=0)
    assert log.segment_count == 1000
    log.close()
    # What the open touches, by name (how fast it is: benchmarks/bench_storage.py)
    touched = []
    for module, name in ((os, "open"), (os, "stat"), (builtins, "open")):
        real = getattr(module, name)

        def spy(path, *args, _real=real, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)):
                touched.append(os.path.basename(os.fsdecode(path)))
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(module, name, spy)
    log = open_log(tmp_path, **{"segment.bytes": 1})
    monkeypatch.undo()
    assert not log.recovered_unclean and log.log_end_offset == 1000
    segment_files = {f for f in touched if f.split(".")[0].isdigit()}
    # the active segment, and the newest producer snapshot (stat only: its size says empty)
    assert segment_files == {f"{999:020d}.log", f"{999:020d}.snapshot"}, \
        sorted(segment_files)[:10]
    assert all(seg._fd is None and seg._index is None for seg in log._segments[:-1])
    assert offsets_of(log.read(500, 1)) == [500]


def test_config_errors():
    from zbroker.config import ConfigError
    with pytest.raises(ConfigError):
        log_config({"segment.bytes": 0})
    with pytest.raises(ConfigError):
        log_config({"no.such.setting": 1})
    assert log_config({"flush.ms": "250"})["flush.ms"] == 250
