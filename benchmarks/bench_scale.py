"""Idle cost at scale (issue #9): many partitions, replication factor 3, three brokers, no clients.

    python benchmarks/bench_scale.py                       # 3,000 partitions (default)
    python benchmarks/bench_scale.py --partitions 10000    # the issue's target size (~5 min)
    python benchmarks/bench_scale.py --help

Starts a coordinator and three brokers on free loopback ports (temporary data directories,
coordinator.session.timeout.ms 6000 unless --session-ms says otherwise), then measures:

1. setup: topics of --partitions-per-topic (100) partitions, RF=3, totalling --partitions
   (default 3,000; the issue's target is 10,000: pass --partitions 10000), created one topic at a
   time with the AdminClient; seconds from the first create until every broker's Metadata shows
   every partition with a leader and all three replicas in its ISR. ISR shrinks written while
   doing so (there is no traffic, so there should be none) are counted;
2. idle CPU: after --settle-s (5) more seconds, each process's CPU time (utime + stime of every
   thread, from /proc/<pid>/stat) over a quiet window of --idle-s (10) seconds with no client
   traffic at all (this script sends nothing then either): CPU seconds / wall seconds * 100, per
   broker (max and mean over the three; the issue's target is under 3 at 10,000 partitions) and
   for the coordinator; ISR writes in the settle and idle time are counted (should be none);
3. restart: kill -9 of a broker that is not the controller and, at once, a start on the same
   port and log directory (it waits for its old registration to expire, then registers again).
   From a watch on the coordinator's /brokers: seconds from the kill until the old registration
   expired and until the new one appeared, and from the new registration until the ISR of
   every partition it holds, as written in the coordinator, has it again; then until the
   Metadata of another broker (polled every --poll-interval-s) shows that. The issue's target:
   back in every ISR within 10 s of its registration expiring (restart_isr_after_expiry_s).

With --profile-s N, py-spy (in the venv, if installed) then samples one idle broker for N
seconds and the functions holding the most samples are printed (not part of the figures).

Warnings and errors in the brokers' and coordinator's logs are counted and the distinct ones
printed. Prints the figures last, as one line of name=value pairs. The default run takes about
a minute on a 2-core machine (10,000 partitions: about 5 minutes, most of it creating topics); all
processes share its cores.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients import AdminClient  # noqa: E402
from coordinator.client import CoordinatorClient  # noqa: E402
from tests.procs import BrokerProc, Cluster, Procs, broker_request  # noqa: E402
from zbroker.broker import metadata as md  # noqa: E402

TOPIC_PREFIX = "scale-"
RF = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")
METADATA_TIMEOUT_S = 30.0        # one Metadata of every partition (over 1 s at 10,000)
PROFILE_RATE = 100               # py-spy samples per second


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--partitions", type=int, default=3000,
                   help="partitions in all (the issue's target is 10000)")
    p.add_argument("--partitions-per-topic", type=int, default=100,
                   help="partitions of each topic (the last one takes the remainder)")
    p.add_argument("--settle-s", type=float, default=5.0,
                   help="wait after every ISR is full, before the idle window")
    p.add_argument("--idle-s", type=float, default=10.0, help="the idle window")
    p.add_argument("--session-ms", type=int, default=6000,
                   help="coordinator.session.timeout.ms of the brokers")
    p.add_argument("--setup-timeout-s", type=float, default=600.0,
                   help="give up when topics are not created and in full ISR by then")
    p.add_argument("--restart-timeout-s", type=float, default=180.0,
                   help="give up when the restarted broker is not back in every ISR by then")
    p.add_argument("--poll-interval-s", type=float, default=0.2,
                   help="between two Metadata polls while waiting for the ISR")
    p.add_argument("--profile-s", type=float, default=0.0,
                   help="after the idle window, sample one idle broker with py-spy this long")
    p.add_argument("--profile-restart-s", type=float, default=0.0,
                   help="sample the restarted broker and a leader with py-spy this long from "
                        "the restart on")
    p.add_argument("--no-restart", action="store_true", help="skip the restart")
    a = p.parse_args()
    if a.partitions < 1 or a.partitions_per_topic < 1:
        p.error("--partitions and --partitions-per-topic must be at least 1")
    if a.idle_s <= 0 or a.settle_s < 0 or a.poll_interval_s <= 0:
        p.error("--idle-s and --poll-interval-s must be positive, --settle-s not negative")
    return a


# --- measuring ------------------------------------------------------------------------------------

def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()    # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def metadata_all(broker: BrokerProc) -> list:
    """Every benchmark partition in ``broker``'s Metadata: [[topic, p, leader, replicas, isr]]."""
    header, _ = broker_request(broker.port, "Metadata", timeout_s=METADATA_TIMEOUT_S,
                               topics=None, allow_auto_create=False)
    if header.get("err"):
        raise RuntimeError(f"Metadata at broker {broker.broker_id}: {header}")
    out = []
    for name, err, _internal, parts in header["topics"]:
        if name.startswith(TOPIC_PREFIX) and err == 0:
            out.extend([name, p[0], p[2], p[4], p[5]] for p in parts)
    return out


def full_isr_count(parts: list) -> int:
    return sum(1 for _, _, leader, replicas, isr in parts
               if leader >= 0 and len(isr) == len(replicas) == RF)


def topic_sizes(total: int, per_topic: int) -> list[int]:
    sizes = [per_topic] * (total // per_topic)
    if total % per_topic:
        sizes.append(total % per_topic)
    return sizes


class ClusterWatch:
    """A watch on the coordinator's /brokers for the whole run: every broker registration
    appearing or going, and every change written to a benchmark partition's state (leader and
    ISR), each timed on arrival here."""

    def __init__(self, address: str):
        self.client = CoordinatorClient(address, session_timeout_ms=10000)
        self._lock = threading.Lock()
        self.registrations: list[tuple[float, int, str]] = []           # (t, broker, type)
        self.states: list[tuple[float, tuple[str, int], tuple]] = []    # (t, tp, isr)
        self.resyncs = 0
        self.client.watch("/brokers", self._on_event)

    def _on_event(self, e) -> None:
        t = time.monotonic()
        with self._lock:
            if e.type == "resync":
                self.resyncs += 1
            elif e.path.startswith(md.BROKER_IDS + "/"):
                tail = e.path[len(md.BROKER_IDS) + 1:]
                if tail.isdigit():
                    self.registrations.append((t, int(tail), e.type))
            elif e.type == "changed" and e.value and \
                    e.path.startswith(f"{md.TOPICS}/{TOPIC_PREFIX}"):
                name, _, p = e.path[len(md.TOPICS) + 1:].partition("/")
                if p.isdigit():
                    self.states.append((t, (name, int(p)), tuple(md.unpack(e.value)["isr"])))

    def state_changes(self, t0: float, t1: float = float("inf")) -> list:
        with self._lock:
            return [s for s in self.states if t0 <= s[0] < t1]

    def registration(self, broker_id: int, kind: str, after: float) -> float | None:
        """When ``broker_id``'s registration was first created / deleted after ``after``."""
        with self._lock:
            return next((t for t, b, k in self.registrations
                         if b == broker_id and k == kind and t >= after), None)

    def close(self) -> None:
        self.client.close()


def create_topics(cluster: Cluster, sizes: list[int], timeout_s: float) -> None:
    with AdminClient(cluster.bootstrap, request_timeout_ms=int(timeout_s * 1000)) as admin:
        done = 0
        for i, n in enumerate(sizes):
            admin.create_topic(f"{TOPIC_PREFIX}{i:04d}", n, RF)
            done += n
            if len(sizes) >= 10 and (i + 1) % max(1, len(sizes) // 5) == 0:
                print(f"  {done:,} partitions created", flush=True)


def wait_full_isr(cluster: Cluster, total: int, timeout_s: float, interval_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = {}
    while True:
        ok = True
        for b in cluster.brokers:
            parts = metadata_all(b)
            last[b.broker_id] = (len(parts), full_isr_count(parts))
            if len(parts) != total or last[b.broker_id][1] != total:
                ok = False
                break
        if ok:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every partition in full ISR within {timeout_s:g} s: "
                               f"(partitions, full ISR) by broker {last}")
        time.sleep(interval_s)


def idle_cpu(pids: dict[str, int], window_s: float) -> dict[str, float]:
    """Per process: CPU seconds / wall seconds * 100 over ``window_s`` of doing nothing."""
    start = {name: cpu_s(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(window_s)
    end = {name: cpu_s(pid) for name, pid in pids.items()}
    wall = time.monotonic() - t0
    return {name: (end[name] - start[name]) / wall * 100 for name in pids}


def profile(pid: int, seconds: float, tmp: Path, top: int = 15) -> None:
    """Sample ``pid`` with py-spy (threads it sees as idle left out) and print the functions
    holding the most of those busy samples: on top of the stack, and anywhere on it."""
    for line in profile_lines(pid, seconds, tmp / "profile.txt", top):
        print(line, flush=True)


def profile_lines(pid: int, seconds: float, out: Path, top: int = 15) -> list[str]:
    exe = Path(sys.executable).parent / "py-spy"
    exe = str(exe) if exe.exists() else shutil.which("py-spy")
    if not exe:
        return ["  py-spy is not installed; no profile"]
    cpu0, t0 = cpu_s(pid), time.monotonic()
    r = subprocess.run([exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                        "--rate", str(PROFILE_RATE), "--nonblocking", "--format", "raw",
                        "--output", str(out)], capture_output=True, text=True,
                       timeout=seconds + 60)
    cpu_pct = (cpu_s(pid) - cpu0) / (time.monotonic() - t0) * 100
    if r.returncode != 0 or not out.exists():
        return [f"  py-spy failed: {r.stderr.strip()[-500:]}"]
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in (_frame_name(f) for f in stack.split(";")) if f]
        if not frames:
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        return ["  no busy samples"]
    lines = [f"  {total} busy samples; the broker used {cpu_pct:.1f}% of one core meanwhile "
             f"(py-spy's own reading of it: {total / (PROFILE_RATE * seconds) * 100:.0f}%)"]
    for title, counter in (("own (top of the stack)", own), ("inclusive", inclusive)):
        lines.append(f"  share of busy samples, {title}:")
        for f, n in counter.most_common(top):
            lines.append(f"    {n / total * 100:5.1f}%  {f}")
    return lines


def _frame_name(frame: str) -> str:
    """py-spy's "function (path:line)" as "function (path)", the line and prefix dropped."""
    frame = frame.strip()
    if frame.startswith(("process ", "thread ")):
        return ""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


class IsrPoller(threading.Thread):
    """Polls ``via``'s Metadata: how many of ``victim``'s partitions have it in their ISR."""

    def __init__(self, via: BrokerProc, victim: int, interval_s: float):
        super().__init__(daemon=True)
        self.via, self.victim, self.interval_s = via, victim, interval_s
        self.samples: list[tuple[float, int, int]] = []    # (time, in ISR, partitions held)
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                parts = metadata_all(self.via)
            except Exception as e:      # a timeout under load: note it and poll again
                self.errors.append(f"{type(e).__name__}: {e}")
            else:
                held = [p for p in parts if self.victim in p[3]]
                self.samples.append((t, sum(1 for p in held if self.victim in p[4]), len(held)))
            self.stop.wait(self.interval_s)

    def first_all_in(self, after: float) -> float | None:
        """The time of the first poll sent at or after ``after`` that showed the victim in the
        ISR of every partition it holds."""
        return next((t for t, n, held in self.samples if t >= after and n == held), None)


def isr_timeline(changes: list, victim: int, held: set, since: float):
    """From the partition state writes after a kill: (when the last held partition had lost
    ``victim`` from its ISR, when every held partition had it back at or after ``since``)."""
    missing: set = set()
    ever: set = set()
    out_of_all = back = None
    for t, tp, isr in changes:
        if tp not in held:
            continue
        if victim in isr:
            missing.discard(tp)
        else:
            missing.add(tp)
            ever.add(tp)
            if out_of_all is None and len(ever) == len(held):
                out_of_all = t
        if t >= since and not missing and len(ever) == len(held):
            back = t
            break
    return out_of_all, back


def readded_quartiles(changes: list, victim: int, held: set, since: float) -> list[float]:
    """Seconds after ``since`` by which 25, 50 and 75% of the held partitions had ``victim``
    back in their ISR (the last write taking it in counts)."""
    last_in: dict = {}
    for t, tp, isr in changes:
        if tp in held and t >= since:
            if victim in isr:
                last_in[tp] = t
            else:
                last_in.pop(tp, None)
    times = sorted(last_in.values())
    return [times[min(len(times) - 1, int(len(held) * q))] - since if len(times) > len(held) * q
            else float("nan") for q in (0.25, 0.5, 0.75)]


def restart(cluster: Cluster, watch: ClusterWatch, timeout_s: float, interval_s: float,
            profile_s: float = 0.0, tmp: Path | None = None) -> dict:
    controller = cluster.controller_id()
    victim = next(b for b in cluster.brokers if b.broker_id != controller)
    via = next(b for b in cluster.brokers if b.broker_id not in (controller, victim.broker_id))
    vid = victim.broker_id
    before = metadata_all(via)
    held = {(p[0], p[1]) for p in before if vid in p[3]}
    led = sum(1 for p in before if p[2] == vid)
    poller = IsrPoller(via, vid, interval_s)
    poller.start()
    try:
        killed, killed_wall = time.monotonic(), time.time()
        victim.kill9()
        victim.start(wait=False)
        profilers = []
        if profile_s > 0:
            for who, b in (("restarted", victim), ("leader", via)):
                out: list = []
                t = threading.Thread(target=lambda b=b, out=out, who=who: out.extend(
                    profile_lines(b.proc.pid, profile_s, tmp / f"restart-{who}.txt")),
                    daemon=True)
                t.start()
                profilers.append((who, b, t, out))
        victim.wait_ready(timeout_s)
        deadline = killed + timeout_s
        while True:
            created = watch.registration(vid, "created", killed)
            back = isr_timeline(watch.state_changes(killed), vid, held, created)[1] \
                if created else None
            seen = poller.first_all_in(back) if back else None
            if seen is not None:
                break
            if time.monotonic() > deadline:
                last = poller.samples[-1] if poller.samples else None
                raise TimeoutError(
                    f"broker {vid} not back in every ISR within {timeout_s:g} s of its kill: "
                    f"registered again {created is not None}, in the coordinator back at "
                    f"{back}, last Metadata poll (t, in ISR, held) {last}, poll errors "
                    f"{poller.errors[:3]}")
            time.sleep(interval_s)
    finally:
        poller.stop.set()
        poller.join(METADATA_TIMEOUT_S + 5)
    for who, b, t, out in profilers:
        t.join(profile_s + 90)
        print(f"profile: py-spy on the {who} broker {b.broker_id} for {profile_s:g} s from the "
              f"restart on ...", flush=True)
        for line in out:
            print(line, flush=True)
    expired = watch.registration(vid, "deleted", killed)
    changes = watch.state_changes(killed)
    out_of_all, _ = isr_timeline(changes, vid, held, created)
    quartiles = readded_quartiles(changes, vid, held, created)
    after = metadata_all(via)

    def since_kill(t):
        return t - killed if t is not None else float("nan")
    return {"victim": vid, "via": via.broker_id, "held": len(held), "led_before": led,
            "led_after": sum(1 for p in after if p[2] == vid),
            "expired_s": since_kill(expired), "registered_s": since_kill(created),
            "out_of_isr_s": since_kill(out_of_all),
            "isr_s": back - created, "isr_metadata_s": seen - created,
            "isr_after_expiry_s": seen - expired if expired else float("nan"),
            "state_writes": len(changes), "quartiles": quartiles,
            "killed_at": killed_wall, "poll_errors": poller.errors}


def log_problems(procs: Procs, split_at: float | None) -> collections.Counter:
    """Warning, error and critical lines (and anything not JSON, e.g. a traceback) in every
    process's log, counted by (before or after the wall clock time ``split_at``, process,
    level, event)."""
    found: collections.Counter = collections.Counter()
    for p in procs.started:
        for line in p.log_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                found[("", p.name, "text", line[:160])] += 1
                continue
            level = str(rec.get("level", "")).lower()
            if level in ("warning", "error", "critical", "exception"):
                when = ""
                if split_at is not None:
                    try:
                        at = datetime.datetime.fromisoformat(
                            str(rec.get("timestamp")).replace("Z", "+00:00")).timestamp()
                        when = "before the kill" if at < split_at else "after the kill"
                    except ValueError:
                        pass
                found[(when, p.name, level, str(rec.get("event", ""))[:160])] += 1
    return found


# --- the run --------------------------------------------------------------------------------------

def _stop(signum, _frame) -> None:
    raise SystemExit(128 + signum)      # so the finally below kills and reaps what we started


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _stop)
    sizes = topic_sizes(args.partitions, args.partitions_per_topic)
    total = sum(sizes)
    rs = None
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        procs = Procs(Path(tmp))
        watch = None
        try:
            settings = {"log.level": "WARNING",
                        "coordinator.session.timeout.ms": str(args.session_ms),
                        "auto.leader.rebalance.enable": "false"}
            cluster = Cluster.start(procs, Path(tmp), settings,
                                    ready_s=args.session_ms / 1000 + 20)
            coord, brokers = cluster.coordinator, cluster.brokers
            watch = ClusterWatch(coord.address)

            print(f"setup: {len(sizes)} topics, {total:,} partitions, RF={RF} ...", flush=True)
            t0 = time.monotonic()
            create_topics(cluster, sizes, args.setup_timeout_s)
            created_s = time.monotonic() - t0
            wait_full_isr(cluster, total, args.setup_timeout_s - created_s, 0.5)
            setup_s = time.monotonic() - t0
            setup_shrinks = sum(1 for _, _, isr in watch.state_changes(t0) if len(isr) < RF)
            print(f"  created in {created_s:.1f} s, every ISR full after {setup_s:.1f} s; "
                  f"{setup_shrinks} ISR shrinks written meanwhile", flush=True)
            t = time.monotonic()
            metadata_all(brokers[0])
            metadata_ms = (time.monotonic() - t) * 1000

            print(f"idle: settle {args.settle_s:g} s, then CPU over {args.idle_s:g} s ...",
                  flush=True)
            quiet_from = time.monotonic()
            time.sleep(args.settle_s)
            pids = {f"b{b.broker_id}": b.proc.pid for b in brokers}
            pids["coordinator"] = coord.proc.pid
            cpu = idle_cpu(pids, args.idle_s)
            idle_writes = len(watch.state_changes(quiet_from))
            per_broker = [cpu[f"b{b.broker_id}"] for b in brokers]
            print("  " + ", ".join(f"{k} {v:.1f}%" for k, v in cpu.items())
                  + f"; {idle_writes} partition state writes meanwhile", flush=True)

            if args.profile_s > 0:
                print(f"profile: py-spy on idle broker 1 for {args.profile_s:g} s ...",
                      flush=True)
                profile(brokers[0].proc.pid, args.profile_s, Path(tmp))

            if not args.no_restart:
                print(f"restart: kill -9 of a broker (not the controller), started again at once "
                      f"(session timeout {args.session_ms} ms) ...", flush=True)
                rs = restart(cluster, watch, args.restart_timeout_s, args.poll_interval_s,
                             args.profile_restart_s, Path(tmp))
                print(f"  broker {rs['victim']} ({rs['held']:,} replicas, led "
                      f"{rs['led_before']:,}), seconds after the kill: registration expired "
                      f"{rs['expired_s']:.2f}, out of every ISR {rs['out_of_isr_s']:.2f}, "
                      f"registered again {rs['registered_s']:.2f}; back in every ISR "
                      f"{rs['isr_s']:.2f} s after registering (coordinator), "
                      f"{rs['isr_metadata_s']:.2f} s (broker {rs['via']}'s Metadata), "
                      f"{rs['isr_after_expiry_s']:.2f} s after the expiry; "
                      f"{rs['state_writes']:,} partition state writes; leads "
                      f"{rs['led_after']:,} now", flush=True)
                print("  25/50/75% of its partitions back in the ISR " + "/".join(
                    f"{q:.2f}" for q in rs["quartiles"]) + " s after registering", flush=True)
                if rs["poll_errors"]:
                    print(f"  {len(rs['poll_errors'])} Metadata polls failed, first: "
                          f"{rs['poll_errors'][0]}", flush=True)
            gone = [b.broker_id for b in brokers if not b.alive]
            if gone:
                raise RuntimeError(f"broker(s) {gone} exited during the run")
            if watch.resyncs:
                print(f"  (the coordinator watch lost history {watch.resyncs} times: ISR "
                      f"timings may miss writes)", flush=True)
        except BaseException:
            for p in procs.started:
                print(f"--- last lines of {p.log_path.name} (exit code {p.popen.poll()}):\n"
                      f"{p.log_tail(15)}", file=sys.stderr, flush=True)
            raise
        finally:
            if watch is not None:
                watch.close()
            procs.cleanup()
            problems = log_problems(procs, rs["killed_at"] if rs else None)
            n_problems = sum(problems.values())
            n_before = sum(n for k, n in problems.items() if k[0] != "after the kill")
            if problems:
                print(f"{n_problems} warning/error lines in the logs:", flush=True)
                for (when, name, level, event), n in sorted(problems.items(),
                                                            key=lambda kv: -kv[1])[:20]:
                    print(f"  {n:5d}  {when + ', ' if when else ''}{name} {level}: {event}",
                          flush=True)
    figures = (f"partitions={total} topics={len(sizes)} replication_factor={RF} brokers=3 "
               f"setup_s={setup_s:.1f} setup_isr_shrinks={setup_shrinks} "
               f"metadata_all_ms={metadata_ms:.0f} idle_window_s={args.idle_s:g} "
               f"idle_cpu_pct_max={max(per_broker):.1f} "
               f"idle_cpu_pct_mean={statistics.mean(per_broker):.1f} "
               + " ".join(f"idle_cpu_pct_b{i}={v:.1f}" for i, v in enumerate(per_broker, 1))
               + f" coordinator_idle_cpu_pct={cpu['coordinator']:.1f} "
               f"idle_state_writes={idle_writes}")
    if rs is not None:
        figures += (f" restart_registration_expired_s={rs['expired_s']:.2f} "
                    f"restart_registered_s={rs['registered_s']:.2f} "
                    f"restart_isr_s={rs['isr_s']:.2f} "
                    f"restart_isr_metadata_s={rs['isr_metadata_s']:.2f} "
                    f"restart_isr_after_expiry_s={rs['isr_after_expiry_s']:.2f} "
                    f"restart_replicas={rs['held']}")
    figures += (f" session_timeout_ms={args.session_ms} log_warnings={n_problems} "
                f"log_warnings_before_kill={n_before}")
    print(figures)


if __name__ == "__main__":
    main()
