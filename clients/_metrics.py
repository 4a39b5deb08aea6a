"""Client metrics under kafka-python's names (``Producer.metrics()``, ``Consumer.metrics()``).

Rates and averages are over the last ``WINDOW_S`` seconds, as kafka-python's two 30-second
samples roughly are; totals count from the client's start. Updated by the client's I/O thread
per request or batch (never per record), read by the user's thread: one lock, held briefly.
"""

from __future__ import annotations

import collections
import threading
import time

WINDOW_S = 30.0


class _Windowed:
    """Values recorded in the last WINDOW_S seconds, with their total since the start."""
    __slots__ = ("samples", "total", "count")

    def __init__(self):
        self.samples: collections.deque = collections.deque()     # (monotonic time, value)
        self.total = 0.0
        self.count = 0

    def record(self, value: float, now: float) -> None:
        self.samples.append((now, value))
        self.total += value
        self.count += 1
        self._trim(now)

    def _trim(self, now: float) -> None:
        s = self.samples
        while s and s[0][0] < now - WINDOW_S:
            s.popleft()

    def rate(self, now: float, started: float) -> float:
        """Per second over the window (or since the start, when that is shorter)."""
        self._trim(now)
        span = max(min(WINDOW_S, now - started), 1e-3)
        return sum(v for _, v in self.samples) / span

    def count_rate(self, now: float, started: float) -> float:
        self._trim(now)
        return len(self.samples) / max(min(WINDOW_S, now - started), 1e-3)

    def avg(self, now: float) -> float:
        self._trim(now)
        return sum(v for _, v in self.samples) / len(self.samples) if self.samples else 0.0

    def max(self, now: float) -> float:
        self._trim(now)
        return max((v for _, v in self.samples), default=0.0)


class ClientMetrics:
    """Named windowed series; ``snapshot`` turns them into kafka-python's metric names."""

    def __init__(self):
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._series: dict[str, _Windowed] = collections.defaultdict(_Windowed)
        self.gauges: dict[str, float] = {}

    def record(self, name: str, value: float = 1.0) -> None:
        now = time.monotonic()
        with self._lock:
            self._series[name].record(value, now)

    def values(self, spec: dict[str, tuple[str, str]]) -> dict[str, float]:
        """spec: metric name -> (series, kind), kind one of total, rate, count, count-rate,
        avg, max."""
        now = time.monotonic()
        out = {}
        with self._lock:
            for metric, (series, kind) in spec.items():
                s = self._series[series]
                if kind == "total":
                    out[metric] = s.total
                elif kind == "count":
                    out[metric] = float(s.count)
                elif kind == "rate":
                    out[metric] = s.rate(now, self.started)
                elif kind == "count-rate":
                    out[metric] = s.count_rate(now, self.started)
                elif kind == "avg":
                    out[metric] = s.avg(now)
                else:
                    out[metric] = s.max(now)
        return out


PRODUCER_METRICS = {
    "record-send-total": ("records_sent", "total"),
    "record-send-rate": ("records_sent", "rate"),
    "record-error-total": ("records_failed", "total"),
    "record-error-rate": ("records_failed", "rate"),
    "record-retry-total": ("records_retried", "total"),
    "record-retry-rate": ("records_retried", "rate"),
    "byte-total": ("bytes_sent", "total"),
    "byte-rate": ("bytes_sent", "rate"),
    "batch-size-avg": ("batch_bytes", "avg"),
    "batch-size-max": ("batch_bytes", "max"),
    "records-per-request-avg": ("request_records", "avg"),
    "request-total": ("request_latency_ms", "count"),
    "request-rate": ("request_latency_ms", "count-rate"),
    "request-latency-avg": ("request_latency_ms", "avg"),
    "request-latency-max": ("request_latency_ms", "max"),
}

CONSUMER_FETCH_METRICS = {
    "records-consumed-total": ("records_consumed", "total"),
    "records-consumed-rate": ("records_consumed", "rate"),
    "bytes-consumed-total": ("bytes_consumed", "total"),
    "bytes-consumed-rate": ("bytes_consumed", "rate"),
    "fetch-total": ("fetch_latency_ms", "count"),
    "fetch-rate": ("fetch_latency_ms", "count-rate"),
    "fetch-latency-avg": ("fetch_latency_ms", "avg"),
    "fetch-latency-max": ("fetch_latency_ms", "max"),
}
