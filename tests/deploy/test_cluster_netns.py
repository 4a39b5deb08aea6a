"""deploy/cluster.sh over three test hosts (network namespaces): a coordinator on one, a broker
on each of the others; the brokers register with their own addresses, and stop cleanly."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


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
        ids = shell("ls", "/brokers/ids").strip()
        assert ids == "[1, 2]", ids
        stopped = run("stop")
        assert stopped.returncode == 0 and stopped.stdout.count("Stopped") == 3, stopped.stdout
        assert run("status").stdout.count("not running") == 3
    finally:
        for pidfile in (tmp_path / "data" / "run").glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
