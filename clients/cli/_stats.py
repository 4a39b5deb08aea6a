"""Latency and throughput reporting shared by the perf tools (Kafka's format)."""

from __future__ import annotations

import time


class Stats:
    """Counts records and bytes, keeps latency samples (ms), prints a progress line every
    ``interval_s`` and a Kafka-style summary."""

    def __init__(self, verb: str, interval_s: float = 5.0, out=None):
        import sys
        self.verb = verb
        self.out = out or sys.stdout
        self.interval_s = interval_s
        self.start = time.monotonic()
        self.records = 0
        self.bytes = 0
        self.latencies: list[float] = []
        self.window_start = self.start
        self.window_records = 0
        self.window_bytes = 0
        self.window_lat: list[float] = []

    def add(self, records: int, nbytes: int) -> None:
        self.records += records
        self.bytes += nbytes
        self.window_records += records
        self.window_bytes += nbytes

    def latency(self, ms: float) -> None:
        self.latencies.append(ms)
        self.window_lat.append(ms)

    def maybe_report(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self.window_start < self.interval_s:
            return
        elapsed = now - self.window_start
        lat = self.window_lat
        avg = sum(lat) / len(lat) if lat else 0.0
        mx = max(lat) if lat else 0.0
        print(f"{self.window_records} records {self.verb}, "
              f"{self.window_records / elapsed:.1f} records/sec "
              f"({self.window_bytes / elapsed / 1048576:.2f} MB/sec), {avg:.1f} ms avg latency, "
              f"{mx:.1f} ms max latency.", file=self.out, flush=True)
        self.window_start, self.window_records, self.window_bytes = now, 0, 0
        self.window_lat = []

    def summary(self, end: float | None = None) -> dict:
        end = time.monotonic() if end is None else end
        elapsed = max(end - self.start, 1e-9)
        lat = sorted(self.latencies)

        def pct(p):
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0.0
        s = {"records": self.records, "records_per_sec": self.records / elapsed,
             "mb_per_sec": self.bytes / elapsed / 1048576,
             "avg_latency_ms": sum(lat) / len(lat) if lat else 0.0,
             "max_latency_ms": lat[-1] if lat else 0.0, "p50": pct(0.5), "p95": pct(0.95),
             "p99": pct(0.99), "p999": pct(0.999), "elapsed_s": elapsed}
        print(f"{s['records']} records {self.verb}, {s['records_per_sec']:.1f} records/sec "
              f"({s['mb_per_sec']:.2f} MB/sec), {s['avg_latency_ms']:.2f} ms avg latency, "
              f"{s['max_latency_ms']:.2f} ms max latency, {s['p50']:.0f} ms 50th, "
              f"{s['p95']:.0f} ms 95th, {s['p99']:.0f} ms 99th, {s['p999']:.0f} ms 99.9th.",
              file=self.out, flush=True)
        return s
