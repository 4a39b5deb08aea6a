"""deploy/local-cluster.sh starts a coordinator and brokers that find each other, and stops them
(leaving nothing running)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import alive, kill_and_wait, ours
from tests.procs import free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local-cluster.sh"


def test_local_cluster_start_status_stop(tmp_path):
    env = dict(os.environ, ZB_DATA=str(tmp_path / "data"), ZB_BIN=str(Path(sys.executable).parent),
               COORDINATOR_PORT=str(free_port()), BROKER_PORT=str(free_port()), BROKERS="2")
    if int(env["BROKER_PORT"]) + 1 == int(env["COORDINATOR_PORT"]):
        env["BROKER_PORT"] = str(free_port())

    def run(*args):
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                              text=True, timeout=60)
    try:
        started = run("start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "broker-2 listening" in started.stdout
        status = run("status")
        assert status.stdout.count("running (pid") == 3, status.stdout
        assert len(ours(tmp_path / "data" / "run")) == 3
        ls = subprocess.run([sys.executable, "-m", "coordinator.shell", "--coordinator",
                             f"127.0.0.1:{env['COORDINATOR_PORT']}", "ls", "/brokers/ids"],
                            capture_output=True, text=True, timeout=30)
        assert ls.stdout.strip() == "[1, 2]", ls.stdout + ls.stderr
        started_pids = set(ours(tmp_path / "data" / "run"))
        stopped = run("stop")
        assert stopped.returncode == 0 and stopped.stdout.count("Stopped") == 3, stopped.stdout
        assert "Nothing is running" in run("status").stdout
        assert not [p for p in started_pids if alive(p)]     # stop left nothing running
    finally:
        kill_and_wait(tmp_path / "data" / "run")
