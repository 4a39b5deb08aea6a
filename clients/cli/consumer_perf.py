"""zb-consumer-perf-test: read N records of a topic as fast as possible and report throughput
(Kafka's kafka-consumer-perf-test.sh).

    zb-consumer-perf-test --topic T --messages 1000000 --bootstrap-server localhost:9092

Reads every partition from the beginning (--from-latest: only new records); with --group G it
joins consumer group G and reads what the group gives it (from the group's committed offsets;
rebalance.time.ms is the time until its first assignment). A progress line
every 5 seconds, then Kafka's CSV summary (start.time, end.time, data.consumed.in.MB, MB.sec,
data.consumed.in.nMsg, nMsg.sec, ...) and one line in the producer tool's format whose latency
is end to end: the time a record was consumed minus its timestamp (one sample per poll).
"""

from __future__ import annotations

import argparse
import datetime
import time

from clients.cli._common import UsageError, add_command_config, command_config_kwargs, run
from clients.cli._stats import Stats
from clients.consumer import Consumer

PROG = "zb-consumer-perf-test"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Measure consumer throughput.")
    add_command_config(p)
    p.add_argument("--bootstrap-server", "--broker-list", required=True,
                   metavar="HOST:PORT[,...]", help="brokers to connect to")
    p.add_argument("--topic", required=True, help="the topic to read")
    p.add_argument("--messages", type=int, required=True, help="records to read")
    p.add_argument("--timeout", type=int, default=10000, metavar="MS",
                   help="give up when no record came for this long (default 10000)")
    p.add_argument("--from-latest", action="store_true", help="read only new records")
    p.add_argument("--fetch-size", type=int, default=1048576,
                   help="max_partition_fetch_bytes (default 1048576)")
    p.add_argument("--max-poll-records", type=int, default=10000,
                   help="records per poll() (default 10000)")
    p.add_argument("--reporting-interval", type=int, default=5000, metavar="MS",
                   help="progress line interval (default 5000)")
    p.add_argument("--group", help="read as a member of this consumer group (committing as it "
                   "goes)")
    return p


def _fmt(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S:%f")[:-3]


def _body(args) -> int:
    if args.messages < 1:
        raise UsageError("--messages must be at least 1.")
    stats = Stats("consumed", args.reporting_interval / 1000)
    wall_start = time.time()
    assigned_at: list[float] = []

    class Listener:
        def on_partitions_assigned(self, parts):
            if not assigned_at:
                assigned_at.append(time.monotonic())

    with Consumer(bootstrap_servers=args.bootstrap_server, **command_config_kwargs(args),
                  auto_offset_reset="latest" if args.from_latest else "earliest",
                  max_partition_fetch_bytes=args.fetch_size, group_id=args.group,
                  max_poll_records=args.max_poll_records) as consumer:
        start = time.monotonic()
        consumer.subscribe([args.topic], listener=Listener() if args.group else None)
        stats.start = stats.window_start = start
        last_record = start
        count = nbytes = 0
        while count < args.messages:
            got = consumer.poll(timeout_ms=200, max_records=min(args.max_poll_records,
                                                                args.messages - count))
            now = time.monotonic()
            if not got:
                if (now - last_record) * 1000 >= args.timeout:
                    break
                continue
            last_record = now
            now_ms = time.time() * 1000
            for recs in got.values():
                n = len(recs)
                b = 0
                for r in recs:
                    v = r.value
                    if v is not None:
                        b += len(v)
                    k = r.key
                    if k is not None:
                        b += len(k)
                count += n
                nbytes += b
                stats.add(n, b)
                stats.latency(now_ms - recs[-1].timestamp)
            stats.maybe_report(now)
        end = time.monotonic()
    elapsed = max(end - start, 1e-9)
    rebalance_s = (assigned_at[0] - start) if assigned_at else 0.0
    fetch_s = max(elapsed - rebalance_s, 1e-9)
    mb = nbytes / 1048576
    print("start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, "
          "rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec")
    print(f"{_fmt(wall_start)}, {_fmt(wall_start + elapsed)}, {mb:.4f}, {mb / elapsed:.4f}, "
          f"{count}, {count / elapsed:.4f}, {rebalance_s * 1000:.0f}, {fetch_s * 1000:.0f}, "
          f"{mb / fetch_s:.4f}, {count / fetch_s:.4f}")
    stats.summary(end)
    if count < args.messages:
        print(f"{PROG}: only {count} of {args.messages} records came within "
              f"{args.timeout} ms of each other.")
        return 1
    return 0


def main(argv=None) -> int:
    return run(PROG, build_parser(), _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
