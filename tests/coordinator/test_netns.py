"""The coordinator and its clients on separate hosts (network namespaces), with a network
partition: a host cut off for longer than its session timeout loses its session and ephemeral
keys; one cut off for less keeps them."""

import subprocess
import time

import pytest

pytestmark = pytest.mark.timeout(90)


def stat(hosts, path):
    """Look up ``path`` from the coordinator's own host, with the shell."""
    r = subprocess.run(hosts.python(0, "coordinator.shell", "--coordinator", "127.0.0.1:2181",
                                    "stat", path), capture_output=True, text=True, timeout=30)
    return "version =" in r.stdout


def wait_until(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_partitioned_client_loses_its_session_and_a_short_blip_does_not(netns_hosts, procs,
                                                                         tmp_path):
    hosts = netns_hosts(2)
    coord = procs.start("coordinator", hosts.python(
        0, "coordinator.server", "--override", "listeners=tcp://0.0.0.0:2181",
        "--override", f"data.dir={tmp_path / 'data'}", "--override", "tick.ms=100",
        "--override", "min.session.timeout.ms=200"))
    deadline = time.monotonic() + 15
    while not stat(hosts, "/"):
        assert time.monotonic() < deadline and coord.popen.poll() is None, coord.log_tail()
        time.sleep(0.2)
    holder = procs.start("holder", hosts.python(
        1, "tests.coordinator.helper_client", f"{hosts.address(0)}:2181", "ephemeral",
        "/host-1", "2000"))
    wait_until(lambda: "CREATED" in holder.log_tail(), 20, "the remote client's key")
    assert stat(hosts, "/host-1")

    hosts.disconnect(1)                 # shorter than the session timeout
    time.sleep(0.8)
    hosts.reconnect(1)
    time.sleep(2.5)                     # past the timeout: the session was kept alive again
    assert stat(hosts, "/host-1")
    assert "STATE LOST" not in holder.log_tail()

    hosts.disconnect(1)                 # longer than the session timeout
    cut = time.monotonic()
    wait_until(lambda: not stat(hosts, "/host-1"), 15, "the expired session's key to go")
    assert time.monotonic() - cut >= 1.5    # not before its timeout (2 s, less slack)
    hosts.reconnect(1)
    wait_until(lambda: "STATE LOST" in holder.log_tail(), 20,
               "the remote client to learn its session expired")
