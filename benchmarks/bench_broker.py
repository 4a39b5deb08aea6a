"""Broker throughput: produce and fetch of 100-byte records through one broker.

Starts a coordinator and one broker (real processes on loopback, data in a temp dir), creates a
topic, then
  produce: one DEALER pipelines Produce requests (acks=1), each one prebuilt batch of
           RECORDS_PER_BATCH 100-byte records per partition, IN_FLIGHT requests outstanding;
  fetch:   one DEALER pipelines Fetch requests over the partitions and counts records from the
           batch headers (the consumer's decoding is not the broker's cost).
Prints one line of name=value pairs last.

    python benchmarks/bench_broker.py [seconds_per_phase]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zmq  # noqa: E402

from tests.procs import BrokerProc, Cluster, CoordinatorProc, Procs  # noqa: E402
from zbroker import protocol, records  # noqa: E402

RECORD_BYTES = 100
RECORDS_PER_BATCH = 1000
PARTITIONS = 4
IN_FLIGHT = 8


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    procs = Procs(tmp)
    try:
        coord = CoordinatorProc(procs, tmp / "coordinator").start()
        broker = BrokerProc(procs, 1, coord.address, tmp / "broker1",
                            {"message.max.bytes": str(8 << 20),
                             "log.segment.bytes": str(256 << 20)}).start()
        cluster = Cluster(coord, [broker])
        cluster.create_topic("bench", PARTITIONS)
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{broker.port}")

        builder = records.BatchBuilder()
        value = b"v" * RECORD_BYTES
        for _ in range(RECORDS_PER_BATCH):
            builder.append(value)
        blob = builder.build()
        parts = [["bench", p, -1] for p in range(PARTITIONS)]
        blobs = [blob] * PARTITIONS
        header_of = protocol.pack
        req_id = 0
        sent = acked = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            now = time.perf_counter()
            while sent - acked < IN_FLIGHT and now < deadline:
                req_id += 1
                sock.send_multipart([header_of({"api": "Produce", "v": 1, "id": req_id,
                                                "acks": 1, "timeout_ms": 30000,
                                                "parts": parts}), *blobs], copy=False)
                sent += 1
            if acked == sent:
                break
            reply = protocol.unpack(sock.recv_multipart()[0])
            assert all(p[2] == 0 for p in reply["parts"]), reply
            acked += 1
        produce_s = time.perf_counter() - start
        produced = acked * PARTITIONS * RECORDS_PER_BATCH
        produce_rate = produced / produce_s

        offsets = [0] * PARTITIONS
        fetched = 0
        fetched_bytes = 0
        start = time.perf_counter()

        def send_fetch(p):
            nonlocal req_id
            req_id += 1
            sock.send_multipart(protocol.encode_request(
                "Fetch", req_id, max_wait_ms=100, min_bytes=1, max_bytes=8 << 20,
                parts=[["bench", p, offsets[p], -1, 8 << 20]]))
        for p in range(PARTITIONS):             # one fetch in flight per partition
            send_fetch(p)
        inflight = PARTITIONS
        while inflight:
            frames = sock.recv_multipart(copy=False)
            inflight -= 1
            header = protocol.unpack(frames[0].bytes)
            meta = header["parts"][0]
            data = frames[1].buffer
            pos, end = 0, len(data)
            count = 0
            last = None
            while end - pos >= records.HEADER_SIZE:
                h = records.read_header(data, pos)
                count += h.records_count
                last = h
                pos += h.batch_length + records.LOG_OVERHEAD
            if last is not None:
                offsets[meta[1]] = last.base_offset + last.last_offset_delta + 1
            fetched += count
            fetched_bytes += end
            if fetched < produced:
                send_fetch(meta[1])
                inflight += 1
        fetch_s = time.perf_counter() - start
        fetch_rate = fetched / fetch_s
        sock.close(0)
        broker.terminate()
        print(f"produce_records_per_s={produce_rate:.0f} "
              f"produce_mb_per_s={produced * RECORD_BYTES / produce_s / 1e6:.0f} "
              f"fetch_records_per_s={fetch_rate:.0f} "
              f"fetch_mb_per_s={fetched_bytes / fetch_s / 1e6:.0f} records={produced}")
    finally:
        procs.cleanup()


if __name__ == "__main__":
    main()
