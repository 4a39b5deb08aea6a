"""Transaction log recovery: torn and corrupt tails are cut, complete records all come back."""

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from coordinator import txnlog
from coordinator.state import CoordinatorState
from coordinator.txnlog import RECORD_HEADER, RecoveryError, TxnLog, encode_record

FIRST_LOG = "txlog.00000000000000000001"


def txn_for(i, value_byte=b"v"):
    """The i-th test transaction (zxid i + 1). Values vary in length (0..299 bytes), so records
    do too, and some have a length field over 255."""
    return [i + 1, 1000 + i, "create", 0, f"/k{i}", value_byte * (i * 37 % 300), False, False]


def write_log(data_dir, n):
    log = TxnLog(str(data_dir))
    state = log.recover()
    records = []
    for i in range(n):
        txn = txn_for(i)
        state.apply(txn)
        records.append(encode_record(txn))
    log.append_and_sync(b"".join(records))
    log.close()
    return records


_written: dict[int, tuple[list, bytes]] = {}


def written_log(tmp_path_factory, n):
    """(records, the file's bytes) of a log of ``n`` records as TxnLog writes it (with its zero
    padding); made once per ``n``."""
    if n not in _written:
        d = tmp_path_factory.mktemp("written")
        records = write_log(d, n)
        _written[n] = (records, (d / FIRST_LOG).read_bytes())
    return _written[n]


def state_of(k):
    """The state after the first ``k`` test transactions, built without the log."""
    state = CoordinatorState()
    for i in range(k):
        state.apply(txn_for(i))
    return state


def check_recovery(d, records, raw, damage_at):
    """Write ``raw`` (the first bytes of a log, possibly with a byte changed) as the only log
    file of ``d``, recover, and check the outcome exactly: the records that end at or before
    ``damage_at`` (the first byte that is missing or changed) come back, no more, no less; the
    file is cut at the end of the last of them unless only zeros follow it (padding, left as
    is); and a record appended after recovery is followed by nothing of the damaged tail."""
    path = d / FIRST_LOG
    path.write_bytes(bytes(raw))
    ends, total = [], 0
    for rec in records:
        total += len(rec)
        ends.append(total)
    kept = sum(1 for e in ends if e <= damage_at)
    good_end = ends[kept - 1] if kept else 0
    only_zeros_follow = raw.count(0, good_end) == len(raw) - good_end
    log = TxnLog(str(d))
    state = log.recover()
    what = f"kept={kept} of {len(records)}, file of {len(raw)} bytes, damage at {damage_at}"
    assert state.zxid == kept, what
    assert log.recovered_txns == kept, what
    assert state.to_snapshot() == state_of(kept).to_snapshot(), what
    assert log.truncated_bytes == (0 if only_zeros_follow else len(raw) - good_end), what
    assert path.stat().st_size == (len(raw) if only_zeros_follow else good_end), what
    # The next write goes where the damage began. It is as long as the record it replaces, so if
    # the damaged tail were left in the file, the old records after it would read as the next
    # transactions at the next recovery.
    replacement = txn_for(kept, value_byte=b"w")
    with pytest.MonkeyPatch.context() as mp:    # grow a cut file by 4 KiB, not 16 MiB (O_DSYNC)
        mp.setattr(txnlog, "PREALLOC_BYTES", 4096)
        log.append_and_sync(encode_record(replacement))
    log.close()
    again = TxnLog(str(d))
    state2 = again.recover()
    again.close()
    expected = state_of(kept)
    expected.apply(replacement)
    assert state2.zxid == kept + 1, what
    assert state2.to_snapshot() == expected.to_snapshot(), what
    assert again.truncated_bytes == 0, what


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 30), data=st.data())
@pytest.mark.timeout(120)
def test_recovery_keeps_complete_records_and_cuts_the_rest(tmp_path_factory, n, data):
    records, full = written_log(tmp_path_factory, n)
    total = sum(len(r) for r in records)
    # cut anywhere in the records or just after them, or keep the whole file with its padding
    cut = data.draw(st.one_of(st.integers(0, total + 32), st.just(len(full))), label="cut")
    raw = bytearray(full[:cut])
    damage_at = cut
    if raw and data.draw(st.booleans(), label="flip"):
        pos = data.draw(st.integers(0, min(len(raw), total + 32) - 1), label="pos")
        raw[pos] ^= data.draw(st.integers(1, 255), label="mask")
        damage_at = pos
    check_recovery(tmp_path_factory.mktemp("log"), records, raw, damage_at)


@pytest.mark.timeout(120)
def test_recovery_after_a_cut_or_a_changed_byte_at_every_position(tmp_path_factory):
    """Every cut of a small log, and every byte of it changed (one bit, the top bit, all
    bits): header (length, checksum) and payload of every record, and the padding after."""
    records, full = written_log(tmp_path_factory, 6)
    total = sum(len(r) for r in records)
    assert RECORD_HEADER.size == 8 and total > 300      # some records' length needs 2 bytes
    base = tmp_path_factory.mktemp("every")
    case = 0
    for cut in range(total + 4):
        case += 1
        d = base / str(case)
        d.mkdir()
        check_recovery(d, records, bytearray(full[:cut]), cut)
    for pos in range(total + 4):
        for mask in (0x01, 0x80, 0xFF):
            case += 1
            d = base / str(case)
            d.mkdir()
            raw = bytearray(full[:total + 16])
            raw[pos] ^= mask
            check_recovery(d, records, raw, pos)


def test_damage_in_an_older_log_file_stops_recovery(tmp_path):
    write_log(tmp_path, 5)
    log = TxnLog(str(tmp_path))
    state = log.recover()
    log.roll(state.zxid + 1)
    log.write_snapshot(state.zxid, state.to_snapshot())
    log.close()
    os.unlink(tmp_path / "snapshot.00000000000000000005")
    p = tmp_path / "txlog.00000000000000000001"
    raw = bytearray(p.read_bytes())
    raw[20] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(RecoveryError):
        TxnLog(str(tmp_path)).recover()


def test_snapshot_then_replay(tmp_path):
    write_log(tmp_path, 10)
    log = TxnLog(str(tmp_path))
    state = log.recover()
    log.roll(state.zxid + 1)
    log.write_snapshot(state.zxid, state.to_snapshot())
    txn = [state.zxid + 1, 5, "set", "/k1", b"new", -1]
    state.apply(txn)
    log.append_and_sync(encode_record(txn))
    log.close()
    again = TxnLog(str(tmp_path))
    st2 = again.recover()
    assert again.snapshot_zxid == 10 and again.recovered_txns == 1
    assert st2.to_snapshot() == state.to_snapshot()
    assert isinstance(st2, CoordinatorState)
