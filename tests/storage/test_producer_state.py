"""Idempotent producers' state: the sequence rules (no processes), and the partition log that
checks them, snapshots them and rebuilds them after a clean or an unclean shutdown."""

import os

import pytest

from zbroker import errors, records as r
from zbroker.storage import PartitionLog
from zbroker.storage.producer_state import RUNS_KEPT, SEQUENCE_MODULUS, ProducerStateManager

pytestmark = pytest.mark.timeout(60)


def pbatch(pid, epoch, seq, n=1, ts=1000, tag=b"v"):
    b = r.BatchBuilder(producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    for i in range(n):
        b.append(tag + b"%d" % i, timestamp_ms=ts)
    return b.build()


def header(pid, epoch, seq, n=1, base_offset=0, ts=1000):
    return r.read_header(pbatch(pid, epoch, seq, n, ts))._replace(base_offset=base_offset)


def write(state, *hs):
    """Check, then apply at consecutive offsets from each header's base offset."""
    plan = state.check(list(hs))
    for h, dup in zip(hs, plan):
        if dup is None:
            state.update(h)
    return plan


# --- the state machine ---------------------------------------------------------------------------

def test_sequences_in_order_are_accepted_and_duplicates_found():
    s = ProducerStateManager()
    assert write(s, header(7, 0, 0, 3, 0)) == [None]
    assert write(s, header(7, 0, 3, 2, 3)) == [None]
    dup, = s.check([header(7, 0, 0, 3)])
    assert (dup.base_offset, dup.last_offset) == (0, 2)
    dup, = s.check([header(7, 0, 3, 2)])
    assert (dup.base_offset, dup.last_offset) == (3, 4)


def test_a_gap_is_out_of_order_and_changes_nothing():
    s = ProducerStateManager()
    write(s, header(7, 0, 0, 1, 0))
    with pytest.raises(errors.OutOfOrderSequenceNumber):
        s.check([header(7, 0, 2)])
    assert s.entries[7].last_seq == 0


def test_unknown_producer_must_start_at_zero():
    s = ProducerStateManager()
    with pytest.raises(errors.UnknownProducerId):
        s.check([header(9, 0, 5)])
    assert s.check([header(9, 0, 0)]) == [None]


def test_epochs_fence_and_a_new_epoch_starts_at_zero():
    s = ProducerStateManager()
    write(s, header(7, 1, 0, 2, 0))
    with pytest.raises(errors.InvalidProducerEpoch):
        s.check([header(7, 0, 2)])
    with pytest.raises(errors.OutOfOrderSequenceNumber):
        s.check([header(7, 2, 5)])
    assert write(s, header(7, 2, 0, 1, 2)) == [None]
    assert s.entries[7].epoch == 2 and len(s.entries[7].runs) == 1


def test_batches_written_back_to_back_make_one_run():
    s = ProducerStateManager()
    for i in range(0, 300, 3):             # 100 batches of 3, one after the other
        write(s, header(7, 0, i, 3, i))
    assert len(s.entries[7].runs) == 1
    for seq in (0, 150, 297):              # every batch of the run is known, with its offsets
        dup, = s.check([header(7, 0, seq, 3)])
        assert (dup.base_offset, dup.last_offset) == (seq, seq + 2)


def test_only_the_last_five_runs_are_remembered():
    s = ProducerStateManager()
    for i in range(RUNS_KEPT + 2):         # another producer wrote between each: no run grows
        write(s, header(7, 0, i, 1, 2 * i))
    assert len(s.entries[7].runs) == RUNS_KEPT
    forgotten, = s.check([header(7, 0, 0)])
    assert forgotten.base_offset == -1
    dup, = s.check([header(7, 0, 2)])
    assert dup.base_offset == 4


def test_batches_of_one_frame_chain_and_a_duplicate_prefix_is_left_out():
    s = ProducerStateManager()
    write(s, header(7, 0, 0, 2, 0), header(7, 0, 2, 2, 2))
    plan = s.check([header(7, 0, 0, 2), header(7, 0, 2, 2), header(7, 0, 4, 1)])
    assert [p.base_offset if p else None for p in plan] == [0, 2, None]
    with pytest.raises(errors.OutOfOrderSequenceNumber):
        s.check([header(7, 0, 4, 1), header(7, 0, 6, 1)])


def test_sequences_wrap_at_int32():
    s = ProducerStateManager()
    top = SEQUENCE_MODULUS - 2
    write(s, header(7, 0, 0, 1, 0))
    s.entries[7].runs[-1] = s.entries[7].runs[-1]._replace(first_seq=top - 1,
                                                           last_seq=top - 1)
    # a batch of 3 from 2**31 - 2 ends at sequence 0; the next starts at 1
    assert write(s, header(7, 0, top, 3, 1)) == [None]
    assert s.entries[7].last_seq == 0 and len(s.entries[7].runs) == 1
    assert s.check([header(7, 0, 1)]) == [None]
    dup, = s.check([header(7, 0, top, 3)])     # found across the wrap
    assert (dup.base_offset, dup.last_offset) == (1, 3)


def test_memory_is_bounded_least_recently_written_first():
    s = ProducerStateManager(producers_max=3)
    for pid in range(3):
        write(s, header(pid, 0, 0, 1, pid))
    write(s, header(0, 0, 1, 1, 3))         # producer 0 is now the most recent
    write(s, header(9, 0, 0, 1, 4))
    assert list(s.entries) == [2, 0, 9]


def test_expiry_and_eviction_below_the_log_start():
    s = ProducerStateManager()
    write(s, header(1, 0, 0, 1, 0, ts=1000))
    write(s, header(2, 0, 0, 1, 1, ts=5000))
    assert s.expire(now_ms=7000, expiration_ms=3000) == 1 and list(s.entries) == [2]
    assert s.evict_below(2) == 1 and not s.entries


def test_snapshot_round_trip_and_a_torn_one_is_refused():
    s = ProducerStateManager()
    write(s, header(1, 3, 0, 2, 0), header(2, 0, 0, 1, 2))
    data = s.encode_snapshot()
    t = ProducerStateManager()
    t.load_snapshot(data)
    assert {p: (e.epoch, e.runs, e.last_timestamp) for p, e in t.entries.items()} == \
        {p: (e.epoch, e.runs, e.last_timestamp) for p, e in s.entries.items()}
    for bad in (data[:-1], data[:5], b"x" + data[1:]):
        with pytest.raises(ValueError):
            t.load_snapshot(bad)
    assert len(t) == 2


def test_a_producer_batch_without_a_sequence_is_malformed():
    s = ProducerStateManager()
    with pytest.raises(errors.CorruptMessage):
        s.check([header(7, 0, 0)._replace(base_sequence=-1)])


# --- the partition log -----------------------------------------------------------------------------

def test_the_log_writes_a_duplicate_once_and_answers_its_offset(tmp_path):
    log = PartitionLog(str(tmp_path))
    log.append(r.build_batch([b"x"]), 0)                 # a non-idempotent record at 0
    first = log.append(pbatch(5, 0, 0, 3), 0)
    assert (first.base_offset, first.last_offset, first.written) == (1, 3, True)
    again = log.append(pbatch(5, 0, 0, 3), 0)
    assert (again.base_offset, again.last_offset, again.written) == (1, 3, False)
    assert log.log_end_offset == 4
    mixed = log.append(pbatch(5, 0, 0, 3) + pbatch(5, 0, 3, 2), 0)
    assert (mixed.base_offset, mixed.last_offset, mixed.batch_offsets) == (1, 5, [1, 4])
    assert log.log_end_offset == 6
    with pytest.raises(errors.OutOfOrderSequenceNumber):
        log.append(pbatch(5, 0, 9), 0)
    assert log.log_end_offset == 6


def test_followers_build_the_same_state(tmp_path):
    leader = PartitionLog(str(tmp_path / "l"))
    follower = PartitionLog(str(tmp_path / "f"))
    leader.append(pbatch(5, 0, 0, 2), 0)
    leader.append(pbatch(6, 0, 0, 1), 0)
    follower.append_as_follower(leader.read(0, 1 << 20))
    assert follower.append(pbatch(5, 0, 0, 2), 1).written is False
    with pytest.raises(errors.OutOfOrderSequenceNumber):
        follower.append(pbatch(6, 0, 3), 1)


@pytest.mark.parametrize("clean", [True, False])
def test_state_survives_a_reopen(tmp_path, clean):
    log = PartitionLog(str(tmp_path), {"segment.bytes": 400})
    for seq in range(0, 30, 3):          # several rolls: snapshots at each
        log.append(pbatch(5, 0, seq, 3), 0)
    log.append(pbatch(6, 2, 0, 1), 0)
    assert log.segment_count > 2
    if clean:
        log.close()
    else:
        log.flush()                       # a kill -9: no close, no marker
        for seg in log._segments:
            seg.close()
    again = PartitionLog(str(tmp_path), {"segment.bytes": 400})
    assert again.recovered_unclean is not clean
    assert again.append(pbatch(5, 0, 27, 3), 0).written is False
    assert again.append(pbatch(6, 2, 0, 1), 0).written is False
    assert again.append(pbatch(5, 0, 30, 1), 0).written is True
    assert any(n.endswith(".snapshot") for n in os.listdir(tmp_path))
    again.close()


def test_a_torn_snapshot_falls_back_to_the_log(tmp_path):
    log = PartitionLog(str(tmp_path), {"segment.bytes": 400})
    for seq in range(0, 30, 3):
        log.append(pbatch(5, 0, seq, 3), 0)
    log.close()
    for name in os.listdir(tmp_path):
        if name.endswith(".snapshot"):
            with open(tmp_path / name, "r+b") as f:
                f.truncate(7)
    again = PartitionLog(str(tmp_path), {"segment.bytes": 400})
    assert again.append(pbatch(5, 0, 27, 3), 0).written is False
    assert again.append(pbatch(5, 0, 30, 1), 0).written is True


def test_truncation_rebuilds_the_state(tmp_path):
    log = PartitionLog(str(tmp_path), {"segment.bytes": 400})
    for seq in range(0, 30, 3):
        log.append(pbatch(5, 0, seq, 3), 0)
    log.truncate_to(15)                  # sequences 15.. are gone
    with pytest.raises(errors.OutOfOrderSequenceNumber):
        log.append(pbatch(5, 0, 18, 3), 0)
    assert log.append(pbatch(5, 0, 12, 3), 0).written is False
    assert log.append(pbatch(5, 0, 15, 3), 0).written is True
    log.truncate_fully_and_start_at(100)
    with pytest.raises(errors.UnknownProducerId):
        log.append(pbatch(5, 0, 18, 3), 0)


def test_retention_forgets_producers_whose_batches_are_gone(tmp_path):
    now = 10_000_000
    log = PartitionLog(str(tmp_path), {"retention.ms": 1000}, clock_ms=lambda: now)
    log.append(pbatch(5, 0, 0, 3, ts=1000), 0)
    log.roll()
    for seq in range(0, 30, 3):
        log.append(pbatch(6, 0, seq, 3, ts=now), 0)
    assert log.apply_retention() == 1 and log.log_start_offset == 3
    with pytest.raises(errors.UnknownProducerId):
        log.append(pbatch(5, 0, 3, 1, ts=now), 0)
    assert log.append(pbatch(6, 0, 27, 3, ts=now), 0).written is False
    assert log.append(pbatch(6, 0, 30, 1, ts=now), 0).written is True


def test_a_batch_older_than_the_remembered_runs_is_a_duplicate_without_offsets():
    s = ProducerStateManager()
    for i in range(RUNS_KEPT + 1):          # six runs of one batch each: the first is forgotten
        write(s, header(7, 0, i, 1, 10 * i))
    plan = s.check([header(7, 0, 0), header(7, 0, 1), header(7, 0, 6)])
    assert (plan[0].base_offset, plan[0].last_offset) == (-1, 9)   # below the oldest run's
    assert plan[1].base_offset == 10 and plan[2] is None


def test_frames_of_two_producers_wait_for_the_newest_offset(tmp_path):
    log = PartitionLog(str(tmp_path))
    log.append(pbatch(5, 0, 0, 2), 0)
    mixed = log.append(pbatch(6, 0, 0, 3) + pbatch(5, 0, 0, 2), 0)
    assert mixed.batch_offsets == [2, 0] and mixed.last_offset == 4    # not the duplicate's 1


def test_a_refused_frame_changes_nothing(tmp_path):
    log = PartitionLog(str(tmp_path))
    log.append(pbatch(5, 0, 0), 0)
    with pytest.raises(errors.OutOfOrderSequenceNumber):
        log.append(pbatch(5, 0, 7), 3)
    assert log.leader_epoch_cache.latest_epoch == 0 and log.log_end_offset == 1
    assert log.append(pbatch(5, 0, 0), 3).written is False
    assert log.leader_epoch_cache.latest_epoch == 0


def test_a_log_start_inside_a_batch_keeps_its_producer_after_an_unclean_open(tmp_path):
    log = PartitionLog(str(tmp_path))
    log.append(pbatch(5, 0, 0, 4), 0)
    log.delete_records_before(2)            # inside the batch
    log.flush()
    for seg in log._segments:               # a kill -9
        seg.close()
    again = PartitionLog(str(tmp_path))
    assert again.recovered_unclean
    assert again.append(pbatch(5, 0, 0, 4), 0).written is False
    assert again.append(pbatch(5, 0, 4), 0).written is True


def test_a_producer_with_old_timestamps_does_not_expire_while_it_writes():
    s = ProducerStateManager()
    h = header(7, 0, 0, 1, 0, ts=1000)      # a mirror: records from long ago
    s.update(h, now_ms=10_000_000)
    assert s.expire(now_ms=10_000_500, expiration_ms=1000) == 0
    assert s.expire(now_ms=10_002_000, expiration_ms=1000) == 1
