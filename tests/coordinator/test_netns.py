"""The coordinator and its clients on separate hosts (network namespaces), with a network
partition: a host cut off for longer than its session timeout loses its session and ephemeral
keys; one cut off for less keeps them."""

import json
import subprocess
import time

import pytest

from tests.procs import wait_until

pytestmark = pytest.mark.timeout(90)


def stat(hosts, path):
    """Look up ``path`` from the coordinator's own host, with the shell."""
    r = subprocess.run(hosts.python(0, "coordinator.shell", "--coordinator", "127.0.0.1:2181",
                                    "stat", path), capture_output=True, text=True, timeout=30)
    return "version =" in r.stdout


STAT_OWNER = 5      # ephemeral_owner in a stat list


def probe(hosts, path, until_ms=0):
    """From the coordinator's host: the coordinator's clock once it is at least ``until_ms``, and
    the stat of ``path`` read after that moment (tests/coordinator/helper_probe.py)."""
    r = subprocess.run(hosts.python(0, "tests.coordinator.helper_probe", "127.0.0.1:2181", path,
                                    str(until_ms)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


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

    before = probe(hosts, "/host-1")
    assert before["stat"] is not None
    owner = before["stat"][STAT_OWNER]
    hosts.disconnect(1)                 # shorter than the session timeout
    cut = time.monotonic()
    time.sleep(0.8)
    hosts.reconnect(1)
    blip_s = time.monotonic() - cut
    back_ms = int(time.time() * 1000)   # one machine: the coordinator's wall clock is ours
    assert blip_s < 1.3, f"the machine stalled: the blip lasted {blip_s:.2f} s, too long for a " \
                         f"2 s session to be sure to survive it"
    # Had the blip cost the session, its key would go within a timeout (and a tick) of the
    # reconnect. Wait until the coordinator's clock is two timeouts past it: the key is still
    # there, held by the same session.
    after = probe(hosts, "/host-1", until_ms=back_ms + 2 * 2000)
    assert after["clock_ms"] >= back_ms + 2 * 2000
    assert after["stat"] is not None, "the key went after a short blip"
    assert after["stat"][STAT_OWNER] == owner
    assert "STATE LOST" not in holder.log_tail()

    hosts.disconnect(1)                 # longer than the session timeout
    cut = time.monotonic()
    wait_until(lambda: not stat(hosts, "/host-1"), 15, "the expired session's key to go")
    # Not before its timeout: the coordinator counts 2 s from the last message it heard, which
    # may be a ping up to a third of the timeout before the cut (less one tick of slack).
    assert time.monotonic() - cut >= 2.0 - 2.0 / 3 - 0.1
    hosts.reconnect(1)
    wait_until(lambda: "STATE LOST" in holder.log_tail(), 20,
               "the remote client to learn its session expired")


@pytest.mark.timeout(150)
def test_ensemble_stays_linearizable_while_its_leader_is_cut_off_again_and_again(
        netns_hosts, procs, tmp_path):
    """Three members on three hosts, clients on a fourth; the leader's host is cut off the
    network and put back, twice. The clients' history is linearizable, terms only grow,
    and at most one member leads any term."""
    import random
    from tests.coordinator.history import INITIAL, from_json
    from tests.coordinator.linearizability import check
    hosts = netns_hosts(4)
    servers = [f"server.{i + 1}={hosts.address(i)}:2888" for i in range(3)]
    members = {}
    for i in range(3):
        args = ["--override", "listeners=tcp://0.0.0.0:2181", "--override",
                f"data.dir={tmp_path / f'm{i + 1}'}", "--override", "tick.ms=100",
                "--override", f"coordinator.id={i + 1}", "--override", "election.timeout.ms=300"]
        for s in servers:
            args += ["--override", s]
        members[i + 1] = procs.start(f"member-{i + 1}", hosts.python(i, "coordinator.server",
                                                                      *args))
    address = ",".join(f"{hosts.address(i)}:2181" for i in range(3))

    def leader_and_term():
        best = None
        for i, m in members.items():
            for line in m.log_path.read_text(errors="replace").splitlines():
                if '"serving as leader"' in line:
                    term = json.loads(line)["term"]
                    if best is None or term > best[1]:
                        best = (i, term)
        return best
    wait_until(leader_and_term, 30, "a leader")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed={seed}")
    out = tmp_path / "history.json"
    clients = procs.start("clients", hosts.python(3, "tests.coordinator.history", address,
                                                   "7", str(seed), str(out)))
    terms = []
    time.sleep(1.5)
    for k in range(2):
        leader, term = leader_and_term()
        terms.append(term)
        hosts.disconnect(leader - 1)
        wait_until(lambda: leader_and_term()[1] > term, 20, "a new leader elsewhere")
        time.sleep(rng.uniform(0.3, 1.0))
        hosts.reconnect(leader - 1)
        print(f"cut off leader {leader} (term {term})")
        time.sleep(rng.uniform(0.5, 1.0))
    assert clients.popen.wait(60) == 0, clients.log_tail()
    terms.append(leader_and_term()[1])
    history = from_json(out.read_text())
    acked = sum(1 for op in history if op.ret is not None and op.kind != "read")
    print(f"{len(history)} operations, {acked} acknowledged writes, terms {terms}")
    assert acked > 50 and terms == sorted(set(terms))
    ok, why = check(history, INITIAL)
    assert ok, f"seed={seed}: {why}"
    leaders: dict = {}
    for i, m in members.items():
        for line in m.log_path.read_text(errors="replace").splitlines():
            if '"elected leader"' in line:
                leaders.setdefault(json.loads(line)["term"], set()).add(i)
    assert all(len(v) == 1 for v in leaders.values()), leaders
