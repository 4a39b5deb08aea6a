"""Replication benchmark: three brokers, replication factor 3, acks=all.

    python benchmarks/bench_replication.py

Starts a coordinator and three brokers on free loopback ports (temporary data directories,
the default coordinator.session.timeout.ms of 6000 unless BENCH_SESSION_MS says otherwise), then
measures:

1. throughput: one Producer (acks=all, send() per record) writes BENCH_RECORDS (default
   300,000) 100-byte records to a 3-partition topic (RF=3, min.insync.replicas=2) and flushes,
   with idempotence off and on, alternately, BENCH_ROUNDS (2) times each (the figure is each
   one's median; the default producer is the idempotent one);
2. end-to-end latency at BENCH_RATE (default 10,000) records/s for 5 s, with linger_ms 1 and
   then with linger_ms 0: a Consumer in a process of its own reads what the paced acks=all
   producer writes; latency =
   time seen by the consumer - the send() time the value carries (nanosecond clock), median and
   99th percentile; and what one ZeroMQ send costs here, spaced out and back to back (the
   figure that bounds latency at linger_ms 0; see the README);
3. failover: a raw acks=all writer hammers one partition (RF=3); its leader is killed with
   kill -9; time until the first acknowledged acks=all write on that partition (new leader found
   through Metadata, request timeout 500 ms, retries every 20 ms), done BENCH_KILLS (3) times;
4. the same with SIGSTOP instead of kill -9 (a hung leader, whose connections stay open: it
   goes at its session timeout), once;
5. controlled shutdown: SIGTERM to the partition's leader; time until another broker's Metadata
   names a new leader, and until the process has exited.

Prints the figures last, as one line of name=value pairs. Clients and brokers share this
machine's cores.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients import AdminClient, Consumer, Producer  # noqa: E402
from tests.broker.helpers import Conn, batch  # noqa: E402
from tests.procs import Cluster, Procs  # noqa: E402

RECORDS = int(os.environ.get("BENCH_RECORDS", "300000"))
RATE = int(os.environ.get("BENCH_RATE", "10000"))
KILLS = int(os.environ.get("BENCH_KILLS", "3"))
SESSION_MS = int(os.environ.get("BENCH_SESSION_MS", "6000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
RECORD_BYTES = 100


def throughput(bootstrap: str, idempotence: bool) -> float:
    value = b"x" * RECORD_BYTES
    with Producer(bootstrap, acks="all", linger_ms=5, enable_idempotence=idempotence) as p:
        p.send("tput", value).result(30)
        start = time.perf_counter()
        send = p.send
        for _ in range(RECORDS):
            send("tput", value)
        p.flush()
        return RECORDS / (time.perf_counter() - start)


def latency_consumer(bootstrap: str) -> None:
    """The consumer side of latency(), run in a process of its own (so that it does not share
    the producer's interpreter lock): says "ready" once it is positioned, reads until a line
    comes on stdin, then prints each latency in ms, one per line."""
    lat: list[float] = []
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    with Consumer("lat", bootstrap_servers=bootstrap, auto_offset_reset="latest") as c:
        c.poll(2000)
        print("ready", flush=True)
        while not stop.is_set():
            for recs in c.poll(200).values():
                now_ns = time.time_ns()
                lat.extend((now_ns - int(r.value[:20])) / 1e6 for r in recs)
    sys.stdout.write("".join(f"{x:.4f}\n" for x in lat))
    sys.stdout.flush()


def send_sink(port: int) -> None:
    """A DEALER in a process of its own that takes whatever the ROUTER in send_cost() sends."""
    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send(b"hello")
    while True:
        sock.recv_multipart()


def send_cost() -> tuple[float, float]:
    """Microseconds one ROUTER send_multipart of a small reply takes on this machine: sent one
    at a time 200 us apart (ZeroMQ's I/O thread is asleep and must be woken for each), and
    back to back (it is awake). Where the latency goes: see the README."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    child = subprocess.Popen([sys.executable, __file__, "--send-sink", str(port)])
    try:
        ident = router.recv_multipart()[0]
        frames = [ident, b"h" * 120, b"x" * 150]
        out = []
        for gap_s in (200e-6, 0.0):
            took, n, start = 0.0, 0, time.perf_counter()
            while time.perf_counter() - start < 1.0:
                t0 = time.perf_counter()
                router.send_multipart(frames)
                took += time.perf_counter() - t0
                n += 1
                while time.perf_counter() < t0 + gap_s:
                    pass
            out.append(took / n * 1e6)
        return out[0], out[1]
    finally:
        child.kill()
        child.wait()
        ctx.destroy(0)


def latency(bootstrap: str, linger_ms: int) -> tuple[float, float]:
    child = subprocess.Popen([sys.executable, __file__, "--latency-consumer", bootstrap],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the latency consumer did not start")
        time.sleep(0.5)
        pad = b"x" * (RECORD_BYTES - 20)
        with Producer(bootstrap, acks="all", linger_ms=linger_ms) as p:
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < 5:
                due = start + n / RATE
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                p.send("lat", b"%020d" % time.time_ns() + pad)
                n += 1
            p.flush()
        time.sleep(1.0)
        out, _ = child.communicate("stop\n", timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lat = sorted(float(x) for x in out.split())
    if not lat:
        return float("nan"), float("nan")
    return statistics.median(lat), lat[int(len(lat) * 0.99)]


def leader_of(cluster: Cluster, topic: str) -> int:
    try:
        md = cluster.metadata([topic], allow_auto_create=False)
        return md["topics"][0][3][0][2]
    except Exception:
        return -1


def failover_once(cluster: Cluster, topic: str, freeze: bool = False) -> float:
    """Kill -9 (or, with ``freeze``, SIGSTOP) the leader of topic-0 while writing; seconds to
    the first acks=all success at another leader."""
    leader = leader_of(cluster, topic)
    victim = cluster.broker(leader)
    conn = Conn(victim.port)
    assert conn.produce(topic, 0, [batch([b"warm"])], acks=-1)[2] == 0
    conn.close()
    killed = time.monotonic()
    if freeze:
        victim.proc.popen.send_signal(signal.SIGSTOP)
    else:
        victim.kill9()
    while True:
        new = leader_of(cluster, topic)
        if new >= 0 and new != leader:
            conn = Conn(cluster.broker(new).port)
            try:
                h, _ = conn.request("Produce", [batch([b"after"])], timeout_s=0.6, acks=-1,
                                    timeout_ms=500, parts=[[topic, 0, -1]])
                if h["parts"][0][2] == 0:
                    took = time.monotonic() - killed
                    conn.close()
                    break
            except TimeoutError:
                pass
            conn.close()
        time.sleep(0.02)
        if time.monotonic() - killed > 60:
            raise RuntimeError("no acks=all write succeeded within 60 s of the kill")
    if freeze:
        victim.proc.popen.send_signal(signal.SIGCONT)
    else:
        victim.restart()
    deadline = time.monotonic() + 60       # until it is back in the ISR
    while time.monotonic() < deadline:
        md = cluster.metadata([topic], allow_auto_create=False)
        if len(md["topics"][0][3][0][5]) == 3:
            break
        time.sleep(0.05)
    return took


def controlled_shutdown(cluster: Cluster, topic: str) -> tuple[float, float]:
    leader = leader_of(cluster, topic)
    victim = cluster.broker(leader)
    other = next(b for b in cluster.brokers if b.broker_id != leader)
    start = time.monotonic()
    victim.proc.popen.send_signal(15)
    moved = None
    while time.monotonic() - start < 30:
        md = other.metadata([topic], allow_auto_create=False)
        new = md["topics"][0][3][0][2]
        if moved is None and new >= 0 and new != leader:
            moved = time.monotonic() - start
        if victim.proc.popen.poll() is not None and moved is not None:
            break
        time.sleep(0.005)
    exited = time.monotonic() - start
    victim.proc.popen.wait(30)
    victim.start()
    return moved if moved is not None else float("nan"), exited


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-replication-") as tmp:
        procs = Procs(Path(tmp))
        try:
            settings = {"log.level": "WARNING", "coordinator.session.timeout.ms": str(SESSION_MS),
                        "auto.leader.rebalance.enable": "false"}
            cluster = Cluster.start(procs, Path(tmp), settings, ready_s=SESSION_MS / 1000 + 20)
            cfg = {"min.insync.replicas": "2"}
            with AdminClient(cluster.bootstrap) as admin:
                admin.create_topic("tput", 3, 3, config=cfg)
                admin.create_topic("lat", 1, 3, config=cfg)
                admin.create_topic("fo", 1, 3, config=cfg)
            cluster.wait_topic("fo", 1)
            time.sleep(1.0)
            print(f"throughput: {RECORDS:,} records of {RECORD_BYTES} bytes, acks=all, RF=3, "
                  f"3 partitions ...", flush=True)
            rates = {False: [], True: []}
            for _ in range(ROUNDS):
                for idem in (False, True):
                    rates[idem].append(throughput(cluster.bootstrap, idem))
                    print(f"  idempotence {'on ' if idem else 'off'}: {rates[idem][-1]:,.0f} "
                          f"records/s ({rates[idem][-1] * RECORD_BYTES / 1e6:.1f} MB/s)",
                          flush=True)
            rate = statistics.median(rates[True])
            rate_off = statistics.median(rates[False])
            print(f"end-to-end latency at {RATE:,} records/s for 5 s ...", flush=True)
            p50, p99 = latency(cluster.bootstrap, 1)
            print(f"  linger_ms 1: median {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
            z50, z99 = latency(cluster.bootstrap, 0)
            print(f"  linger_ms 0: median {z50:.2f} ms, p99 {z99:.2f} ms", flush=True)
            spaced_us, burst_us = send_cost()
            print(f"  one ZeroMQ send: {spaced_us:.1f} us when sends are 200 us apart, "
                  f"{burst_us:.1f} us back to back", flush=True)
            print(f"failover: kill -9 of the leader, {KILLS} times, session timeout "
                  f"{SESSION_MS} ms ...", flush=True)
            times = []
            for _ in range(KILLS):
                times.append(failover_once(cluster, "fo"))
                print(f"  first acks=all write {times[-1]:.2f} s after the kill", flush=True)
            print("failover: SIGSTOP of the leader (a hung broker: its connection stays open) "
                  "...", flush=True)
            frozen = failover_once(cluster, "fo", freeze=True)
            print(f"  first acks=all write {frozen:.2f} s after the SIGSTOP", flush=True)
            print("controlled shutdown of the leader ...", flush=True)
            moved, exited = controlled_shutdown(cluster, "fo")
            print(f"  leadership moved in {moved * 1000:.0f} ms, process exited after "
                  f"{exited * 1000:.0f} ms", flush=True)
        finally:
            procs.cleanup()
    print(f"acks_all_records_per_s={rate:.0f} acks_all_mb_per_s={rate * RECORD_BYTES / 1e6:.1f} "
          f"acks_all_no_idempotence_records_per_s={rate_off:.0f} "
          f"idempotence_cost_pct={(1 - rate / rate_off) * 100:.1f} "
          f"e2e_latency_p50_ms={p50:.2f} e2e_latency_p99_ms={p99:.2f} "
          f"e2e_latency_linger0_p50_ms={z50:.2f} e2e_latency_linger0_p99_ms={z99:.2f} "
          f"e2e_rate={RATE} zmq_send_spaced_us={spaced_us:.1f} zmq_send_burst_us={burst_us:.1f} "
          f"failover_s_median={statistics.median(times):.2f} failover_s_max={max(times):.2f} "
          f"sigstop_failover_s={frozen:.2f} "
          f"session_timeout_ms={SESSION_MS} controlled_shutdown_move_ms={moved * 1000:.0f} "
          f"controlled_shutdown_exit_ms={exited * 1000:.0f} records={RECORDS} "
          f"record_bytes={RECORD_BYTES} replication_factor=3 partitions=3")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--latency-consumer"]:
        latency_consumer(sys.argv[2])
    elif sys.argv[1:2] == ["--send-sink"]:
        send_sink(int(sys.argv[2]))
    else:
        main()
