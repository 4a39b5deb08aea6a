"""A watcher whose last-seen change is older than what a restarted coordinator holds gets a
``resync`` event and re-reads (README, "Watches"). After a restart the coordinator's history of
changes begins at its snapshot: what it replayed from the log after that. A watcher that comes
back asking for changes from before the snapshot cannot be replayed to; it is told to re-read,
and then it sees the current data, including changes it never got an event for."""

from __future__ import annotations

import json
import os
import signal

import pytest

from coordinator.client import ConnectionLoss, CoordinatorClient
from tests.coordinator.helpers import files_by_zxid, recovered_line, wait_until
from tests.procs import CoordinatorProc

pytestmark = pytest.mark.timeout(90)

SNAP_COUNT = 50         # a snapshot every 50 transactions (the smallest allowed is 10)
SESSION_MS = 20000      # the watcher's: it outlives its pause and the restart


def lines(proc, kind: str) -> list:
    """The JSON of every ``kind`` line the helper client printed so far."""
    return [json.loads(ln[len(kind) + 1:]) for ln in proc.log_text().splitlines()
            if ln.startswith(kind + " ")]


def retried(call, timeout_s: float = 15.0):
    """``call()``, again while it fails with ConnectionLoss (a request in flight at the kill, or
    the client still reconnecting to the restarted coordinator)."""
    def attempt():
        try:
            return (call(),)
        except ConnectionLoss:
            return None
    return wait_until(attempt, timeout_s, "the coordinator to serve again")[0]


def test_a_watcher_behind_the_restarted_coordinators_history_gets_resync_then_current_data(
        procs, tmp_path):
    data = tmp_path / "data"
    coord = CoordinatorProc(procs, data, {"snap.count": str(SNAP_COUNT)}).start()
    c = CoordinatorClient(coord.address, session_timeout_ms=SESSION_MS)
    try:
        c.create("/w")
        c.create("/w/x", b"v1")
        c.create("/other")
        watcher = procs.python("watcher", "tests.coordinator.helper_client", coord.address,
                               "watch", "/w", str(SESSION_MS))
        wait_until(lambda: "WATCHING" in watcher.log_text() or watcher.popen.poll() is not None,
                   20, "the watcher's watch")
        assert watcher.popen.poll() is None, watcher.log_tail()

        c.set("/w/x", b"v2")
        seen = wait_until(lambda: lines(watcher, "EVENT"), 10, "the watcher's first event")
        assert [(e["type"], e["path"], e["value"]) for e in seen] == [("changed", "/w/x", "v2")]
        last_seen = seen[0]["zxid"]

        # Changes elsewhere (no events for this watcher) until a snapshot covers a transaction
        # after the last one it saw.
        for i in range(2 * SNAP_COUNT):
            c.create(f"/other/{i}")
        snapshot = wait_until(lambda: [z for z in files_by_zxid(data, "snapshot.")
                                       if z > last_seen], 20, "a snapshot past the watcher")[-1]

        # The watcher is paused (SIGSTOP) so it cannot come back before the changes below;
        # the coordinator is killed and restarted on its data; /w changes while the watcher is
        # away, and the coordinator sends it no event for them (it is not connected).
        os.kill(watcher.pid, signal.SIGSTOP)
        try:
            coord.kill9()
            coord.restart()
            rec = recovered_line(coord)
            assert rec["zxid"] >= snapshot, rec
            assert rec["sessions"] >= 2, rec          # ours and the watcher's, kept
            retried(lambda: c.set("/w/x", b"v3"))
            retried(lambda: c.create("/w/y", b"new"))
        finally:
            os.kill(watcher.pid, signal.SIGCONT)

        # Back, the watcher re-registers from the last change it saw, which is older than the
        # restarted coordinator's history: it gets resync, re-reads, and has the current data.
        wait_until(lambda: lines(watcher, "READ") or watcher.popen.poll() is not None, 30,
                   f"the watcher's re-read after a resync\n{watcher.log_tail()}")
        assert watcher.popen.poll() is None, watcher.log_tail()
        events = lines(watcher, "EVENT")
        assert [e["type"] for e in events] == ["changed", "resync"], events
        resync = events[1]
        assert resync["path"] == "/w" and resync["zxid"] >= snapshot > last_seen, resync
        assert lines(watcher, "READ") == [{"x": "v3", "y": "new"}]
        assert "STATE LOST" not in watcher.log_text()     # the same session, resumed

        # and it watches on from there: the next change is an ordinary event
        retried(lambda: c.set("/w/y", b"newer"))
        after = wait_until(lambda: lines(watcher, "EVENT")[2:], 10, "the next event")
        assert [(e["type"], e["path"], e["value"]) for e in after] == \
            [("changed", "/w/y", "newer")]
        assert after[0]["zxid"] > resync["zxid"]
    finally:
        c.close()
