"""zb-producer-perf-test: produce N records as fast as allowed and report throughput and
latency (Kafka's kafka-producer-perf-test.sh).

    zb-producer-perf-test --topic T --num-records 1000000 --record-size 100 --throughput -1 \\
        --producer-props acks=1 bootstrap.servers=localhost:9092

``send()`` is called once per record. Latency (send to acknowledgement) is sampled: a callback
on one record in every ``max(1, N // 20000)``, which is representative because the records of
one batch are acknowledged together and per-record callbacks would cost throughput. A progress
line every 5 seconds, then one summary line in Kafka's format.
"""

from __future__ import annotations

import argparse
import os
import time

from clients.cli._common import (UsageError, add_command_config, command_config_kwargs,
                                  parse_properties, run)
from clients.cli._stats import Stats
from clients.cli.console_producer import producer_settings
from clients.producer import Producer

PROG = "zb-producer-perf-test"
LATENCY_SAMPLES = 20000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Measure producer throughput and "
                                "latency.")
    p.add_argument("--topic", required=True, help="the topic to produce to")
    add_command_config(p)
    p.add_argument("--num-records", type=int, required=True, help="records to send")
    p.add_argument("--record-size", type=int, help="bytes of each record's value")
    p.add_argument("--payload-file", help="take values from this file, one per line")
    p.add_argument("--throughput", type=float, required=True,
                   help="records/sec to aim for; -1 for no limit")
    p.add_argument("--producer-props", nargs="+", metavar="KEY=VALUE",
                   help="producer settings, e.g. acks=1 bootstrap.servers=localhost:9092")
    p.add_argument("--producer.config", dest="producer_config", metavar="FILE",
                   help="a .properties file of producer settings")
    p.add_argument("--reporting-interval", type=int, default=5000, metavar="MS",
                   help="progress line interval (default 5000)")
    return p


def _read_properties_file(path: str) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "!")):
                out.append(line)
    return out


def _body(args) -> int:
    if args.num_records < 1:
        raise UsageError("--num-records must be at least 1.")
    if (args.record_size is None) == (args.payload_file is None):
        raise UsageError("Give exactly one of --record-size and --payload-file.")
    props = []
    if args.producer_config:
        props += _read_properties_file(args.producer_config)
    props += args.producer_props or []
    settings = producer_settings(parse_properties(props, "--producer-props"),
                                 "--producer-props")
    if "bootstrap_servers" not in settings:
        raise UsageError("bootstrap.servers is required in --producer-props.")
    if args.payload_file:
        with open(args.payload_file, "rb") as f:
            payloads = [line.rstrip(b"\n") for line in f if line.strip()]
        if not payloads:
            raise UsageError(f"{args.payload_file} holds no payload.")
    else:
        if args.record_size < 0:
            raise UsageError("--record-size must be >= 0.")
        payloads = [bytes(65 + b % 26 for b in os.urandom(args.record_size))]
    n = args.num_records
    every = max(1, n // LATENCY_SAMPLES)
    stats = Stats("sent", args.reporting_interval / 1000)
    failures: list[BaseException] = []
    settings.update(command_config_kwargs(args))
    with Producer(**settings) as producer:
        send, topic = producer.send, args.topic
        monotonic = time.monotonic
        throttle = args.throughput > 0
        start = monotonic()
        next_report = start + stats.interval_s
        value = payloads[0]
        npay = len(payloads)
        sent_bytes = 0

        def sampled(fut, t0, size):
            def done(f):
                if f.failed():
                    failures.append(f.exception())
                else:
                    stats.latency((monotonic() - t0) * 1000)
            return done
        stats.start = start
        stats.window_start = start
        for i in range(n):
            if npay > 1:
                value = payloads[i % npay]
            if i % every == 0:
                fut = send(topic, value)
                fut.add_done_callback(sampled(fut, monotonic(), len(value)))
                now = monotonic()
                stats.add(i - stats.records, sent_bytes - stats.bytes)
                if now >= next_report:
                    stats.maybe_report(now)
                    next_report = now + stats.interval_s
                if throttle:
                    ahead = (i + 1) / args.throughput - (now - start)
                    if ahead > 0:
                        time.sleep(ahead)
            else:
                send(topic, value)
            sent_bytes += len(value)
        producer.flush()
        stats.add(n - stats.records, sent_bytes - stats.bytes)
        end = monotonic()
    if failures:
        print(f"{PROG}: {len(failures)} sampled record(s) failed, e.g.: {failures[0]}")
    stats.summary(end)
    return 1 if failures else 0


def main(argv=None) -> int:
    return run(PROG, build_parser(), _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
