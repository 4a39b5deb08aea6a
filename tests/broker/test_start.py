"""Broker start-up: registration, refusals with one sentence, clean SIGTERM."""

import subprocess
import sys
import time

import pytest

from tests.procs import BrokerProc, CoordinatorProc, free_port, wait_until

pytestmark = pytest.mark.timeout(60)


def run_broker(*overrides: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "zbroker.broker.server"]
    for o in overrides:
        args += ["--override", o]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)


def assert_one_sentence(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("zb-server-start:")]
    assert len(lines) == 1, result.stderr
    assert words in lines[0], lines[0]
    assert lines[0].rstrip().endswith((".", "?")), lines[0]


def test_registers_and_refuses_a_held_id_a_taken_port_and_a_bad_log_dir(procs, coordinator,
                                                                          tmp_path):
    b1 = BrokerProc(procs, 1, coordinator.address, tmp_path / "b1").start()
    md = b1.metadata([])
    assert [b[0] for b in md["brokers"]] == [1]
    assert md["controller_id"] == 1

    common = [f"coordinator.connect={coordinator.address}", "coordinator.session.timeout.ms=2000"]
    held = run_broker("broker.id=1", f"listeners=tcp://127.0.0.1:{free_port()}",
                      f"log.dirs={tmp_path / 'other'}", *common)
    assert_one_sentence(held, "already registered by a live broker")

    port_taken = run_broker("broker.id=2", f"listeners=tcp://127.0.0.1:{b1.port}",
                            f"log.dirs={tmp_path / 'b2'}", *common)
    assert_one_sentence(port_taken, "already in use")

    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    bad_dir = run_broker("broker.id=3", f"listeners=tcp://127.0.0.1:{free_port()}",
                         f"log.dirs={a_file}", *common)
    assert_one_sentence(bad_dir, "is not usable")

    dir_in_use = run_broker("broker.id=4", f"listeners=tcp://127.0.0.1:{free_port()}",
                            f"log.dirs={b1.log_dir}", *common)
    assert_one_sentence(dir_in_use, "already using the log directory")

    no_coordinator = run_broker("broker.id=5", f"listeners=tcp://127.0.0.1:{free_port()}",
                                f"log.dirs={tmp_path / 'b5'}",
                                f"coordinator.connect=127.0.0.1:{free_port()}",
                                "coordinator.connection.timeout.ms=500")
    assert_one_sentence(no_coordinator, "coordinator")

    bad_setting = run_broker("broker.id=x")
    assert_one_sentence(bad_setting, "broker.id")

    # the first broker kept serving, and stops cleanly on SIGTERM (its registration goes at
    # once, not at the end of its session); terminate()'s 30 s is a liveness bound only
    assert [b[0] for b in b1.metadata([])["brokers"]] == [1]
    from coordinator.client import CoordinatorClient
    with CoordinatorClient(coordinator.address, session_timeout_ms=4000) as c:
        assert c.exists("/brokers/ids/1") is not None
        assert b1.terminate(30) == 0
        assert c.exists("/brokers/ids/1") is None
    assert "Traceback" not in b1.proc.log_path.read_text()


def test_help_lists_settings():
    out = subprocess.run([sys.executable, "-m", "zbroker.broker.server", "--help"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0
    for key in ("broker.id", "listeners", "log.dirs", "coordinator.connect", "num.partitions",
                "auto.create.topics.enable", "log.retention.hours", "broker.rack"):
        assert key in out.stdout


def test_a_restarted_broker_takes_over_its_earlier_registration(procs, tmp_path):
    """Killed with kill -9 and started again at once on the same address, a broker finds the
    registration of its earlier life still held (by a session that is dead but has not expired:
    the coordinator here waits for session timeouts only, session.disconnect.grace.ms=-1). It
    listens on that address itself, so the earlier process is surely gone: it deletes the
    registration at once and registers with its new session, instead of waiting for the
    expiry."""
    from coordinator.client import CoordinatorClient
    coordinator = CoordinatorProc(procs, tmp_path / "coordinator-data",
                                  {"session.disconnect.grace.ms": "-1"}).start()
    coordinator_client = CoordinatorClient(coordinator.address, session_timeout_ms=4000)
    session_s = 10.0        # long: waiting for the expiry would show
    path = "/brokers/ids/1"
    b1 = BrokerProc(procs, 1, coordinator.address, tmp_path / "b1",
                    {"coordinator.session.timeout.ms": str(int(session_s * 1000))}).start()
    _, first = coordinator_client.get_with_stat(path)
    events = []
    coordinator_client.watch(path, lambda e: events.append((time.monotonic(), e)))
    b1.kill9()
    killed_at = time.monotonic()
    b1.start(wait=False)
    b1.wait_ready(timeout_s=session_s)
    _, second = coordinator_client.get_with_stat(path)
    wait_until(lambda: len(events) >= 2, 10, "the registration's change")
    kinds = [(e.type, e.path) for _, e in events]
    assert kinds == [("deleted", path), ("created", path)], kinds
    (deleted_at, deleted), (_, created) = events
    assert deleted_at - killed_at < session_s / 2, deleted_at - killed_at
    assert first.czxid < deleted.zxid < created.zxid == second.czxid
    assert second.ephemeral_owner != first.ephemeral_owner
    text = b1.proc.log_path.read_text(errors="replace")
    assert "took over the registration of this broker's earlier life" in text
    assert "waiting for the registration" not in text
    assert [b[0] for b in b1.metadata([])["brokers"]] == [1]
    assert b1.alive and "Traceback" not in text
    coordinator_client.close()


def test_a_broker_killed_leaves_the_cluster_when_its_connection_closes(procs, coordinator,
                                                                       coordinator_client,
                                                                       tmp_path):
    """With the coordinator's default session.disconnect.grace.ms, a broker killed with kill -9
    is gone from /brokers/ids as soon as the grace after its connection closed has passed,
    long before its (here 30 s) session timeout; started again, it registers anew."""
    path = "/brokers/ids/1"
    b1 = BrokerProc(procs, 1, coordinator.address, tmp_path / "b1",
                    {"coordinator.session.timeout.ms": "30000"}).start()
    gone = []
    coordinator_client.watch(path, lambda e: e.type == "deleted" and gone.append(e))
    b1.kill9()
    wait_until(lambda: gone, 15, "the killed broker's registration to go")
    b1.start()
    _, stat = coordinator_client.get_with_stat(path)
    assert stat.czxid > gone[0].zxid and b1.alive
