"""Kill -9 the coordinator or an election winner; nothing acknowledged is lost."""

import re
import signal
import threading
import time

import pytest

from coordinator.client import ConnectionLoss, CoordinatorClient, FencedEpoch, Op
from coordinator.election import Election
from tests.coordinator.helpers import files_by_zxid, recovered_line, wait_until
from tests.procs import CoordinatorProc

pytestmark = pytest.mark.timeout(90)


@pytest.mark.timeout(150)
def test_kill9_during_a_write_storm_loses_no_acknowledged_write(procs, tmp_path):
    data = tmp_path / "data"
    # A snapshot every 3,000 transactions, and only the newest kept: at each one after the
    # first, the log files it covers are deleted, so the oldest writes soon live in no log file,
    # only in the snapshot.
    coord = CoordinatorProc(procs, data, {"snap.count": "3000", "snap.retain.count": "1"}).start()
    acked: list[str] = []
    unexpected: list[str] = []      # errors other than the connection going away at the kill
    lock = threading.Lock()
    stop = threading.Event()
    killing = threading.Event()

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
                        fut.result(10)      # the client fails it by its request timeout (2 s)
                    except ConnectionLoss as e:
                        if not killing.is_set():
                            unexpected.append(f"{path}: {e!r} before the kill")
                        stop.set()
                        continue
                    except Exception as e:
                        unexpected.append(f"{path}: {e!r}")
                        stop.set()
                        continue
                    with lock:
                        acked.append(path)
        except Exception as e:
            unexpected.append(f"writer {w}: {e!r}")
        finally:
            c.close()
    threads = [threading.Thread(target=storm, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    first_log = data / "txlog.00000000000000000001"
    wait_until(lambda: unexpected or (len(acked) >= 8000 and not first_log.exists()), 90,
               "8,000 acknowledged writes and the first log file purged")
    assert not unexpected, unexpected
    # Freeze the coordinator (SIGSTOP; the SIGKILL that follows lets nothing of it run in
    # between) at a moment when the newest snapshot is older than more acknowledged writes
    # than it can hold, so recovery needs the snapshot and the log after it.
    deadline = time.monotonic() + 60
    while True:
        killing.set()       # while it is frozen, and from the kill on, connections may go
        coord.proc.popen.send_signal(signal.SIGSTOP)
        snapshot_zxid = files_by_zxid(data, "snapshot.")[-1]    # the newest complete snapshot
        if len(acked) > snapshot_zxid + 300:
            break
        coord.proc.popen.send_signal(signal.SIGCONT)
        killing.clear()
        assert time.monotonic() < deadline and not stop.is_set(), (len(acked), snapshot_zxid)
        time.sleep(0.05)
    oldest_logged = files_by_zxid(data, "txlog.")[0]         # no log file holds anything older
    n_acked = len(acked)
    coord.kill9()
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not unexpected, unexpected
    assert oldest_logged > 1
    coord.start()
    rec = recovered_line(coord)
    # recovery loaded that snapshot and replayed only the records after it
    assert rec["zxid"] - rec["txns_replayed"] == snapshot_zxid, rec
    # at most snapshot_zxid of the acknowledged creates are in the snapshot: the rest were
    # replayed from the log after it
    assert rec["txns_replayed"] >= n_acked - snapshot_zxid > 300, (rec, n_acked)
    c = CoordinatorClient(coord.address)
    present = set(c.children("/"))
    missing = [p for p in acked if p[1:] not in present]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    # the first acknowledged writes are older than every log file: the snapshot brought them
    for path in acked[:100]:
        assert c.exists(path).czxid < oldest_logged, path
    c.close()


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
    first = wait_until(leaders, 15, "a leader")
    assert len(first) == 1, first
    (winner, epoch1), = first.items()
    # the first win of a new election is epoch 1, and the epoch key counts every win: a second
    # winner would show as a later version
    assert epoch1 == 1
    c = CoordinatorClient(coordinator.address)
    assert c.get("/controller")[0] == f"c{winner}".encode()
    assert c.get("/controller_epoch") == (b"1", 1)
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
    assert second != winner and epoch2 == epoch1 + 1
    assert c.get("/controller")[0] == f"c{second}".encode()
    # the losers retried (the holder key went, and they retry every second anyway): still one
    # win per holder, and the third contender never won
    assert c.get("/controller_epoch") == (b"2", 2)
    third = ({0, 1, 2} - {winner, second}).pop()
    assert "LEADER" not in contenders[third].log_tail(100)
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
            except ConnectionLoss:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    c.create("/w/last")
    expected.append("/w/last")
    # events come in transaction order, so once the last one is in, every earlier one (and any
    # duplicate of one) would be in too
    wait_until(lambda: any(e.path == "/w/last" for e in got), 10, "the last change's event")
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
