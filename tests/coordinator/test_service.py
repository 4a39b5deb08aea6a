"""The coordinator service through real processes on loopback."""

import threading
import time

import pytest

from coordinator.client import (BadVersion, ConnectionLoss, CoordinatorClient, NodeExists, NoNode,
                                NotEmpty, Op)
from tests.procs import wait_until

pytestmark = pytest.mark.timeout(60)


def test_keys_versions_and_cas(coordinator_client):
    c = coordinator_client
    assert c.create("/brokers") == "/brokers"
    assert c.create("/brokers/ids") == "/brokers/ids"
    with pytest.raises(NodeExists):
        c.create("/brokers")
    with pytest.raises(NoNode):
        c.create("/missing/child")
    assert c.set("/brokers", b"v1") == 1
    assert c.get("/brokers") == (b"v1", 1)
    with pytest.raises(BadVersion):
        c.set("/brokers", b"v2", version=0)
    assert c.get("/brokers") == (b"v1", 1)
    assert c.set("/brokers", b"v2", version=1) == 2
    value, stat = c.get_with_stat("/brokers")
    assert stat.version == 2 and stat.num_children == 1 and stat.mzxid > stat.czxid
    with pytest.raises(NotEmpty):
        c.delete("/brokers")
    assert c.exists("/brokers/ids") is not None
    c.delete("/brokers/ids", version=0)
    assert c.exists("/brokers/ids") is None
    assert c.create("/q", b"") and c.create("/q/item-", sequential=True) == "/q/item-0000000000"
    assert c.create("/q/item-", sequential=True) == "/q/item-0000000001"
    assert c.children("/q") == ["item-0000000000", "item-0000000001"]


def test_cas_conflict_between_two_clients(coordinator):
    a = CoordinatorClient(coordinator.address)
    b = CoordinatorClient(coordinator.address)
    try:
        a.create("/counter", b"0")
        wins = {"a": 0, "b": 0}

        def bump(client, name):
            for _ in range(50):
                while True:
                    value, version = client.get("/counter")
                    try:
                        client.set("/counter", str(int(value) + 1).encode(), version)
                        wins[name] += 1
                        break
                    except BadVersion:
                        continue
        threads = [threading.Thread(target=bump, args=(a, "a")),
                   threading.Thread(target=bump, args=(b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert a.get("/counter") == (b"100", 100)
    finally:
        a.close()
        b.close()


def test_multi_is_all_or_nothing(coordinator_client):
    c = coordinator_client
    c.create("/m", b"")
    with pytest.raises(BadVersion) as err:
        c.multi([Op.create("/m/a", b"1"), Op.set("/m", b"x"), Op.check("/m", 0)])
    assert err.value.index == 2
    assert c.children("/m") == [] and c.get("/m") == (b"", 0)
    results = c.multi([Op.create("/m/a", b"1"), Op.set("/m", b"x", 0), Op.check("/m", 1),
                       Op.delete("/m/a")])
    assert results[0] == "/m/a" and results[1][0] == 1 and results[2:] == [None, None]
    assert c.children("/m") == [] and c.get("/m") == (b"x", 1)


def test_session_expiry_removes_ephemerals_and_tells_watchers(coordinator, procs):
    watcher = CoordinatorClient(coordinator.address)
    events = []
    seen = threading.Event()
    watcher.ensure_path("/brokers/ids")

    def on_change(ev):
        events.append(ev)
        if ev.type == "deleted":
            seen.set()
    watcher.watch("/brokers/ids", on_change)
    holder = procs.python("holder", "tests.coordinator.helper_client", coordinator.address,
                          "ephemeral", "/brokers/ids/7", "1000")
    held = wait_until(lambda: watcher.exists("/brokers/ids/7") or holder.popen.poll() is not None,
                      10, "the holder's ephemeral key")
    assert held is not True, holder.log_tail()      # True: the holder exited
    # Pings keep the session alive well past its timeout: write a clock key until the
    # coordinator's own clock (the key's mtime) is two timeouts past the ephemeral's creation.
    # Watch events come in transaction order, so the clock key's last event arriving with no
    # deletion before it means the ephemeral lived at least that long.
    watcher.create("/brokers/ids/clock")
    wait_until(lambda: watcher.set("/brokers/ids/clock", b"") and
               watcher.exists("/brokers/ids/clock").mtime_ms >= held.ctime_ms + 2 * 1000,
               20, "two session timeouts on the coordinator's clock")
    last = watcher.exists("/brokers/ids/clock")
    wait_until(lambda: any(e.path == "/brokers/ids/clock" and e.version == last.version
                           for e in events), 10, "the clock key's last event")
    assert [(e.type, e.path) for e in events if e.path == "/brokers/ids/7"] == \
        [("created", "/brokers/ids/7")], holder.log_tail()
    assert watcher.exists("/brokers/ids/7").ephemeral_owner == held.ephemeral_owner
    holder.kill9()
    # within a generous bound (how fast is measured in benchmarks/bench_coordinator.py)
    assert seen.wait(15), events
    assert watcher.exists("/brokers/ids/7") is None
    assert [(e.type, e.path) for e in events if e.path == "/brokers/ids/7"] == \
        [("created", "/brokers/ids/7"), ("deleted", "/brokers/ids/7")]
    watcher.close()


def test_a_thousand_concurrent_writes_reach_a_watcher_complete_and_in_order(coordinator):
    writers = [CoordinatorClient(coordinator.address) for _ in range(4)]
    watcher = CoordinatorClient(coordinator.address)
    got = []
    done = threading.Event()
    watcher.create("/storm")

    def on_change(ev):
        got.append(ev)
        if len(got) >= 1000:
            done.set()
    watcher.watch("/storm", on_change)

    def write(client, w):
        futures = [client.create_async(f"/storm/w{w}-{i}", str(i).encode()) for i in range(250)]
        for f in futures:
            f.result(30)
    threads = [threading.Thread(target=write, args=(c, i)) for i, c in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done.wait(20), len(got)
    # events come in transaction order: once a later change's event is in, any duplicate or
    # extra event of the storm would be in too
    watcher.create("/storm/zz-end")
    wait_until(lambda: got[-1].path == "/storm/zz-end", 10, "the end marker's event")
    assert got.pop().path == "/storm/zz-end"
    assert len(got) == 1000
    zxids = [e.zxid for e in got]
    assert zxids == sorted(zxids) and len(set(zxids)) == 1000
    assert {e.path for e in got} == {f"/storm/w{w}-{i}" for w in range(4) for i in range(250)}
    for w in range(4):      # each writer's pipelined creates arrive in the order it sent them
        mine = [int(e.path.rsplit("-", 1)[1]) for e in got if e.path.startswith(f"/storm/w{w}-")]
        assert mine == list(range(250))
    for c in writers + [watcher]:
        c.close()


def test_closed_session_ephemerals_go_at_once(coordinator):
    a = CoordinatorClient(coordinator.address)
    b = CoordinatorClient(coordinator.address)
    a.create("/e1", ephemeral=True)
    assert b.exists("/e1").ephemeral_owner == a.session_id
    a.close()
    assert b.exists("/e1") is None
    with pytest.raises(ConnectionLoss, match="The client is closed"):
        a.get("/e1")
    b.close()


def test_session_timeout_is_clamped(coordinator):
    c = CoordinatorClient(coordinator.address, session_timeout_ms=10)
    assert c.session_timeout_ms == 200     # min.session.timeout.ms of the fixture
    c.close()
    c = CoordinatorClient(coordinator.address, session_timeout_ms=10_000_000)
    assert c.session_timeout_ms == 60000
    c.close()


def test_reconnect_within_timeout_keeps_the_session_across_a_coordinator_restart(coordinator):
    c = CoordinatorClient(coordinator.address, session_timeout_ms=6000)
    events = []
    c.create("/keep")
    c.watch("/keep", events.append)
    c.create("/keep/mine", ephemeral=True)
    sid = c.session_id
    coordinator.kill9()
    coordinator.restart()
    deadline = time.monotonic() + 10
    while True:
        try:
            c.create("/keep/after", b"1")
            break
        except NodeExists:          # an earlier try took effect; its reply was lost
            break
        except ConnectionLoss:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert c.session_id == sid
    assert c.exists("/keep/mine") is not None
    wait_until(lambda: any(e.path == "/keep/after" for e in events), 5, "the watch event")
    assert [(e.type, e.path) for e in events] == [("created", "/keep/mine"),
                                                  ("created", "/keep/after")]
    c.close()


def test_a_frozen_client_is_expired_and_told_so(coordinator, procs):
    import signal
    watcher = CoordinatorClient(coordinator.address)
    gone = threading.Event()
    watcher.watch("/frozen", lambda ev: ev.type == "deleted" and gone.set())
    holder = procs.python("holder", "tests.coordinator.helper_client", coordinator.address,
                          "ephemeral", "/frozen", "600")
    deadline = time.monotonic() + 10
    while watcher.exists("/frozen") is None:
        assert time.monotonic() < deadline, holder.log_tail()
        time.sleep(0.02)
    holder.popen.send_signal(signal.SIGSTOP)
    assert gone.wait(10)
    holder.popen.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while "STATE LOST" not in holder.log_tail():
        assert time.monotonic() < deadline, holder.log_tail()
        time.sleep(0.05)
    watcher.close()


def _holder(procs, coordinator, watcher, path, timeout_ms):
    holder = procs.python("holder", "tests.coordinator.helper_client", coordinator.address,
                          "ephemeral", path, str(timeout_ms))
    deadline = time.monotonic() + 10
    while watcher.exists(path) is None:
        assert time.monotonic() < deadline and holder.popen.poll() is None, holder.log_tail()
        time.sleep(0.02)
    return holder


def test_a_client_whose_connection_closes_is_expired_without_waiting_for_its_timeout(
        coordinator, procs):
    """kill -9 closes the client's connection: the session goes after
    session.disconnect.grace.ms (500), not after its 60 s timeout."""
    watcher = CoordinatorClient(coordinator.address)
    gone = threading.Event()
    watcher.watch("/killed", lambda ev: ev.type == "deleted" and gone.set())
    holder = _holder(procs, coordinator, watcher, "/killed", 60000)
    holder.kill9()
    assert gone.wait(20), "the session outlived its closed connection"
    watcher.close()


def test_a_session_resumed_within_the_grace_and_a_frozen_client_keep_their_keys(
        coordinator, procs):
    """A connection reset under a live client: it reconnects at once and resumes its session,
    so its key stays. A frozen client (SIGSTOP) keeps its connection open: it waits for its
    session timeout, as before."""
    import signal
    import subprocess
    watcher = CoordinatorClient(coordinator.address)
    watcher.ensure_path("/kept")
    events = []
    watcher.watch("/kept", events.append)
    cut = _holder(procs, coordinator, watcher, "/kept/cut", 60000)
    frozen = _holder(procs, coordinator, watcher, "/kept/frozen", 60000)
    port = coordinator.address.rsplit(":", 1)[1]
    subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", port], capture_output=True)
    deadline = time.monotonic() + 10
    for h in (cut, frozen):             # both cut: SUSPENDED, then resumed
        while "STATE CONNECTED" not in h.log_tail():
            assert time.monotonic() < deadline, h.log_tail()
            time.sleep(0.05)
    frozen.popen.send_signal(signal.SIGSTOP)
    time.sleep(1.5)                          # three times the grace
    assert watcher.exists("/kept/cut") is not None, cut.log_tail()
    assert watcher.exists("/kept/frozen") is not None
    assert not [e for e in events if e.type == "deleted"], events
    frozen.popen.send_signal(signal.SIGCONT)
    watcher.close()


def test_pipelined_large_writes_are_split_within_the_frame_limit(coordinator):
    """Requests queued together go out as several frames when they would pass the
    coordinator's 4 MiB frame limit (one frame over it drops the connection); a single request
    over it is refused by the client with a sentence and the session carries on."""
    from coordinator import protocol as P
    from coordinator.client import BadArguments, Op
    c = CoordinatorClient(coordinator.address)
    value = b"v" * (900 * 1024)
    futs = [c.create_async(f"/big{i}", value) for i in range(8)]      # 7.2 MB together
    assert [f.result(20) for f in futs] == [f"/big{i}" for i in range(8)]
    with pytest.raises(BadArguments, match="at most"):
        c.multi([Op.create(f"/huge{i}", b"x" * P.VALUE_BYTES_MAX) for i in range(5)])
    assert c.get("/big7")[0] == value and c.state == "CONNECTED"
    c.close()
