"""zb-topics: create, list, describe, delete and alter topics (Kafka's kafka-topics.sh).

    zb-topics --bootstrap-server localhost:9092 --create --topic T --partitions 6 \\
              --replication-factor 3 [--config retention.ms=86400000]
    zb-topics --bootstrap-server localhost:9092 --list
    zb-topics --bootstrap-server localhost:9092 --describe [--topic T] \\
              [--under-replicated-partitions]
    zb-topics --bootstrap-server localhost:9092 --alter --topic T --partitions 12
    zb-topics --bootstrap-server localhost:9092 --delete --topic T
"""

from __future__ import annotations

import argparse

from clients.admin import AdminClient
from clients.cli._common import (UsageError, add_command_config, command_config_kwargs,
                                  parse_properties, run)
from clients.errors import TopicAlreadyExists, UnknownTopicOrPartition

PROG = "zb-topics"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Create, list, describe, alter and "
                                "delete topics.")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--create", action="store_true", help="create a topic")
    action.add_argument("--list", action="store_true", help="list every topic")
    action.add_argument("--describe", action="store_true",
                        help="describe a topic (all topics without --topic)")
    action.add_argument("--delete", action="store_true", help="delete a topic")
    action.add_argument("--alter", action="store_true",
                        help="grow a topic to --partitions partitions")
    add_command_config(p)
    p.add_argument("--bootstrap-server", required=True, metavar="HOST:PORT[,...]",
                   help="brokers to connect to")
    p.add_argument("--topic", help="the topic")
    p.add_argument("--partitions", type=int, help="number of partitions")
    p.add_argument("--replication-factor", type=int, help="replicas of each partition")
    p.add_argument("--config", action="append", metavar="KEY=VALUE",
                   help="a topic setting (repeatable)")
    p.add_argument("--under-replicated-partitions", action="store_true",
                   help="with --describe: only partitions whose ISR is smaller than their "
                   "replica list")
    p.add_argument("--if-not-exists", action="store_true",
                   help="with --create: no error if the topic exists")
    p.add_argument("--if-exists", action="store_true",
                   help="with --delete/--alter: no error if the topic does not exist")
    p.add_argument("--timeout-ms", type=int, default=30000,
                   help="how long to wait for the cluster (default 30000)")
    return p


def _describe(admin: AdminClient, topic: str | None, under_replicated: bool = False) -> None:
    descs = [admin.describe_topic(topic)] if topic else admin.describe_topics()
    for d in descs:
        rf = len(d.partitions[0].replicas) if d.partitions else 0
        if not under_replicated:
            print(f"Topic: {d.name}\tPartitionCount: {len(d.partitions)}\t"
                  f"ReplicationFactor: {rf}\tConfigs: ")
        for p in d.partitions:
            if under_replicated and len(p.isr) >= len(p.replicas):
                continue
            leader = p.leader if p.leader >= 0 else "none"
            print(f"\tTopic: {d.name}\tPartition: {p.partition}\tLeader: {leader}\t"
                  f"Replicas: {','.join(map(str, p.replicas))}\t"
                  f"Isr: {','.join(map(str, p.isr))}" +
                  (f"\tOffline: {','.join(map(str, p.offline_replicas))}"
                   if p.offline_replicas else ""))


def _body(args) -> int:
    if (args.create or args.delete or args.alter) and not args.topic:
        raise UsageError("--topic is required with --create, --delete and --alter.")
    if args.create and (args.partitions is None or args.replication_factor is None):
        raise UsageError("--create needs --partitions and --replication-factor.")
    if args.alter and args.partitions is None:
        raise UsageError("--alter needs --partitions.")
    config = parse_properties(args.config, "--config")
    with AdminClient(args.bootstrap_server, request_timeout_ms=args.timeout_ms,
                     **command_config_kwargs(args),
                     bootstrap_timeout_ms=min(args.timeout_ms, 10000)) as admin:
        if args.create:
            try:
                admin.create_topic(args.topic, args.partitions, args.replication_factor,
                                   config=config)
            except TopicAlreadyExists:
                if not args.if_not_exists:
                    raise
                return 0
            print(f"Created topic {args.topic}.")
        elif args.list:
            for name in admin.list_topics():
                print(name)
        elif args.describe:
            _describe(admin, args.topic, args.under_replicated_partitions)
        elif args.delete:
            try:
                admin.delete_topic(args.topic)
            except UnknownTopicOrPartition:
                if not args.if_exists:
                    raise
                return 0
            print(f"Deleted topic {args.topic}.")
        elif args.alter:
            try:
                admin.create_partitions(args.topic, args.partitions)
            except UnknownTopicOrPartition:
                if not args.if_exists:
                    raise
                return 0
            print(f"Topic {args.topic} now has {args.partitions} partitions.")
    return 0


def main(argv=None) -> int:
    return run(PROG, build_parser(), _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
