"""Kill -9 the coordinator or an election winner; nothing acknowledged is lost."""

import re
import threading
import time

import pytest

from coordinator.client import CoordinatorClient, FencedEpoch, Op
from coordinator.election import Election
from tests.procs import CoordinatorProc

pytestmark = pytest.mark.timeout(90)


def test_kill9_during_a_write_storm_loses_no_acknowledged_write(procs, tmp_path):
    coord = CoordinatorProc(procs, tmp_path / "data", {"snap.count": "3000"}).start()
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def storm(w):
        c = CoordinatorClient(coord.address, session_timeout_ms=2000)
        i = 0
        try:
            while not stop.is_set():
                batch = [(f"/w{w}-{i + k}", c.create_async(f"/w{w}-{i + k}", b"x" * 50))
                         for k in range(32)]
                i += 32
                for path, fut in batch:
                    try:
                        fut.result(5)
                    except Exception:
                        stop.set()
                        continue
                    with lock:
                        acked.append(path)
        finally:
            c.close()
    threads = [threading.Thread(target=storm, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 8000 and time.monotonic() < deadline:     # past two snapshots
        time.sleep(0.05)
    coord.kill9()
    stop.set()
    for t in threads:
        t.join(20)
    assert len(acked) > 1000
    coord.start()
    c = CoordinatorClient(coord.address)
    present = set(c.children("/"))
    missing = [p for p in acked if p[1:] not in present]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    c.close()
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert any(n.startswith("snapshot.") for n in names), names


def test_torn_tail_is_cut_and_the_coordinator_starts(procs, tmp_path):
    coord = CoordinatorProc(procs, tmp_path / "data").start()
    c = CoordinatorClient(coord.address)
    for i in range(20):
        c.create(f"/t{i}", b"v")
    c.close()
    coord.kill9()
    log = sorted((tmp_path / "data").glob("txlog.*"))[-1]
    with open(log, "ab") as f:
        f.write(b"\x00\x00\x01\x00garbage-torn-record")
    coord.start()
    c = CoordinatorClient(coord.address)
    assert all(f"t{i}" in c.children("/") for i in range(20))
    c.create("/after", b"1")
    c.close()
    assert "torn_bytes_cut" in coord.proc.log_tail(200)


def test_election_winner_killed_another_wins_with_higher_epoch_and_old_epoch_is_fenced(
        coordinator, procs):
    contenders = [procs.python(f"contender{i}", "tests.coordinator.helper_client",
                               coordinator.address, "elect", "/controller", "1000", f"c{i}")
                  for i in range(3)]

    def leaders():
        out = {}
        for i, p in enumerate(contenders):
            m = re.search(r"LEADER (\d+)", p.log_tail(100))
            if m and p.popen.poll() is None:
                out[i] = int(m.group(1))
        return out
    deadline = time.monotonic() + 15
    while not leaders():
        assert time.monotonic() < deadline, [p.log_tail() for p in contenders]
        time.sleep(0.05)
    time.sleep(0.5)
    first = leaders()
    assert len(first) == 1, first
    (winner, epoch1), = first.items()
    c = CoordinatorClient(coordinator.address)
    assert c.get("/controller")[0] == f"c{winner}".encode()
    c.create("/cluster", b"")
    c.multi([Op.fence("/controller_epoch", epoch1), Op.set("/cluster", b"by-first")])
    contenders[winner].kill9()
    deadline = time.monotonic() + 15
    while True:
        now = leaders()
        if now:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (second, epoch2), = now.items()
    assert second != winner and epoch2 > epoch1
    assert c.get("/controller")[0] == f"c{second}".encode()
    with pytest.raises(FencedEpoch):
        c.multi([Op.fence("/controller_epoch", epoch1), Op.set("/cluster", b"stale")])
    assert c.get("/cluster")[0] == b"by-first"
    c.multi([Op.fence("/controller_epoch", epoch2), Op.set("/cluster", b"by-second")])
    c.close()


def test_election_in_process_fence_helper(coordinator):
    a = CoordinatorClient(coordinator.address)
    b = CoordinatorClient(coordinator.address)
    ea, eb = Election(a, "/leader", b"a"), Election(b, "/leader", b"b")
    assert ea.run(5) == 1
    assert eb.try_acquire() is None
    a.close()
    assert eb.run(5) == 2
    with pytest.raises(FencedEpoch):
        b.multi([ea.fence(), Op.create("/x")])
    b.multi([eb.fence(), Op.create("/x")])
    assert eb.holder() == (b"b", 2)
    b.close()


def test_watch_survives_coordinator_restarts_without_duplicates_or_leaks(procs, tmp_path):
    coord = CoordinatorProc(procs, tmp_path / "data").start()
    c = CoordinatorClient(coord.address, session_timeout_ms=8000)
    got = []
    c.create("/w")
    c.watch("/w", got.append)
    expected = []
    for round_ in range(3):
        for i in range(5):
            path = f"/w/r{round_}-{i}"
            c.create(path)
            expected.append(path)
        coord.kill9()
        coord.restart()
        deadline = time.monotonic() + 15
        while True:         # the client resumes its session on the new coordinator
            try:
                c.exists("/w")
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    c.create("/w/last")
    expected.append("/w/last")
    deadline = time.monotonic() + 10
    while len(got) < len(expected):
        assert time.monotonic() < deadline, [e.path for e in got]
        time.sleep(0.05)
    time.sleep(0.3)
    assert [e.path for e in got] == expected        # each change once, in order
    c.close()


def test_election_recovers_its_own_win_after_a_lost_reply(coordinator):
    c = CoordinatorClient(coordinator.address)
    c.create("/leader_epoch", b"0")
    # the winning multi is applied, but pretend its reply was lost
    c.multi([Op.set("/leader_epoch", b"1", 0), Op.create("/leader", b"me", ephemeral=True)])
    e = Election(c, "/leader", b"me")
    assert e.try_acquire() == 1 and e.is_leader
    other = CoordinatorClient(coordinator.address)
    assert Election(other, "/leader", b"other").try_acquire() is None
    other.close()
    c.close()
