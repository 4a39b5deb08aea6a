"""A consumer group member as its own process, for the fault tests: it reads a topic in a group,
"processes" each record by writing it to its output file (flushed), and only then commits. Its
rebalance listener writes what it owned and when (monotonic clock, which all processes on one
machine share) and commits before it lets partitions go.

    python -m tests.groups.member_main BOOTSTRAP GROUP TOPIC OUT [--instance-id I]
                                       [--session-timeout-ms MS] [--heartbeat-interval-ms MS]

Output lines (text, one event each):
    A <t> <p,p,...>          partitions assigned at time t
    V <t> <p,p,...>          revoked (after committing them)
    L <t> <p,p,...>          lost
    R <p> <first> <last>     records first..last of partition p processed
    C <t> <p>:<offset>,...   a commit returned
    X <t> <error>            a commit failed
SIGTERM: close (commit, leave) and exit 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from clients import CommitFailedError, Consumer, TopicPartition, ZbError


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("bootstrap")
    p.add_argument("group")
    p.add_argument("topic")
    p.add_argument("out")
    p.add_argument("--instance-id")
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument("--heartbeat-interval-ms", type=int, default=1000)
    args = p.parse_args(argv)
    out = open(args.out, "a", buffering=1)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    def parts(tps):
        return ",".join(str(tp.partition) for tp in sorted(tps)) or "-"

    consumer = Consumer(bootstrap_servers=args.bootstrap, group_id=args.group,
                        group_instance_id=args.instance_id, enable_auto_commit=False,
                        auto_offset_reset="earliest", fetch_max_wait_ms=100,
                        session_timeout_ms=args.session_timeout_ms,
                        heartbeat_interval_ms=args.heartbeat_interval_ms)

    def commit(offsets=None):
        try:
            if offsets is None:
                offsets = {tp: consumer.position(tp, timeout_ms=1000)
                           for tp in consumer.assignment()}
            if not offsets:
                return
            consumer.commit(offsets)
        except (CommitFailedError, ZbError) as e:
            out.write(f"X {time.monotonic():.6f} {type(e).__name__}\n")
            return
        out.write(f"C {time.monotonic():.6f} "
                  f"{','.join(f'{tp.partition}:{o}' for tp, o in sorted(offsets.items()))}\n")

    class Listener:
        def on_partitions_assigned(self, tps):
            out.write(f"A {time.monotonic():.6f} {parts(tps)}\n")

        def on_partitions_revoked(self, tps):
            commit({tp: consumer.position(tp, timeout_ms=1000) for tp in tps
                    if tp in consumer.assignment()})
            out.write(f"V {time.monotonic():.6f} {parts(tps)}\n")

        def on_partitions_lost(self, tps):
            out.write(f"L {time.monotonic():.6f} {parts(tps)}\n")

    consumer.subscribe([args.topic], listener=Listener())
    while not stopping:
        got = consumer.poll(200)
        for tp, recs in got.items():
            out.write(f"R {tp.partition} {recs[0].offset} {recs[-1].offset}\n")
        if got:
            commit({TopicPartition(tp.topic, tp.partition): recs[-1].offset + 1
                    for tp, recs in got.items()})
    consumer.close()
    out.write(f"E {time.monotonic():.6f}\n")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
