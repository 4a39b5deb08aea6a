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
returns whole batches) and hands out at most ``max_records``. Positions come from batch headers:
after a batch's last record the position is the header's base_offset + last_offset_delta + 1,
not that record's offset + 1; inside a batch it is the last record handed out + 1, and records'
offsets are checked to lie within their header's range. A fetch that ends inside its last batch
leaves that batch for the next fetch. A corrupt batch (a bad checksum, a malformed header or
record section, records whose offsets leave the header's range) is CorruptMessage at exactly
its offset: ``poll()`` hands out the records before it, then raises at every call, with the
position at the batch, until the caller seeks past it (``seek`` to the error's ``next_offset``),
as Kafka's consumer does.

Every partition has a *generation*, renewed by ``seek`` and friends and unique across the
consumer's life: a fetch answered for another generation is dropped, so a seek is exact even
with fetches in flight, and so is a partition given back after it was revoked or lost. OFFSET_OUT_OF_RANGE
resets the position by ``auto_offset_reset`` (ListOffsets); NOT_LEADER_OR_FOLLOWER, an unknown
partition, a lost connection refresh the metadata and fetch from the new leader.

Consumer groups (``group_id``): ``subscribe`` joins the group (Kafka 4.0's protocol, KIP-848;
``clients._group``): the group coordinator, a broker, decides which partitions this consumer
gets; the fetcher thread heartbeats and hands ``poll()`` the changes, which it carries out
before it returns records: partitions taken away are committed (with auto-commit) and given to
the listener's ``on_partitions_revoked``, then dropped; new ones are given to
``on_partitions_assigned`` and start at their committed offset (else ``auto_offset_reset``).
Only then does the coordinator hear that they moved, so no partition is read by two members at
once. Commits carry the member's epoch; the coordinator refuses them once the partition has
moved. Without ``group_id``, ``subscribe`` reads every partition of the topics (no
coordinator, no commits); ``assign`` with a ``group_id`` reads the partitions given and commits
to the group without joining it (the group must have no members).
"""

from __future__ import annotations

import collections
import itertools
import operator
import os
import re
import threading
import time

from clients._metrics import CONSUMER_FETCH_METRICS, ClientMetrics
from clients._group import GroupIO, Membership, State, Task
from clients._net import NetworkClient, client_security, topic_error
from clients.errors import (CorruptMessage, IllegalStateError, NoBrokersAvailable,
                            OffsetOutOfRange, RequestTimedOut, ZbError)
from clients.structs import (ConsumerRecord, OffsetAndMetadata, OffsetAndTimestamp,
                             TopicPartition)
from zbroker import errors, protocol, records
from zbroker.logs import get_logger

log = get_logger("clients.consumer")

_monotonic = time.monotonic
PREFETCH_FETCHES_MAX = 2            # answered fetches waiting for poll(), per partition
EARLIEST, LATEST = protocol.EARLIEST_TIMESTAMP, protocol.LATEST_TIMESTAMP
_RESETS = {"earliest": EARLIEST, "smallest": EARLIEST, "latest": LATEST, "largest": LATEST,
           "none": None}
PATTERN_REFRESH_S = 5.0             # how often a pattern subscription looks for new topics
LEAVE_WAIT_S = 5.0                  # how long close() waits for the coordinator to see it go
_consumer_ids = iter(range(1, 1 << 62))
# Generations of partition states come from one counter, so an answer to a fetch made for a
# partition's earlier state (before it was revoked or lost and given back) can never pass for
# an answer meant for its new one: a fetch answered for an earlier generation is dropped.
_generations = itertools.count(1)
_offset_of = operator.itemgetter(0)     # a record's offset (records are tuples)


def _offsets_fit(recs: list, base_offset: int, last_offset: int, records_count: int) -> bool:
    """Whether the offsets of a batch's records rise strictly within its header's range
    [base_offset, last_offset]. One pass in C, no Python work per record: some 10% of what
    decoding the records costs."""
    offsets = list(map(_offset_of, recs))
    if records_count == last_offset - base_offset + 1:     # no gaps: every batch built here
        return offsets == list(range(base_offset, last_offset + 1))
    return (bool(offsets) and offsets[0] >= base_offset and offsets[-1] <= last_offset and
            all(map(operator.lt, offsets, itertools.islice(offsets, 1, None))))


class ConsumerRebalanceListener:
    """What a rebalance listener may define (kafka-python's names); every method is optional.
    All are called on the caller's thread, inside ``poll()`` (or ``close()``).

    on_partitions_revoked(revoked)  before these partitions go to another member: commit what
                                    was processed (auto-commit already did, when on)
    on_partitions_assigned(assigned)  newly given partitions; ``seek`` here to start elsewhere
    on_partitions_lost(lost)        the membership was lost (session expired, fenced, too slow
                                    between polls): the partitions may already be read by
                                    another member, and committing them is refused. Without
                                    it, on_partitions_revoked is called.
    """

    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        pass

    def on_partitions_lost(self, lost):
        self.on_partitions_revoked(lost)


class _PartitionState:
    __slots__ = ("tp", "position", "fetch_offset", "generation", "reset", "reset_sent",
                 "in_flight", "buffered", "fetch_bytes", "high_watermark", "error", "retry_at",
                 "committed_pending", "committed_sent", "paused")

    def __init__(self, tp: TopicPartition, reset: int | None, fetch_bytes: int):
        self.tp = tp
        self.position: int | None = None     # next offset poll() returns (caller's view)
        self.fetch_offset: int | None = None  # next offset to fetch (>= position)
        self.generation = next(_generations)
        self.reset = reset                   # EARLIEST/LATEST: ListOffsets needed
        self.reset_sent = False
        self.in_flight = False
        self.buffered = 0
        self.fetch_bytes = fetch_bytes
        self.high_watermark = -1
        self.error: ZbError | None = None    # raised by the next poll()
        self.retry_at = 0.0                  # no fetch before (after a retriable error)
        self.committed_pending = False       # start at the group's committed offset
        self.committed_sent = False
        self.paused = False


class _Fetched:
    __slots__ = ("tp", "generation", "fetch_offset", "blob")

    def __init__(self, tp, generation, fetch_offset, blob):
        self.tp, self.generation, self.fetch_offset, self.blob = tp, generation, fetch_offset, blob


class Consumer:
    """Reads records from topics' partitions. Its methods are meant for one thread (as
    kafka-python's); the background fetcher is internal.

    Settings (Kafka's names and defaults where the concept is Kafka's):

    *topics                   topics to subscribe to
    bootstrap_servers         "host:port,..."
    client_id                 shown by zb-consumer-groups (default consumer-<group>-<n>)
    group_id                  the consumer group to join (None: no group, no commits)
    auto_offset_reset         where to start without a position (no committed offset), or after
                              OFFSET_OUT_OF_RANGE: "earliest", "latest" (default) or "none"
                              (raise OffsetOutOfRange)
    enable_auto_commit        commit the positions of what poll() returned every
                              auto_commit_interval_ms (checked in poll()), before partitions
                              are revoked, and on close() (default True with a group)
    auto_commit_interval_ms   5000
    session_timeout_ms        how long the group waits without a heartbeat before it gives this
                              member's partitions to others (None: the broker's
                              group.consumer.session.timeout.ms, 45 s; it must lie within the
                              broker's group.consumer.min/max.session.timeout.ms)
    heartbeat_interval_ms     None: the broker's group.consumer.heartbeat.interval.ms
    max_poll_interval_ms      a consumer that does not call poll() for this long leaves the
                              group (its partitions move) and joins again at its next poll();
                              also how long a rebalance waits for it to give partitions up
    group_instance_id         a static member: a restart with the same id within the session
                              timeout takes its partitions back without a rebalance
    group_remote_assignor     "uniform" (default) or "range": the broker's assignor
    client_rack               this consumer's rack (told to the group)
    default_api_timeout_ms    how long commit(), committed() and the offset lookups wait
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
    check_crcs                verify every batch while decoding: its checksum, and that its
                              records' offsets rise within its header's range (together
                              10-20% of the decoding time; off, a corrupt batch may pass
                              unnoticed)
    allow_auto_create_topics  let Metadata create a missing topic (off by default)
    """

    def __init__(self, *topics: str, bootstrap_servers: str = "localhost:9092",
                 group_id: str | None = None, client_id: str | None = None,
                 auto_offset_reset: str = "latest", fetch_max_wait_ms: int = 500,
                 fetch_min_bytes: int = 1, fetch_max_bytes: int = 52428800,
                 max_partition_fetch_bytes: int = 1048576, max_poll_records: int = 500,
                 consumer_timeout_ms: float = float("inf"), request_timeout_ms: int = 30000,
                 retry_backoff_ms: int = 100, metadata_max_age_ms: int = 300000,
                 unknown_topic_wait_ms: int = 2000, bootstrap_timeout_ms: int = 10000,
                 check_crcs: bool = True, enable_auto_commit: bool = True,
                 auto_commit_interval_ms: int = 5000, session_timeout_ms: int | None = None,
                 heartbeat_interval_ms: int | None = None, max_poll_interval_ms: int = 300000,
                 group_instance_id: str | None = None, group_remote_assignor: str = "uniform",
                 client_rack: str | None = None, default_api_timeout_ms: int = 60000,
                 allow_auto_create_topics: bool = False,
                 security_protocol: str | None = None, curve_secret_key_file: str | None = None,
                 curve_server_key_file: str | None = None):
        if group_id is not None:
            protocol.check_group_id(group_id)
        elif group_instance_id is not None:
            raise ValueError("group_instance_id needs a group_id.")
        if session_timeout_ms is not None and heartbeat_interval_ms is not None and \
                heartbeat_interval_ms * 3 > session_timeout_ms:
            raise ValueError(f"heartbeat_interval_ms ({heartbeat_interval_ms}) must be at most a "
                             f"third of session_timeout_ms ({session_timeout_ms}).")
        if max_poll_interval_ms < 1 or auto_commit_interval_ms < 1:
            raise ValueError("max_poll_interval_ms and auto_commit_interval_ms must be positive.")
        if auto_offset_reset not in _RESETS:
            raise ValueError(f"auto_offset_reset must be 'earliest', 'latest' or 'none', not "
                             f"{auto_offset_reset!r}.")
        if max_poll_records < 1:
            raise ValueError("max_poll_records must be at least 1.")
        self.group_id = group_id
        self.client_id = client_id or (f"consumer-{group_id}-{next(_consumer_ids)}"
                                       if group_id else f"consumer-{next(_consumer_ids)}")
        self.enable_auto_commit = enable_auto_commit and group_id is not None
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
        self.max_poll_interval_s = max_poll_interval_ms / 1000
        self.default_api_timeout_s = default_api_timeout_ms / 1000
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

        self._net = NetworkClient(bootstrap_servers, request_timeout_ms=self.request_timeout_ms,
                                  security=client_security(security_protocol,
                                                           curve_secret_key_file,
                                                           curve_server_key_file))
        self.bootstrap_servers = self._net.bootstrap_text
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # shared (under _lock)
        self._states: dict[TopicPartition, _PartitionState] = {}
        self._metrics = ClientMetrics()
        self._subscription: set[str] = set()
        self._topic_wait_since: dict[str, float] = {}
        self._fetched: collections.deque[_Fetched] = collections.deque()
        self._pattern: re.Pattern | None = None
        self._listener = None
        self._tasks: collections.deque[Task] = collections.deque()    # for the caller's thread
        self._io_calls: collections.deque = collections.deque()       # for the fetcher's thread
        self._async_done: collections.deque = collections.deque()     # commit_async callbacks
        self._last_poll = _monotonic()
        self._next_auto_commit = _monotonic() + self.auto_commit_interval_s
        self._committed_positions: dict[TopicPartition, int] = {}
        self._leaving: threading.Event | None = None
        self._close_deadline: float | None = None
        self._lookups: list = []                 # _OffsetsLookup on the fetcher thread
        self._pattern_refresh_at = 0.0
        self._closing = False
        self._error: ZbError | None = None   # raised by the next poll() (e.g. unknown topic)
        self._fetcher_error: ZbError | None = None
        # caller's thread
        # [tp, state, generation, records, index, ends, error]: see _next_fetched
        self._current: list | None = None
        self._iter_deadline = None
        # fetcher's thread
        self._fetching_nodes: set[int] = set()
        self._need_metadata = True
        self._metadata_in_flight = False
        self._metadata_due = 0.0
        self._metadata_next_refresh = 0.0
        self._bootstrapped = threading.Event()
        self._bootstrap_error: ZbError | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._net.add_wake_fd(self._wake_r)
        self._membership: Membership | None = None
        self._group: GroupIO | None = None
        if group_id is not None:
            self._membership = Membership(
                group_id, instance_id=group_instance_id, rack_id=client_rack,
                client_id=self.client_id, assignor=group_remote_assignor,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                rebalance_timeout_ms=max_poll_interval_ms, retry_backoff_ms=retry_backoff_ms)
            self._group = GroupIO(self._net, self._membership, self._on_group_task,
                                  retry_backoff_ms)
        self._thread = threading.Thread(target=self._fetcher_main, daemon=True,
                                        name="zb-consumer-fetcher")
        self._thread.start()
        if self._bootstrapped.wait(bootstrap_timeout_ms / 1000) and self._bootstrap_error:
            self.close()
            raise self._bootstrap_error
        if not self._bootstrapped.is_set():
            self.close()
            raise NoBrokersAvailable(f"No broker answered at {self.bootstrap_servers} within "
                                     f"{bootstrap_timeout_ms / 1000:g} seconds.")
        if topics:
            self.subscribe(topics)

    # --- assignment ---------------------------------------------------------------------------
    def subscribe(self, topics=(), pattern: str | None = None, listener=None) -> None:
        """Subscribe to ``topics`` (a list of names) or to every topic whose whole name matches
        ``pattern`` (a regular expression; new matching topics are picked up). With a
        ``group_id`` this joins the group, which hands out the partitions; ``listener`` (see
        ConsumerRebalanceListener) hears of every change. Without one, every partition of the
        topics is read, including partitions added later. Replaces any earlier subscription or
        assignment."""
        if isinstance(topics, str):
            topics = [topics]
        topics = list(topics or ())
        if bool(topics) == (pattern is not None):
            raise ValueError("Subscribe to a list of topics or to a pattern, not both and not "
                             "neither.")
        for t in topics:
            protocol.check_topic_name(t)
        compiled = None
        if pattern is not None:
            if len(pattern) > protocol.REGEX_CHARS_MAX:
                raise ValueError(f"A pattern may be at most {protocol.REGEX_CHARS_MAX} "
                                 f"characters long.")
            try:
                compiled = re.compile(pattern)
            except re.error as e:
                raise ValueError(f"The pattern {pattern!r} is not a valid regular expression: "
                                 f"{e}.") from None
        with self._lock:
            self._check_open()
            if self._group is not None and not self._subscription and self._pattern is None \
                    and self._states:
                raise IllegalStateError("This consumer has assigned partitions itself; "
                                        "unsubscribe() before subscribing.")
            self._pattern = compiled
            self._listener = listener
            now = _monotonic()
            if compiled is not None:
                self._subscription = self._matching(compiled)
                self._topic_wait_since = {}
            else:
                self._subscription = set(topics)
                self._topic_wait_since = {t: now for t in topics}
            if self._group is None:
                for tp in [tp for tp in self._states if tp.topic not in self._subscription]:
                    self._drop_state(tp)
                self._add_subscribed_partitions()
            else:
                self._last_poll = now
                names, regex = sorted(self._subscription), pattern
                self._call_io(lambda t: self._membership.subscribe(names, regex, t))
        self._need_metadata = True
        self._metadata_due = 0.0
        self._wake()

    def subscription(self) -> set[str]:
        return set(self._subscription)

    def unsubscribe(self) -> None:
        """Stop reading everything; a group member leaves its group (after committing, with
        auto-commit, and telling the listener its partitions are revoked)."""
        if self._group is not None and (self._subscription or self._pattern is not None):
            self._leave_group()
        with self._lock:
            self._subscription = set()
            self._pattern = None
            self._topic_wait_since = {}
            for tp in list(self._states):
                self._drop_state(tp)

    def assign(self, partitions) -> None:
        """Read exactly ``partitions`` (TopicPartitions); replaces any subscription. Positions of
        partitions kept from the previous assignment stay. With a ``group_id`` they start at
        the group's committed offsets, and commits go to the group without joining it."""
        tps = [TopicPartition(*tp) for tp in partitions]
        for tp in tps:
            protocol.check_topic_name(tp.topic)
        with self._lock:
            self._check_open()
            if self._group is not None and (self._subscription or self._pattern is not None):
                raise IllegalStateError("This consumer is subscribed to topics in its group; "
                                        "unsubscribe() before assigning partitions.")
            self._subscription = set()
            now = _monotonic()
            self._topic_wait_since = {tp.topic: now for tp in tps}
            for tp in [tp for tp in self._states if tp not in tps]:
                self._drop_state(tp)
            for tp in tps:
                if tp not in self._states:
                    self._states[tp] = self._new_state(tp)
        self._need_metadata = True
        self._metadata_due = 0.0
        self._wake()

    def _new_state(self, tp: TopicPartition) -> _PartitionState:
        """Under _lock: a partition to read from its committed offset (with a group), else from
        ``auto_offset_reset``."""
        st = _PartitionState(tp, self.auto_offset_reset, self.max_partition_fetch_bytes)
        if self._group is not None:
            st.reset = None
            st.committed_pending = True
        elif self.auto_offset_reset is None:
            st.error = OffsetOutOfRange(f"{tp.topic}-{tp.partition} has no position and "
                                        f"auto_offset_reset is 'none'; seek() first.")
        return st

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
            st.committed_pending = False        # a seek wins over the committed offset
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
                st.committed_pending = False
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

    def metrics(self) -> dict:
        """kafka-python's consumer metrics: {"consumer-fetch-manager-metrics": {name: value}}
        with records-consumed-rate/-total, bytes-consumed-rate/-total (keys and values handed
        to the application), fetch-rate/-total, fetch-latency-avg/-max (ms) and records-lag-max
        (the largest high watermark minus position over the assigned partitions, as of the last
        fetch). Rates and averages cover the last 30 s."""
        values = self._metrics.values(CONSUMER_FETCH_METRICS)
        with self._lock:
            lags = [st.high_watermark - st.position for st in self._states.values()
                    if st.high_watermark >= 0 and st.position is not None]
        values["records-lag-max"] = float(max(lags, default=0))
        return {"consumer-fetch-manager-metrics": values}

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

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop returning (and fetching) records of these assigned partitions until resumed;
        their positions stay, and a group member keeps them."""
        with self._lock:
            for tp in partitions:
                st = self._assigned(tp)
                if not st.paused:
                    st.paused = True
                    self._invalidate(st)
                    st.fetch_offset = st.position

    def resume(self, *partitions: TopicPartition) -> None:
        with self._lock:
            for tp in partitions:
                self._assigned(tp).paused = False
        self._wake()

    def paused(self) -> set[TopicPartition]:
        with self._lock:
            return {tp for tp, st in self._states.items() if st.paused}

    # --- offsets of the log ---------------------------------------------------------------------
    def beginning_offsets(self, partitions, timeout_ms: int | None = None) -> dict:
        """{TopicPartition: first offset} (ListOffsets at each leader)."""
        got = self._list_offsets({TopicPartition(*tp): EARLIEST for tp in partitions},
                                 timeout_ms)
        return {tp: r[0] for tp, r in got.items()}

    def end_offsets(self, partitions, timeout_ms: int | None = None) -> dict:
        """{TopicPartition: offset after the last record readable now (the high watermark)}."""
        got = self._list_offsets({TopicPartition(*tp): LATEST for tp in partitions}, timeout_ms)
        return {tp: r[0] for tp, r in got.items()}

    def offsets_for_times(self, timestamps: dict, timeout_ms: int | None = None) -> dict:
        """{TopicPartition: OffsetAndTimestamp of the first record at or after the time (ms),
        or None when every record is older}."""
        asked = {}
        for tp, ts in timestamps.items():
            if not isinstance(ts, int) or ts < 0:
                raise ValueError(f"A timestamp must be milliseconds since the epoch, not {ts!r}.")
            asked[TopicPartition(*tp)] = ts
        got = self._list_offsets(asked, timeout_ms)
        return {tp: (OffsetAndTimestamp(*r) if r[0] >= 0 else None) for tp, r in got.items()}

    def _list_offsets(self, asked: dict, timeout_ms: int | None) -> dict:
        for tp in asked:
            protocol.check_topic_name(tp.topic)
        timeout_s = self._api_timeout(timeout_ms)
        fut = self._io_future(lambda t, fut: _OffsetsLookup(self, asked, fut, t + timeout_s))
        return fut.result(timeout_s + 1)

    # --- committing -----------------------------------------------------------------------------
    def commit(self, offsets: dict | None = None, timeout_ms: int | None = None) -> None:
        """Commit ``offsets`` ({TopicPartition: OffsetAndMetadata or int}: the offset of the
        next record to read), by default the position of every assigned partition, and wait
        until the group has it (replicated). Raises CommitFailedError when it can no longer
        succeed (this consumer is no longer a member, or a partition moved to another)."""
        offsets = self._commit_offsets(offsets)
        if not offsets:
            return
        timeout_s = self._api_timeout(timeout_ms)
        fut = self._group.submit_commit(offsets, timeout_s, self._joined_commit())
        self._wake()
        try:
            fut.result(timeout_s + 1)
        except TimeoutError:
            raise RequestTimedOut(f"The commit to group {self.group_id!r} did not finish "
                                  f"within {timeout_s:g} s.") from None
        self._note_committed(offsets)

    def commit_async(self, offsets: dict | None = None, callback=None) -> None:
        """Commit without waiting; ``callback(offsets, exception_or_None)`` is called on this
        thread by a later poll() (or commit(), close())."""
        offsets = self._commit_offsets(offsets)
        if not offsets:
            if callback is not None:
                self._async_done.append((callback, offsets, None))
            return
        fut = self._group.submit_commit(offsets, self.default_api_timeout_s,
                                        self._joined_commit())

        def done(f, offsets=offsets):
            err = f.exception()
            if err is None:
                self._note_committed(offsets)
            elif callback is None:
                log.warning("an asynchronous commit failed", group=self.group_id,
                            error=str(err))
            if callback is not None:
                self._async_done.append((callback, offsets, err))
                with self._lock:
                    self._cond.notify_all()
        fut.add_done_callback(done)
        self._wake()

    def committed(self, partition: TopicPartition, metadata: bool = False,
                  timeout_ms: int | None = None):
        """The group's committed offset of ``partition`` (an OffsetAndMetadata with
        ``metadata=True``), or None when nothing is committed."""
        if self._group is None:
            raise IllegalStateError("committed() needs a consumer with a group_id.")
        tp = TopicPartition(*partition)
        protocol.check_topic_name(tp.topic)
        timeout_s = self._api_timeout(timeout_ms)
        fut = self._group.submit_fetch([tp], timeout_s)
        self._wake()
        got = fut.result(timeout_s + 1).get(tp)
        if got is None:
            return None
        return got if metadata else got.offset

    def _commit_offsets(self, offsets: dict | None) -> dict:
        if self._group is None:
            raise IllegalStateError("Committing needs a consumer with a group_id.")
        self._check_open()
        self._run_async_callbacks()
        out = {}
        if offsets is None:
            with self._lock:
                for tp, st in self._states.items():
                    if st.position is not None:
                        out[tp] = OffsetAndMetadata(st.position, None, -1)
            return out
        for tp, om in offsets.items():
            tp = TopicPartition(*tp)
            protocol.check_topic_name(tp.topic)
            if isinstance(om, int) and not isinstance(om, bool):
                om = OffsetAndMetadata(om, None, -1)
            elif isinstance(om, tuple) and len(om) in (2, 3):
                om = OffsetAndMetadata(*om)
            else:
                raise ValueError(f"Commit offsets as ints or OffsetAndMetadata, not {om!r}.")
            if not isinstance(om.offset, int) or om.offset < 0:
                raise ValueError(f"A committed offset must be an int >= 0, not {om.offset!r}.")
            out[tp] = om
        return out

    def _joined_commit(self) -> bool:
        """Commits carry the membership when subscribed; an assign()ing consumer commits as no
        member."""
        return bool(self._subscription or self._pattern is not None)

    def _note_committed(self, offsets: dict) -> None:
        for tp, om in offsets.items():
            self._committed_positions[tp] = om.offset

    def _api_timeout(self, timeout_ms) -> float:
        return (timeout_ms / 1000) if timeout_ms is not None else self.default_api_timeout_s

    def _run_async_callbacks(self) -> None:
        while self._async_done:
            callback, offsets, err = self._async_done.popleft()
            try:
                callback(offsets, err)
            except Exception:
                log.exception("a commit_async callback raised")

    # --- reading ------------------------------------------------------------------------------
    def poll(self, timeout_ms: float = 0, max_records: int | None = None,
             update_offsets: bool = True) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records that are ready, at most ``max_records`` (default ``max_poll_records``),
        waiting up to ``timeout_ms`` for some: {TopicPartition: [ConsumerRecord, ...]}, each
        list in offset order. Raises what retrying cannot fix (unknown topic, offset out of
        range with auto_offset_reset="none", a corrupt batch).

        A corrupt batch raises CorruptMessage once the records before it are handed out, and
        again at every poll() until a ``seek`` of its partition moves past it; meanwhile no
        partition's records come, as from Kafka's consumer (``pause`` the partition to read
        the others). The error has ``topic_partition``, ``offset`` (the batch's base offset)
        and ``next_offset`` (where to seek to skip the batch; None when its header is
        unreadable)."""
        max_records = max_records or self.max_poll_records
        deadline = _monotonic() + timeout_ms / 1000
        self._check_open()
        self._last_poll = _monotonic()
        group = self._group is not None
        while True:
            if group:
                self._group_work()          # rebalances first: never hand out what is gone
            if not group or not self._membership_in_doubt():
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
                if self._tasks or self._async_done or \
                        (self._fetched and not (group and self._membership_in_doubt())):
                    continue
                left = deadline - _monotonic()
                if left <= 0:
                    return {}
                self._cond.wait(min(left, 0.05) if group else left)
            self._last_poll = _monotonic()

    def _membership_in_doubt(self) -> bool:
        """A group member that has not heard from its coordinator for (almost) a whole session
        hands out no more records until it has given its partitions up (its fetcher thread
        queues that "lost" task)."""
        lose_at = self._membership.lose_at
        if lose_at is not None and _monotonic() >= lose_at:
            self._wake()
            return True
        return False

    def __iter__(self):
        return self

    def __next__(self) -> ConsumerRecord:
        """The next record; StopIteration after ``consumer_timeout_ms`` without one."""
        cur = self._current
        if cur is not None and cur[4] < len(cur[3]) and cur[1].generation == cur[2] and \
                (self._group is None or self._group_quiet()):
            i = cur[4] + 1
            rec = cur[3][i - 1]
            cur[4] = i
            cur[1].position = cur[5].get(i, rec[0] + 1)     # a batch's end: from its header
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

    def _group_quiet(self) -> bool:
        """For iteration: each record counts as a poll, and nothing from the group (a
        rebalance, a lost membership) is waiting to run before the next record."""
        now = _monotonic()
        self._last_poll = now
        lose_at = self._membership.lose_at
        return not self._tasks and not self._async_done and (lose_at is None or now < lose_at)

    # --- the group, on the caller's thread ------------------------------------------------------
    def _group_work(self) -> None:
        """Run what the group asked of this thread (rebalances, commit callbacks), and the
        auto-commit when it is due. Raises an error the group cannot recover from."""
        self._run_async_callbacks()
        while self._tasks:
            self._run_task(self._tasks.popleft())
        m = self._membership
        if m is not None and m.state is State.FATAL and m.error is not None:
            raise m.error
        if self.enable_auto_commit and _monotonic() >= self._next_auto_commit:
            self._next_auto_commit = _monotonic() + self.auto_commit_interval_s
            self._auto_commit_async()

    def _auto_commit_async(self) -> None:
        with self._lock:
            changed = {tp: OffsetAndMetadata(st.position, None, -1)
                       for tp, st in self._states.items()
                       if st.position is not None and
                       self._committed_positions.get(tp) != st.position}
        if changed and (self._joined_commit() or self._states):
            self.commit_async(changed)

    def _commit_before_revoke(self, tps) -> None:
        """With auto-commit: commit the positions of partitions about to go, and wait."""
        if not self.enable_auto_commit:
            return
        with self._lock:
            offsets = {tp: OffsetAndMetadata(st.position, None, -1)
                       for tp, st in self._states.items()
                       if tp in tps and st.position is not None and
                       self._committed_positions.get(tp) != st.position}
        if not offsets:
            return
        timeout_s = self.default_api_timeout_s
        if self._close_deadline is not None:
            timeout_s = max(0.05, min(timeout_s, self._close_deadline - _monotonic()))
        try:
            self.commit(offsets, timeout_ms=int(timeout_s * 1000))
        except ZbError as e:
            log.warning("committing partitions before they are revoked failed; another member "
                        "will read them again from the last commit", group=self.group_id,
                        error=str(e))

    def _run_task(self, task: Task) -> None:
        if task.incarnation != self._membership.incarnation:
            return                  # for a membership lost or left since: nothing to do
        listener = self._listener
        revoke = set(task.revoke)
        if task.lost:
            with self._lock:
                revoke |= set(self._states)         # everything, whatever it holds now
        if revoke:
            if task.lost:
                log.info("partitions lost", group=self.group_id, partitions=len(revoke))
                self._call_listener(listener, "on_partitions_lost", revoke)
            else:
                self._commit_before_revoke(revoke)
                self._call_listener(listener, "on_partitions_revoked", revoke)
            with self._lock:
                for tp in revoke:
                    if tp in self._states:
                        self._drop_state(tp)
                    self._committed_positions.pop(tp, None)
        if task.assign:
            with self._lock:
                for tp in task.assign:
                    if tp not in self._states:
                        self._states[tp] = self._new_state(tp)
            self._need_metadata = True
            self._metadata_due = 0.0
            self._call_listener(listener, "on_partitions_assigned", set(task.assign))
        with self._lock:
            owned = frozenset(self._states)
        inc = task.incarnation
        self._call_io(lambda now: self._on_group_task(
            self._membership.task_done(owned, now, inc)))

    @staticmethod
    def _call_listener(listener, name: str, partitions: set) -> None:
        if listener is None:
            return
        fn = getattr(listener, name, None)
        if fn is None and name == "on_partitions_lost":
            fn = getattr(listener, "on_partitions_revoked", None)
        if fn is None:
            return
        try:
            fn(partitions)
        except Exception:
            log.exception("the rebalance listener raised", callback=name)

    def _on_group_task(self, task: Task | None) -> None:
        """On the fetcher thread: hand a task to the caller's thread."""
        if task is None:
            return
        with self._lock:
            self._tasks.append(task)
            self._cond.notify_all()

    def _leave_group(self) -> None:
        """Commit (auto-commit), tell the listener everything is revoked, leave the group and
        wait (a little) for the coordinator to have seen it."""
        m = self._membership
        self._group_work_quietly()
        with self._lock:
            owned = set(self._states)
        if owned and m.joined:
            self._commit_before_revoke(owned)
            self._call_listener(self._listener, "on_partitions_revoked", owned)
        done = threading.Event()

        def go(now):
            m.leave(now)
            if m.state is State.LEAVING:
                self._leaving = done        # set once the coordinator answered
            else:
                done.set()
        self._call_io(go)
        wait_s = min(LEAVE_WAIT_S, self.request_timeout_ms / 1000)
        if self._close_deadline is not None:
            wait_s = min(wait_s, max(0.0, self._close_deadline - _monotonic()))
        done.wait(wait_s)

    def _group_work_quietly(self) -> None:
        try:
            self._group_work()
        except ZbError as e:
            log.warning("the group failed before leaving", error=str(e))

    def close(self, autocommit: bool = True, timeout_ms: int = 30000) -> None:
        """Leave the group at once (committing first with auto-commit, so its partitions move
        to other members without waiting for the session timeout), stop the fetcher and close
        the connections; all of it within ``timeout_ms`` (Kafka's default close timeout, 30 s:
        a commit or leave the coordinator does not answer in time is given up)."""
        with self._lock:
            if self._closing:
                return
        self._close_deadline = _monotonic() + timeout_ms / 1000
        if self._group is not None and threading.current_thread() is not self._thread:
            if (self._subscription or self._pattern is not None) and autocommit is not None:
                if not autocommit:
                    self.enable_auto_commit = False
                self._leave_group()
            elif self.enable_auto_commit and autocommit and self._states:
                with self._lock:
                    offsets = {tp: OffsetAndMetadata(st.position, None, -1)
                               for tp, st in self._states.items() if st.position is not None}
                left_ms = int(max(0.05, self._close_deadline - _monotonic()) * 1000)
                try:
                    if offsets:
                        self.commit(offsets, timeout_ms=left_ms)
                except ZbError as e:
                    log.warning("the final commit failed", group=self.group_id, error=str(e))
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(max(1.0, min(10.0, self._close_deadline - _monotonic())))
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
        st.generation = next(_generations)
        st.buffered = 0
        st.reset_sent = False
        st.committed_sent = False        # an answer in flight is dropped: ask again
        st.error = None
        if self._fetched:
            self._fetched = collections.deque(f for f in self._fetched if f.tp != st.tp)
        cur = self._current
        if cur is not None and cur[0] == st.tp:
            self._current = None

    def _drop_state(self, tp: TopicPartition) -> None:
        st = self._states.pop(tp)
        self._invalidate(st)

    def _matching(self, pattern: re.Pattern) -> set[str]:
        return {t for t in self._net.cluster.topics
                if pattern.fullmatch(t) and t not in protocol.INTERNAL_TOPICS}

    def _pattern_matched(self) -> None:
        """Under _lock, on the fetcher thread: the topics a pattern matches now."""
        matched = self._matching(self._pattern)
        if matched == self._subscription:
            return
        self._subscription = matched
        if self._membership is not None:
            self._membership.subscribe(sorted(matched), self._pattern.pattern, _monotonic())

    def _add_subscribed_partitions(self) -> None:
        """Under _lock: states for every known partition of the subscribed topics (without a
        group: with one, the group hands them out)."""
        if self._group is not None:
            return
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
            if cur is None or cur[1].generation != cur[2] or \
                    (cur[4] >= len(cur[3]) and cur[6] is None):
                cur = self._current = self._next_fetched()
                if cur is None:
                    break
            tp, st, _gen, recs, i, ends, error = cur
            if i >= len(recs):
                # A corrupt batch, with the position at it: it stays next in line, holding up
                # every partition as in Kafka, until a seek of its partition drops it.
                if n:
                    break                   # first what came before it
                raise error.with_traceback(None)
            take = recs[i:i + max_records - n]
            i += len(take)
            cur[4] = i
            st.position = ends.get(i, take[-1][0] + 1)     # a batch's end: from its header
            got = out.get(tp)
            if got is None:
                out[tp] = take
            else:
                got.extend(take)
            n += len(take)
        if n:
            self._metrics.record("records_consumed", n)
            self._metrics.record("bytes_consumed", sum(
                len(r.value or b"") + len(r.key or b"") for recs in out.values() for r in recs))
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
            recs, ends, after, error = self._decode(f.tp, f.blob, position)
            if recs or error is not None:
                # what poll() reads next: the records from ``index`` on; ``ends`` maps the index
                # after each batch's last record to the position after the batch; ``error``
                # comes after the records
                return [f.tp, st, gen, recs, 0, ends, error]
            if after > position:
                with self._lock:            # batches without records (left) there: past them
                    if st.generation == gen:
                        st.position = after

    def _decode(self, tp: TopicPartition, blob, position: int) -> tuple:
        """Decode a fetched blob from ``position`` on: ``(records, ends, after, error)``.
        ``records`` are instances of the partition's ConsumerRecord class (made by
        ``zbroker.records``); ``ends`` maps the index after each whole batch's records to
        that batch's base_offset + last_offset_delta + 1, and ``after`` is that of the last
        one (else ``position``): positions come from headers. ``error`` is CorruptMessage
        for the first batch that fails, at its offset; the records before it come back,
        nothing after it. A partial batch at the end is left for the next fetch.

        A batch whose records' offsets do not rise strictly within its header's range is
        corrupt, not trimmed: Kafka treats an inconsistent batch as corrupt, handing its
        records out would move the position (and any commit of a record's offset + 1) past
        other batches, and dropping them would lose them without a word. That check, like the
        checksum's, is ``check_crcs``'s."""
        cls = ConsumerRecord.of(tp.topic, tp.partition)
        out: list = []
        ends: dict[int, int] = {}
        check = self.check_crcs
        try:
            for header, batch in records.iter_batches(blob):
                base, last = header.base_offset, header.base_offset + header.last_offset_delta
                if last < position:
                    continue                # before the position (or a batch read already)
                try:
                    recs = records.decode_records(batch, check, cls)
                except CorruptMessage as e:
                    return out, ends, position, self._corrupt(tp, base, last + 1, str(e))
                if check and not _offsets_fit(recs, base, last, header.records_count):
                    return out, ends, position, self._corrupt(
                        tp, base, last + 1, f"the offsets of its records leave its header's "
                                            f"range {base}-{last}")
                if base < position:         # a fetch (a seek) that starts inside the batch
                    recs = [r for r in recs if r[0] >= position]
                out += recs
                position = last + 1
                ends[len(out)] = position
        except CorruptMessage:              # from iter_batches: where the batch ends is unknown
            return out, ends, position, self._corrupt(tp, position, None,
                                                      "its header is malformed")
        return out, ends, position, None

    @staticmethod
    def _corrupt(tp: TopicPartition, offset: int, next_offset: int | None,
                 detail: str) -> CorruptMessage:
        skip = f": seek to offset {next_offset} to skip it" if next_offset is not None else ""
        e = CorruptMessage(f"The record batch of {tp.topic}-{tp.partition} at offset {offset} "
                           f"is corrupt ({detail}); poll() raises this until the consumer "
                           f"seeks past it{skip}.")
        e.topic_partition, e.offset, e.next_offset = tp, offset, next_offset
        return e

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
            if self._group is not None:
                self._group.close()
            for lookup in self._lookups:
                lookup.fail(IllegalStateError("The consumer is closed."))
            self._net.close()

    def _fetcher_loop(self) -> None:
        net = self._net
        while not self._closing:
            now = _monotonic()
            while self._io_calls:
                self._io_calls.popleft()(now)
            self._maybe_request_metadata(now)
            wake_at = now + 1.0
            if self._bootstrapped.is_set():
                self._check_topics(now)
                if self._group is not None:
                    wake_at = min(wake_at, self._group_tick(now))
                self._send_resets()
                retry_at = self._send_fetches(now)
                if retry_at is not None:
                    wake_at = min(wake_at, retry_at)
                for lookup in list(self._lookups):
                    wake_at = min(wake_at, lookup.tick(now))
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

    def _group_tick(self, now: float) -> float:
        m = self._membership
        if m.joined and now - self._last_poll > self.max_poll_interval_s:
            self._on_group_task(m.poll_timed_out(now))
        wake = self._group.tick(now)
        if self._leaving is not None and m.state is State.UNSUBSCRIBED:
            self._leaving.set()
            self._leaving = None
        self._send_committed_lookups()
        if m.joined:
            wake = min(wake, self._last_poll + self.max_poll_interval_s)
        return wake

    def _send_committed_lookups(self) -> None:
        """Ask the group for the committed offsets of newly assigned partitions."""
        with self._lock:
            items = [(st.tp, st.generation) for st in self._states.values()
                     if st.committed_pending and not st.committed_sent]
            for tp, _ in items:
                self._states[tp].committed_sent = True
        if not items:
            return
        fut = self._group.submit_fetch([tp for tp, _ in items], self.default_api_timeout_s)
        fut.add_done_callback(lambda f: self._on_committed(items, f))

    def _on_committed(self, items, fut) -> None:
        err = fut.exception()
        with self._lock:
            for tp, gen in items:
                st = self._states.get(tp)
                if st is None or st.generation != gen or not st.committed_pending:
                    continue
                st.committed_sent = False
                if err is not None:
                    if not err.retriable:
                        st.error = err
                    continue                    # asked again on the next turn
                st.committed_pending = False
                got = fut.result().get(tp)
                if got is not None:
                    st.generation = next(_generations)
                    st.position = st.fetch_offset = got.offset
                elif self.auto_offset_reset is not None:
                    st.reset = self.auto_offset_reset
                else:
                    st.error = OffsetOutOfRange(
                        f"{tp.topic}-{tp.partition} has no committed offset in group "
                        f"{self.group_id!r} and auto_offset_reset is 'none'.")
            self._cond.notify_all()
        self._wake()

    def _call_io(self, fn) -> None:
        """Run ``fn(now)`` on the fetcher thread."""
        self._io_calls.append(fn)
        self._wake()

    def _io_future(self, make):
        """Start ``make(now, future)`` (an object with ``tick(now)``) on the fetcher thread;
        returns the future it completes."""
        from zbroker.futures import Future
        fut = Future()
        self._call_io(lambda now: self._lookups.append(make(now, fut)))
        return fut

    def _maybe_request_metadata(self, now: float) -> None:
        if self._metadata_in_flight:
            return
        if now >= self._metadata_next_refresh:
            self._need_metadata = True
        if self._pattern is not None and now >= self._pattern_refresh_at:
            self._need_metadata = True
        if not self._need_metadata or now < self._metadata_due:
            return
        with self._lock:
            topics = sorted(self._subscription | {tp.topic for tp in self._states})
            if self._pattern is not None:
                topics = None                       # every topic, to match the pattern
                self._pattern_refresh_at = now + PATTERN_REFRESH_S
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
        if error is not None:
            log.debug("metadata request failed", error=str(error))
            self._need_metadata = True
            return
        self._metadata_next_refresh = _monotonic() + self.metadata_max_age_s
        with self._lock:
            if self._pattern is not None:
                self._pattern_matched()
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
            parts = [protocol.ListOffsetsPart(tp.topic, tp.partition, where,
                                              cluster.leader_epoch(*tp))
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
            try:
                results = {TopicPartition(r.topic, r.partition): r for r in
                           protocol.decode_entries(protocol.ListOffsetsResult,
                                                   header.get("parts") or [], "ListOffsets")}
            except ZbError as e:
                error = e
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
                if err is None and r.err:
                    err = errors.make_error(r.err, None)
                if err is not None:
                    if err.invalid_metadata or err.retriable:
                        self._need_metadata = True
                    else:
                        st.error = err
                    continue
                st.generation = next(_generations)
                st.position = st.fetch_offset = r.offset
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
                        st.buffered >= PREFETCH_FETCHES_MAX or st.error is not None or
                        st.paused):
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
            parts = [protocol.FetchPart(tp.topic, tp.partition, offset,
                                        cluster.leader_epoch(*tp), nbytes)
                     for tp, _, offset, nbytes in items]
            fields = {"replica_id": protocol.CONSUMER_REPLICA_ID,
                      "max_wait_ms": self.fetch_max_wait_ms, "min_bytes": self.fetch_min_bytes,
                      "max_bytes": self.fetch_max_bytes, "parts": parts}
            self._fetching_nodes.add(node)

            def handler(header, blobs, error, node=node, items=items, sent=_monotonic()):
                self._metrics.record("fetch_latency_ms", (_monotonic() - sent) * 1000)
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
            try:
                entries = protocol.decode_entries(protocol.FetchResult, header.get("parts") or [],
                                                  "Fetch")
            except ZbError as e:
                error, entries = e, []
            for i, r in enumerate(entries):
                results[TopicPartition(r.topic, r.partition)] = \
                    (r, blobs[i] if i < len(blobs) else b"")
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
                if err is None and res[0].err:
                    err = errors.make_error(res[0].err, None)
                if err is not None:
                    self._on_fetch_error(st, err)
                    notify = True
                    continue
                r, blob = res
                st.high_watermark = r.high_watermark
                next_offset, malformed = None, False
                try:
                    for h, _ in records.iter_batches(blob):
                        next_offset = h.base_offset + h.last_offset_delta + 1
                except CorruptMessage:
                    malformed = True        # poll() reports it, at its offset, when there
                if next_offset is not None and next_offset > offset:
                    st.fetch_offset = next_offset
                elif not malformed:
                    if blob and st.fetch_bytes < protocol.FRAME_BYTES_MAX // 2:
                        st.fetch_bytes *= 2     # one batch is bigger than the limit
                    continue
                st.fetch_bytes = self.max_partition_fetch_bytes
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


class _OffsetsLookup:
    """ListOffsets for some partitions at their leaders, on the fetcher thread, retrying what
    can be retried (leader moves, metadata not there yet) until ``deadline``. Completes
    ``future`` with {TopicPartition: (offset, timestamp)}."""

    def __init__(self, consumer: Consumer, asked: dict, future, deadline: float):
        self.c, self.future, self.deadline = consumer, future, deadline
        self.waiting = dict(asked)              # tp -> timestamp (-2, -1 or ms)
        self.found: dict = {}
        self.in_flight = 0
        self.retry_at = 0.0
        self.last_error: ZbError | None = None

    def fail(self, err: ZbError) -> None:
        if not self.future.done():
            self.future.set_exception(err)
        if self in self.c._lookups:
            self.c._lookups.remove(self)

    def tick(self, now: float) -> float:
        if self.future.done():
            self.c._lookups.remove(self)
            return now + 1.0
        if not self.waiting and not self.in_flight:
            self.future.set_result(self.found)
            self.c._lookups.remove(self)
            return now + 1.0
        if now > self.deadline:
            self.fail(RequestTimedOut(f"The offsets of {len(self.waiting)} partition(s) were "
                                      f"not found in time"
                                      f"{f' (last error: {self.last_error})' if self.last_error else ''}."))
            return now + 1.0
        if self.in_flight or now < self.retry_at:
            return max(self.retry_at, now + 0.01)
        net = self.c._net
        cluster = net.cluster
        by_node: dict[int, list] = {}
        for tp, ts in self.waiting.items():
            leader = cluster.leader(*tp)
            if leader < 0 or not net.ready(leader):
                code = cluster.topic_errors.get(tp.topic)
                if code and not errors.error_for_code(code).retriable:
                    self.fail(topic_error(code, tp.topic, self.c.bootstrap_servers))
                    return now + 1.0
                self._asked_for_metadata()
                continue
            by_node.setdefault(leader, []).append((tp, ts))
        for node, items in by_node.items():
            self.in_flight += 1
            parts = [protocol.ListOffsetsPart(tp.topic, tp.partition, ts, cluster.leader_epoch(*tp))
                     for tp, ts in items]

            def handler(header, blobs, error, items=items):
                self._on_answer(items, header, error)
            try:
                net.send(node, "ListOffsets", {"parts": parts}, handler=handler)
            except ZbError as e:
                handler(None, None, e)
        self.retry_at = now + self.c.retry_backoff_s
        return self.retry_at

    def _asked_for_metadata(self) -> None:
        c = self.c
        with c._lock:
            extra = {tp.topic for tp in self.waiting} - c._subscription - \
                {tp.topic for tp in c._states}
        if extra:
            c._net.request_metadata(sorted(extra))
        c._need_metadata = True

    def _on_answer(self, items, header, error) -> None:
        self.in_flight -= 1
        if error is not None:
            self.last_error = error
            if not error.retriable:
                self.fail(error)
            return
        try:
            entries = protocol.decode_entries(protocol.ListOffsetsResult,
                                              header.get("parts") or [], "ListOffsets")
        except ZbError as e:
            self.last_error = e
            return
        for r in entries:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in self.waiting:
                continue
            if r.err:
                err = errors.make_error(r.err, None)
                self.last_error = err
                if not (err.retriable or err.invalid_metadata):
                    self.fail(err)
                    return
                self._asked_for_metadata()
                continue
            self.found[tp] = (r.offset, r.timestamp)
            del self.waiting[tp]


__all__ = ["Consumer", "ConsumerRebalanceListener"]
