"""deploy/cluster.sh over three test hosts (network namespaces): a coordinator on one, a broker
on each of the others; the brokers register with their own addresses, and stop cleanly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import kill_and_wait
from tests.procs import wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


PROBE = """
import json, sys
from clients import AdminClient
from coordinator.client import CoordinatorClient
from zbroker.broker import metadata as md
out = {"registered": {}, "metadata": {}}
with CoordinatorClient(sys.argv[1], session_timeout_ms=4000) as c:
    for i in c.children("/brokers/ids"):
        r = md.decode_registration(int(i), c.get("/brokers/ids/" + i)[0])
        out["registered"][i] = [r.host, r.port, r.rack]
with AdminClient(sys.argv[2]) as admin:
    for b in admin.describe_cluster(timeout_ms=10000)["brokers"]:
        out["metadata"][str(b.node_id)] = [b.host, b.port, b.rack]
print(json.dumps(out))
"""


def probe(hosts, i: int, coordinator: str, bootstrap: str) -> dict:
    """The brokers' registrations at the coordinator and in a client's Metadata, read on
    host ``i``: {"registered": {id: [host, port, rack]}, "metadata": {...}}."""
    r = subprocess.run(hosts.command(i, [sys.executable, "-c", PROBE, coordinator, bootstrap]),
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cluster_over_three_hosts(netns_hosts, tmp_path):
    hosts = netns_hosts(3)
    cluster = tmp_path / "cluster.conf"
    cluster.write_text(
        "# test cluster\n"
        f"coordinator {hosts.names[0]} {hosts.address(0)}\n"
        f"broker {hosts.names[1]} {hosts.address(1)} 1 rack-a\n"
        f"broker {hosts.names[2]} {hosts.address(2)} 2 rack-b\n")
    env = dict(os.environ, ZB_REMOTE="ip netns exec", ZB_DATA=str(tmp_path / "data"),
               ZB_BIN=str(Path(sys.executable).parent))

    def run(*args):
        return subprocess.run(["bash", str(ROOT / "deploy" / "cluster.sh"), *args, str(cluster)],
                              env=env, capture_output=True, text=True, timeout=90)
    try:
        started = run("start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"Bootstrap servers: {hosts.address(1)}:9092,{hosts.address(2)}:9092" in \
            started.stdout
        assert run("status").stdout.count(": running") == 3

        def shell(*words):
            return subprocess.run(hosts.python(1, "coordinator.shell", "--coordinator",
                                               f"{hosts.address(0)}:2181", *words),
                                  capture_output=True, text=True, timeout=30).stdout
        # a broker listens a moment before it has registered: wait (bounded) for both
        wait_until(lambda: shell("ls", "/brokers/ids").strip() == "[1, 2]", 20,
                   "both brokers registering")
        # each broker registered, and is advertised to clients, with its own host's address
        # and its rack (seen from the coordinator's host, a third machine)
        want = {"1": [hosts.address(1), 9092, "rack-a"], "2": [hosts.address(2), 9092, "rack-b"]}
        seen = {}

        def both_seen():
            seen.update(probe(hosts, 0, f"{hosts.address(0)}:2181",
                              f"{hosts.address(1)}:9092,{hosts.address(2)}:9092"))
            return seen["registered"].keys() == seen["metadata"].keys() == want.keys()
        wait_until(both_seen, 20, "both brokers in the metadata")
        assert seen["registered"] == want, seen
        assert seen["metadata"] == want, seen
        stopped = run("stop")
        assert stopped.returncode == 0 and stopped.stdout.count("Stopped") == 3, stopped.stdout
        assert run("status").stdout.count("not running") == 3
    finally:
        kill_and_wait(tmp_path / "data" / "run")       # only our own processes, until gone


def test_three_coordinator_lines_form_one_ensemble(
        netns_hosts, tmp_path):
    hosts = netns_hosts(3)
    cluster = tmp_path / "cluster.conf"
    cluster.write_text(
        "".join(f"coordinator {hosts.names[i]} {hosts.address(i)}\n" for i in range(3)) +
        f"broker {hosts.names[1]} {hosts.address(1)} 1\n"
        f"broker {hosts.names[2]} {hosts.address(2)} 2\n")
    env = dict(os.environ, ZB_REMOTE="ip netns exec", ZB_DATA=str(tmp_path / "data"),
               ZB_BIN=str(Path(sys.executable).parent))
    members = ",".join(f"{hosts.address(i)}:2181" for i in range(3))

    def run(*args):
        return subprocess.run(["bash", str(ROOT / "deploy" / "cluster.sh"), *args, str(cluster)],
                              env=env, capture_output=True, text=True, timeout=90)

    def quorum(i):
        r = subprocess.run(hosts.python(i, "clients.cli.metadata_quorum", "--coordinator",
                                        members, "--timeout-ms", "8000", "describe", "--status"),
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
        return r.stdout if r.returncode == 0 else None
    try:
        started = run("start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert run("status").stdout.count(": running") == 5
        status = wait_until(lambda: quorum(1), 30, "the ensemble's leader")
        assert "CurrentVoters:          [1,2,3]" in status, status
        assert int(status.split("LeaderId:", 1)[1].split()[0]) in (1, 2, 3)
        # (tests/coordinator/test_netns.py cuts an ensemble's leader off the network)
        stopped = run("stop")
        assert stopped.returncode == 0 and stopped.stdout.count("Stopped") == 5, stopped.stdout
    finally:
        kill_and_wait(tmp_path / "data" / "run")
