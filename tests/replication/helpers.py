"""Helpers for replication tests: settings for quick failure detection, reading every replica's
log straight from its directory, and the leader's view through raw requests."""

from __future__ import annotations

import os
import time

from tests.broker.helpers import Conn, values_of
from zbroker import errors, records

# Quick failure detection for tests: sessions of 2 s (tests/procs.py), followers out of the ISR
# after 1.5 s without catching up, preferred leaders checked every second.
FAST = {"replica.lag.time.max.ms": "1500", "leader.imbalance.check.interval.seconds": "1",
        "replica.fetch.wait.max.ms": "200", "replica.socket.timeout.ms": "1500",
        "replica.fetch.backoff.ms": "50"}


def partition_info(cluster, topic: str, p: int):
    """(leader, leader_epoch, replicas, isr) from a live broker's metadata."""
    md = cluster.metadata([topic], allow_auto_create=False)
    part = md["topics"][0][3][p]
    return part[2], part[3], part[4], part[5]


def wait_isr(cluster, topic: str, p: int, isr: set, timeout_s: float = 20.0, via=None):
    """Until every live broker (or those in ``via``) shows ``isr`` and a leader."""
    def check():
        for b in via or cluster.live_brokers():
            md = b.metadata([topic], allow_auto_create=False)
            part = md["topics"][0][3][p]
            if set(part[5]) != isr or part[2] < 0:
                return None
        return True
    return cluster.wait_for(check, timeout_s, f"ISR of {topic}-{p} = {sorted(isr)}")


def segment_bytes(log_dir, topic: str, p: int) -> bytes:
    """Every batch of a replica's log, read from its segment files (works while it runs)."""
    d = os.path.join(str(log_dir), f"{topic}-{p}")
    out = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".log"):
            with open(os.path.join(d, name), "rb") as f:
                out.append(f.read())
    return b"".join(out)


def batches_below(blob: bytes, high_watermark: int) -> bytes:
    """The whole batches of ``blob`` that end below ``high_watermark``, as bytes."""
    out = []
    try:
        for h, view in records.iter_batches(blob):
            if h.base_offset + h.last_offset_delta >= high_watermark:
                break
            out.append(bytes(view))
    except errors.CorruptMessage:
        pass        # zeros after the last batch (a preallocated or torn tail)
    return b"".join(out)


def read_all(port: int, topic: str, p: int, timeout_s: float = 20.0) -> tuple[list, int]:
    """[(offset, value)] of everything below the leader's high watermark, and the HW."""
    conn = Conn(port)
    try:
        out, offset, hw = [], 0, None
        deadline = time.monotonic() + timeout_s
        while True:
            meta, blob = conn.fetch(topic, p, offset, max_bytes=4 << 20)
            assert meta[2] == 0, meta
            hw = meta[3]
            got = values_of(blob)
            out += got
            if got:
                offset = got[-1][0] + 1
            if offset >= hw:
                return out, hw
            assert time.monotonic() < deadline, "reading back took too long"
    finally:
        conn.close()
