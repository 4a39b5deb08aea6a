"""zb-console-producer: one record per line of standard input (Kafka's
kafka-console-producer.sh).

    zb-console-producer --bootstrap-server localhost:9092 --topic T
    zb-console-producer --bootstrap-server localhost:9092 --topic T \\
        --property parse.key=true --property key.separator=: --acks all

Lines are sent as bytes without their line ending. With parse.key=true each line is
``key<separator>value`` (separator: the first occurrence of key.separator, default a tab).
At the end of input everything is flushed; if any record failed, the first failure is printed
and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys

from clients.cli._common import (UsageError, add_command_config, command_config_kwargs,
                                  parse_properties, run, truthy, unescape)
from clients.producer import Producer

PROG = "zb-console-producer"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Send each line of standard input as "
                                "a record to a topic.")
    p.add_argument("--bootstrap-server", "--broker-list", required=True,
                   metavar="HOST:PORT[,...]", help="brokers to connect to")
    add_command_config(p)
    p.add_argument("--topic", required=True, help="the topic to produce to")
    p.add_argument("--acks", "--request-required-acks", default="all",
                   choices=["all", "-1", "1", "0"], help="acknowledgements (default all)")
    p.add_argument("--property", action="append", metavar="KEY=VALUE",
                   help="parse.key=true|false, key.separator=SEP (default tab), "
                        "ignore.error=true|false")
    p.add_argument("--producer-property", action="append", metavar="KEY=VALUE",
                   help="a producer setting, e.g. linger.ms=10 (repeatable)")
    p.add_argument("--compression-codec", choices=["none", "zlib"], default=None,
                   help="compress batches")
    p.add_argument("--sync", action="store_true", help="wait for each record's acknowledgement")
    p.add_argument("--timeout", type=int, default=1000, metavar="MS",
                   help="linger.ms: how long a batch may wait for more lines (default 1000)")
    return p


def _boolean(value: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise ValueError(value)
    return v == "true"


PRODUCER_PROPS = {"linger.ms": ("linger_ms", float), "batch.size": ("batch_size", int),
                  "enable.idempotence": ("enable_idempotence", _boolean),
                  "acks": ("acks", str), "retries": ("retries", int),
                  "request.timeout.ms": ("request_timeout_ms", int),
                  "delivery.timeout.ms": ("delivery_timeout_ms", int),
                  "max.request.size": ("max_request_size", int),
                  "buffer.memory": ("buffer_memory", int),
                  "max.block.ms": ("max_block_ms", int),
                  "compression.type": ("compression", str),
                  "max.in.flight.requests.per.connection": ("max_in_flight", int),
                  "retry.backoff.ms": ("retry_backoff_ms", int),
                  "metadata.max.age.ms": ("metadata_max_age_ms", int),
                  "bootstrap.servers": ("bootstrap_servers", str),
                  "client.id": ("client_id", str),
                  "bootstrap.timeout.ms": ("bootstrap_timeout_ms", int)}


def producer_settings(props: dict[str, str], flag: str) -> dict:
    """Kafka-style producer properties -> Producer keyword arguments."""
    out = {}
    for key, value in props.items():
        if key not in PRODUCER_PROPS:
            raise UsageError(f"{flag}: unknown producer property {key!r}; known: "
                             f"{', '.join(sorted(PRODUCER_PROPS))}.")
        name, kind = PRODUCER_PROPS[key]
        try:
            out[name] = kind(value)
        except ValueError:
            what = "true or false" if kind is _boolean else "a number"
            raise UsageError(f"{flag}: {key} must be {what}, not {value!r}.") from None
    return out


def _body(args) -> int:
    props = parse_properties(args.property, "--property")
    parse_key = truthy(props.get("parse.key", "false"))
    separator = unescape(props.get("key.separator", "\t")).encode("utf-8")
    ignore_error = truthy(props.get("ignore.error", "false"))
    if not separator:
        raise UsageError("key.separator may not be empty.")
    settings = {"linger_ms": args.timeout, "acks": args.acks}
    if args.compression_codec:
        settings["compression"] = args.compression_codec
    settings.update(producer_settings(parse_properties(args.producer_property,
                                                       "--producer-property"),
                                      "--producer-property"))
    settings.setdefault("bootstrap_servers", args.bootstrap_server)
    failures: list[BaseException] = []
    interactive = sys.stdin.isatty()
    settings.update(command_config_kwargs(args))
    with Producer(**settings) as producer:
        stdin = sys.stdin.buffer
        line_no = 0
        while True:
            if interactive:
                print(">", end="", flush=True)
            line = stdin.readline()
            if not line:
                break
            line_no += 1
            line = line.rstrip(b"\r\n") if line.endswith(b"\n") else line
            key = None
            if parse_key:
                key, sep, value = line.partition(separator)
                if not sep:
                    if ignore_error:
                        key, value = None, line
                    else:
                        raise UsageError(f"No key separator {separator.decode()!r} on line "
                                         f"{line_no}.")
            else:
                value = line
            fut = producer.send(args.topic, value, key=key)
            if args.sync:
                fut.result()
            else:
                fut.add_errback(failures.append)
        producer.flush()
    if failures:
        print(f"{PROG}: {len(failures)} record(s) failed: {failures[0]}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return run(PROG, build_parser(), _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
