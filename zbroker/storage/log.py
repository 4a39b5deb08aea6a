"""The log of one partition: a directory of segments, appended at the end, read by offset.

Directory layout (``<log.dir>/<topic>-<partition>/``)::

    00000000000000000000.log        batches, back to back, as the producer built them with the
    00000000000000000000.index      broker's base offset and leader epoch stamped in
    00000000000000000000.timeindex
    00000000000000052311.log ...    the next segment, named by its base offset
    leader-epoch-checkpoint         epoch -> start offset (checkpoints.py)
    high-watermark-checkpoint       written by replication through write_high_watermark()
    recovery-point-checkpoint       every offset below it is known to be fsynced
    log-start-offset-checkpoint     only when delete_records_before moved it inside a segment
    .clean-shutdown                 written last by close(): log end offset and active size
    00000000000000052311.snapshot   the idempotent producers' state below that offset
                                    (producer_state.py), written at each roll and at close

Opening
    After a clean shutdown nothing is read: the segment list comes from the directory listing and
    the log end offset from the marker (checked against the active segment's size); files are
    opened and indexes loaded on first use. The marker is removed at once, so a crash later is
    seen as one.

Recovery (no marker)
    Every segment from the one holding the recovery point to the end is scanned: each batch's
    header, checksum and offsets are checked, the file is cut at the first torn or bad batch, the
    segments after a cut are deleted, and the indexes are rebuilt. Segments before the recovery
    point were fsynced (with their indexes) when they were rolled, so they are trusted; an index
    that fails its checks when it is loaded, or whose entry does not point at the batch it names,
    is rebuilt from the log. A kill -9 leaves everything written in the page cache, so only the
    active segment's tail can be torn; an OS crash can lose what was not fsynced, which is what
    the recovery point bounds.

Appends
    ``append`` (leader) checks every batch of a produce frame (header, checksum, size limit),
    and only then writes, so a refused frame writes nothing. Offsets and the leader epoch are
    stamped by writing a new 17-byte prefix in front of each batch's unchanged rest with one
    ``pwritev``: the producer's buffer is neither copied nor mutated. Per batch there is a little
    Python bookkeeping (index entries); records are never looked at.

Idempotent producers
    The log owns the partition's producer state (``producer_state``): ``append`` checks a
    frame's producer batches against it first (a refused frame writes nothing; duplicates are
    left out and answered with their original offsets), every written or replicated batch
    updates it, and it is rebuilt on open from the newest snapshot at or below the log end
    offset plus a replay of the batch headers after it (from the log start when there is none;
    after a clean shutdown without a snapshot the state is empty). Truncation reloads it the
    same way; retention forgets producers whose batches are all gone.

Flushing
    ``flush.messages`` / ``flush.ms`` fsync the log when reached; by default (-1) the OS decides,
    as in Kafka: replication makes data durable. A rolled segment is fsynced by the background
    worker, which then advances the recovery point.

Not thread-safe: one owner (the broker's loop thread) calls everything.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Any, Callable, NamedTuple

from zbroker import records
from zbroker.config import Config, ConfigDef, Setting
from zbroker.errors import CorruptMessage, KafkaStorageError, OffsetOutOfRange
from zbroker.logs import get_logger
from zbroker.records import LOG_OVERHEAD, PREFIX_SIZE
from zbroker.storage import background
from zbroker.storage.checkpoints import (LeaderEpochCache, OffsetCheckpoint, fsync_dir,
                                         read_entries, write_atomically)
from zbroker.storage.index import offset_index_max_entries
from zbroker.storage.producer_state import PRODUCERS_MAX_DEFAULT, ProducerStateManager
from zbroker.storage.segment import (DELETED_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX,
                                     RELATIVE_OFFSET_MAX, TIME_INDEX_SUFFIX, LogSegment)

log = get_logger(__name__)

MiB = 1 << 20
DAY_MS = 24 * 3600 * 1000

LOG_CONFIG = ConfigDef([
    Setting("segment.bytes", int, 1 << 30, "Roll to a new segment when the active one would grow "
            "past this many bytes.", min=1, max=(1 << 31) - 1),
    Setting("segment.ms", int, 7 * DAY_MS, "Roll when the active segment's first batch is older "
            "than this.", min=1),
    Setting("segment.index.bytes", int, 10 * MiB, "Size limit of a segment's offset index; a full "
            "index rolls the segment.", min=16),
    Setting("index.interval.bytes", int, 4096, "Bytes of batches between two offset index "
            "entries.", min=0),
    Setting("retention.ms", int, 7 * DAY_MS, "Delete segments whose newest record is older than "
            "this; -1 keeps them forever.", min=-1),
    Setting("retention.bytes", int, -1, "Delete the oldest segments while the log is larger than "
            "this; -1 for no size limit.", min=-1),
    Setting("flush.messages", int, -1, "fsync after this many records; -1 leaves it to the OS.",
            min=-1),
    Setting("flush.ms", int, -1, "fsync when the last one is this old; -1 leaves it to the OS.",
            min=-1),
    Setting("message.max.bytes", int, MiB, "The largest record batch accepted.",
            min=records.HEADER_SIZE, max=(1 << 31) - 1),
])

CLEAN_SHUTDOWN_FILE = ".clean-shutdown"
LEADER_EPOCH_CHECKPOINT = "leader-epoch-checkpoint"
HIGH_WATERMARK_CHECKPOINT = "high-watermark-checkpoint"
RECOVERY_POINT_CHECKPOINT = "recovery-point-checkpoint"
LOG_START_OFFSET_CHECKPOINT = "log-start-offset-checkpoint"
SNAPSHOT_SUFFIX = ".snapshot"
EMPTY_SNAPSHOT_BYTES = len(ProducerStateManager().encode_snapshot())


def log_config(props: dict[str, Any] | None = None) -> Config:
    """A log Config from Kafka-named settings; values may be typed or strings."""
    return LOG_CONFIG.parse({k: str(v).lower() if isinstance(v, bool) else str(v)
                             for k, v in (props or {}).items()})


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class AppendResult(NamedTuple):
    base_offset: int
    last_offset: int
    batches: int
    batch_offsets: list[int] | None = None  # each batch's base offset, when a frame's batches
    # are not contiguous from base_offset (some were duplicates of written ones)
    written: bool = True                    # False: every batch was a duplicate


def snapshot_name(offset: int) -> str:
    return f"{offset:020d}{SNAPSHOT_SUFFIX}"


def _snapshot_offsets_in(names) -> list[int]:
    """The offsets of the producer snapshots among a directory's file names, ascending."""
    return sorted(int(n[:-len(SNAPSHOT_SUFFIX)]) for n in names
                  if n.endswith(SNAPSHOT_SUFFIX) and n[:-len(SNAPSHOT_SUFFIX)].isdigit())


class PartitionLog:
    def __init__(self, directory: str, config: Config | dict | None = None, *,
                 clock_ms: Callable[[], int] = _wall_clock_ms, checkpoint_writer=None,
                 producers_max: int = PRODUCERS_MAX_DEFAULT):
        self.dir = os.path.abspath(directory)
        self.producer_state = ProducerStateManager(producers_max)
        self._clock_ms = clock_ms
        self.reconfigure(config)
        os.makedirs(self.dir, exist_ok=True)
        self._recovery_point_file = OffsetCheckpoint(os.path.join(self.dir, RECOVERY_POINT_CHECKPOINT))
        self._log_start_file = OffsetCheckpoint(os.path.join(self.dir, LOG_START_OFFSET_CHECKPOINT))
        self._hw_file = OffsetCheckpoint(os.path.join(self.dir, HIGH_WATERMARK_CHECKPOINT))
        self.leader_epoch_cache = LeaderEpochCache(os.path.join(self.dir, LEADER_EPOCH_CHECKPOINT),
                                                   checkpoint_writer)
        self._segments: list[LogSegment] = []
        self._bases: list[int] = []          # base offsets of _segments, for bisect
        self._pending_jobs: list[background.Job] = []
        # The recovery point is advanced by the background worker too (after it fsynced a rolled
        # segment); the lock orders its checkpoint writes with the owner's, and the generation,
        # bumped by truncation, makes a late result of an older flush a no-op.
        self._checkpoint_lock = threading.Lock()
        self._flush_generation = 0
        self._unflushed_messages = 0
        self._last_flush_ms = clock_ms()
        self._closed = False
        self.recovered_unclean = False
        self._load()

    def reconfigure(self, config: Config | dict | None) -> None:
        """Take a new configuration. Limits, retention and flushing apply at once; segment and
        index sizes from the next segment on (the open ones keep theirs), as in Kafka."""
        if not isinstance(config, Config):
            config = log_config(config)
        self.config = config
        self._segment_bytes = config["segment.bytes"]
        self._segment_ms = config["segment.ms"]
        self._index_interval_bytes = config["index.interval.bytes"]
        self._index_max_entries = offset_index_max_entries(config["segment.index.bytes"])
        self._retention_ms = config["retention.ms"]
        self._retention_bytes = config["retention.bytes"]
        self._flush_messages = config["flush.messages"]
        self._flush_ms = config["flush.ms"]
        self._message_max_bytes = config["message.max.bytes"]

    # --- opening ------------------------------------------------------------------------------

    def _segment(self, base_offset: int, create: bool = False) -> LogSegment:
        seg = LogSegment(self.dir, base_offset, index_interval_bytes=self._index_interval_bytes,
                         index_max_entries=self._index_max_entries, create=create)
        seg.created_ms = self._clock_ms()
        return seg

    def _load(self) -> None:
        bases, stray = [], []
        names = os.listdir(self.dir)
        for name in names:
            if name.endswith(DELETED_SUFFIX) or name.endswith(".tmp"):
                stray.append(name)
            elif name.endswith(LOG_SUFFIX):
                stem = name[:-len(LOG_SUFFIX)]
                if stem.isdigit():
                    bases.append(int(stem))
        bases.sort()
        known = set(bases)
        for name in names:
            for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
                if name.endswith(suffix) and name[:-len(suffix)].isdigit() and \
                        int(name[:-len(suffix)]) not in known:
                    stray.append(name)  # an index without its log
        for name in stray:
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
        self._segments = [self._segment(b) for b in bases]
        self._bases = bases
        marker = self._read_clean_shutdown()
        log_start = self._log_start_file.read(0)
        if not self._segments:
            self._add_segment(self._segment(log_start, create=True))
            self._next_offset = log_start
            self._recovery_point = log_start
        elif marker is not None:
            self._next_offset = marker["log_end_offset"]
            self.active.next_offset = self._next_offset
            self._recovery_point = self._next_offset
        else:
            self.recovered_unclean = True
            self._recovery_point = self._recovery_point_file.read(0)
            self._recover()
        self._log_start_offset = min(max(log_start, self._bases[0]), self._next_offset)
        cache = self.leader_epoch_cache
        cache.truncate_from_end(self._next_offset)
        cache.truncate_from_start(self._log_start_offset)
        hw = self._hw_file.read(0)
        self._high_watermark_checkpoint = min(max(hw, self._log_start_offset), self._next_offset)
        self._load_producer_state(clean=marker is not None,
                                  snapshots=_snapshot_offsets_in(names))
        log.debug("partition_log_opened", dir=self.dir, segments=len(self._segments),
                  log_start_offset=self._log_start_offset, log_end_offset=self._next_offset,
                  clean=marker is not None)

    def _read_clean_shutdown(self) -> dict | None:
        path = os.path.join(self.dir, CLEAN_SHUTDOWN_FILE)
        entries = read_entries(path, 3)
        if entries is None:
            return None
        os.unlink(path)
        (leo, active_base, active_size), = entries
        if not self._segments or self._bases[-1] != active_base:
            log.warning("clean_shutdown_marker_stale", dir=self.dir)
            return None
        active = self._segments[-1]
        if active.size != active_size:
            log.warning("clean_shutdown_marker_size_mismatch", dir=self.dir,
                        recorded=active_size, actual=active.size)
            return None
        return {"log_end_offset": leo}

    def _recover(self) -> None:
        start = max(0, bisect.bisect_right(self._bases, self._recovery_point) - 1)
        epoch = -1
        t0 = time.monotonic()
        for i in range(start, len(self._segments)):
            seg = self._segments[i]
            cut = seg.recover(epoch)
            epoch = seg.last_leader_epoch
            if i + 1 < len(self._segments) and seg.next_offset != self._bases[i + 1]:
                cut = cut or 1  # a gap or overlap before the next segment: it can't be trusted
            if cut and i + 1 < len(self._segments):
                log.warning("deleting_segments_after_corruption", dir=self.dir,
                            segments=len(self._segments) - i - 1)
                for later in self._segments[i + 1:]:
                    for path in later.rename_for_deletion():
                        os.unlink(path)
                del self._segments[i + 1:], self._bases[i + 1:]
                break
        for seg in self._segments[start:-1]:
            seg.write_indexes()
        last = self._segments[-1]
        assert last.next_offset is not None, "recovery always scans the last segment"
        self._next_offset = last.next_offset
        self._recovery_point = min(self._recovery_point, self._next_offset)
        log.info("partition_log_recovered", dir=self.dir, segments_scanned=len(self._segments) - start,
                 log_end_offset=self._next_offset, seconds=round(time.monotonic() - t0, 3))

    def _add_segment(self, seg: LogSegment) -> None:
        assert not self._bases or seg.base_offset > self._bases[-1], (seg.base_offset, self._bases)
        self._segments.append(seg)
        self._bases.append(seg.base_offset)

    # --- state --------------------------------------------------------------------------------

    @property
    def active(self) -> LogSegment:
        return self._segments[-1]

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._next_offset

    @property
    def recovery_point(self) -> int:
        return self._recovery_point

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def segment_base_offsets(self) -> list[int]:
        return list(self._bases)

    def size_in_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    # --- appends ------------------------------------------------------------------------------

    def append(self, batches, leader_epoch: int) -> AppendResult:
        """Append a produce frame of one or more whole batches as the leader: offsets from the
        log end offset, ``leader_epoch`` stamped in every batch. Raises CorruptMessage or
        MessageTooLarge (nothing written) for a bad frame."""
        self._check_open()
        view = _byte_view(batches)
        headers = records.validate_batches(view, self._message_max_bytes)
        plan = self.producer_state.check([h for _, h in headers])   # (refused: nothing changed)
        self.leader_epoch_cache.flush()     # (an election's epoch, a truncation: on disk first)
        latest = self.leader_epoch_cache.latest_epoch
        if leader_epoch != latest:
            # Epochs never go back in a log (recovery relies on it): a leader appending with an
            # older one is a bug in the caller, not bad input.
            if leader_epoch < latest:
                raise ValueError(f"leader epoch {leader_epoch} is older than the log's {latest}")
            if None in plan:
                self.leader_epoch_cache.assign(leader_epoch, self._next_offset)
        iovecs: list = []
        info: list[tuple[int, int, int]] = []
        offset = self._next_offset
        prefix = records.header_prefix
        written: list[records.BatchHeader] = []
        offsets: list[int] = []
        nbytes = 0
        for (pos, h), dup in zip(headers, plan):
            if dup is not None:
                offsets.append(dup.base_offset)
                continue
            size = h.batch_length + LOG_OVERHEAD
            iovecs.append(prefix(offset, h.batch_length, leader_epoch))
            iovecs.append(view[pos + PREFIX_SIZE:pos + size])
            info.append((offset, h.max_timestamp, size))
            offsets.append(offset)
            if h.producer_id >= 0:
                written.append(h._replace(base_offset=offset))
            offset += h.last_offset_delta + 1
            nbytes += size
        dup_last = max((d.last_offset for d in plan if d is not None), default=-1)
        if not info:            # every batch a duplicate: nothing to write
            return AppendResult(offsets[0], dup_last, 0,
                                offsets if len(offsets) > 1 else None, False)
        result = self._write(iovecs, nbytes, info, self._next_offset, offset)
        update, now = self.producer_state.update, self._clock_ms()
        for h in written:
            update(h, now)
        if len(info) != len(headers):
            return AppendResult(offsets[0], max(result.last_offset, dup_last), result.batches,
                                offsets)
        return result

    def append_as_follower(self, batches) -> AppendResult:
        """Append batches fetched from the leader as they are (offsets and epochs already set).
        Offsets must continue the log exactly (a follower whose leader's log starts later calls
        truncate_fully_and_start_at first); epochs must not go back."""
        self._check_open()
        view = _byte_view(batches)
        headers = records.validate_batches(view, None)
        expected = self._next_offset
        info: list[tuple[int, int, int]] = []
        cache = self.leader_epoch_cache
        cache.flush()
        epochs: list[tuple[int, int]] = []
        latest = cache.latest_epoch
        for _, h in headers:
            if h.base_offset != expected:
                raise CorruptMessage(f"batch base offset {h.base_offset} does not continue the "
                                     f"log at {expected}")
            if h.partition_leader_epoch < latest:
                raise CorruptMessage(f"batch leader epoch {h.partition_leader_epoch} is older "
                                     f"than the log's {latest}")
            if h.partition_leader_epoch > latest:
                latest = h.partition_leader_epoch
                epochs.append((latest, h.base_offset))
            info.append((h.base_offset, h.max_timestamp, h.batch_length + LOG_OVERHEAD))
            expected = h.base_offset + h.last_offset_delta + 1
        for epoch, start in epochs:  # before the write: a recovered batch's epoch is always known
            cache.assign(epoch, start)
        result = self._write([view], len(view), info, headers[0][1].base_offset, expected)
        update, now = self.producer_state.update, self._clock_ms()
        for _, h in headers:
            if h.producer_id >= 0:
                update(h, now)
        return result

    def _write(self, iovecs: list, nbytes: int, info: list[tuple[int, int, int]],
               first_offset: int, next_offset: int) -> AppendResult:
        now = self._clock_ms()
        seg = self.active
        assert first_offset == self._next_offset, (first_offset, self._next_offset)
        max_ts = max(ts for _, ts, _ in info)
        if self._should_roll(seg, nbytes, next_offset - 1, max_ts, now):
            seg = self.roll()
        seg.append(iovecs, nbytes, info)
        seg.next_offset = next_offset
        self._next_offset = next_offset
        self._unflushed_messages += next_offset - first_offset
        if (0 <= self._flush_messages <= self._unflushed_messages or
                (self._flush_ms >= 0 and now - self._last_flush_ms >= self._flush_ms)):
            self.flush()
        return AppendResult(first_offset, next_offset - 1, len(info))

    def _should_roll(self, seg: LogSegment, nbytes: int, last_offset: int, max_timestamp: int,
                     now: int) -> bool:
        """Kafka's rules. For ``segment.ms`` the age is measured like Kafka does: the incoming
        batches' max timestamp minus the segment's first batch's, falling back to the wall clock
        since the segment object was created when timestamps are missing."""
        if seg.size == 0:
            return False
        if seg.size + nbytes > self._segment_bytes:
            return True
        if seg.index.full:
            return True
        if last_offset - seg.base_offset > RELATIVE_OFFSET_MAX:
            return True
        first_ts = seg.first_batch_timestamp
        if first_ts is not None and first_ts >= 0 and max_timestamp >= 0:
            return max_timestamp - first_ts > self._segment_ms
        return now - seg.created_ms > self._segment_ms

    def roll(self) -> LogSegment:
        """Start a new active segment at the log end offset. The old one's indexes are written
        and the background worker fsyncs it, then advances the recovery point."""
        old = self.active
        base = self._next_offset
        if old.size == 0:
            assert old.base_offset == base, (old.base_offset, base)
            return old
        old.write_indexes()
        new = self._segment(base, create=True)
        self._add_segment(new)
        snapshot_fd = self._write_producer_snapshot(base)

        def done(offset=base, generation=self._flush_generation):  # on the worker thread
            self._set_recovery_point(offset, generation)
        self._submit(fds=old.fsync_fds() + [snapshot_fd], fsync_dir=self.dir, on_done=done)
        return new

    # --- producer state -------------------------------------------------------------------------

    def _snapshot_offsets(self) -> list[int]:
        return _snapshot_offsets_in(os.listdir(self.dir))

    def _write_producer_snapshot(self, offset: int) -> int:
        """Write the producer state (everything below ``offset``) as ``<offset>.snapshot``
        (temp file and rename); returns the file's open descriptor for the caller to fsync
        and close (the background worker after a roll). A snapshot that a crash tears fails
        its checksum on open and an older one or the log is used instead."""
        path = os.path.join(self.dir, snapshot_name(offset))
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            data = self.producer_state.encode_snapshot()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _empty_snapshot(self, offset: int) -> bool:
        """The snapshot holds no producer (known from its size, without reading it)."""
        try:
            size = os.stat(os.path.join(self.dir, snapshot_name(offset))).st_size
        except OSError:
            return False
        return size == EMPTY_SNAPSHOT_BYTES

    def _delete_snapshots(self, keep, offsets: list[int] | None = None) -> None:
        for offset in self._snapshot_offsets() if offsets is None else offsets:
            if not keep(offset):
                try:
                    os.unlink(os.path.join(self.dir, snapshot_name(offset)))
                except FileNotFoundError:
                    pass

    def _load_producer_state(self, clean: bool, snapshots: list[int] | None = None) -> None:
        """The producer state at the log end offset: the newest good snapshot at or below it,
        then the batches after it (all of them when there is no snapshot)."""
        end, start = self._next_offset, self._log_start_offset
        if snapshots is None:
            snapshots = self._snapshot_offsets()
        self._delete_snapshots(lambda o: o <= end, snapshots)
        state = self.producer_state
        state.clear()
        snapshots = [o for o in snapshots if o <= end]
        if clean and (not snapshots or self._empty_snapshot(snapshots[-1])):
            return              # close() leaves a snapshot whenever there is state
        base = start
        for offset in reversed(snapshots):
            try:
                with open(os.path.join(self.dir, snapshot_name(offset)), "rb") as f:
                    state.load_snapshot(f.read())
                base = max(offset, start)
                break
            except (OSError, ValueError) as e:
                log.warning("producer_snapshot_unreadable", dir=self.dir, offset=offset,
                            error=str(e))
                state.clear()
        self._replay_producers(base, end)
        state.evict_below(start)

    def _replay_producers(self, start: int, end: int) -> None:
        """Apply the headers of the batches in [start, end) to the producer state."""
        if start >= end:
            return
        update = self.producer_state.update
        i = max(0, bisect.bisect_right(self._bases, start) - 1)
        for seg in self._segments[i:]:
            if seg.base_offset >= end:
                break
            found = seg.find_batch(start) if seg.base_offset < start else (0, None)
            if found is None:
                continue
            for _, h in seg.iter_headers(found[0]):
                if h.base_offset >= end:
                    break
                if h.base_offset + h.last_offset_delta >= start and h.producer_id >= 0:
                    update(h)       # (with a batch the log start cut into)

    def expire_producers(self, now_ms: int, expiration_ms: int) -> int:
        """``producer.id.expiration.ms``: forget producers silent for that long."""
        return self.producer_state.expire(now_ms, expiration_ms)

    # --- reads --------------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, max_offset: int | None = None,
             min_one_batch: bool = True) -> bytes:
        """Whole batches starting with the one that holds ``offset``, up to ``max_bytes`` (the
        first batch is returned whole even when it is larger, unless ``min_one_batch`` is False),
        only batches entirely below ``max_offset`` (the high watermark, for consumers). Returns
        b"" at the end of the log; raises OffsetOutOfRange outside [log start, log end]."""
        self._check_open()
        if offset < self._log_start_offset or offset > self._next_offset:
            raise OffsetOutOfRange(f"offset {offset} is outside [{self._log_start_offset}, "
                                   f"{self._next_offset}]")
        bound = self._next_offset if max_offset is None else min(max_offset, self._next_offset)
        if offset >= bound or max_bytes < 0:
            return b""
        i = bisect.bisect_right(self._bases, offset) - 1
        for seg in self._segments[max(i, 0):]:
            if seg.base_offset >= bound:
                break
            data = seg.read(offset, max_bytes, bound, min_one_batch)
            if data:
                return data
        return b""

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """The offset of the first record whose timestamp is >= ``timestamp_ms``, or None when
        every record is older. (Kafka's ListOffsets by time.)"""
        self._check_open()
        for seg in self._segments:
            if seg.size == 0 or seg.max_timestamp < timestamp_ms:
                continue
            ti = seg.time_index
            j = bisect.bisect_left(ti.keys, timestamp_ms) - 1  # last entry with ts < target
            start_offset = seg.base_offset + ti.values[j] if j >= 0 else seg.base_offset
            found = seg.find_batch(max(start_offset, self._log_start_offset))
            if found is None:
                continue
            for pos, h in seg.iter_headers(found[0]):
                if h.max_timestamp < timestamp_ms:
                    continue
                batch = seg.read_batch_at(pos, h.batch_length + LOG_OVERHEAD)
                for rec in records.decode_records(batch, check_crc=False):
                    if rec.timestamp >= timestamp_ms and rec.offset >= self._log_start_offset:
                        return rec.offset
        return None

    # --- truncation, deletion, retention ------------------------------------------------------

    def truncate_to(self, offset: int) -> None:
        """Remove every record at or after ``offset`` (for a follower whose log diverged from its
        leader). A batch that holds ``offset`` goes whole. Then appends continue from the new
        log end offset."""
        self._check_open()
        if offset < 0:
            raise ValueError(f"cannot truncate to negative offset {offset}")
        if offset >= self._next_offset:
            return
        if offset <= self._log_start_offset:
            self.truncate_fully_and_start_at(offset)
            return
        with self._checkpoint_lock:
            self._flush_generation += 1
        keep = bisect.bisect_left(self._bases, offset)  # segments with base < offset stay
        assert keep >= 1
        self._delete_segments(self._segments[keep:])
        del self._segments[keep:], self._bases[keep:]
        seg = self.active
        seg.next_offset = seg.truncate_to(offset)
        self._next_offset = seg.next_offset
        self.leader_epoch_cache.truncate_from_end(self._next_offset)
        self._high_watermark_checkpoint = min(self._high_watermark_checkpoint, self._next_offset)
        if self._recovery_point > self._next_offset:
            self._set_recovery_point(self._next_offset, lower=True)
        self._load_producer_state(clean=False)

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Drop everything and start an empty log at ``offset`` (a follower far behind a leader
        whose log now starts later)."""
        self._check_open()
        with self._checkpoint_lock:
            self._flush_generation += 1
        self._delete_segments(self._segments)
        self._segments, self._bases = [], []
        self._add_segment(self._segment(offset, create=True))
        self._next_offset = self._log_start_offset = offset
        self._log_start_file.write(offset)
        self._set_recovery_point(offset, lower=True)
        self.leader_epoch_cache.clear()
        self._high_watermark_checkpoint = offset
        self.producer_state.clear()
        self._delete_snapshots(lambda o: False)

    def delete_records_before(self, offset: int) -> int:
        """Make ``offset`` the log start offset (DeleteRecords): records below it are no longer
        served, and whole segments below it are deleted. Returns the new log start offset."""
        self._check_open()
        if offset > self._next_offset or offset < 0:
            raise OffsetOutOfRange(f"offset {offset} is outside [0, {self._next_offset}]")
        if offset > self._log_start_offset:
            self._log_start_offset = offset
            self._log_start_file.write(offset)
            self.leader_epoch_cache.truncate_from_start(offset)
            self._delete_prefix(lambda seg, nxt: nxt is not None and nxt <= offset)
            self.producer_state.evict_below(self._log_start_offset)
        return self._log_start_offset

    def apply_retention(self, now_ms: int | None = None,
                        high_watermark: int | None = None) -> int:
        """Delete whole segments past ``retention.ms`` (by their newest timestamp) or beyond
        ``retention.bytes`` (oldest first), and those entirely below the log start offset.
        With ``high_watermark`` (a replicated partition), only segments wholly below it go, as
        in Kafka: records not yet committed are never deleted before anyone could read them.
        Returns how many were deleted."""
        self._check_open()
        now = self._clock_ms() if now_ms is None else now_ms
        deleted = self._delete_prefix(
            lambda seg, nxt: nxt is not None and nxt <= self._log_start_offset)
        if high_watermark is not None:
            below = self._delete_prefix

            def bounded(predicate):
                return below(lambda seg, nxt: (self._next_offset if nxt is None else nxt) <=
                             high_watermark and predicate(seg, nxt))
        else:
            bounded = self._delete_prefix
        if self._retention_ms >= 0:
            limit = now - self._retention_ms
            deleted += bounded(lambda seg, nxt: seg.max_timestamp < limit)
        if self._retention_bytes >= 0:
            excess = self.size_in_bytes() - self._retention_bytes

            def over(seg, nxt):
                nonlocal excess
                if excess - seg.size >= 0:
                    excess -= seg.size
                    return True
                return False
            deleted += bounded(over)
        return deleted

    def _delete_prefix(self, predicate: Callable[[LogSegment, int | None], bool]) -> int:
        """Delete the longest run of oldest segments for which ``predicate(segment,
        next_base_or_None)`` holds. The active segment counts only when it holds data; deleting
        it rolls a new, empty one first, so the log end offset never moves."""
        n = 0
        for i, seg in enumerate(self._segments):
            nxt = self._bases[i + 1] if i + 1 < len(self._segments) else None
            if nxt is None and seg.size == 0:
                break
            if not predicate(seg, nxt):
                break
            n += 1
        if n == 0:
            return 0
        if n == len(self._segments):
            self.roll()
        doomed = self._segments[:n]
        del self._segments[:n], self._bases[:n]
        self._delete_segments(doomed)
        if self._bases[0] > self._log_start_offset:
            self._log_start_offset = self._bases[0]
            self.leader_epoch_cache.truncate_from_start(self._log_start_offset)
        self.producer_state.evict_below(self._log_start_offset)
        first = self._bases[0]
        self._delete_snapshots(lambda o: o >= first)
        log.info("segments_deleted", dir=self.dir, count=n, log_start_offset=self._log_start_offset)
        return n

    def _delete_segments(self, segments: list[LogSegment]) -> None:
        paths: list[str] = []
        for seg in segments:
            paths += seg.rename_for_deletion()
        if paths:
            self._submit(unlink_paths=paths)

    # --- durability ---------------------------------------------------------------------------

    def flush(self) -> None:
        """fsync every segment from the recovery point to the end; the recovery point becomes the
        log end offset."""
        self._check_open()
        start = max(0, bisect.bisect_right(self._bases, self._recovery_point) - 1)
        for seg in self._segments[start:]:
            seg.fsync()
        fsync_dir(self.dir)
        self._set_recovery_point(self._next_offset)
        self._unflushed_messages = 0
        self._last_flush_ms = self._clock_ms()

    @property
    def timed_flush(self) -> bool:
        """``flush.ms`` is set (``maybe_flush`` has work to do now and then)."""
        return self._flush_ms >= 0

    def maybe_flush(self, now_ms: int | None = None) -> bool:
        """Run ``flush.ms`` from a timer: flush if there are unflushed records that old."""
        now = self._clock_ms() if now_ms is None else now_ms
        if self._flush_ms >= 0 and self._unflushed_messages and \
                now - self._last_flush_ms >= self._flush_ms:
            self.flush()
            return True
        return False

    def _set_recovery_point(self, offset: int, generation: int | None = None,
                            lower: bool = False) -> None:
        """Checkpoint that everything below ``offset`` is fsynced. It only moves up, except
        when truncation (``lower``) took the log below it; ``generation`` is the worker's."""
        with self._checkpoint_lock:
            if generation is not None and generation != self._flush_generation:
                return
            if offset > self._recovery_point or (lower and offset != self._recovery_point):
                # the file first: whoever sees the new value may count on it being on disk
                self._recovery_point_file.write(offset)
                self._recovery_point = offset

    def _submit(self, **job) -> None:
        self._pending_jobs = [j for j in self._pending_jobs if not j.done.is_set()]
        self._pending_jobs.append(background.submit(**job))

    @property
    def high_watermark_checkpoint(self) -> int:
        """The high watermark last checkpointed (clamped to the log's offsets at open)."""
        return self._high_watermark_checkpoint

    def write_high_watermark(self, high_watermark: int) -> None:
        if not self._log_start_offset <= high_watermark <= self._next_offset:
            raise ValueError(f"high watermark {high_watermark} is outside the log "
                             f"[{self._log_start_offset}, {self._next_offset}]")
        self._hw_file.write(high_watermark)
        self._high_watermark_checkpoint = high_watermark

    def close(self) -> None:
        """Clean shutdown: write the active indexes, fsync, and leave the marker that lets the
        next open skip recovery."""
        if self._closed:
            return
        for job in self._pending_jobs:
            job.done.wait(60)
        self._pending_jobs = []
        self.leader_epoch_cache.flush()     # (its truncations may still be with the writer)
        self.active.write_indexes(fsync=True)
        for seg in self._segments[max(0, bisect.bisect_right(self._bases, self._recovery_point) - 1):]:
            seg.fsync()
        active = self.active
        self._set_recovery_point(self._next_offset)
        snapshots = self._snapshot_offsets()
        if len(self.producer_state) or (snapshots and not self._empty_snapshot(snapshots[-1])):
            fd = self._write_producer_snapshot(self._next_offset)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.dir)
        write_atomically(os.path.join(self.dir, CLEAN_SHUTDOWN_FILE),
                         f"0\n1\n{self._next_offset} {active.base_offset} {active.size}\n".encode())
        for seg in self._segments:
            seg.close()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise KafkaStorageError(f"the log in {self.dir} is closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _byte_view(buf) -> memoryview:
    view = memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


__all__ = ["PartitionLog", "AppendResult", "LOG_CONFIG", "log_config"]
