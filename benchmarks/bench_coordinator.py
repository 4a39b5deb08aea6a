"""Coordinator benchmark: durable writes/s (1 and 32 in flight), reads/s, ephemeral cleanup time
for a single coordinator; then the same writes for a 3-member ensemble and the time from
kill -9 of its leader to the next acknowledged write; and side by side, in the same run, a
3-member Apache ZooKeeper ensemble driven through kazoo (skipped, with a note, when Java, the
ZooKeeper package or kazoo is missing; `apt-get install zookeeper`, `pip install kazoo`).

32 in flight is measured two ways: completion callbacks that submit the next request on the
client's I/O thread (how an event-loop caller such as a broker pipelines), and a user thread that
keeps 32 outstanding with a semaphore (each completion then wakes another thread).

    python benchmarks/bench_coordinator.py

Starts its own coordinator on a free loopback port with a temporary data directory (every write
fsynced before it is acknowledged), measures, stops everything. Prints the figures last, as one
line of name=value pairs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.client import CoordinatorClient  # noqa: E402
from tests.procs import CoordinatorProc, Procs  # noqa: E402

PHASE_S = float(os.environ.get("BENCH_PHASE_S", "5"))


def sync_writes(c: CoordinatorClient) -> float:
    c.create("/sync")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < PHASE_S:
        c.create(f"/sync/k{n}", b"x" * 100)
        n += 1
    return n / (time.perf_counter() - start)


def pipelined(c: CoordinatorClient, submit, in_flight: int) -> float:
    sem = threading.Semaphore(in_flight)
    errors = []

    def done(f):
        if f.exception() is not None:
            errors.append(f.exception())
        sem.release()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < PHASE_S:
        sem.acquire()
        submit(n).add_done_callback(done)
        n += 1
    for _ in range(in_flight):
        sem.acquire()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]!r}")
    return n / elapsed


def chained(submit, in_flight: int) -> float:
    """``in_flight`` requests kept in flight by completion callbacks, which run on the client's
    I/O thread and submit the next request there (how an event-loop caller pipelines)."""
    lock = threading.Lock()
    state = {"n": 0, "open": in_flight, "errors": []}
    finished = threading.Event()
    stop_at = time.perf_counter() + PHASE_S

    def done(f):
        if f.exception() is not None:
            state["errors"].append(f.exception())
        with lock:
            state["n"] += 1
            if time.perf_counter() < stop_at:
                submit(state["n"] + in_flight).add_done_callback(done)
                return
            state["open"] -= 1
            if state["open"] == 0:
                finished.set()
    start = time.perf_counter()
    for i in range(in_flight):
        submit(i).add_done_callback(done)
    finished.wait(PHASE_S + 30)
    elapsed = time.perf_counter() - start
    if state["errors"]:
        raise RuntimeError(f"{len(state['errors'])} requests failed, e.g. {state['errors'][0]!r}")
    return state["n"] / elapsed


def sync_reads(c: CoordinatorClient) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < PHASE_S:
        c.get("/sync/k1")
        n += 1
    return n / (time.perf_counter() - start)


def ephemeral_cleanup_ms(procs: Procs, coord: CoordinatorProc, timeout_ms: int) -> float:
    watcher = CoordinatorClient(coord.address)
    gone = threading.Event()
    watcher.watch("/eph", lambda ev: ev.type == "deleted" and gone.set())
    holder = procs.python("holder", "tests.coordinator.helper_client", coord.address,
                          "ephemeral", "/eph", str(timeout_ms))
    while watcher.exists("/eph") is None:
        time.sleep(0.01)
    time.sleep(timeout_ms / 1000)
    holder.kill9()
    killed = time.perf_counter()
    gone.wait(30)
    took = (time.perf_counter() - killed) * 1000
    watcher.close()
    return took


def write_figures(c: CoordinatorClient, root: str) -> tuple[float, float]:
    """(writes/s 1 in flight, writes/s 32 in flight chained) under ``root``."""
    c.create(root)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < PHASE_S:
        c.create(f"{root}/s{n}", b"x" * 100)
        n += 1
    w1 = n / (time.perf_counter() - start)
    w32 = chained(lambda i: c.create_async(f"{root}/p{i}", b"x" * 100), 32)
    return w1, w32


def ensemble_figures(procs: Procs, tmp: Path) -> dict:
    from tests.procs import Ensemble
    from zbroker.errors import ConnectionLoss
    e = Ensemble(procs, tmp / "ensemble", 3, {"tick.ms": "100"}).start()
    c = CoordinatorClient(e.address, session_timeout_ms=10000)
    print("3-member ensemble: writes, 1 and 32 in flight ...", flush=True)
    w1, w32 = write_figures(c, "/ens")
    print(f"  {w1:,.0f}/s, {w32:,.0f}/s", flush=True)
    print("3-member ensemble: kill -9 of the leader to the next acknowledged write ...",
          flush=True)
    failovers = []
    c.create("/fo")
    for k in range(3):
        leader = e.leader_id()
        e.member(leader).kill9()
        killed = time.perf_counter()
        while True:
            try:
                c.create(f"/fo/{k}", b"x")
                break
            except ConnectionLoss:
                if c.exists(f"/fo/{k}") is not None:
                    break
        failovers.append(time.perf_counter() - killed)
        e.member(leader).start()
        time.sleep(1.5)
    c.close()
    print(f"  {', '.join(f'{s * 1000:.0f} ms' for s in failovers)}", flush=True)
    return {"ensemble_writes_per_s_1_in_flight": w1, "ensemble_writes_per_s_32_in_flight": w32,
            "ensemble_failover_s_max": max(failovers)}


ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"      # Debian's zookeeper package
ZOO_CFG = """tickTime=2000
initLimit=10
syncLimit=5
dataDir={data}
clientPort={client}
4lw.commands.whitelist=srvr
admin.enableServer=false
{servers}
"""


def zookeeper_figures(procs: Procs, tmp: Path) -> dict | str:
    """The same writes and failover on a 3-member ZooKeeper ensemble (its defaults: every write
    fsynced on a majority), or the reason it was skipped."""
    import shutil
    import socket
    from tests.procs import free_port, wait_until
    import logging
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)     # (it reports every reconnect)
    try:
        from kazoo.client import KazooClient
        from kazoo.exceptions import ConnectionLoss as ZkConnectionLoss, NodeExistsError
    except ImportError:
        return "kazoo is not installed (pip install kazoo)"
    java = shutil.which("java")
    if not java or not os.path.exists(ZOOKEEPER_JAR):
        return "Java or Debian's zookeeper package is missing (apt-get install zookeeper)"
    classpath = ZOOKEEPER_JAR       # (its manifest names the jars it needs)
    ports = {i: (free_port(), free_port(), free_port()) for i in (1, 2, 3)}
    servers = "\n".join(f"server.{i}=127.0.0.1:{p[1]}:{p[2]}" for i, p in ports.items())
    members = {}
    for i, (client, _, _) in ports.items():
        data = tmp / f"zk{i}"
        data.mkdir()
        (data / "myid").write_text(f"{i}\n")
        cfg = tmp / f"zoo{i}.cfg"
        cfg.write_text(ZOO_CFG.format(data=data, client=client, servers=servers))
        members[i] = [java, "-Xmx512m", "-cp", classpath,
                      "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)]
    running = {i: procs.start(f"zookeeper-{i}", argv) for i, argv in members.items()}

    def mode(i):
        try:
            with socket.create_connection(("127.0.0.1", ports[i][0]), 1) as s:
                s.sendall(b"srvr")
                text = s.makefile().read()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def leader():
        return wait_until(lambda: next((i for i in ports if mode(i) == "leader"), None), 60,
                          "a ZooKeeper leader")
    leader()
    hosts = ",".join(f"127.0.0.1:{p[0]}" for p in ports.values())
    zk = KazooClient(hosts=hosts, timeout=10.0)
    zk.start(30)
    print("3-member ZooKeeper: writes, 1 and 32 in flight ...", flush=True)
    zk.create("/zk")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < PHASE_S:
        zk.create(f"/zk/s{n}", b"x" * 100)
        n += 1
    w1 = n / (time.perf_counter() - start)
    sem = threading.Semaphore(32)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < PHASE_S:
        sem.acquire()
        zk.create_async(f"/zk/p{n}", b"x" * 100).rawlink(lambda r: sem.release())
        n += 1
    for _ in range(32):
        sem.acquire()
    w32 = n / (time.perf_counter() - start)
    print(f"  {w1:,.0f}/s, {w32:,.0f}/s", flush=True)
    print("3-member ZooKeeper: kill -9 of the leader to the next acknowledged write ...",
          flush=True)
    zk.create("/fo")
    failovers = []
    for k in range(2):
        i = leader()
        running[i].kill9()
        killed = time.perf_counter()
        while True:
            try:
                zk.create(f"/fo/{k}", b"x")
                break
            except NodeExistsError:
                break
            except Exception as e:      # ConnectionLoss, SessionMoved, a timeout: try again
                if not isinstance(e, (ZkConnectionLoss,)) and time.perf_counter() - killed > 60:
                    raise
                time.sleep(0.01)
        failovers.append(time.perf_counter() - killed)
        running[i] = procs.start(f"zookeeper-{i}-again{k}", members[i])
        wait_until(lambda: mode(i) in ("follower", "leader"), 60, "the ZooKeeper member back")
    print(f"  {', '.join(f'{s * 1000:.0f} ms' for s in failovers)}", flush=True)
    zk.stop()
    zk.close()
    return {"zookeeper_writes_per_s_1_in_flight": w1, "zookeeper_writes_per_s_32_in_flight": w32,
            "zookeeper_failover_s_max": max(failovers)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-coord-") as tmp:
        procs = Procs(Path(tmp))
        try:
            coord = CoordinatorProc(procs, Path(tmp) / "data",
                                    {"log.level": "WARNING", "tick.ms": "100"}).start()
            c = CoordinatorClient(coord.address, session_timeout_ms=10000)
            print("writes, 1 in flight ...", flush=True)
            w1 = sync_writes(c)
            print(f"  {w1:,.0f}/s", flush=True)
            c.create("/pipe")
            c.create("/pipe2")
            print("writes, 32 in flight, chained from completion callbacks ...", flush=True)
            w32 = chained(lambda i: c.create_async(f"/pipe/k{i}", b"x" * 100), 32)
            print(f"  {w32:,.0f}/s", flush=True)
            print("writes, 32 in flight, from a user thread with a semaphore ...", flush=True)
            w32t = pipelined(c, lambda i: c.create_async(f"/pipe2/k{i}", b"x" * 100), 32)
            print(f"  {w32t:,.0f}/s", flush=True)
            print("reads, 1 in flight ...", flush=True)
            r1 = sync_reads(c)
            print(f"  {r1:,.0f}/s", flush=True)
            print("reads, 32 in flight ...", flush=True)
            r32 = pipelined(c, lambda i: c.get_async("/sync/k1"), 32)
            print(f"  {r32:,.0f}/s", flush=True)
            c.close()
            print("kill -9 of a client to its ephemeral key's deletion (timeout 1000 ms) ...",
                  flush=True)
            samples = sorted(ephemeral_cleanup_ms(procs, coord, 1000) for _ in range(3))
            print(f"  {', '.join(f'{s:.0f} ms' for s in samples)}", flush=True)
            coord.proc.terminate()
            ens = ensemble_figures(procs, Path(tmp))
            procs.cleanup()
            procs = Procs(Path(tmp) / "zk")
            (Path(tmp) / "zk").mkdir(exist_ok=True)
            zk = zookeeper_figures(procs, Path(tmp) / "zk")
        finally:
            procs.cleanup()
    figures = {"writes_per_s_1_in_flight": w1, "writes_per_s_32_in_flight": w32,
               "writes_per_s_32_in_flight_user_thread": w32t, "reads_per_s_1_in_flight": r1,
               "reads_per_s_32_in_flight": r32, "ephemeral_delete_after_kill_ms_median":
               samples[1], "session_timeout_ms": 1000, **ens}
    if isinstance(zk, str):
        print(f"ZooKeeper half skipped: {zk}.")
    else:
        figures.update(zk)
        figures["ensemble_vs_zookeeper_writes_32_in_flight"] = round(
            ens["ensemble_writes_per_s_32_in_flight"] / zk["zookeeper_writes_per_s_32_in_flight"],
            2)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) and v < 100 else
                   f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in figures.items()))


if __name__ == "__main__":
    main()
