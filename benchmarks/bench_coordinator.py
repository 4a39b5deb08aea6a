"""Coordinator benchmark: durable writes/s (1 and 32 in flight), reads/s, ephemeral cleanup time.

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
        finally:
            procs.cleanup()
    print(f"writes_per_s_1_in_flight={w1:.0f} writes_per_s_32_in_flight={w32:.0f} "
          f"writes_per_s_32_in_flight_user_thread={w32t:.0f} "
          f"reads_per_s_1_in_flight={r1:.0f} reads_per_s_32_in_flight={r32:.0f} "
          f"ephemeral_delete_after_kill_ms_median={samples[1]:.0f} session_timeout_ms=1000")


if __name__ == "__main__":
    main()
