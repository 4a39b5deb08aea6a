"""The ensemble's Raft log on disk (no processes): terms come back from leader markers,
truncation of uncommitted entries survives a restart, a snapshot install is crash-safe at every
step, and a single coordinator can replay what an ensemble member wrote."""

import pytest

from coordinator.raftlog import RaftLog
from coordinator.state import CoordinatorState
from coordinator.txnlog import TxnLog

pytestmark = pytest.mark.timeout(30)


def body(path, value=b"v"):
    return [1000, "create", 0, path, value, False, False]


def write(rl: RaftLog, first: int, entries) -> None:
    rl.truncate_from(first)
    for i, (term, b) in enumerate(entries):
        rl.stage(first + i, term, b)
    rl.flush()


def reopen(d):
    rl = RaftLog(str(d))
    state, entries = rl.recover_entries()
    return rl, state, entries


def snapshot_bytes_at(tmp_path, entries):
    """The bytes of a snapshot file of the state after applying ``entries`` [(term, body)]."""
    st = CoordinatorState()
    for i, (term, b) in enumerate(entries, start=1):
        if b is None:
            st.skip(i)
        else:
            st.apply([i, *b])
    d = tmp_path / "leader"
    d.mkdir()
    t = TxnLog(str(d))
    snap = st.to_snapshot()
    snap["term"] = entries[-1][0]
    t.write_snapshot(st.zxid, snap)
    return (d / f"snapshot.{st.zxid:020d}").read_bytes()


def test_terms_come_back_from_the_markers_and_truncation_lasts(tmp_path):
    rl, _, entries = reopen(tmp_path)
    assert entries == []
    write(rl, 1, [(1, None), (1, body("/a")), (1, body("/b"))])
    write(rl, 4, [(2, None), (2, body("/c"))])
    rl.roll(rl.last_index + 1)
    write(rl, 6, [(2, body("/d")), (2, body("/e"))])
    # a new leader of term 3 replaces everything from 5 on, across the rolled file
    write(rl, 5, [(3, None), (3, body("/x"))])
    rl.close()
    rl, _, entries = reopen(tmp_path)
    assert [t for t, _ in entries] == [1, 1, 1, 2, 3, 3]
    assert [b[3] if b else None for _, b in entries] == [None, "/a", "/b", None, None, "/x"]
    write(rl, 7, [(3, body("/y"))])         # and it appends after them again
    rl.close()
    assert len(reopen(tmp_path)[2]) == 7


@pytest.mark.parametrize("crash_at", ["before_rename", "after_rename", "none"])
def test_a_snapshot_install_is_crash_safe(tmp_path, crash_at, monkeypatch):
    d = tmp_path / "member"
    d.mkdir()
    rl, _, _ = reopen(d)
    # a former leader's stale entries of term 1 after index 2
    write(rl, 1, [(1, None), (1, body("/a"))] + [(1, body(f"/stale{i}")) for i in range(6)])
    leader_log = [(1, None), (1, body("/a")), (2, None), (2, body("/b")), (2, body("/c"))]
    data = snapshot_bytes_at(tmp_path, leader_log)
    keep = [(2, body("/d"))]
    if crash_at == "before_rename":
        monkeypatch.setattr("coordinator.raftlog.os.replace",
                            lambda *a: (_ for _ in ()).throw(OSError("crash")))
    elif crash_at == "after_rename":
        monkeypatch.setattr(RaftLog, "_finish_restore",
                            lambda self, p: (_ for _ in ()).throw(OSError("crash")))
    try:
        rl.restore(data, 5, keep)
    except OSError:
        pass
    monkeypatch.undo()
    _, state, entries = reopen(d)
    if crash_at == "before_rename":     # the install never happened: the old log stands
        assert state.zxid == 0 and len(entries) == 8 and entries[2][1][3] == "/stale0"
    else:                               # the snapshot and only what follows it
        assert state.zxid == 5 and "/c" in state.nodes and "/stale0" not in state.nodes
        assert [(t, b[3]) for t, b in entries] == [(2, "/d")]
    assert not [p for p in d.iterdir() if p.name.startswith("txlog.") and
                p.name.endswith(".tmp")]


def test_a_single_coordinator_replays_an_ensemble_members_log(tmp_path):
    rl, _, _ = reopen(tmp_path)
    # entry 3 was rejected when applied (the key existed): the ensemble logged it anyway
    write(rl, 1, [(1, None), (1, body("/a", b"1")), (1, body("/a", b"2")), (1, body("/b"))])
    rl.close()
    state = TxnLog(str(tmp_path)).recover()
    assert state.zxid == 4 and state.nodes["/a"].value == b"1" and "/b" in state.nodes
