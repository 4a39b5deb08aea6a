"""Prometheus metrics for the servers (issue 13, first step), through ``prometheus_client``.

A server with ``metrics.listener`` set (``http://0.0.0.0:9404``, or ``host:port``; empty turns
it off) serves Prometheus' text format there from prometheus_client's HTTP thread. Nothing is
computed on the server's loop for a scrape: the loop only adds to plain counters it keeps
(``Counts``), and a scrape reads those and the server's state (``collect``, one snapshot of
each dictionary; a read never blocks the loop). Names follow Kafka's meaning with the prefix
``zbroker_`` and the unit last.
"""

from __future__ import annotations

import collections
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)


class MetricsError(Exception):
    """A listener that cannot be used; the text is one sentence."""


def parse_listener(text: str) -> tuple[str, int] | None:
    """``http://host:port`` or ``host:port`` -> (host, port); "" -> None (off)."""
    text = (text or "").strip()
    if not text:
        return None
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme != "http":
            raise MetricsError(f"metrics.listener must be http://host:port, not {scheme}://.")
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise MetricsError(f"metrics.listener must be http://host:port, not {text!r}.")
    return host or "0.0.0.0", int(port)


class Counts:
    """Counters a server's loop keeps (plain ints in dicts: no lock on the loop)."""

    def __init__(self) -> None:
        self.requests: collections.Counter = collections.Counter()      # api -> n
        self.errors: collections.Counter = collections.Counter()        # api -> n
        self.latency: dict[str, list] = {}      # api -> [count per bucket..., +inf], sum
        self.latency_sum: collections.Counter = collections.Counter()
        self.bytes_in: collections.Counter = collections.Counter()      # topic -> bytes
        self.messages_in: collections.Counter = collections.Counter()   # topic -> records
        self.bytes_out: collections.Counter = collections.Counter()     # topic -> bytes

    def request_done(self, api: str, seconds: float, failed: bool) -> None:
        self.requests[api] += 1
        if failed:
            self.errors[api] += 1
        counts = self.latency.get(api)
        if counts is None:
            counts = self.latency[api] = [0] * (len(LATENCY_BUCKETS_S) + 1)
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.latency_sum[api] += seconds


def counter(name: str, doc: str, label: str, values: dict) -> CounterMetricFamily:
    m = CounterMetricFamily(name, doc, labels=[label] if label else [])
    for key, v in sorted(dict(values).items()):
        m.add_metric([str(key)] if label else [], v)
    return m


def gauge(name: str, doc: str, value: float, labels: dict | None = None) -> GaugeMetricFamily:
    if labels is None:
        return GaugeMetricFamily(name, doc, value=value)
    m = GaugeMetricFamily(name, doc, labels=list(labels))
    m.add_metric(list(labels.values()), value)
    return m


def request_metrics(prefix: str, c: Counts) -> Iterable[Metric]:
    yield counter(f"{prefix}_requests", "Requests handled, per API.", "api", c.requests)
    yield counter(f"{prefix}_request_errors", "Requests answered with an error, per API.",
                  "api", c.errors)
    yield histogram(f"{prefix}_request_latency_seconds",
                    "Time the server's loop spent on a request, from taking it to answering or "
                    "parking it (an acks=all produce or a long poll waits after that), per API.",
                    "api", c)


def histogram(name: str, doc: str, label: str, c: Counts) -> HistogramMetricFamily:
    """``c.latency``'s buckets as a Prometheus histogram, one series per key."""
    h = HistogramMetricFamily(name, doc, labels=[label])
    for key, counts in sorted(dict(c.latency).items()):
        counts = list(counts)
        cumulative, buckets = 0, []
        for bound, n in zip(LATENCY_BUCKETS_S, counts):
            cumulative += n
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", cumulative + counts[-1]))
        h.add_metric([key], buckets, c.latency_sum[key])
    return h


class _Collector:
    def __init__(self, collect: Callable[[], Iterable[Metric]]):
        self._collect = collect

    def collect(self):
        yield from self._collect()


def serve(listener: str, collect: Callable[[], Iterable[Metric]]):
    """Serve ``collect()``'s metrics at ``listener``; returns the HTTP server (``shutdown()``)
    or None when the listener is empty."""
    where = parse_listener(listener)
    if where is None:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(collect))
    try:
        server, _thread = start_http_server(where[1], addr=where[0], registry=registry)
    except OSError as e:
        raise MetricsError(f"Cannot serve metrics on {where[0]}:{where[1]}: "
                           f"{e.strerror or e}.") from None
    return server
