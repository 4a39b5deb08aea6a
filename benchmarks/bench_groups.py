"""Consumer group benchmark: three brokers, members as their own processes.

    python benchmarks/bench_groups.py

Starts a coordinator and three brokers on free loopback ports (temporary data directories) and
measures, with every group member a separate process (this file with --member) that reports
what happened and when on the machine's monotonic clock:

1. join: a member joins a group of two busy members (12 partitions, records flowing at
   BENCH_RATE records/s, the broker's default heartbeat interval of 5 s); time from its
   subscribe() to its first record, BENCH_JOINS (3) times;
2. failover: kill -9 of one of two members (session timeout BENCH_SESSION_MS, 6000); time
   until every partition it held has delivered a record to the other member, BENCH_KILLS (3)
   times;
3. pauses: while 10 members join one by one, the longest gap between records at the first
   member (which keeps some of its partitions throughout), against its longest gap in 5 s
   before the joins (alone) and in 5 s after (with the 10 others reading too); gaps under
   30 ms are not counted;
4. commits/s: one member committing its position synchronously (one commit in flight), and
   asynchronously (BENCH_ASYNC_COMMITS in flight);
5. records/s: BENCH_RECORDS (1,000,000) 100-byte records on 12 partitions read by one member,
   then by a group of 4 member processes.

For scale: Kafka's classic protocol stops every member of the group for each rebalance; the
KIP-848 notes report rebalances up to 20 times faster than that. Prints the figures last, as one
line of name=value pairs. Clients and brokers share this machine's cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients import AdminClient, Consumer, Producer, TopicPartition  # noqa: E402
from tests.procs import Cluster, Procs  # noqa: E402

RATE = int(os.environ.get("BENCH_RATE", "2000"))
JOINS = int(os.environ.get("BENCH_JOINS", "3"))
KILLS = int(os.environ.get("BENCH_KILLS", "3"))
SESSION_MS = int(os.environ.get("BENCH_SESSION_MS", "6000"))
RECORDS = int(os.environ.get("BENCH_RECORDS", "1000000"))
ASYNC_COMMITS = int(os.environ.get("BENCH_ASYNC_COMMITS", "5000"))
PARTITIONS = 12
RECORD_BYTES = 100


# --- a member process ------------------------------------------------------------------------

def member_main(argv) -> int:
    """Read TOPIC in GROUP and print events: J (subscribed), A/V (assigned/revoked partitions),
    N (first record of a partition since it was assigned), P (a gap between records longer
    than 30 ms), T (records so far, at most every 0.1 s)."""
    p = argparse.ArgumentParser()
    p.add_argument("bootstrap")
    p.add_argument("group")
    p.add_argument("topic")
    p.add_argument("--session-ms", type=int, default=None)
    p.add_argument("--wait", action="store_true",
                   help="start, then subscribe only when a line comes on stdin")
    args = p.parse_args(argv)
    out = sys.stdout

    def say(*fields):
        out.write(" ".join(map(str, fields)) + "\n")
        out.flush()
    fresh: set = set()

    class Listener:
        def on_partitions_assigned(self, tps):
            fresh.update(tp.partition for tp in tps)
            say("A", f"{time.monotonic():.6f}", ",".join(str(tp.partition) for tp in tps))

        def on_partitions_revoked(self, tps):
            fresh.difference_update(tp.partition for tp in tps)
            say("V", f"{time.monotonic():.6f}", ",".join(str(tp.partition) for tp in tps))

    c = Consumer(bootstrap_servers=args.bootstrap, group_id=args.group,
                 auto_offset_reset="earliest", session_timeout_ms=args.session_ms,
                 heartbeat_interval_ms=(1000 if args.session_ms else None),
                 fetch_max_wait_ms=100, max_poll_records=5000)
    if args.wait:
        say("R", f"{time.monotonic():.6f}")
        sys.stdin.readline()
    say("J", f"{time.monotonic():.6f}")
    c.subscribe([args.topic], listener=Listener())
    count, last, reported = 0, None, 0.0
    while True:
        got = c.poll(100)
        now = time.monotonic()
        if not got:
            continue
        if last is not None and now - last > 0.03:
            say("P", f"{now:.6f}", f"{(now - last) * 1000:.1f}")
        last = now
        for tp, recs in got.items():
            count += len(recs)
            if tp.partition in fresh:
                fresh.discard(tp.partition)
                say("N", f"{now:.6f}", tp.partition)
        if now - reported > 0.1:
            reported = now
            say("T", f"{now:.6f}", count)
        else:
            out.write(f"T {now:.6f} {count}\n")


class Member:
    """A member process whose event lines are collected by a thread."""

    def __init__(self, bootstrap: str, group: str, topic: str, session_ms: int | None = None,
                 wait: bool = False):
        args = [sys.executable, __file__, "--member", bootstrap, group, topic]
        if session_ms:
            args += ["--session-ms", str(session_ms)]
        if wait:
            args.append("--wait")
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.PIPE, text=True)
        self.events: list[tuple] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.popen.stdout:
            kind, t, *rest = line.split()
            with self.lock:
                self.events.append((kind, float(t), rest[0] if rest else ""))

    def find(self, kind: str, after: float = 0.0, timeout_s: float = 60.0, pred=None):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                for e in self.events:
                    if e[0] == kind and e[1] >= after and (pred is None or pred(e)):
                        return e
            time.sleep(0.01)
        raise TimeoutError(f"no {kind} event within {timeout_s}s")

    def owned(self) -> set[int]:
        out: set[int] = set()
        with self.lock:
            for kind, _, parts in self.events:
                if kind in "AV" and parts:
                    ps = {int(x) for x in parts.split(",")}
                    out = out | ps if kind == "A" else out - ps
        return out

    def count(self) -> int:
        with self.lock:
            for kind, _, n in reversed(self.events):
                if kind == "T":
                    return int(n)
        return 0

    def go(self) -> None:
        """Subscribe now (a member started with wait=True)."""
        self.popen.stdin.write("go\n")
        self.popen.stdin.flush()

    def kill9(self) -> float:
        self.popen.kill()
        t = time.monotonic()
        self.popen.wait(10)
        return t

    def stop(self):
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


# --- the scenarios -----------------------------------------------------------------------------

class Paced:
    """A producer writing RATE records/s to a topic until stopped."""

    def __init__(self, bootstrap: str, topic: str):
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, args=(bootstrap, topic), daemon=True)
        self.t.start()

    def _run(self, bootstrap, topic):
        value = b"x" * RECORD_BYTES
        with Producer(bootstrap, acks=1, linger_ms=2) as p:
            start, n = time.monotonic(), 0
            while not self.stop.is_set():
                due = int((time.monotonic() - start) * RATE)
                while n < due:
                    p.send(topic, value, partition=n % PARTITIONS)
                    n += 1
                time.sleep(0.002)

    def close(self):
        self.stop.set()
        self.t.join(10)


def wait_owned(members, total=PARTITIONS, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owned = [m.owned() for m in members]
        if sum(map(len, owned)) == total and len(set().union(*owned)) == total:
            return
        time.sleep(0.02)
    raise TimeoutError("the group did not settle")


def join_times(bootstrap: str) -> list[float]:
    out = []
    paced = Paced(bootstrap, "live")
    try:
        for i in range(JOINS):
            base = [Member(bootstrap, f"join{i}", "live") for _ in range(2)]
            wait_owned(base)
            time.sleep(1.0)
            new = Member(bootstrap, f"join{i}", "live")
            joined = new.find("J")[1]
            first = new.find("N", after=joined)[1]
            out.append(first - joined)
            print(f"  first record {out[-1] * 1000:.0f} ms after subscribe()", flush=True)
            for m in base + [new]:
                m.stop()
    finally:
        paced.close()
    return out


def failover_times(bootstrap: str) -> list[float]:
    out = []
    paced = Paced(bootstrap, "live")
    try:
        for i in range(KILLS):
            a, b = (Member(bootstrap, f"kill{i}", "live", SESSION_MS) for _ in range(2))
            wait_owned([a, b])
            time.sleep(1.0)
            lost = a.owned()
            killed = a.kill9()
            deadline = time.monotonic() + SESSION_MS / 1000 + 30
            flowing: dict[int, float] = {}
            while len(flowing) < len(lost) and time.monotonic() < deadline:
                with b.lock:
                    for kind, t, p in b.events:
                        if kind == "N" and t > killed and int(p) in lost:
                            flowing.setdefault(int(p), t)
                time.sleep(0.02)
            out.append(max(flowing.values()) - killed if len(flowing) == len(lost)
                       else float("nan"))
            print(f"  {len(lost)} partitions flowing again {out[-1]:.2f} s after the kill",
                  flush=True)
            b.stop()
    finally:
        paced.close()
    return out


def pauses(bootstrap: str) -> tuple[float, float]:
    paced = Paced(bootstrap, "live")
    members = []
    try:
        first = Member(bootstrap, "pauses", "live")
        members.append(first)
        # The joiners start now and wait: a process start costs a core for a while, which
        # would show as pauses that have nothing to do with the group.
        joiners = [Member(bootstrap, "pauses", "live", wait=True) for _ in range(10)]
        members += joiners
        for m in joiners:
            m.find("R")
        wait_owned([first])
        time.sleep(1.0)
        window_start = time.monotonic()
        time.sleep(5.0)
        joins_start = time.monotonic()
        for m in joiners:
            m.go()
            m.find("N")
            time.sleep(0.3)
        wait_owned(members)
        joins_end = time.monotonic()
        time.sleep(5.0)
        after_end = time.monotonic()
        with first.lock:
            gaps = [(t, float(g)) for kind, t, g in first.events if kind == "P"]

        def longest(a, b):
            return max([g for t, g in gaps if a <= t < b], default=0.0)
        before = longest(window_start, joins_start)
        during = longest(joins_start, joins_end)
        after = longest(joins_end, after_end)
        print(f"  longest gap (over 30 ms) between records at the first member: {during:.0f} ms "
              f"during the joins; {before:.0f} ms in the 5 s before (alone), {after:.0f} ms in "
              f"the 5 s after (11 members)", flush=True)
        return during, before, after
    finally:
        paced.close()
        for m in members:
            m.stop()


def commit_rates(bootstrap: str) -> tuple[float, float]:
    with Consumer(bootstrap_servers=bootstrap, group_id="commits") as c:
        c.subscribe(["live"])
        while not c.assignment():
            c.poll(100)
        tp = sorted(c.assignment())[0]
        n, start = 0, time.monotonic()
        while time.monotonic() - start < 3.0:
            c.commit({tp: n % 5})
            n += 1
        sync = n / (time.monotonic() - start)
        done = []
        start = time.monotonic()
        for i in range(ASYNC_COMMITS):
            c.commit_async({tp: i % 5}, callback=lambda offsets, err: done.append(err))
        while len(done) < ASYNC_COMMITS:
            c.poll(10)
        pipelined = ASYNC_COMMITS / (time.monotonic() - start)
        assert not any(done), [e for e in done if e][:3]
    print(f"  {sync:,.0f} commits/s one at a time, {pipelined:,.0f} commits/s pipelined",
          flush=True)
    return sync, pipelined


def group_throughput(bootstrap: str, n_members: int, group: str) -> float:
    members = [Member(bootstrap, group, "bulk") for _ in range(n_members)]
    try:
        start = min(m.find("J")[1] for m in members)
        deadline = time.monotonic() + 300
        while sum(m.count() for m in members) < RECORDS:
            if time.monotonic() > deadline:
                raise TimeoutError("the group did not read everything")
            time.sleep(0.01)
        end = max(m.find("T", pred=lambda e: True)[1] for m in members)
        with_last = []
        for m in members:
            with m.lock:
                ts = [t for kind, t, _ in m.events if kind == "T"]
            if ts:
                with_last.append(ts[-1])
        end = max(with_last)
        rate = RECORDS / (end - start)
        print(f"  {n_members} member(s): {rate:,.0f} records/s", flush=True)
        return rate
    finally:
        for m in members:
            m.stop()


def produce_bulk(bootstrap: str) -> None:
    value = b"x" * RECORD_BYTES
    with Producer(bootstrap, acks=1, linger_ms=5) as p:
        for i in range(RECORDS):
            p.send("bulk", value, partition=i % PARTITIONS)
        p.flush()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-groups-") as tmp:
        procs = Procs(Path(tmp))
        try:
            settings = {"log.level": "WARNING", "offsets.topic.replication.factor": "3"}
            cluster = Cluster.start(procs, Path(tmp), settings)
            with AdminClient(cluster.bootstrap) as admin:
                admin.create_topic("live", PARTITIONS, 3)
                admin.create_topic("bulk", PARTITIONS, 1)
            bootstrap = cluster.bootstrap
            with Consumer(bootstrap_servers=bootstrap, group_id="warm-up") as c:
                c.committed(TopicPartition("live", 0))     # creates __consumer_offsets
            print(f"join: a third member joins two busy ones ({RATE:,} records/s, 12 "
                  f"partitions, heartbeat interval 5 s), {JOINS} times ...", flush=True)
            joins = join_times(bootstrap)
            print(f"failover: kill -9 of one of two members (session {SESSION_MS} ms), "
                  f"{KILLS} times ...", flush=True)
            kills = failover_times(bootstrap)
            print("pauses: 10 members join one by one ...", flush=True)
            pause_during, pause_before, pause_after = pauses(bootstrap)
            print("commits ...", flush=True)
            sync, pipelined = commit_rates(bootstrap)
            print(f"records/s: {RECORDS:,} records of {RECORD_BYTES} bytes on 12 partitions ...",
                  flush=True)
            produce_bulk(bootstrap)
            one = group_throughput(bootstrap, 1, "bulk1")
            four = group_throughput(bootstrap, 4, "bulk4")
        finally:
            procs.cleanup()
    print(f"join_first_record_ms_median={statistics.median(joins) * 1000:.0f} "
          f"join_first_record_ms_max={max(joins) * 1000:.0f} heartbeat_interval_ms=5000 "
          f"fetch_max_wait_ms=100 "
          f"member_kill_to_flowing_s_median={statistics.median(kills):.2f} "
          f"member_kill_to_flowing_s_max={max(kills):.2f} session_timeout_ms={SESSION_MS} "
          f"pause_during_10_joins_ms={pause_during:.0f} pause_before_joins_ms={pause_before:.0f} "
          f"pause_after_joins_ms={pause_after:.0f} "
          f"commits_per_s_sync={sync:.0f} commits_per_s_pipelined={pipelined:.0f} "
          f"records_per_s_1_member={one:.0f} records_per_s_4_members={four:.0f} "
          f"records={RECORDS} partitions={PARTITIONS} rate={RATE}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--member":
        sys.exit(member_main(sys.argv[2:]))
    main()
