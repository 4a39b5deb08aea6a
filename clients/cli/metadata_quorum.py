"""zb-metadata-quorum: the coordinator ensemble's Raft quorum, as Kafka's kafka-metadata-quorum.

    zb-metadata-quorum --coordinator h:p,h:p,h:p describe --status
    zb-metadata-quorum --coordinator h:p,h:p,h:p describe --replication

``--status`` prints LeaderId, LeaderEpoch (the Raft term), HighWatermark (the commit index),
MaxFollowerLag, MaxFollowerLagTimeMs and CurrentVoters; ``--replication`` prints one row per
member: NodeId, LogEndOffset, Lag, LastFetchTimestamp, Status (Leader or Follower). The answer
comes from the leader (the client finds it among the addresses given). A single coordinator is
a quorum of one.
"""

from __future__ import annotations

import time

from clients.cli._common import ArgumentParser, UsageError, run
from coordinator.client import CoordinatorClient
from zbroker.security import SecurityError, command_config

PROG = "zb-metadata-quorum"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Describe the coordinator ensemble's Raft quorum "
                       "(leader, term, commit index, and each member's replication).")
    p.add_argument("--coordinator", required=True, metavar="HOST:PORT[,HOST:PORT...]",
                   help="the coordinator members' client addresses")
    p.add_argument("--command-config", metavar="FILE",
                   help="client settings (security.protocol, curve.secret.key.file, "
                        "curve.server.key.file) as in Kafka's tools")
    p.add_argument("--timeout-ms", type=int, default=10000,
                   help="how long to look for the leader (default 10000)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="describe the quorum")
    what = d.add_mutually_exclusive_group(required=True)
    what.add_argument("--status", action="store_true", help="the leader, term and voters")
    what.add_argument("--replication", action="store_true",
                      help="each member's log end, lag and last contact")
    return p


def status_lines(q: dict, now_ms: int) -> list[str]:
    followers = [m for m in q["members"] if m["id"] != q["leader"]]
    lag = max((m["lag"] for m in followers if m["lag"] >= 0), default=0)
    lag_ms = max((now_ms - m["last_fetch_ms"] for m in followers if m["last_fetch_ms"] >= 0),
                 default=0)
    rows = [("LeaderId", q["leader"]), ("LeaderEpoch", q["term"]),
            ("HighWatermark", q["high_watermark"]), ("MaxFollowerLag", lag),
            ("MaxFollowerLagTimeMs", max(0, lag_ms)),
            ("CurrentVoters", "[" + ",".join(map(str, q["voters"])) + "]"),
            ("CurrentObservers", "[]")]
    return [f"{k + ':':<24}{v}" for k, v in rows]


def replication_lines(q: dict) -> list[str]:
    header = ("NodeId", "LogEndOffset", "Lag", "LastFetchTimestamp", "Status")
    rows = [header] + [(str(m["id"]), str(m["log_end"]), str(m["lag"]),
                        str(m["last_fetch_ms"]), m["status"])
                       for m in sorted(q["members"], key=lambda m: m["status"] != "Leader")]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _body(args) -> int:
    try:
        security = command_config(args.command_config)
    except SecurityError as e:
        raise UsageError(str(e)) from None
    with CoordinatorClient(args.coordinator, session_timeout_ms=max(2000, args.timeout_ms),
                           connect_timeout_ms=args.timeout_ms, **security) as c:
        q = c.describe_quorum()
    lines = status_lines(q, int(time.time() * 1000)) if args.status else replication_lines(q)
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, build_parser(), _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
