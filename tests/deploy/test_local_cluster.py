"""deploy/local-cluster.sh starts a coordinator and brokers that find each other, and stops them
(leaving nothing running); its install step makes $ZB_HOME/.venv when it is missing or older
than pyproject.toml, leaves a good one alone, and says why when pip fails.

The install itself needs the package index: pip upgrades itself, builds the editable install in
an isolated build environment that fetches setuptools and wheel (this machine's Pythons have
setuptools 65.5 and no wheel, so nothing can build it offline), and fetches pyzmq, msgpack,
xxhash and structlog. The test of a whole install through the index therefore runs only when
ZB_NETWORK_TESTS=1; everything else here runs offline, pip held to no index."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import alive, kill_and_wait, ours
from tests.procs import ADDRESS_IN_USE, PORT_ATTEMPTS, free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local-cluster.sh"
BIN = Path(sys.executable).parent
OFFLINE_PIP = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull,
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


class LocalCluster:
    """deploy/local-cluster.sh run with its data under ``data`` (and, with ``home``, that
    repository copy as ZB_HOME); ``start`` picks free ports, and picks again when another
    process took one first."""

    def __init__(self, data: Path, brokers: int = 2, home: Path | None = None, **env):
        self.data, self.brokers, self.home = data, brokers, home
        self.script = (home / "deploy" / "local-cluster.sh") if home else SCRIPT
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ZB_", "PIP_"))}
        self.env.update(ZB_DATA=str(data), BROKERS=str(brokers), **env)
        if home is None:
            self.env["ZB_BIN"] = str(BIN)
        else:
            self.env["ZB_HOME"] = str(home)

    @property
    def run_dir(self) -> Path:
        return self.data / "run"

    @property
    def coordinator(self) -> str:
        return f"127.0.0.1:{self.env['COORDINATOR_PORT']}"

    def run(self, *args, timeout_s: float = 90) -> subprocess.CompletedProcess:
        """The script with ``args``; past ``timeout_s`` everything it started (its process
        group: pip, venv, the services) is killed, and TimeoutExpired raised."""
        p = subprocess.Popen(["bash", str(self.script), *args], env=self.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)    # bash not reaped yet: the group is still ours
            p.communicate()
            raise
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def start(self, timeout_s: float = 90) -> subprocess.CompletedProcess:
        members = int(self.env.get("ZB_COORDINATORS", "1"))
        for _ in range(PORT_ATTEMPTS):
            self.env["COORDINATOR_PORT"] = str(free_port(members))
            self.env["COORDINATOR_PEER_PORT"] = str(free_port(members))
            self.env["BROKER_PORT"] = str(free_port(self.brokers))
            r = self.run("start", timeout_s=timeout_s)
            if r.returncode == 0 or ADDRESS_IN_USE not in r.stdout + r.stderr:
                return r
            self.run("stop")            # what did start, on the ports that were free
            kill_and_wait(self.run_dir)
        return r

    def broker_ids(self, shell: Path = BIN / "zb-coordinator-shell") -> str:
        r = subprocess.run([str(shell), "--coordinator", self.coordinator, "ls", "/brokers/ids"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() + r.stderr

    def cleanup(self) -> None:
        kill_and_wait(self.run_dir)


def repository_copy(dest: Path) -> Path:
    """What the script and an install of zbroker need of this repository, copied to ``dest``
    (no .venv, no data, nothing built)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("zbroker", "coordinator", "clients", "config", "deploy"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    return dest


def test_local_cluster_start_status_stop(tmp_path):
    lc = LocalCluster(tmp_path / "data")
    try:
        started = lc.start()
        assert started.returncode == 0, started.stdout + started.stderr
        assert "broker-2 listening" in started.stdout
        assert "Installing" not in started.stdout       # ZB_BIN given: nothing to install
        status = lc.run("status")
        assert status.stdout.count("running (pid") == 3, status.stdout
        assert len(ours(lc.run_dir)) == 3
        assert lc.broker_ids() == "[1, 2]"
        started_pids = set(ours(lc.run_dir))
        stopped = lc.run("stop")
        assert stopped.returncode == 0 and stopped.stdout.count("Stopped") == 3, stopped.stdout
        assert "Nothing is running" in lc.run("status").stdout
        assert not [p for p in started_pids if alive(p)]     # stop left nothing running
    finally:
        lc.cleanup()


def test_install_failure_is_reported_with_the_logs_end_and_starts_nothing(tmp_path):
    home = repository_copy(tmp_path / "home")
    lc = LocalCluster(home / "data", home=home, **OFFLINE_PIP)
    try:
        r = lc.start()
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"Installing zbroker into {home}/.venv ..." in r.stdout
        log = lc.run_dir / "install.log"
        assert f"Installing failed; the end of {log} says:" in r.stderr
        assert log.read_text().splitlines()[-1] in r.stderr      # the log's last lines
        assert "Traceback" not in r.stderr
        assert (home / ".venv" / "bin" / "python").exists()      # the venv step ran
        assert not (home / ".venv" / ".zb-installed").exists()   # ... the install did not
        assert not list(lc.run_dir.glob("*.pid")) and not ours(lc.run_dir)
        assert "listening" not in r.stdout
    finally:
        lc.cleanup()


def test_a_good_install_is_kept_and_a_changed_pyproject_installs_again(tmp_path):
    home = repository_copy(tmp_path / "home")
    # an installed .venv, as the script leaves it: the zb-* commands, the marker after them
    venv_bin = home / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for tool in ("zb-coordinator-start", "zb-server-start"):
        (venv_bin / tool).symlink_to(BIN / tool)
    marker = home / ".venv" / ".zb-installed"
    marker.touch()
    os.utime(home / "pyproject.toml", (marker.stat().st_mtime - 10,) * 2)
    lc = LocalCluster(home / "data", home=home, **OFFLINE_PIP)     # an install would fail
    try:
        r = lc.start()
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Installing" not in r.stdout
        assert "broker-2 listening" in r.stdout
        running = ours(lc.run_dir)
        assert len(running) == 3
        assert all(str(venv_bin) in line for line in running.values()), running
        assert lc.broker_ids() == "[1, 2]"
        stopped = lc.run("stop")
        assert stopped.returncode == 0 and stopped.stdout.count("Stopped") == 3, stopped.stdout
        assert not [p for p in running if alive(p)]

        os.utime(home / "pyproject.toml")           # changed since the install
        r = lc.start()
        assert f"Installing zbroker into {home}/.venv ..." in r.stdout, r.stdout + r.stderr
        assert r.returncode == 1 and "Installing failed" in r.stderr     # (offline)
        assert not ours(lc.run_dir)
    finally:
        lc.cleanup()


@pytest.mark.timeout(600)
@pytest.mark.skipif(os.environ.get("ZB_NETWORK_TESTS") != "1",
                    reason="installing through the package index needs the network: set "
                           "ZB_NETWORK_TESTS=1 to run it")
def test_start_installs_into_a_fresh_venv_and_runs_from_it(tmp_path):
    home = repository_copy(tmp_path / "home")
    lc = LocalCluster(home / "data", home=home)
    venv_bin = home / ".venv" / "bin"
    try:
        r = lc.start(timeout_s=500)
        assert r.returncode == 0, r.stdout + r.stderr + \
            (lc.run_dir / "install.log").read_text(errors="replace")[-3000:]
        assert f"Installing zbroker into {home}/.venv ..." in r.stdout
        assert (home / ".venv" / ".zb-installed").exists()
        # an editable install of this copy: its python imports the copy's code
        where = subprocess.run([str(venv_bin / "python"), "-c",
                                "import zbroker, coordinator, clients, zmq, msgpack, xxhash, "
                                "structlog; print(zbroker.__file__)"],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path,
                               env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert where.returncode == 0, where.stderr
        assert where.stdout.strip().startswith(str(home / "zbroker")), where.stdout
        running = ours(lc.run_dir)
        assert len(running) == 3
        assert all(str(venv_bin) in line for line in running.values()), running
        assert lc.broker_ids(venv_bin / "zb-coordinator-shell") == "[1, 2]"
        assert lc.run("stop").stdout.count("Stopped") == 3
        again = lc.start()
        assert again.returncode == 0 and "Installing" not in again.stdout, again.stdout
        assert lc.run("stop").stdout.count("Stopped") == 3
        assert not [p for p in running if alive(p)]
    finally:
        lc.cleanup()


def test_local_cluster_on_a_three_member_ensemble(tmp_path):
    lc = LocalCluster(tmp_path / "data", ZB_COORDINATORS="3")
    try:
        started = lc.start()
        assert started.returncode == 0, started.stdout + started.stderr
        for i in (1, 2, 3):
            assert f"coordinator-{i} listening" in started.stdout
        first = int(lc.env["COORDINATOR_PORT"])
        members = ",".join(f"127.0.0.1:{first + i}" for i in range(3))
        assert f"Coordinators: {members}" in started.stdout
        assert len(ours(lc.run_dir)) == 5
        quorum = subprocess.run([str(BIN / "zb-metadata-quorum"), "--coordinator", members,
                                 "describe", "--status"], capture_output=True, text=True,
                                timeout=30)
        assert quorum.returncode == 0, quorum.stderr
        assert "CurrentVoters:          [1,2,3]" in quorum.stdout, quorum.stdout
        leader = int(quorum.stdout.split("LeaderId:", 1)[1].split()[0])
        assert leader in (1, 2, 3)
        replication = subprocess.run([str(BIN / "zb-metadata-quorum"), "--coordinator",
                                      members, "describe", "--replication"],
                                     capture_output=True, text=True, timeout=30)
        lines = replication.stdout.splitlines()
        assert lines[0].split() == ["NodeId", "LogEndOffset", "Lag", "LastFetchTimestamp",
                                    "Status"]
        assert lines[1].split()[0] == str(leader) and lines[1].split()[-1] == "Leader"
        assert sorted(line.split()[-1] for line in lines[1:]) == ["Follower", "Follower",
                                                                  "Leader"]
        stopped = lc.run("stop")
        assert stopped.returncode == 0 and stopped.stdout.count("Stopped") == 5, stopped.stdout
    finally:
        lc.cleanup()
