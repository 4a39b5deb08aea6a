"""Transaction log recovery: torn and corrupt tails are cut, complete records all come back."""

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from coordinator.state import CoordinatorState
from coordinator.txnlog import RecoveryError, TxnLog, encode_record


def write_log(data_dir, n):
    log = TxnLog(str(data_dir))
    state = log.recover()
    records = []
    for i in range(n):
        txn = [state.zxid + 1, 1000 + i, "create", 0, f"/k{i}", b"v" * (i % 7), False, False]
        state.apply(txn)
        records.append(encode_record(txn))
    log.append_and_sync(b"".join(records))
    log.close()
    return records


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 30), cut=st.integers(0, 10_000), flip=st.booleans(), data=st.data())
@pytest.mark.timeout(60)
def test_recovery_keeps_complete_records_and_cuts_the_rest(tmp_path_factory, n, cut, flip, data):
    d = tmp_path_factory.mktemp("log")
    records = write_log(d, n)
    path = d / "txlog.00000000000000000001"
    size = path.stat().st_size
    cut = cut % (size + 1)
    raw = bytearray(path.read_bytes()[:cut])
    if flip and raw:
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= 0xFF
    path.write_bytes(bytes(raw))
    # which records are intact: those entirely before the cut and before any flipped byte
    ends, total = [], 0
    for r in records:
        total += len(r)
        ends.append(total)
    limit = cut if not (flip and raw) else min(cut, pos)
    expect = sum(1 for e in ends if e <= limit)
    state = TxnLog(str(d)).recover()
    assert state.zxid >= expect
    for i in range(state.zxid):
        assert f"/k{i}" in state.nodes
    # a flipped byte may hit padding-free data only; every recovered record is a real one
    assert state.zxid <= n
    assert path.stat().st_size <= cut


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
