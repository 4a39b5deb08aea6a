"""The Consumer: reads records of assigned partitions, prefetching in the background.

    from clients import Consumer, TopicPartition
    with Consumer("events", bootstrap_servers="127.0.0.1:9092",
                  auto_offset_reset="earliest", consumer_timeout_ms=5000) as c:
        for record in c:                # ConsumerRecord(topic, partition, offset, key, ...)
            print(record.offset, record.value)

    c = Consumer(bootstrap_servers="127.0.0.1:9092")
    c.assign([TopicPartition("events", 0)])
    c.seek(TopicPartition("events", 0), 42)
    batch = c.poll(timeout_ms=1000)     # {TopicPartition: [ConsumerRecord, ...]}

How it works: a fetcher thread owns the sockets (``clients._net``). For every broker it keeps
one Fetch request in flight holding each partition that broker leads and that has fewer than
``PREFETCH_FETCHES_MAX`` answered fetches waiting for the caller; so while the caller handles
one fetch the next is already on its way. Answered fetches are queued raw; ``poll()`` decodes
them on the caller's thread (``zbroker.records``), drops records before the position (a fetch
returns whole batches) and hands out at most ``max_records``.

Every partition has a *generation*, bumped by ``seek`` and friends: a fetch answered for an older
generation is dropped, so a seek is exact even with fetches in flight. OFFSET_OUT_OF_RANGE
resets the position by ``auto_offset_reset`` (ListOffsets); NOT_LEADER_OR_FOLLOWER, an unknown
partition, a lost connection refresh the metadata and fetch from the new leader.

Consumer groups are not built yet: ``group_id`` must be None. Subscribing to topics by name
(constructor arguments or ``subscribe``) then assigns every partition of those topics, including
partitions added later.
"""

from __future__ import annotations

import collections
import os
import threading
import time

from clients._net import NetworkClient, topic_error
from clients.errors import (CorruptMessage, IllegalStateError, NoBrokersAvailable,
                            OffsetOutOfRange, RequestTimedOut, ZbError)
from clients.structs import ConsumerRecord, TopicPartition
from zbroker import errors, protocol, records
from zbroker.logs import get_logger

log = get_logger("clients.consumer")

_monotonic = time.monotonic
PREFETCH_FETCHES_MAX = 2            # answered fetches waiting for poll(), per partition
EARLIEST, LATEST = protocol.EARLIEST_TIMESTAMP, protocol.LATEST_TIMESTAMP
_RESETS = {"earliest": EARLIEST, "smallest": EARLIEST, "latest": LATEST, "largest": LATEST,
           "none": None}


class _PartitionState:
    __slots__ = ("tp", "position", "fetch_offset", "generation", "reset", "reset_sent",
                 "in_flight", "buffered", "fetch_bytes", "high_watermark", "error", "retry_at")

    def __init__(self, tp: TopicPartition, reset: int | None, fetch_bytes: int):
        self.tp = tp
        self.position: int | None = None     # next offset poll() returns (caller's view)
        self.fetch_offset: int | None = None  # next offset to fetch (>= position)
        self.generation = 0
        self.reset = reset                   # EARLIEST/LATEST: ListOffsets needed
        self.reset_sent = False
        self.in_flight = False
        self.buffered = 0
        self.fetch_bytes = fetch_bytes
        self.high_watermark = -1
        self.error: ZbError | None = None    # raised by the next poll()
        self.retry_at = 0.0                  # no fetch before (after a retriable error)


class _Fetched:
    __slots__ = ("tp", "generation", "fetch_offset", "blob")

    def __init__(self, tp, generation, fetch_offset, blob):
        self.tp, self.generation, self.fetch_offset, self.blob = tp, generation, fetch_offset, blob


class Consumer:
    """Reads records from topics' partitions. Its methods are meant for one thread (as
    kafka-python's); the background fetcher is internal.

    Settings (Kafka's names and defaults where the concept is Kafka's):

    *topics                   topics to subscribe to (all their partitions; no group)
    bootstrap_servers         "host:port,..."
    group_id                  must be None (consumer groups come later)
    auto_offset_reset         where to start without a position, or after OFFSET_OUT_OF_RANGE:
                              "earliest", "latest" (default) or "none" (raise OffsetOutOfRange)
    fetch_max_wait_ms         how long a broker may hold a fetch waiting for fetch_min_bytes
    fetch_min_bytes           bytes a broker waits for before answering a fetch
    fetch_max_bytes           bytes of one fetch response
    max_partition_fetch_bytes bytes per partition in one fetch (a bigger batch still comes:
                              the limit doubles for that partition until it fits)
    max_poll_records          records one poll() returns at most
    consumer_timeout_ms       iteration stops after this long without a record (default: never)
    request_timeout_ms        how long a request may go unanswered
    retry_backoff_ms          pause between metadata refreshes after errors
    metadata_max_age_ms       metadata is refreshed at least this often
    unknown_topic_wait_ms     how long a topic may stay unknown to the cluster before poll()
                              raises UnknownTopicOrPartition
    bootstrap_timeout_ms      how long the constructor waits for the bootstrap brokers before
                              raising NoBrokersAvailable
    check_crcs                verify every batch's checksum while decoding
    allow_auto_create_topics  let Metadata create a missing topic (off by default)
    enable_auto_commit        accepted for kafka-python compatibility; nothing to commit
                              without a group
    """

    def __init__(self, *topics: str, bootstrap_servers: str = "localhost:9092",
                 group_id: str | None = None, client_id: str | None = None,
                 auto_offset_reset: str = "latest", fetch_max_wait_ms: int = 500,
                 fetch_min_bytes: int = 1, fetch_max_bytes: int = 52428800,
                 max_partition_fetch_bytes: int = 1048576, max_poll_records: int = 500,
                 consumer_timeout_ms: float = float("inf"), request_timeout_ms: int = 30000,
                 retry_backoff_ms: int = 100, metadata_max_age_ms: int = 300000,
                 unknown_topic_wait_ms: int = 2000, bootstrap_timeout_ms: int = 10000,
                 check_crcs: bool = True, enable_auto_commit: bool = False,
                 allow_auto_create_topics: bool = False):
        if group_id is not None:
            raise NotImplementedError(
                f"Consumer groups are not supported yet (group_id={group_id!r}); pass "
                f"group_id=None and subscribe to topics or assign partitions.")
        if auto_offset_reset not in _RESETS:
            raise ValueError(f"auto_offset_reset must be 'earliest', 'latest' or 'none', not "
                             f"{auto_offset_reset!r}.")
        if max_poll_records < 1:
            raise ValueError("max_poll_records must be at least 1.")
        self.client_id = client_id
        self.auto_offset_reset = _RESETS[auto_offset_reset]
        self.fetch_max_wait_ms = min(fetch_max_wait_ms, protocol.FETCH_WAIT_MS_MAX)
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.max_poll_records = max_poll_records
        self.consumer_timeout_ms = consumer_timeout_ms
        self.request_timeout_ms = min(request_timeout_ms, protocol.REQUEST_TIMEOUT_MS_MAX)
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.metadata_max_age_s = metadata_max_age_ms / 1000
        self.unknown_topic_wait_s = unknown_topic_wait_ms / 1000
        self.check_crcs = check_crcs
        self.allow_auto_create_topics = allow_auto_create_topics

        self._net = NetworkClient(bootstrap_servers, request_timeout_ms=self.request_timeout_ms)
        self.bootstrap_servers = self._net.bootstrap_text
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # shared (under _lock)
        self._states: dict[TopicPartition, _PartitionState] = {}
        self._subscription: set[str] = set()
        self._topic_wait_since: dict[str, float] = {}
        self._fetched: collections.deque[_Fetched] = collections.deque()
        self._closing = False
        self._error: ZbError | None = None   # raised by the next poll() (e.g. unknown topic)
        self._fetcher_error: ZbError | None = None
        # caller's thread
        self._current: list | None = None     # [tp, state, generation, records, index]
        self._iter_deadline = None
        # fetcher's thread
        self._fetching_nodes: set[int] = set()
        self._need_metadata = True
        self._metadata_in_flight = False
        self._metadata_due = 0.0
        self._metadata_next_refresh = 0.0
        self._bootstrapped = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._net.add_wake_fd(self._wake_r)
        self._thread = threading.Thread(target=self._fetcher_main, daemon=True,
                                        name="zb-consumer-fetcher")
        self._thread.start()
        if not self._bootstrapped.wait(bootstrap_timeout_ms / 1000):
            self.close()
            raise NoBrokersAvailable(f"No broker answered at {self.bootstrap_servers} within "
                                     f"{bootstrap_timeout_ms / 1000:g} seconds.")
        if topics:
            self.subscribe(topics)

    # --- assignment ---------------------------------------------------------------------------
    def subscribe(self, topics) -> None:
        """Read every partition of ``topics`` (a list of names), including partitions added
        later. Replaces any earlier subscription or assignment."""
        if isinstance(topics, str):
            topics = [topics]
        for t in topics:
            protocol.check_topic_name(t)
        with self._lock:
            self._check_open()
            self._subscription = set(topics)
            now = _monotonic()
            self._topic_wait_since = {t: now for t in topics}
            for tp in [tp for tp in self._states if tp.topic not in self._subscription]:
                self._drop_state(tp)
            self._add_subscribed_partitions()
        self._need_metadata = True
        self._metadata_due = 0.0
        self._wake()

    def subscription(self) -> set[str]:
        return set(self._subscription)

    def unsubscribe(self) -> None:
        """Stop reading everything."""
        with self._lock:
            self._subscription = set()
            self._topic_wait_since = {}
            for tp in list(self._states):
                self._drop_state(tp)

    def assign(self, partitions) -> None:
        """Read exactly ``partitions`` (TopicPartitions); replaces any subscription. Positions of
        partitions kept from the previous assignment stay."""
        tps = [TopicPartition(*tp) for tp in partitions]
        for tp in tps:
            protocol.check_topic_name(tp.topic)
        with self._lock:
            self._check_open()
            self._subscription = set()
            now = _monotonic()
            self._topic_wait_since = {tp.topic: now for tp in tps}
            for tp in [tp for tp in self._states if tp not in tps]:
                self._drop_state(tp)
            for tp in tps:
                if tp not in self._states:
                    self._states[tp] = _PartitionState(tp, self.auto_offset_reset,
                                                       self.max_partition_fetch_bytes)
                    if self.auto_offset_reset is None:
                        self._states[tp].error = OffsetOutOfRange(
                            f"{tp.topic}-{tp.partition} has no position and "
                            f"auto_offset_reset is 'none'; seek() first.")
        self._need_metadata = True
        self._metadata_due = 0.0
        self._wake()

    def assignment(self) -> set[TopicPartition]:
        return set(self._states)

    # --- positions ----------------------------------------------------------------------------
    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Make the next poll() of ``partition`` start at ``offset``."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"An offset must be an int >= 0, not {offset!r}.")
        with self._lock:
            st = self._assigned(partition)
            self._invalidate(st)
            st.position = st.fetch_offset = offset
            st.reset = None
        self._wake()

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Start the given partitions (all assigned when none given) at their first offset."""
        self._seek_to(EARLIEST, partitions)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Start the given partitions (all assigned when none given) after their last record."""
        self._seek_to(LATEST, partitions)

    def _seek_to(self, where: int, partitions) -> None:
        with self._lock:
            tps = partitions or list(self._states)
            for tp in tps:
                st = self._assigned(tp)
                self._invalidate(st)
                st.position = st.fetch_offset = None
                st.reset = where
        self._wake()

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int:
        """The offset of the next record poll() returns for ``partition`` (asks the broker when
        it has to be reset first)."""
        timeout_s = (timeout_ms if timeout_ms is not None else self.request_timeout_ms) / 1000
        deadline = _monotonic() + timeout_s
        with self._lock:
            st = self._assigned(partition)
            while st.position is None:
                if st.error is not None:
                    err, st.error = st.error, None
                    raise err
                if self._error is not None or self._fetcher_error is not None:
                    self._raise_error()
                left = deadline - _monotonic()
                if left <= 0:
                    raise RequestTimedOut(f"The position of {partition.topic}-"
                                          f"{partition.partition} was not known within "
                                          f"{timeout_s:g} s.")
                self._cond.wait(min(left, 0.1))
                st = self._assigned(partition)
            return st.position

    def highwater(self, partition: TopicPartition) -> int | None:
        """The partition's high watermark as of the last fetch, or None before any."""
        st = self._states.get(TopicPartition(*partition))
        return st.high_watermark if st is not None and st.high_watermark >= 0 else None

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        """The topic's partition numbers from the latest metadata (None if unknown)."""
        parts = self._net.cluster.topics.get(topic)
        return set(parts) if parts is not None else None

    def topics(self) -> set[str]:
        """Topics in the latest metadata this consumer holds."""
        return set(self._net.cluster.topics)

    # --- reading ------------------------------------------------------------------------------
    def poll(self, timeout_ms: float = 0, max_records: int | None = None,
             update_offsets: bool = True) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records that are ready, at most ``max_records`` (default ``max_poll_records``),
        waiting up to ``timeout_ms`` for some: {TopicPartition: [ConsumerRecord, ...]}, each
        list in offset order. Raises what retrying cannot fix (unknown topic, offset out of
        range with auto_offset_reset="none", a corrupt batch)."""
        max_records = max_records or self.max_poll_records
        deadline = _monotonic() + timeout_ms / 1000
        while True:
            out = self._take_records(max_records)
            if out:
                return out
            with self._lock:
                self._check_open()
                if self._error is not None or self._fetcher_error is not None:
                    self._raise_error()
                for st in self._states.values():
                    if st.error is not None:
                        err, st.error = st.error, None
                        raise err
                if self._fetched:
                    continue
                left = deadline - _monotonic()
                if left <= 0:
                    return {}
                self._cond.wait(left)

    def __iter__(self):
        return self

    def __next__(self) -> ConsumerRecord:
        """The next record; StopIteration after ``consumer_timeout_ms`` without one."""
        cur = self._current
        if cur is not None and cur[4] < len(cur[3]) and cur[1].generation == cur[2]:
            rec = cur[3][cur[4]]
            cur[4] += 1
            cur[1].position = rec.offset + 1
            return rec
        timeout_s = self.consumer_timeout_ms / 1000
        deadline = _monotonic() + timeout_s
        while True:
            left = deadline - _monotonic()
            if left <= 0:
                raise StopIteration
            got = self.poll(min(left, 1.0) * 1000, max_records=1)
            for recs in got.values():
                return recs[0]

    def close(self, autocommit: bool = False) -> None:
        """Stop the fetcher and close the connections."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- caller's side helpers ----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closing:
            raise IllegalStateError("The consumer is closed.")

    def _raise_error(self) -> None:
        """Under _lock: raise the pending consumer-wide error (once for topic errors)."""
        if self._fetcher_error is not None:
            raise self._fetcher_error
        err, self._error = self._error, None
        raise err

    def _assigned(self, tp) -> _PartitionState:
        st = self._states.get(TopicPartition(*tp))
        if st is None:
            raise IllegalStateError(f"The partition {tp[0]}-{tp[1]} is not assigned to this "
                                    f"consumer.")
        return st

    def _invalidate(self, st: _PartitionState) -> None:
        """Under _lock: forget what was fetched for ``st``; fetches in flight will be dropped."""
        st.generation += 1
        st.buffered = 0
        st.reset_sent = False
        st.error = None
        if self._fetched:
            self._fetched = collections.deque(f for f in self._fetched if f.tp != st.tp)
        cur = self._current
        if cur is not None and cur[0] == st.tp:
            self._current = None

    def _drop_state(self, tp: TopicPartition) -> None:
        st = self._states.pop(tp)
        self._invalidate(st)

    def _add_subscribed_partitions(self) -> None:
        """Under _lock: states for every known partition of the subscribed topics."""
        cluster = self._net.cluster
        for topic in self._subscription:
            for p in sorted(cluster.topics.get(topic, ())):
                tp = TopicPartition(topic, p)
                if tp not in self._states:
                    st = _PartitionState(tp, self.auto_offset_reset,
                                         self.max_partition_fetch_bytes)
                    if self.auto_offset_reset is None:
                        st.reset = EARLIEST     # a new partition has nothing to lose
                    self._states[tp] = st

    def _take_records(self, max_records: int) -> dict:
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        n = 0
        while n < max_records:
            cur = self._current
            if cur is None or cur[4] >= len(cur[3]) or cur[1].generation != cur[2]:
                cur = self._current = self._next_fetched()
                if cur is None:
                    break
            tp, st, _gen, recs, i = cur
            take = recs[i:i + max_records - n]
            cur[4] = i + len(take)
            st.position = take[-1].offset + 1
            got = out.get(tp)
            if got is None:
                out[tp] = take
            else:
                got.extend(take)
            n += len(take)
        return out

    def _next_fetched(self) -> list | None:
        """Decode the next queued fetch that is still current; None when there is none."""
        while True:
            with self._lock:
                if not self._fetched:
                    return None
                f = self._fetched.popleft()
                st = self._states.get(f.tp)
                if st is None or st.generation != f.generation:
                    continue
                was_full = st.buffered >= PREFETCH_FETCHES_MAX
                st.buffered -= 1
                position = st.position
                gen = st.generation
            if was_full:
                self._wake()
            if position is None:
                position = f.fetch_offset
            recs = self._decode(f.tp, f.blob, position)
            if recs:
                return [f.tp, st, gen, recs, 0]

    def _decode(self, tp: TopicPartition, blob, position: int) -> list[ConsumerRecord]:
        """The records of a fetched blob from ``position`` on, as ConsumerRecords: decoded by
        ``zbroker.records`` as instances of the partition's ConsumerRecord class."""
        cls = ConsumerRecord.of(tp.topic, tp.partition)
        out = []
        check = self.check_crcs
        try:
            for header, batch in records.iter_batches(blob):
                if header.base_offset + header.last_offset_delta < position:
                    continue
                recs = records.decode_records(batch, check, cls)
                if header.base_offset < position:
                    recs = [r for r in recs if r.offset >= position]
                out += recs
        except CorruptMessage as e:
            raise CorruptMessage(f"A fetched batch of {tp.topic}-{tp.partition} is corrupt: "
                                 f"{e}") from None
        return out

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    # --- fetcher thread -----------------------------------------------------------------------
    def _fetcher_main(self) -> None:
        try:
            self._fetcher_loop()
        except Exception as e:
            log.exception("consumer fetcher thread failed")
            with self._lock:
                self._fetcher_error = errors.UnknownServerError(
                    f"The consumer's fetcher thread failed: {e!r}")
                self._cond.notify_all()
        finally:
            self._net.close()

    def _fetcher_loop(self) -> None:
        net = self._net
        while not self._closing:
            now = _monotonic()
            self._maybe_request_metadata(now)
            wake_at = now + 1.0
            if self._bootstrapped.is_set():
                self._check_topics(now)
                self._send_resets()
                retry_at = self._send_fetches(now)
                if retry_at is not None:
                    wake_at = min(wake_at, retry_at)
            if self._need_metadata and not self._metadata_in_flight:
                wake_at = min(wake_at, max(self._metadata_due, now + 0.01))
            d = net.next_deadline()
            if d is not None:
                wake_at = min(wake_at, d)
            if net.poll(max(0.0, wake_at - _monotonic())):
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass

    def _maybe_request_metadata(self, now: float) -> None:
        if self._metadata_in_flight:
            return
        if now >= self._metadata_next_refresh:
            self._need_metadata = True
        if not self._need_metadata or now < self._metadata_due:
            return
        with self._lock:
            topics = sorted(self._subscription | {tp.topic for tp in self._states})
        self._metadata_in_flight = True
        self._need_metadata = False
        self._metadata_due = now + self.retry_backoff_s
        self._net.request_metadata(topics, self._on_metadata,
                                   allow_auto_create=self.allow_auto_create_topics,
                                   timeout_ms=min(self.request_timeout_ms, 5000))

    def _on_metadata(self, error: ZbError | None) -> None:
        self._metadata_in_flight = False
        if error is not None:
            log.debug("metadata request failed", error=str(error))
            self._need_metadata = True
            return
        self._metadata_next_refresh = _monotonic() + self.metadata_max_age_s
        with self._lock:
            self._add_subscribed_partitions()
            for st in self._states.values():
                if self._net.cluster.leader(*st.tp) < 0:
                    self._need_metadata = True
            self._cond.notify_all()
        self._bootstrapped.set()

    def _check_topics(self, now: float) -> None:
        """Give up on topics (and partitions) the cluster keeps saying do not exist."""
        cluster = self._net.cluster
        with self._lock:
            for topic, since in list(self._topic_wait_since.items()):
                parts = cluster.topics.get(topic)
                code = cluster.topic_errors.get(topic)
                missing = [tp for tp in self._states if tp.topic == topic and
                           (parts is None or tp.partition not in parts)]
                if parts is not None and not missing:
                    del self._topic_wait_since[topic]
                    continue
                self._need_metadata = True
                if now - since < self.unknown_topic_wait_s:
                    continue
                del self._topic_wait_since[topic]
                if parts is None:
                    self._error = topic_error(code or errors.UnknownTopicOrPartition.code,
                                              topic, self.bootstrap_servers)
                else:
                    self._error = errors.UnknownTopicOrPartition(
                        f"The topic {topic!r} has no partition "
                        f"{', '.join(str(tp.partition) for tp in missing)}.")
                self._cond.notify_all()

    def _send_resets(self) -> None:
        cluster = self._net.cluster
        by_node: dict[int, list] = {}
        with self._lock:
            for st in self._states.values():
                if st.reset is None or st.reset_sent:
                    continue
                leader = cluster.leader(*st.tp)
                if leader < 0 or not self._net.ready(leader):
                    self._need_metadata = True      # who leads now? (rate-limited)
                    continue
                st.reset_sent = True
                by_node.setdefault(leader, []).append((st.tp, st.reset, st.generation))
        for node, items in by_node.items():
            parts = [[tp.topic, tp.partition, where, cluster.leader_epoch(*tp)]
                     for tp, where, _ in items]

            def handler(header, blobs, error, items=items):
                self._on_list_offsets(items, header, error)
            try:
                self._net.send(node, "ListOffsets", {"parts": parts}, handler=handler)
            except ZbError as e:
                handler(None, None, e)

    def _on_list_offsets(self, items, header, error) -> None:
        results = {}
        if header is not None:
            for r in header.get("parts") or ():
                results[TopicPartition(r[0], r[1])] = r
        with self._lock:
            for tp, where, gen in items:
                st = self._states.get(tp)
                if st is None or st.generation != gen or st.reset != where:
                    continue
                st.reset_sent = False
                r = results.get(tp)
                err = error
                if err is None and r is None:
                    err = errors.UnknownServerError(f"ListOffsets did not answer for {tp}.")
                if err is None and r[2]:
                    err = errors.make_error(r[2], None)
                if err is not None:
                    if err.invalid_metadata or err.retriable:
                        self._need_metadata = True
                    else:
                        st.error = err
                    continue
                st.generation += 1
                st.position = st.fetch_offset = r[3]
                st.reset = None
            self._cond.notify_all()

    def _send_fetches(self, now: float) -> float | None:
        """Send a Fetch to every broker without one in flight; returns when a partition that
        backs off after an error may be fetched again."""
        cluster, net = self._net.cluster, self._net
        by_node: dict[int, list] = {}
        retry_at = None
        with self._lock:
            for st in self._states.values():
                if (st.fetch_offset is None or st.reset is not None or st.in_flight or
                        st.buffered >= PREFETCH_FETCHES_MAX or st.error is not None):
                    continue
                if st.retry_at > now:
                    retry_at = st.retry_at if retry_at is None else min(retry_at, st.retry_at)
                    continue
                leader = cluster.leader(*st.tp)
                if leader < 0:
                    self._need_metadata = True
                    continue
                if leader in self._fetching_nodes:
                    continue
                if not net.ready(leader):
                    self._need_metadata = True      # the leader may be gone: ask who leads now
                    continue
                by_node.setdefault(leader, []).append(
                    (st.tp, st.generation, st.fetch_offset, st.fetch_bytes))
                st.in_flight = True
        for node, items in by_node.items():
            parts = [[tp.topic, tp.partition, offset, cluster.leader_epoch(*tp), nbytes]
                     for tp, _, offset, nbytes in items]
            fields = {"replica_id": protocol.CONSUMER_REPLICA_ID,
                      "max_wait_ms": self.fetch_max_wait_ms, "min_bytes": self.fetch_min_bytes,
                      "max_bytes": self.fetch_max_bytes, "parts": parts}
            self._fetching_nodes.add(node)

            def handler(header, blobs, error, node=node, items=items):
                self._on_fetch(node, items, header, blobs, error)
            try:
                net.send(node, "Fetch", fields, handler=handler,
                         timeout_ms=self.request_timeout_ms + self.fetch_max_wait_ms)
            except ZbError as e:
                handler(None, None, e)
        return retry_at

    def _on_fetch(self, node, items, header, blobs, error) -> None:
        self._fetching_nodes.discard(node)
        results = {}
        if header is not None:
            for i, r in enumerate(header.get("parts") or ()):
                results[TopicPartition(r[0], r[1])] = (r, blobs[i] if i < len(blobs) else b"")
        notify = False
        with self._lock:
            for tp, gen, offset, _nbytes in items:
                st = self._states.get(tp)
                if st is None:
                    continue
                st.in_flight = False        # one fetch per partition is in flight at most
                if st.generation != gen:
                    continue                # a seek came in between: drop it
                err = error
                res = results.get(tp)
                if err is None and res is None:
                    err = errors.UnknownServerError(f"The Fetch response did not mention {tp}.")
                if err is None and res[0][2]:
                    err = errors.make_error(res[0][2], None)
                if err is not None:
                    self._on_fetch_error(st, err)
                    notify = True
                    continue
                r, blob = res
                st.high_watermark = r[3]
                next_offset = None
                for h, _ in records.iter_batches(blob):
                    next_offset = h.base_offset + h.last_offset_delta + 1
                if next_offset is None or next_offset <= offset:
                    if blob and st.fetch_bytes < protocol.FRAME_BYTES_MAX // 2:
                        st.fetch_bytes *= 2     # one batch is bigger than the limit
                    continue
                st.fetch_bytes = self.max_partition_fetch_bytes
                st.fetch_offset = next_offset
                st.buffered += 1
                self._fetched.append(_Fetched(tp, gen, offset, blob))
                notify = True
            if notify:
                self._cond.notify_all()

    def _on_fetch_error(self, st: _PartitionState, err: ZbError) -> None:
        """Under _lock."""
        if isinstance(err, OffsetOutOfRange):
            if self.auto_offset_reset is None:
                st.error = OffsetOutOfRange(f"The offset {st.fetch_offset} of {st.tp.topic}-"
                                            f"{st.tp.partition} is out of range and "
                                            f"auto_offset_reset is 'none'.")
                return
            log.info("offset out of range; resetting", topic=st.tp.topic,
                     partition=st.tp.partition, offset=st.fetch_offset)
            self._invalidate(st)
            st.position = st.fetch_offset = None
            st.reset = self.auto_offset_reset
            return
        if err.retriable or err.invalid_metadata:
            st.retry_at = _monotonic() + self.retry_backoff_s
            self._need_metadata = True
            self._metadata_due = min(self._metadata_due, _monotonic() + self.retry_backoff_s)
            return
        st.error = err


__all__ = ["Consumer"]
