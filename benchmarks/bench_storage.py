"""Storage engine throughput: append and read of pre-built batches, and the open time of a
1,000-segment log after a clean shutdown.

    python benchmarks/bench_storage.py [--bytes N] [--dir PATH] [--profile]

Batches hold 1,000 records of 100 bytes (no compression), built once and appended again and
again, as a broker appends producers' batches without looking inside. For comparison the same
bytes are written by a plain Python loop (``os.write``) to one file. Reads go through
``PartitionLog.read`` with 1 MiB per call from the page cache. The last line printed holds every
figure as name=value pairs.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zbroker import records  # noqa: E402
from zbroker.storage import PartitionLog  # noqa: E402

RECORDS_PER_BATCH = 1000
RECORD_BYTES = 100


def build_batch() -> bytes:
    b = records.BatchBuilder()
    payload = os.urandom(RECORD_BYTES * RECORDS_PER_BATCH)
    for i in range(RECORDS_PER_BATCH):
        b.append(payload[i * RECORD_BYTES:(i + 1) * RECORD_BYTES], timestamp_ms=1_700_000_000_000)
    return b.build()


def bench_plain_write(directory: str, batch: bytes, count: int) -> float:
    path = os.path.join(directory, "plain.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0 = time.perf_counter()
    for _ in range(count):
        os.write(fd, batch)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    os.unlink(path)
    return elapsed


def bench_append(directory: str, batch: bytes, count: int, profile: bool) -> tuple[float, PartitionLog]:
    log = PartitionLog(os.path.join(directory, "append-0"))
    prof = cProfile.Profile() if profile else None
    append = log.append
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    for _ in range(count):
        append(batch, 1)
    elapsed = time.perf_counter() - t0
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return elapsed, log


def bench_read(log: PartitionLog, max_bytes: int, profile: bool) -> tuple[float, int, int]:
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    read = log.read
    offset, end, nbytes, nrecords = 0, log.log_end_offset, 0, 0
    t0 = time.perf_counter()
    while offset < end:
        data = read(offset, max_bytes)
        nbytes += len(data)
        # the next offset from the last batch's header: what a consumer's fetch loop does
        pos = 0
        while pos < len(data):
            h = records.read_header(data, pos)
            pos += h.size
        offset = h.next_offset
    elapsed = time.perf_counter() - t0
    nrecords = offset
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return elapsed, nbytes, nrecords


def bench_decode(batch: bytes, seconds: float = 1.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(records.decode_records(batch))
    return n / (time.perf_counter() - t0)


def bench_open(directory: str, segments: int = 1000) -> tuple[float, float]:
    path = os.path.join(directory, "open-0")
    log = PartitionLog(path, {"segment.bytes": 1})  # every batch after the first rolls
    small = records.build_batch([b"x" * 100] * 10, timestamp_ms=1_700_000_000_000)
    for _ in range(segments):
        log.append(small, 1)
    assert log.segment_count == segments
    log.close()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        log = PartitionLog(path, {"segment.bytes": 1})
        best = min(best, time.perf_counter() - t0)
        assert not log.recovered_unclean and log.segment_count == segments
        log.close()
    # and after a crash (no marker): only the segments after the recovery point are scanned
    os.unlink(os.path.join(path, ".clean-shutdown"))
    t0 = time.perf_counter()
    log = PartitionLog(path, {"segment.bytes": 1})
    unclean = time.perf_counter() - t0
    assert log.recovered_unclean
    log.close()
    return best, unclean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=2 << 30, help="bytes to append (default 2 GiB)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--profile", action="store_true", help="print cProfile tables")
    args = ap.parse_args()
    from zbroker.logs import configure_logging
    configure_logging("WARNING")
    directory = tempfile.mkdtemp(prefix="zb-bench-", dir=args.dir)
    try:
        batch = build_batch()
        count = max(1, args.bytes // len(batch))
        total = count * len(batch)
        total_records = count * RECORDS_PER_BATCH
        print(f"batch: {len(batch)} bytes, {RECORDS_PER_BATCH} records; {count} batches, "
              f"{total / 1e9:.2f} GB; dir {directory}")

        # The baseline runs before and after the append (best of the two): the page cache's
        # writeback makes whichever runs first or later look different.
        plain = bench_plain_write(directory, batch, count)
        append_s, log = bench_append(directory, batch, count, args.profile)
        print(f"append: {total / append_s / 1e6:.0f} MB/s, {total_records / append_s:.0f} "
              f"records/s, {count / append_s:.0f} batches/s, {log.segment_count} segments")
        read_s, read_bytes, read_records = bench_read(log, 1 << 20, args.profile)
        plain = min(plain, bench_plain_write(directory, batch, count))
        print(f"plain os.write loop: {total / plain / 1e6:.0f} MB/s")
        assert read_bytes == total and read_records == total_records, (read_bytes, total)
        print(f"read (1 MiB fetches): {read_bytes / read_s / 1e6:.0f} MB/s, "
              f"{read_records / read_s:.0f} records/s")
        log.close()
        shutil.rmtree(os.path.join(directory, "append-0"))
        decode_rate = bench_decode(batch)
        print(f"consumer decode: {decode_rate:.0f} records/s (one thread)")
        open_s, unclean_s = bench_open(directory)
        print(f"open of 1000 segments: {open_s * 1e3:.1f} ms clean, {unclean_s * 1e3:.1f} ms "
              f"after a crash")
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(" ".join([
            f"append_mb_s={total / append_s / 1e6:.0f}",
            f"append_records_s={total_records / append_s:.0f}",
            f"read_mb_s={read_bytes / read_s / 1e6:.0f}",
            f"read_records_s={read_records / read_s:.0f}",
            f"plain_write_mb_s={total / plain / 1e6:.0f}",
            f"decode_records_s={decode_rate:.0f}",
            f"open_1000_segments_ms={open_s * 1e3:.1f}",
            f"recover_1000_segments_ms={unclean_s * 1e3:.1f}",
            f"appended_gb={total / 1e9:.2f}",
            f"max_rss_mb={rss_mb:.0f}",
        ]))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
