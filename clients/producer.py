"""The Producer: ``send()`` appends to per-partition batches; a background I/O thread sends them.

    from clients import Producer
    with Producer(bootstrap_servers="127.0.0.1:9092", acks=1) as p:
        fut = p.send("events", b"value", key=b"user-1")
        meta = fut.result(10)          # RecordMetadata(topic, partition, offset, timestamp)

How it works (the design of ../shared/DESIGN.md, "Clients"):

* ``send()`` picks the partition (``clients.partitioner``: xxh32 of the key, or the topic's sticky
  partition for keyless records), then, under one lock, appends the record to that partition's
  open batch as one row tuple (``zbroker.records.make_row``'s shape; nothing is encoded yet) and
  returns a ``FutureRecordMetadata``: a three-field handle on the *batch's* shared result
  (offset = batch base offset + the record's offset delta), so no future, event or lock is made
  per record. A batch is sealed when it reaches ``batch_size`` bytes; the I/O thread then packs
  all its rows with one msgpack call (``records.build_rows``). Keyless records without headers
  take a shorter path through ``send()`` (the common case; see there).
* The I/O thread owns the sockets (``clients._net``). Each turn it seals batches older than
  ``linger_ms``, groups the sealed batches of every partition by leader, and sends one Produce
  request per broker holding every ready batch (up to ``max_request_size`` bytes), keeping at most
  ``max_in_flight`` requests in flight per broker. Responses complete the batches; callbacks run
  on the I/O thread.
* Retriable errors (leader moved, timeouts, lost connections) put the batch back in its
  partition's queue, in the order the batches were made, after ``retry_backoff_ms`` and refresh
  metadata, until ``retries`` or ``delivery_timeout_ms`` run out.
* Idempotence (the default, as in Kafka since 3.0): the producer gets a producer id and epoch
  from a broker (InitProducerId) and stamps each batch, when it is first sent, with the next
  sequence number of its partition. The leader writes a batch once: a resend of a batch it has
  is answered with the original offsets, a gap is refused. At most five requests carry a
  partition's batches at a time (the leader remembers the producer's last five runs of
  batches, zbroker/storage/producer_state.py), and a resend goes out only once nothing of its
  partition is in flight, so the log order is the ``send()`` order per partition. When a
  leader has lost the producer's state (UNKNOWN_PRODUCER_ID) or a batch failed for good and
  left a gap, the producer first resolves every batch whose fate it does not know (resending
  it as it was), then bumps its epoch and numbers what is not acknowledged from 0 again.
  Without idempotence (``enable_idempotence=False``, or acks 0/1 or more than 5 in flight
  when idempotence was not asked for), a record sent when its connection dropped may be
  written twice (at-least-once); ``max_in_flight=1`` keeps the order under retries.
* ``buffer_memory`` bounds the bytes of unfinished batches: ``send()`` blocks up to
  ``max_block_ms`` when it is used up (and for metadata of a topic it has not seen yet).
"""

from __future__ import annotations

import collections
import os
import threading
import time

from clients import partitioner
from clients._metrics import PRODUCER_METRICS, ClientMetrics
from clients._net import NetworkClient, client_security, topic_error
from clients.errors import (BrokerConnectionError, IllegalStateError, MessageTooLarge,
                            NoBrokersAvailable, RequestTimedOut, UnknownServerError,
                            UnknownTopicOrPartition, ZbError)
from clients.structs import RecordMetadata
from zbroker import errors, protocol
from zbroker.logs import get_logger
from zbroker import records

log = get_logger("clients.producer")

_monotonic = time.monotonic
_time_ns = time.time_ns
_xxh32 = partitioner.xxh32
_UNKNOWN_TOPIC = errors.UnknownTopicOrPartition.code
_ROW_BYTES = records.ROW_BYTES
_NO_HEADERS = records.NO_HEADERS
RECORD_OVERHEAD_BYTES = 64      # a generous bound of one record's framing in a batch


class _Batch:
    """One partition's batch, from the first ``send()`` into it until its result is known. It is
    also the shared result object every record's ``FutureRecordMetadata`` points to."""

    __slots__ = ("owner", "topic", "partition", "rows", "base_timestamp", "size", "seq",
                 "created", "reserved", "data", "count", "attempts", "retry_at", "last_error",
                 "done", "error", "base_offset", "log_append_time", "callbacks", "base_seq",
                 "unknown")

    def __init__(self, owner, topic, partition, base_timestamp, seq, created, reserved):
        self.owner = owner
        self.topic = topic
        self.partition = partition
        self.rows = []                  # records.make_row's tuples, until the batch is built
        self.base_timestamp = base_timestamp
        self.size = records.HEADER_SIZE + 5     # a bound of the built size, in bytes
        self.seq = seq
        self.created = created
        self.reserved = reserved
        self.data = None
        self.count = 0
        self.attempts = 0
        self.retry_at = 0.0
        self.last_error = None
        self.done = False
        self.error = None
        self.base_offset = -1
        self.log_append_time = -1
        self.callbacks = None
        self.base_seq = None            # idempotence: the sequence stamped in ``data``
        self.unknown = False            # sent, and not known whether the leader wrote it


class FutureRecordMetadata:
    """What ``Producer.send`` returns: resolves to a ``RecordMetadata`` or raises the error that
    failed the record. Mirrors ``concurrent.futures.Future`` (``result``, ``exception``, ``done``,
    ``add_done_callback``) and kafka-python (``get``, ``succeeded``, ``failed``, ``add_callback``,
    ``add_errback``). Callbacks run on the producer's I/O thread: keep them short."""

    __slots__ = ("_batch", "_delta", "_timestamp")

    def __init__(self, batch: _Batch, delta: int, timestamp: int):
        self._batch = batch
        self._delta = delta
        self._timestamp = timestamp

    def done(self) -> bool:
        return self._batch.done

    def succeeded(self) -> bool:
        return self._batch.done and self._batch.error is None

    def failed(self) -> bool:
        return self._batch.done and self._batch.error is not None

    def _metadata(self) -> RecordMetadata:
        b = self._batch
        offset = b.base_offset + self._delta if b.base_offset >= 0 else -1
        ts = b.log_append_time if b.log_append_time >= 0 else self._timestamp
        return RecordMetadata(b.topic, b.partition, offset, ts)

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """Wait up to ``timeout`` seconds (None: for ever); raises TimeoutError if not done."""
        b = self._batch
        if not b.done:
            b.owner._wait_batch(b, timeout)
        if b.error is not None:
            raise b.error
        return self._metadata()

    get = result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        b = self._batch
        if not b.done:
            b.owner._wait_batch(b, timeout)
        return b.error

    def add_done_callback(self, fn) -> None:
        """``fn(future)`` once done (at once, on this thread, if already done)."""
        self._batch.owner._add_callback(self._batch, lambda: fn(self))

    def add_callback(self, fn) -> None:
        """``fn(record_metadata)`` on success."""
        self._batch.owner._add_callback(
            self._batch, lambda: fn(self._metadata()) if self._batch.error is None else None)

    def add_errback(self, fn) -> None:
        """``fn(exception)`` on failure."""
        self._batch.owner._add_callback(
            self._batch, lambda: fn(self._batch.error) if self._batch.error is not None else None)

    def __repr__(self):
        state = ("pending" if not self._batch.done else
                 "failed" if self._batch.error is not None else "done")
        return f"<FutureRecordMetadata {self._batch.topic}-{self._batch.partition} {state}>"


def _acks(value) -> int:
    if value in ("all", "-1", -1):
        return -1
    if value in (0, 1, "0", "1"):
        return int(value)
    raise ValueError(f"acks must be 0, 1, -1 or 'all', not {value!r}.")


IDEMPOTENT_IN_FLIGHT_MAX = 5        # requests of a partition in flight: the runs a leader keeps
PRODUCER_EPOCH_MAX = (1 << 15) - 1
# Errors that say the leader did not write the batch: anything else leaves its fate unknown.
# (Not NOT_LEADER_OR_FOLLOWER: a leader that loses its leadership answers it to the acks=all
# produces it had already written.)
_NOT_WRITTEN = (errors.UnknownTopicOrPartition, errors.LeaderNotAvailable,
                errors.NotEnoughReplicas,
                errors.OutOfOrderSequenceNumber, errors.UnknownProducerId,
                errors.InvalidProducerEpoch, errors.FencedLeaderEpoch,
                errors.UnknownLeaderEpoch, errors.CorruptMessage, errors.MessageTooLarge,
                errors.InvalidTopic, errors.InvalidRequiredAcks, errors.InvalidRequest)


def _idempotence(enable, acks, max_in_flight, retries) -> bool:
    """Kafka's rules (KIP-679): on by default unless acks 0/1, more than 5 in flight or no
    retries were asked for; asked for explicitly, those settings are an error."""
    if enable is None:
        return acks == -1 and max_in_flight <= IDEMPOTENT_IN_FLIGHT_MAX and retries > 0
    if not enable:
        return False
    if acks != -1:
        raise ValueError(f"enable_idempotence=True needs acks='all' (the default), not "
                         f"acks={acks}.")
    if max_in_flight > IDEMPOTENT_IN_FLIGHT_MAX:
        raise ValueError(f"enable_idempotence=True allows at most "
                         f"{IDEMPOTENT_IN_FLIGHT_MAX} requests in flight, not {max_in_flight}.")
    if retries <= 0:
        raise ValueError("enable_idempotence=True needs retries > 0.")
    return True


class Producer:
    """Publishes records to topics. Thread-safe: ``send`` may be called from many threads.

    Settings (Kafka's names and defaults where the concept is Kafka's):

    bootstrap_servers    "host:port,..." of one or more brokers
    enable_idempotence   write each record exactly once and in order through retries and
                         failovers (default: on, unless acks, max_in_flight or retries were set
                         to something it cannot work with; True with those is an error)
    acks                 0 (no response; futures resolve with offset -1 once sent), 1 (leader
                         appended), -1 or "all" (the in-sync replicas have it; the default)
    linger_ms            how long a batch may wait for more records before it is sent
    batch_size           bytes at which a partition's batch is sealed and sent (16384)
    max_in_flight        Produce requests in flight per broker (alias
                         max_in_flight_requests_per_connection; default 5); without
                         idempotence only 1 keeps the order under retries
    retries              resends of a batch after retriable errors (bounded by delivery_timeout_ms)
    retry_backoff_ms     pause before a resend and between metadata refreshes
    compression          None or "zlib" (alias compression_type)
    request_timeout_ms   how long a request may go unanswered
    delivery_timeout_ms  how long a record may take from send() to success or failure
    max_request_size     bytes of one Produce request; a bigger record is refused at send()
    buffer_memory        bytes of unfinished batches before send() blocks
    max_block_ms         how long send() may block (metadata, full buffer)
    metadata_max_age_ms  metadata is refreshed at least this often
    unknown_topic_wait_ms  how long send() keeps asking about a topic the cluster says does not
                         exist before raising UnknownTopicOrPartition
    bootstrap_timeout_ms how long the constructor waits for a first answer from the bootstrap
                         brokers before raising NoBrokersAvailable
    allow_auto_create_topics  let Metadata create a missing topic (when the brokers allow it,
                         auto.create.topics.enable); off by default, so a mistyped topic name
                         is an error instead of a new topic
    """

    def __init__(self, bootstrap_servers: str = "localhost:9092", *, client_id: str | None = None,
                 enable_idempotence: bool | None = None,
                 acks="all", linger_ms: float = 5, batch_size: int = 16384,
                 max_in_flight: int = 5,
                 max_in_flight_requests_per_connection: int | None = None,
                 retries: int = 2147483647, retry_backoff_ms: int = 100,
                 compression: str | None = None, compression_type: str | None = None,
                 request_timeout_ms: int = 30000, delivery_timeout_ms: int = 120000,
                 max_request_size: int = 1048576, buffer_memory: int = 33554432,
                 max_block_ms: int = 60000, metadata_max_age_ms: int = 300000,
                 unknown_topic_wait_ms: int = 2000, bootstrap_timeout_ms: int = 10000,
                 allow_auto_create_topics: bool = False,
                 security_protocol: str | None = None, curve_secret_key_file: str | None = None,
                 curve_server_key_file: str | None = None):
        self.acks = _acks(acks)
        self.allow_auto_create_topics = allow_auto_create_topics
        if max_in_flight_requests_per_connection is not None:
            max_in_flight = max_in_flight_requests_per_connection
        compression = compression if compression is not None else compression_type
        if compression in (None, "none"):
            compression = "none"
        codec = records.codec_of(compression)   # raises ValueError for an unknown codec
        for name, v, lo in (("batch_size", batch_size, 1), ("max_in_flight", max_in_flight, 1),
                            ("request_timeout_ms", request_timeout_ms, 1),
                            ("max_request_size", max_request_size, 1024),
                            ("buffer_memory", buffer_memory, 1), ("retries", retries, 0),
                            ("linger_ms", linger_ms, 0), ("max_block_ms", max_block_ms, 0)):
            if not isinstance(v, (int, float)) or v < lo:
                raise ValueError(f"{name} must be a number >= {lo}, not {v!r}.")
        if buffer_memory < batch_size:
            raise ValueError("buffer_memory must be at least batch_size.")
        if enable_idempotence not in (None, True, False):
            raise ValueError(f"enable_idempotence must be True or False, not "
                             f"{enable_idempotence!r}.")
        self.enable_idempotence = _idempotence(enable_idempotence, self.acks, max_in_flight,
                                               retries)
        self.client_id = client_id
        self.compression = compression
        self._codec = codec
        self.linger_s = linger_ms / 1000
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.request_timeout_ms = min(request_timeout_ms, protocol.REQUEST_TIMEOUT_MS_MAX)
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self.max_request_size = max_request_size
        self.record_bytes_max = max_request_size - 1024     # room for the request's framing
        self._fast_value_bytes_max = self.record_bytes_max - RECORD_OVERHEAD_BYTES
        self.buffer_memory = buffer_memory
        self.max_block_s = max_block_ms / 1000
        self.metadata_max_age_s = metadata_max_age_ms / 1000
        self.unknown_topic_wait_s = unknown_topic_wait_ms / 1000

        self._net = NetworkClient(bootstrap_servers, request_timeout_ms=self.request_timeout_ms,
                                  security=client_security(security_protocol,
                                                           curve_secret_key_file,
                                                           curve_server_key_file))
        self.bootstrap_servers = self._net.bootstrap_text
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters = 0
        # shared with send() (under _lock)
        self._open: dict[tuple[str, int], _Batch] = {}      # insertion order = creation order
        self._sealed: collections.deque[_Batch] = collections.deque()
        self._incomplete: dict[int, _Batch] = {}
        self._seq = 0
        self._reserved_bytes = 0        # written by send() under _lock
        self._released_bytes = 0        # written by the I/O thread only
        self._sticky: dict[str, int] = {}
        self._sticky_batch: dict[str, _Batch] = {}     # topic -> its sticky partition's batch
        self._io_wake_at = 0.0          # when the idle I/O thread wakes by itself
        self._topics_wanted: set[str] = set()
        self._io_idle = False
        self._closing = False
        self._closed = False
        self._abort_error: ZbError | None = None
        # published by the I/O thread (replaced, never mutated)
        self._partition_counts: dict[str, int] = {}
        self._topic_errors: dict[str, int] = {}
        # owned by the I/O thread
        self._queues: dict[tuple[str, int], collections.deque[_Batch]] = {}
        self._muted: set[tuple[str, int]] = set()
        self._metadata_in_flight = False
        self._metadata_due = 0.0
        self._metadata_next_refresh = 0.0
        self._need_metadata = True
        # idempotence (I/O thread): the producer id and epoch, each partition's next sequence
        # and its frames in flight (each a list of batches, in sequence order), and the epoch
        # bump under way
        self._producer_id = -1
        self._producer_epoch = -1
        self._pid_in_flight = False
        self._pid_due = 0.0
        self._next_seq: dict[tuple[str, int], int] = {}
        self._inflight: dict[tuple[str, int], list[list[_Batch]]] = {}
        self._bump_wanted = False
        self._produce_in_flight = 0
        self._metrics = ClientMetrics()
        self._bootstrapped = threading.Event()
        self._bootstrap_error: ZbError | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._net.add_wake_fd(self._wake_r)
        self._io_thread = threading.Thread(target=self._io_main, daemon=True,
                                           name="zb-producer-io")
        self._io_thread.start()
        if self._bootstrapped.wait(bootstrap_timeout_ms / 1000) and self._bootstrap_error:
            self.close(0)
            raise self._bootstrap_error
        if not self._bootstrapped.is_set():
            self.close(0)
            raise NoBrokersAvailable(f"No broker answered at {self.bootstrap_servers} within "
                                     f"{bootstrap_timeout_ms / 1000:g} seconds.")

    # --- public API ---------------------------------------------------------------------------
    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             partition: int | None = None, headers=None,
             timestamp_ms: int | None = None) -> FutureRecordMetadata:
        """Queue one record; returns a future of its ``RecordMetadata``. ``headers`` is a list
        of ``(str, bytes | None)`` pairs. Raises at once for what cannot succeed: an unknown
        topic or partition, a record over ``max_request_size``, a closed producer."""
        if timestamp_ms is None:
            timestamp_ms = _time_ns() // 1_000_000
        if (key is None and partition is None and headers is None and
                value.__class__ is bytes and len(value) <= self._fast_value_bytes_max):
            # The common case, kept short: a keyless record without headers goes into the
            # topic's sticky batch as one row tuple; build() packs the rows in C later.
            lock = self._lock
            lock.acquire()
            try:
                batch = self._sticky_batch.get(topic)
                if batch is not None:
                    rows = batch.rows
                    delta = len(rows)
                    rows.append((delta, timestamp_ms - batch.base_timestamp, None, value,
                                 _NO_HEADERS))
                    batch.size += len(value) + _ROW_BYTES
                    if batch.size >= self.batch_size:
                        self._seal(batch)
                    return FutureRecordMetadata(batch, delta, timestamp_ms)
            finally:
                lock.release()
        return self._send(topic, value, key, partition, headers, timestamp_ms)

    def _send(self, topic, value, key, partition, headers, timestamp_ms) -> FutureRecordMetadata:
        """``send()`` for every record the fast path does not take."""
        n = self._partition_counts.get(topic)
        if n is None:
            n = self._await_topic(topic)
        if key is not None and partition is None:
            partition = _xxh32(key) % n
        row, size = records.make_row(0, 0, key, value, headers)    # checks the types
        if size - _ROW_BYTES > self.record_bytes_max - RECORD_OVERHEAD_BYTES:
            self._check_size(key, value, headers)
        with self._lock:
            if partition is None:           # keyless: the topic's sticky batch
                batch = self._sticky_batch.get(topic)
                if batch is None:
                    batch = self._new_sticky_batch(topic, n, timestamp_ms)
            else:
                batch = self._open.get((topic, partition))
                if batch is None:
                    if not 0 <= partition < n:
                        raise UnknownTopicOrPartition(
                            f"The topic {topic!r} has {n} partitions; there is no partition "
                            f"{partition}.")
                    batch = self._new_batch(topic, partition, timestamp_ms)
            rows = batch.rows
            delta = len(rows)
            rows.append((delta, timestamp_ms - batch.base_timestamp, row[2], row[3], row[4]))
            batch.size += size
            if batch.size >= self.batch_size:
                self._seal(batch)
        return FutureRecordMetadata(batch, delta, timestamp_ms)

    def metrics(self) -> dict:
        """kafka-python's producer metrics: {"producer-metrics": {name: value}} with
        record-send-rate/-total, record-error-rate/-total, record-retry-rate/-total,
        byte-rate/-total, batch-size-avg/-max, records-per-request-avg, request-rate/-total,
        request-latency-avg/-max (ms) and requests-in-flight. Rates and averages cover the
        last 30 s."""
        values = self._metrics.values(PRODUCER_METRICS)
        values["requests-in-flight"] = float(self._produce_in_flight)
        return {"producer-metrics": values}

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now and wait until each of those records has succeeded or
        failed. Raises TimeoutError after ``timeout`` seconds."""
        with self._lock:
            for batch in list(self._open.values()):
                self._seal(batch)
            pending = list(self._incomplete.values())
            self._wake()
        deadline = None if timeout is None else _monotonic() + timeout
        for b in pending:
            if not b.done:
                self._wait_batch(b, None if deadline is None else max(0.0, deadline - _monotonic()))

    def partitions_for(self, topic: str) -> set[int]:
        """The topic's partition numbers (fetches metadata if needed)."""
        n = self._partition_counts.get(topic)
        if n is None:
            n = self._await_topic(topic)
        return set(range(n))

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued, wait for it (up to ``timeout`` seconds; None: for ever), stop.
        Whatever is still unfinished after the timeout fails with RequestTimedOut."""
        with self._lock:
            if self._closed:
                return
            self._closing = True
            for batch in list(self._open.values()):
                self._seal(batch)
            self._wake()
        if threading.current_thread() is not self._io_thread:
            self._io_thread.join(timeout)
            if self._io_thread.is_alive():
                self._abort_error = RequestTimedOut(
                    f"The producer was closed before the record was sent (waited {timeout} s).")
                self._wake()
                self._io_thread.join()
        with self._lock:
            self._closed = True
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- send() helpers (caller's thread) -----------------------------------------------------
    def _check_size(self, key, value, headers) -> None:
        size = (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
        if headers:
            for hk, hv in headers:
                size += len(hk) + (len(hv) if hv is not None else 0)
        if size + RECORD_OVERHEAD_BYTES > self.record_bytes_max:
            raise MessageTooLarge(f"The record is {size} bytes, more than max_request_size "
                                  f"({self.max_request_size} bytes) allows.")

    def _new_sticky_batch(self, topic: str, n: int, timestamp_ms: int) -> _Batch:
        """Under _lock: the open batch of the topic's sticky partition (a new one if needed)."""
        partition = self._sticky.get(topic)
        if partition is None or partition >= n:
            partition = self._sticky[topic] = partitioner.next_sticky_partition(n, None)
        batch = self._open.get((topic, partition))
        if batch is None:
            batch = self._new_batch(topic, partition, timestamp_ms)
        self._sticky_batch[topic] = batch
        return batch

    def _new_batch(self, topic: str, partition: int, timestamp_ms: int) -> _Batch:
        """Under _lock: a new open batch (``timestamp_ms``: of its first record); blocks while
        buffer_memory is used up."""
        if self._closing:
            raise IllegalStateError("The producer is closed; send() is no longer possible.")
        reserve = self.batch_size
        if self._reserved_bytes - self._released_bytes + reserve > self.buffer_memory:
            deadline = _monotonic() + self.max_block_s
            self._waiters += 1
            try:
                while self._reserved_bytes - self._released_bytes + reserve > self.buffer_memory:
                    left = deadline - _monotonic()
                    if left <= 0:
                        raise RequestTimedOut(f"The producer's buffer ({self.buffer_memory} "
                                              f"bytes) stayed full for max_block_ms.")
                    self._cond.wait(left)
                    if self._closing:
                        raise IllegalStateError("The producer is closed.")
            finally:
                self._waiters -= 1
            existing = self._open.get((topic, partition))
            if existing is not None:        # another thread made one while we waited
                return existing
        self._seq += 1
        batch = _Batch(self, topic, partition, timestamp_ms, self._seq, _monotonic(), reserve)
        self._reserved_bytes += reserve
        self._open[(topic, partition)] = batch
        self._incomplete[batch.seq] = batch
        if self._io_idle and self._io_wake_at > batch.created + self.linger_s:
            self._wake()                    # it sleeps past this batch's linger deadline
        return batch

    def _seal(self, batch: _Batch) -> None:
        """Under _lock: no more records go into ``batch``; hand it to the I/O thread."""
        del self._open[(batch.topic, batch.partition)]
        self._sealed.append(batch)
        if self._sticky_batch.get(batch.topic) is batch:
            del self._sticky_batch[batch.topic]
        if self._sticky.get(batch.topic) == batch.partition:
            n = self._partition_counts.get(batch.topic, 1)
            self._sticky[batch.topic] = partitioner.next_sticky_partition(n, batch.partition)
        if self._io_idle:
            self._wake()

    def _wake(self) -> None:
        self._io_idle = False
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _await_topic(self, topic: str) -> int:
        protocol.check_topic_name(topic)
        start = _monotonic()
        with self._lock:
            if self._closing:
                raise IllegalStateError("The producer is closed; send() is no longer possible.")
            self._topics_wanted.add(topic)
            self._need_metadata = True
            self._wake()
            self._waiters += 1
            try:
                while True:
                    n = self._partition_counts.get(topic)
                    if n:
                        return n
                    now = _monotonic()
                    err = self._topic_errors.get(topic)
                    if err is not None:
                        retriable = errors.error_for_code(err).retriable
                        if not retriable or (err == _UNKNOWN_TOPIC and
                                             now - start >= self.unknown_topic_wait_s):
                            raise topic_error(err, topic, self.bootstrap_servers)
                    if now - start >= self.max_block_s:
                        raise RequestTimedOut(f"The topic {topic!r} was not present in the "
                                              f"metadata after {self.max_block_s * 1000:g} ms.")
                    self._cond.wait(0.05)
            finally:
                self._waiters -= 1

    def _wait_batch(self, batch: _Batch, timeout: float | None) -> None:
        deadline = None if timeout is None else _monotonic() + timeout
        with self._lock:
            self._waiters += 1
            try:
                while not batch.done:
                    if deadline is None:
                        self._cond.wait(1.0)
                        continue
                    left = deadline - _monotonic()
                    if left <= 0:
                        raise TimeoutError(f"The record to {batch.topic}-{batch.partition} was "
                                           f"not acknowledged within {timeout:g} s.")
                    self._cond.wait(left)
            finally:
                self._waiters -= 1

    def _add_callback(self, batch: _Batch, call) -> None:
        with self._lock:
            if not batch.done:
                if batch.callbacks is None:
                    batch.callbacks = []
                batch.callbacks.append(call)
                return
        call()

    # --- I/O thread ---------------------------------------------------------------------------
    def _io_main(self) -> None:
        try:
            self._io_loop()
        except Exception as e:
            log.exception("producer I/O thread failed")
            self._abort_error = UnknownServerError(f"The producer's I/O thread failed: {e!r}")
        finally:
            err = self._abort_error or IllegalStateError("The producer is closed.")
            with self._lock:
                self._closing = True
                for batch in list(self._open.values()):
                    self._seal(batch)
            self._take_sealed()
            self._fail_queued(err)
            self._net.close()

    def _io_loop(self) -> None:
        net = self._net
        while True:
            now = _monotonic()
            self._io_wake_at = float("inf")     # until it is known: a new batch wakes us
            self._io_idle = True
            linger_at = self._next_linger(now)
            if linger_at is not None and linger_at <= now:
                with self._lock:
                    linger_at = self._seal_lingering(now)
            closing = self._closing
            unfinished = len(self._incomplete)
            self._take_sealed()
            if self._abort_error is not None:
                return
            self._maybe_request_metadata(now)
            if self.enable_idempotence:
                self._idempotence_turn(now)
            self._drain(now)
            if closing and unfinished == 0 and net.total_in_flight() == 0:
                return
            wake_at = now + 1.0
            if linger_at is not None:
                wake_at = min(wake_at, linger_at)
            if self._need_metadata and not self._metadata_in_flight:
                wake_at = min(wake_at, self._metadata_due)
            if self.enable_idempotence and self._producer_id < 0 and not self._pid_in_flight:
                wake_at = min(wake_at, self._pid_due)
            for q in self._queues.values():
                if q:
                    wake_at = min(wake_at, max(q[0].retry_at, now + 0.005))
            d = net.next_deadline()
            if d is not None:
                wake_at = min(wake_at, d)
            self._io_wake_at = wake_at
            if net.poll(max(0.0, wake_at - _monotonic())):
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            self._io_idle = False
            self._expire_queued(_monotonic())

    def _next_linger(self, now: float) -> float | None:
        """When the oldest open batch is due (now when closing), read without _lock: one
        ``next()`` on a fresh dict iterator is atomic under the GIL."""
        try:
            oldest = next(iter(self._open.values()))
        except (StopIteration, RuntimeError):
            return None
        return now if self._closing else oldest.created + self.linger_s

    def _seal_lingering(self, now: float) -> float | None:
        """Under _lock: seal open batches that lingered long enough (all when closing); returns
        when the next one is due."""
        linger = self.linger_s
        for batch in list(self._open.values()):
            if self._closing or batch.created + linger <= now:
                self._seal(batch)
            else:
                return batch.created + linger
        return None

    def _take_sealed(self) -> None:
        """Move sealed batches to their partition's queue, building each at once: a built
        batch is one bytes object, while an unbuilt one holds a row tuple per record that the
        garbage collector may walk while the batch waits for a free in-flight slot."""
        sealed = self._sealed
        queues = self._queues
        while sealed:
            b = sealed.popleft()
            if b.data is None and b.rows:
                self._build(b)
            tp = (b.topic, b.partition)
            q = queues.get(tp)
            if q is None:
                q = queues[tp] = collections.deque()
            q.append(b)

    def _build(self, b: _Batch) -> None:
        b.data = records.build_rows(b.rows, b.base_timestamp, self._codec)
        b.count = len(b.rows)
        b.rows = None

    def _maybe_request_metadata(self, now: float) -> None:
        if self._metadata_in_flight:
            return
        if now >= self._metadata_next_refresh:
            self._need_metadata = True
        if not self._need_metadata or now < self._metadata_due:
            return
        with self._lock:
            topics = sorted(self._topics_wanted)
        self._metadata_in_flight = True
        self._need_metadata = False
        self._metadata_due = now + self.retry_backoff_s
        self._net.request_metadata(topics, self._on_metadata,
                                   allow_auto_create=self.allow_auto_create_topics,
                                   timeout_ms=min(self.request_timeout_ms, 5000))

    def _on_metadata(self, error: ZbError | None) -> None:
        self._metadata_in_flight = False
        if isinstance(error, errors.AuthenticationFailed) and not self._bootstrapped.is_set():
            self._bootstrap_error = error       # no broker will let us in: say so now
            self._bootstrapped.set()
            return
        now = _monotonic()
        if error is not None:
            log.debug("metadata request failed", error=str(error))
            self._need_metadata = True
            return
        cluster = self._net.cluster
        self._metadata_next_refresh = now + self.metadata_max_age_s
        counts = {t: len(parts) for t, parts in cluster.topics.items() if parts}
        with self._lock:
            self._partition_counts = counts
            self._topic_errors = dict(cluster.topic_errors)
            missing = [t for t in self._topics_wanted if t not in counts]
            if self._waiters:
                self._cond.notify_all()
        if missing:
            self._need_metadata = True
        self._bootstrapped.set()

    # --- idempotence ------------------------------------------------------------------------------
    def _idempotence_turn(self, now: float) -> None:
        """Get a producer id when there is none; bump the epoch once it is safe."""
        if self._bump_wanted and self._produce_in_flight == 0 and not any(
                b.unknown for q in self._queues.values() for b in q):
            self._bump_epoch()
        if self._producer_id >= 0 or self._pid_in_flight or now < self._pid_due or \
                not self._bootstrapped.is_set():
            return
        nodes = self._net.metadata_nodes()
        if not nodes:
            return
        self._pid_in_flight = True
        self._pid_due = now + self.retry_backoff_s
        try:
            self._net.send(nodes[0], "InitProducerId", {"transactional_id": None},
                           handler=self._on_producer_id,
                           timeout_ms=min(self.request_timeout_ms, 5000))
        except ZbError as e:
            self._on_producer_id(None, None, e)

    def _on_producer_id(self, header: dict | None, _blobs, error: ZbError | None) -> None:
        self._pid_in_flight = False
        if error is None:
            pid, epoch = header.get("producer_id"), header.get("producer_epoch")
            if isinstance(pid, int) and isinstance(epoch, int) and pid >= 0 and epoch >= 0:
                self._producer_id, self._producer_epoch = pid, epoch
                self._next_seq.clear()
                log.debug("producer id", producer_id=pid, producer_epoch=epoch)
                return
            error = UnknownServerError("The broker's InitProducerId response is malformed.")
        log.debug("InitProducerId failed", error=str(error))
        if not error.retriable and not isinstance(error, (BrokerConnectionError,
                                                          RequestTimedOut)):
            self._abort_error = UnknownServerError(
                f"The producer could not get a producer id from the brokers "
                f"({str(error).rstrip('.')}); pass enable_idempotence=False to produce "
                f"without idempotence.")

    def _bump_epoch(self) -> None:
        """Nothing is in flight and every batch's fate is known: start a new epoch (a new id
        after the last epoch) and number what is not acknowledged from 0 again."""
        self._bump_wanted = False
        if self._producer_epoch >= PRODUCER_EPOCH_MAX:
            self._producer_id = self._producer_epoch = -1
        else:
            self._producer_epoch += 1
        self._next_seq.clear()
        for q in self._queues.values():
            for b in q:
                b.base_seq = None
        log.info("producer epoch bumped", producer_id=self._producer_id,
                 producer_epoch=self._producer_epoch)

    def _stamp(self, tp, b: _Batch) -> None:
        seq = self._next_seq.get(tp, 0)
        b.data = records.with_producer(b.data, self._producer_id, self._producer_epoch, seq)
        b.base_seq = seq
        self._next_seq[tp] = (seq + b.count) % (1 << 31)

    def _sendable(self, tp, q) -> bool:
        """Idempotence: may the head of ``tp``'s queue go now?"""
        if self._producer_id < 0:
            return False
        head = q[0]
        inflight = self._inflight.get(tp)
        if self._bump_wanted:           # only resends of batches whose fate is unknown
            return not inflight and any(b.unknown for b in q)
        if head.base_seq is not None and inflight:
            return False                # a resend waits until its partition is quiet
        return len(inflight or ()) < IDEMPOTENT_IN_FLIGHT_MAX

    def _drain(self, now: float) -> None:
        net, cluster = self._net, self._net.cluster
        by_node: dict[int, list[tuple[str, int]]] = {}
        idempotent = self.enable_idempotence
        for tp, q in self._queues.items():
            if not q or q[0].retry_at > now or tp in self._muted:
                continue
            if idempotent and not self._sendable(tp, q):
                continue
            leader = cluster.leader(tp[0], tp[1])
            if leader < 0:
                self._need_metadata = True
                continue
            by_node.setdefault(leader, []).append(tp)
        acks, limit = self.acks, self.max_in_flight
        for node, tps in by_node.items():
            while tps and (acks == 0 or net.in_flight(node) < limit):
                if not net.ready(node):
                    # the leader may be gone for good (kill -9): ask again who leads, at most
                    # every retry_backoff_ms, until the controller has moved leadership
                    self._need_metadata = True
                    break
                tps = self._send_request(node, tps, now)

    def _send_request(self, node: int, tps: list, now: float) -> list:
        """Send one Produce request to ``node`` with the ready batches of ``tps``; returns the
        partitions that still have ready batches."""
        parts, blobs, context = [], [], []
        room = self.max_request_size - 1024
        rest = []
        cluster = self._net.cluster
        mute = self.max_in_flight == 1     # one request per partition in flight: the
        # partition's batches of one request succeed or fail together (one frame), so a retry
        # resends them in order before anything newer
        idempotent = self.enable_idempotence
        for tp in tps:
            q = self._queues[tp]
            taken, datas = [], []
            if idempotent:
                if not q or not self._sendable(tp, q):
                    continue            # (this request already took what may go now)
                inflight = self._inflight.setdefault(tp, [])
                if self._bump_wanted:
                    # Before a new epoch, learn the fate of each batch sent without an answer:
                    # resent as it was, one at a time, it is a duplicate (written) or refused
                    # (the leader's sequence check never writes it past an unwritten one).
                    b = next((b for b in q if b.unknown), None)
                    if b is not None and b.retry_at <= now:
                        q.remove(b)
                        frame = [b]
                        inflight.append(frame)
                        parts.append(protocol.ProducePart(tp[0], tp[1],
                                                          cluster.leader_epoch(tp[0], tp[1])))
                        blobs.append(b.data)
                        context.append((tp, frame))
                    continue
            while q and q[0].retry_at <= now:
                b = q[0]
                if b.data is None:
                    if not b.rows:                # no record made it in
                        q.popleft()
                        self._complete([b], None, -1, -1)
                        continue
                    self._build(b)
                if len(b.data) > room and (taken or context):
                    break
                if idempotent:
                    if b.base_seq is None:
                        self._stamp(tp, b)
                    b.unknown = True            # until the leader answers
                q.popleft()
                taken.append(b)
                datas.append(b.data)
                room -= len(b.data)
            if taken:
                if idempotent:
                    inflight.append(taken)
                parts.append(protocol.ProducePart(tp[0], tp[1],
                                                  cluster.leader_epoch(tp[0], tp[1])))
                blobs.append(datas[0] if len(datas) == 1 else b"".join(datas))
                context.append((tp, taken))
                if mute:
                    self._muted.add(tp)
            if q and q[0].retry_at <= now and not mute:
                rest.append(tp)
            if room <= 0:
                rest.extend(t for t in tps[tps.index(tp) + 1:])
                break
        if not context:
            return []
        m = self._metrics
        records = 0
        for _, taken in context:
            for b in taken:
                b.attempts += 1
                records += b.count
                m.record("batch_bytes", len(b.data))
        m.record("bytes_sent", sum(len(x) for x in blobs))
        m.record("request_records", records)
        fields = {"acks": self.acks, "timeout_ms": self.request_timeout_ms, "parts": parts}
        if self.acks == 0:
            try:
                self._net.send(node, "Produce", fields, blobs)
            except ZbError as e:
                for tp, taken in context:
                    self._retry_or_fail(tp, taken, e, now)
                return []
            for _, taken in context:
                self._complete(taken, None, -1, -1)
            return rest

        def on_response(header, _blobs, error, node=node, context=context, sent=now):
            self._metrics.record("request_latency_ms", (_monotonic() - sent) * 1000)
            self._produce_in_flight -= 1
            self._on_produce_response(node, context, header, error)
        self._produce_in_flight += 1
        try:
            self._net.send(node, "Produce", fields, blobs, handler=on_response)
        except ZbError as e:
            on_response(None, None, e)
            return []
        return rest

    def _on_produce_response(self, node: int, context: list, header: dict | None,
                             error: ZbError | None) -> None:
        now = _monotonic()
        for tp, taken in context:
            self._muted.discard(tp)
            inflight = self._inflight.get(tp)
            if inflight:
                for i, frame in enumerate(inflight):
                    if frame is taken:
                        del inflight[i]
                        break
        if error is not None:
            if error.invalid_metadata or isinstance(error, (BrokerConnectionError,
                                                            RequestTimedOut)):
                self._need_metadata = True
            for tp, taken in context:
                self._retry_or_fail(tp, taken, error, now)
            return
        try:
            results = {(r.topic, r.partition): r for r in protocol.decode_entries(
                protocol.ProduceResult, header.get("parts") or [], "Produce")}
            spread = _batch_offsets(header, context)
        except ZbError as e:        # the batches may well have been written
            err = UnknownServerError(str(e))
            for tp, taken in context:
                self._retry_or_fail(tp, taken, err, now)
            return
        for i, (tp, taken) in enumerate(context):
            r = results.get(tp)
            if r is None:
                self._retry_or_fail(tp, taken, UnknownServerError(
                    f"The broker's Produce response did not mention {tp[0]}-{tp[1]}."), now)
                continue
            if r.err:
                err = errors.make_error(r.err, r.msg)
                if err.invalid_metadata:
                    self._need_metadata = True
                if isinstance(err, errors.DuplicateSequenceNumber) and self.enable_idempotence:
                    # (Kafka's answer for the frame's first batch: written long ago, offset
                    # forgotten; zbroker's brokers answer such a batch with offset -1 instead)
                    self._complete(taken[:1], None, -1, -1)
                    if len(taken) > 1:
                        self._retry_or_fail(tp, taken[1:], errors.RequestTimedOut(
                            "resent after a duplicate"), now)
                    continue
                self._retry_or_fail(tp, taken, err, now)
                continue
            self._complete(taken, None, r.base_offset,
                           r.log_append_time_ms if r.log_append_time_ms is not None else -1,
                           spread.get(i))

    def _retry_or_fail(self, tp, taken: list[_Batch], error: ZbError, now: float) -> None:
        taken = [b for b in taken if not b.done]
        retriable = error.retriable
        if self.enable_idempotence and taken:
            written = not isinstance(error, _NOT_WRITTEN)
            for b in taken:
                b.unknown = written
            if isinstance(error, (errors.OutOfOrderSequenceNumber, errors.UnknownProducerId)) \
                    and self._earlier_unacknowledged(tp, taken[0]):
                retriable = True        # an earlier batch is being resent: this one follows
            elif isinstance(error, (errors.OutOfOrderSequenceNumber, errors.UnknownProducerId)):
                retriable = True        # the leader lost our state or has a gap: new epoch
                self._bump_wanted = True
        retry = [b for b in taken if retriable and b.attempts <= self.retries and
                 now + self.retry_backoff_s < b.created + self.delivery_timeout_s and
                 self._abort_error is None]
        fail = [b for b in taken if b not in retry] if len(retry) != len(taken) else []
        if retry:
            self._metrics.record("records_retried", sum(b.count for b in retry))
            log.debug("retrying batches", topic=tp[0], partition=tp[1], error=str(error),
                      batches=len(retry))
            q = self._queues.setdefault(tp, collections.deque())
            for b in retry:
                b.retry_at = now + self.retry_backoff_s
                b.last_error = error
                _insert_in_order(q, b)
        if fail:
            self._failed_for_good(fail)
            self._complete(fail, error, -1, -1)

    def _earlier_unacknowledged(self, tp, b: _Batch) -> bool:
        """Is a batch of ``tp`` made before ``b`` still in flight or waiting for a resend?"""
        for frame in self._inflight.get(tp) or ():
            if frame[0].seq < b.seq:
                return True
        q = self._queues.get(tp)
        return bool(q) and q[0].seq < b.seq and q[0].base_seq is not None

    def _failed_for_good(self, batches: list[_Batch]) -> None:
        """Idempotence: a stamped batch that will not be sent again leaves a gap in its
        partition's sequence: the next epoch starts once the rest is resolved."""
        if self.enable_idempotence and any(b.base_seq is not None for b in batches):
            self._bump_wanted = True

    def _complete(self, batches: list[_Batch], error: ZbError | None, base_offset: int,
                  log_append_time: int, offsets: list[int] | None = None) -> None:
        """Record the outcome of ``batches`` (I/O thread). The fields are set without _lock;
        _lock is then taken once, briefly, to hand over callbacks and wake waiters (who check
        ``done`` under _lock, so no wake-up and no callback is lost)."""
        released = 0
        incomplete = self._incomplete
        finished = 0
        for j, b in enumerate(batches):
            if b.done:
                continue
            finished += b.count
            b.error = error
            if error is None and offsets is not None and j < len(offsets):
                b.base_offset = offsets[j]
            elif error is None and base_offset >= 0:
                b.base_offset = base_offset
                base_offset += max(b.count, 1)
            b.log_append_time = log_append_time
            b.data = None
            b.done = True
            incomplete.pop(b.seq, None)
            released += b.reserved
        self._released_bytes += released
        if finished:
            self._metrics.record("records_failed" if error is not None else "records_sent",
                                 finished)
        calls = []
        with self._lock:
            for b in batches:
                if b.callbacks:
                    calls.extend(b.callbacks)
                    b.callbacks = None
            if self._waiters:
                self._cond.notify_all()
        for call in calls:
            try:
                call()
            except Exception:
                log.exception("a producer callback raised")

    def _expire_queued(self, now: float) -> None:
        for tp, q in self._queues.items():
            if q and q[0].created + self.delivery_timeout_s <= now and tp not in self._muted:
                late = []
                while q and q[0].created + self.delivery_timeout_s <= now:
                    late.append(q.popleft())
                why = f" (last error: {late[0].last_error})" if late[0].last_error else ""
                self._failed_for_good(late)
                self._complete(late, RequestTimedOut(
                    f"Records for {tp[0]}-{tp[1]} could not be delivered within "
                    f"delivery_timeout_ms ({self.delivery_timeout_s * 1000:g} ms){why}."), -1, -1)

    def _fail_queued(self, error: ZbError) -> None:
        for q in self._queues.values():
            if q:
                batches = list(q)
                q.clear()
                self._complete(batches, error, -1, -1)
        with self._lock:
            left = [b for b in self._incomplete.values()]
        if left:
            self._complete(left, error, -1, -1)


def _insert_in_order(q: collections.deque, b: _Batch) -> None:
    """Put a batch to resend back in its partition's queue in the order batches were made
    (resends land near the front: the scan is short)."""
    for i, other in enumerate(q):
        if other.seq > b.seq:
            q.insert(i, b)
            return
    q.append(b)


def _batch_offsets(header: dict, context: list) -> dict[int, list[int]]:
    """The response's batch_offsets (part index -> each batch's base offset), checked."""
    raw = header.get("batch_offsets")
    if not raw:
        return {}
    out = {}
    try:
        for i, offsets in raw:
            if not (isinstance(i, int) and 0 <= i < len(context) and
                    isinstance(offsets, (list, tuple)) and
                    len(offsets) == len(context[i][1]) and
                    all(isinstance(o, int) for o in offsets)):
                raise ValueError
            out[i] = list(offsets)
    except (TypeError, ValueError):
        raise errors.CorruptMessage("The broker sent malformed batch_offsets.") from None
    return out


__all__ = ["Producer", "FutureRecordMetadata"]
