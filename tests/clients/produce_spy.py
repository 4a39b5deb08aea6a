"""Watch a real ``Producer`` from the outside: every Produce request its I/O thread sends, and
how each partition of it ended (acknowledged, or which error came back). A batch the producer
sends again after an error is a retry, so a test can count retries and the errors behind them
without any counter in the producer itself.

    spy = ProduceSpy(producer)        # before the first send()
    ...
    spy.errors()                      # Counter({"NotLeaderOrFollower": 3, ...}): one per retry
                                      # (or per failure, when the error was final)

It wraps the producer's network client's ``send`` (the one place requests leave the producer),
on the producer's own I/O thread; nothing else changes.
"""

from __future__ import annotations

import collections
import threading
import time

from zbroker import errors as zerrors
from zbroker import records as zrecords

OK = "ok"


class Attempt:
    """One Produce request: where it went, its partitions and blobs, and per partition how it
    ended (``OK``, an error class name, or None while in flight)."""

    __slots__ = ("node", "parts", "blobs", "sent_at", "answered_at", "outcome", "batches")

    def __init__(self, node: int, parts: list, blobs: list | None, sent_at: float,
                 batches: list[int] | None = None):
        self.node = node
        self.parts = parts                      # [(topic, partition)]
        self.batches = batches or [0] * len(parts)  # record batches per part
        self.blobs = blobs
        self.sent_at = sent_at
        self.answered_at: float | None = None
        self.outcome: dict | None = None        # {(topic, partition): OK | error name}

    def __repr__(self):
        return f"<Attempt to {self.node} {self.outcome or 'in flight'}>"


class ProduceSpy:
    def __init__(self, producer, keep_blobs: bool = False):
        self.lock = threading.Lock()
        self.attempts: list[Attempt] = []
        self.max_in_flight_per_partition = 0
        self.max_batches_in_flight_per_partition = 0
        self._in_flight: collections.Counter = collections.Counter()
        self._batches_in_flight: collections.Counter = collections.Counter()
        net = producer._net
        real_send = net.send

        def send(node_id, api, fields, blobs=None, handler=None, timeout_ms=None):
            if api != "Produce":
                return real_send(node_id, api, fields, blobs, handler, timeout_ms)
            parts = [(p[0], p[1]) for p in fields["parts"]]
            counts = [sum(1 for _ in zrecords.iter_batches(b)) for b in blobs]
            a = Attempt(node_id, parts, [bytes(b) for b in blobs] if keep_blobs else None,
                        time.monotonic(), counts)
            with self.lock:
                self.attempts.append(a)
                for tp, n in zip(parts, counts):
                    self._in_flight[tp] += 1
                    self.max_in_flight_per_partition = max(self.max_in_flight_per_partition,
                                                           self._in_flight[tp])
                    self._batches_in_flight[tp] += n
                    self.max_batches_in_flight_per_partition = max(
                        self.max_batches_in_flight_per_partition, self._batches_in_flight[tp])
            if handler is None:                 # acks=0: no answer is coming
                try:
                    return real_send(node_id, api, fields, blobs, None, timeout_ms)
                except Exception as e:
                    self._ended(a, None, e)
                    raise
                finally:
                    if a.outcome is None:
                        self._ended(a, None, None)

            def answered(header, out_blobs, error):
                self._ended(a, header, error)
                handler(header, out_blobs, error)
            try:
                return real_send(node_id, api, fields, blobs, answered, timeout_ms)
            except Exception as e:
                self._ended(a, None, e)
                raise
        net.send = send

    def _ended(self, a: Attempt, header: dict | None, error: BaseException | None) -> None:
        if error is not None:
            outcome = {tp: type(error).__name__ for tp in a.parts}
        elif header is None:
            outcome = {tp: OK for tp in a.parts}
        else:
            codes = {(p[0], p[1]): p[2] for p in header.get("parts") or ()}
            outcome = {}
            for tp in a.parts:
                code = codes.get(tp, None)
                outcome[tp] = ("missing from the response" if code is None else
                               OK if code == 0 else zerrors.error_for_code(code).__name__)
        with self.lock:
            a.outcome = outcome
            a.answered_at = time.monotonic()
            for tp, n in zip(a.parts, a.batches):
                self._in_flight[tp] -= 1
                self._batches_in_flight[tp] -= n

    def errors(self) -> collections.Counter:
        """Error name -> how many partitions of Produce requests ended with it."""
        with self.lock:
            return collections.Counter(o for a in self.attempts for o in (a.outcome or {}).values()
                                       if o != OK)

    def ended(self) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.outcome is not None]
