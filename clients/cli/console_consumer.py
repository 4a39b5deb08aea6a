"""zb-console-consumer: print a topic's records, one per line (Kafka's
kafka-console-consumer.sh).

    zb-console-consumer --bootstrap-server localhost:9092 --topic T --from-beginning
    zb-console-consumer --bootstrap-server localhost:9092 --topic T --partition 0 --offset 42 \\
        --max-messages 10 --property print.key=true --property print.offset=true

Without --partition it reads every partition of the topic; with --group G it joins consumer
group G instead, reads the partitions the group gives it, starting at the group's committed
offsets (--from-beginning only matters where the group has none), and commits as it goes (two
consoles in one group split the partitions). Fields are printed in Kafka's order,
separated by a tab: CreateTime:<ms>, Partition:<p>, Offset:<o>, headers, key, value (each only
when its print.* property is true; the value always). On exit it prints "Processed a total of
N messages" on standard error.
"""

from __future__ import annotations

import argparse
import sys

from clients.cli._common import (UsageError, add_command_config, command_config_kwargs,
                                  parse_properties, run, truthy, unescape)
from clients.consumer import Consumer
from clients.structs import TopicPartition

PROG = "zb-console-consumer"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Print records of a topic to standard "
                                "output.")
    p.add_argument("--bootstrap-server", required=True, metavar="HOST:PORT[,...]",
                   help="brokers to connect to")
    add_command_config(p)
    p.add_argument("--topic", required=True, help="the topic to read")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the earliest record (default: only new records)")
    p.add_argument("--partition", type=int, help="read only this partition")
    p.add_argument("--offset", default=None,
                   help="with --partition: an offset, 'earliest' or 'latest' (default latest)")
    p.add_argument("--max-messages", type=int, default=None,
                   help="exit after this many records")
    p.add_argument("--timeout-ms", type=int, default=None,
                   help="exit when no record came for this long")
    p.add_argument("--property", action="append", metavar="KEY=VALUE",
                   help="print.key, print.offset, print.partition, print.timestamp, "
                        "print.headers, print.value (true|false), key.separator, "
                        "line.separator, headers.separator")
    p.add_argument("--group", help="join this consumer group (cannot be combined with "
                   "--partition)")
    return p


def _body(args) -> int:
    if args.group is not None and args.partition is not None:
        raise UsageError("Options group and partition cannot be specified together.")
    if args.offset is not None and args.partition is None:
        raise UsageError("--offset needs --partition.")
    if args.max_messages is not None and args.max_messages < 1:
        raise UsageError("--max-messages must be at least 1.")
    props = parse_properties(args.property, "--property")
    show = {k: truthy(props.get(f"print.{k}", "false"))
            for k in ("key", "offset", "partition", "timestamp", "headers")}
    show_value = truthy(props.get("print.value", "true"))
    sep = unescape(props.get("key.separator", "\t")).encode()
    line_sep = unescape(props.get("line.separator", "\n")).encode()
    hdr_sep = unescape(props.get("headers.separator", ",")).encode()
    reset = "earliest" if args.from_beginning else "latest"
    timeout = args.timeout_ms if args.timeout_ms is not None else float("inf")
    out = sys.stdout.buffer
    live = sys.stdout.isatty()
    count = 0
    consumer = Consumer(bootstrap_servers=args.bootstrap_server, auto_offset_reset=reset,
                        **command_config_kwargs(args),
                        consumer_timeout_ms=timeout, group_id=args.group)
    try:
        if args.partition is not None:
            tp = TopicPartition(args.topic, args.partition)
            consumer.assign([tp])
            if args.offset in (None, "latest"):
                if not args.from_beginning:
                    consumer.seek_to_end(tp)
                else:
                    consumer.seek_to_beginning(tp)
            elif args.offset == "earliest":
                consumer.seek_to_beginning(tp)
            else:
                try:
                    offset = int(args.offset)
                except ValueError:
                    raise UsageError(f"--offset must be a number, 'earliest' or 'latest', not "
                                     f"{args.offset!r}.") from None
                consumer.seek(tp, offset)
        else:
            consumer.subscribe([args.topic])
        for record in consumer:
            fields = []
            if show["timestamp"]:
                fields.append(b"CreateTime:%d" % record.timestamp)
            if show["partition"]:
                fields.append(b"Partition:%d" % record.partition)
            if show["offset"]:
                fields.append(b"Offset:%d" % record.offset)
            if show["headers"]:
                fields.append(hdr_sep.join(k.encode() + b":" + (v if v is not None else b"null")
                                           for k, v in record.headers) or b"NO_HEADERS")
            if show["key"]:
                fields.append(record.key if record.key is not None else b"null")
            if show_value:
                fields.append(record.value if record.value is not None else b"null")
            out.write(sep.join(fields) + line_sep)
            if live:
                out.flush()
            count += 1
            if args.max_messages is not None and count >= args.max_messages:
                break
        out.flush()
    finally:
        consumer.close()
        print(f"Processed a total of {count} messages", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return run(PROG, build_parser(), _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
