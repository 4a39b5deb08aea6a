"""Broker start-up: registration, refusals with one sentence, clean SIGTERM."""

import subprocess
import sys
import time

import pytest

from tests.procs import BrokerProc, free_port

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

    # the first broker kept serving, and stops cleanly on SIGTERM (its registration goes)
    assert [b[0] for b in b1.metadata([])["brokers"]] == [1]
    started = time.monotonic()
    assert b1.terminate() == 0
    assert time.monotonic() - started < 3
    assert "Traceback" not in b1.proc.log_path.read_text()


def test_help_lists_settings():
    out = subprocess.run([sys.executable, "-m", "zbroker.broker.server", "--help"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0
    for key in ("broker.id", "listeners", "log.dirs", "coordinator.connect", "num.partitions",
                "auto.create.topics.enable", "log.retention.hours", "broker.rack"):
        assert key in out.stdout


def test_a_restarted_broker_waits_for_its_earlier_registration_to_expire(procs, coordinator,
                                                                          tmp_path):
    b1 = BrokerProc(procs, 1, coordinator.address, tmp_path / "b1").start()
    b1.kill9()
    b1.start()          # same id, same port: the holder must be dead; it waits, then registers
    assert [b[0] for b in b1.metadata([])["brokers"]] == [1]
