"""The test harness's port handling (tests/procs.py): ports are never handed out twice and stay
out of the kernel's ephemeral range; a server whose port another process took first starts
again on a fresh one; a restart keeps its port and waits for it; a server counts as started only
when the process itself listens."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from tests import procs as procs_module
from tests.procs import BrokerProc, CoordinatorProc, free_port, wait_for_port

pytestmark = pytest.mark.timeout(60)


def hold(port: int) -> socket.socket:
    """A listening socket on ``port``, as another program that got there first would have."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_free_ports_are_new_outside_the_ephemeral_range_and_consecutive_when_asked():
    low, high = procs_module._port_range()
    got = [free_port() for _ in range(200)]
    assert len(set(got)) == len(got)
    assert all(low <= p < high for p in got)
    first = free_port(3)
    run = {first, first + 1, first + 2}
    assert not run & set(got)
    assert not run & {free_port() for _ in range(200)}


def test_a_server_on_a_taken_port_of_its_choosing_starts_on_a_fresh_one(procs, tmp_path):
    coord = CoordinatorProc(procs, tmp_path / "c")
    taken = coord.port
    with hold(taken):
        coord.start()
        assert coord.port != taken
        assert coord.port in procs_module.listening_ports(coord.proc.pid)
        first = procs.started[0]
        assert first.exited_address_in_use, first.log_tail()
    from coordinator.client import CoordinatorClient
    with CoordinatorClient(coord.address, session_timeout_ms=4000) as c:
        c.create("/here")
    b = BrokerProc(procs, 1, coord.address, tmp_path / "b1")
    taken = b.port
    with hold(taken):
        b.start(wait=False)
        b.wait_ready()
    assert b.port != taken
    brokers = b.metadata([])["brokers"]
    assert [(x[0], x[2]) for x in brokers] == [(1, b.port)], brokers


def test_a_restart_keeps_its_port_and_waits_until_it_is_free(procs, tmp_path):
    coord = CoordinatorProc(procs, tmp_path / "c").start()
    port = coord.port
    coord.kill9()
    held = hold(port)               # someone takes the port in the moment after the kill
    tries = len(procs.started)

    def first_retry_failed():
        return len(procs.started) > tries + 1 and procs.started[tries].exited_address_in_use
    done = threading.Event()
    errors: list[BaseException] = []

    def restart():
        try:
            coord.restart()
        except BaseException as e:      # handed to the test's thread
            errors.append(e)
        finally:
            done.set()
    t = threading.Thread(target=restart, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + procs_module.REBIND_S / 2
        while not first_retry_failed():
            assert time.monotonic() < deadline, "the restart did not try the held port"
            assert not done.is_set(), errors
            time.sleep(0.05)
    finally:
        held.close()                    # ... and lets it go again
        # (before teardown either way: no process may start after the fixture's cleanup)
        finished = done.wait(procs_module.REBIND_S + 15)
    assert finished, "the restart did not finish"
    assert not errors, errors
    assert coord.port == port
    assert port in procs_module.listening_ports(coord.proc.pid)


def test_waiting_for_a_port_is_waiting_for_that_process(procs):
    port = free_port()
    with hold(port):
        idle = procs.start("idle", [sys.executable, "-c", "import time; time.sleep(60)"])
        with pytest.raises(TimeoutError):
            wait_for_port(port, timeout_s=0.5, proc=idle.popen)
        wait_for_port(port, timeout_s=0.5)      # without a process: anyone listening counts
