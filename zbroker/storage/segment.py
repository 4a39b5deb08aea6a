"""One segment of a partition log: ``<base_offset:020d>.log`` plus its ``.index`` and
``.timeindex`` (see index.py).

A segment object is cheap until used: the file is opened, its size taken and its indexes loaded
only when a read, an append or retention first needs them, so a log of thousands of segments
opens without touching them. Reads are ``os.pread`` of whole batches straight from the file (page
cache), never from a copy of the log kept in memory. mmap was the alternative; pread was chosen
because a memoryview into an mmap that outlives a truncation or deletion of the segment faults the
whole process (SIGBUS), and because the bytes handed to ZeroMQ are copied once either way.
"""

from __future__ import annotations

import os
from typing import Iterator

from zbroker import records
from zbroker.errors import CorruptMessage, KafkaStorageError
from zbroker.logs import get_logger
from zbroker.records import HEADER_SIZE, LOG_OVERHEAD, BatchHeader
from zbroker.storage.index import OffsetIndex, TimeIndex

log = get_logger(__name__)

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
DELETED_SUFFIX = ".deleted"
SCAN_CHUNK_BYTES = 64 << 10       # header walks read this much at a time
RECOVERY_CHUNK_BYTES = 4 << 20    # recovery (which checks checksums) reads this much at a time
RELATIVE_OFFSET_MAX = (1 << 32) - 1
IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class BadPosition(Exception):
    """A header walk met bytes that are not a batch header (a damaged index or segment)."""


class LogSegment:
    def __init__(self, directory: str, base_offset: int, *, index_interval_bytes: int,
                 index_max_entries: int, create: bool = False):
        self.base_offset = base_offset
        self.directory = directory
        stem = os.path.join(directory, segment_name(base_offset))
        self.log_path = stem + LOG_SUFFIX
        self.index_path = stem + INDEX_SUFFIX
        self.time_index_path = stem + TIME_INDEX_SUFFIX
        self.index_interval_bytes = index_interval_bytes
        self.index_max_entries = index_max_entries
        self._fd: int | None = None
        self._size: int | None = None
        self._index: OffsetIndex | None = None
        self._time_index: TimeIndex | None = None
        # Known once the indexes are loaded or built:
        self._max_timestamp = -1
        self._offset_of_max_timestamp = -1
        self._bytes_since_index_entry = 0
        self._first_batch_timestamp: int | None = None
        self.next_offset: int | None = None  # known for the active segment and after a scan
        self.created_ms = 0                  # set by the owner (its clock)
        self.last_leader_epoch = -1          # known after a recovery scan
        if create:
            fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            self._fd, self._size = fd, 0
            self._index = OffsetIndex(self.index_path, index_max_entries)
            self._time_index = TimeIndex(self.time_index_path, index_max_entries)
            self.next_offset = base_offset
            for path in (self.index_path, self.time_index_path):
                try:
                    os.unlink(path)  # stale leftovers of an earlier segment with this name
                except FileNotFoundError:
                    pass

    def __repr__(self):
        return f"LogSegment({self.log_path}, size={self._size})"

    # --- lazy state ---------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.log_path, os.O_RDWR | os.O_CLOEXEC)
        return self._fd

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = (os.stat(self.log_path) if self._fd is None else os.fstat(self._fd)).st_size
        return self._size

    @property
    def index(self) -> OffsetIndex:
        if self._index is None:
            self._load_indexes()
        return self._index

    @property
    def time_index(self) -> TimeIndex:
        if self._time_index is None:
            self._load_indexes()
        return self._time_index

    @property
    def max_timestamp(self) -> int:
        if self._index is None:
            self._load_indexes()
        return self._max_timestamp

    @property
    def first_batch_timestamp(self) -> int | None:
        """The max timestamp of the first batch (Kafka rolls by ``segment.ms`` from it)."""
        if self._first_batch_timestamp is None and self.size >= HEADER_SIZE:
            self._first_batch_timestamp = records.read_header(
                os.pread(self.fd, HEADER_SIZE, 0)).max_timestamp
        return self._first_batch_timestamp

    def _load_indexes(self) -> None:
        index = OffsetIndex(self.index_path, self.index_max_entries)
        time_index = TimeIndex(self.time_index_path, self.index_max_entries)
        ok = index.load() and time_index.load()
        size = self.size
        if ok:
            last = index.last()
            ok = last is None or last[1] < size
            last_t = time_index.last()
            if ok and last_t is not None:
                ok = time_index.values[0] >= 0 and last_t[1] <= RELATIVE_OFFSET_MAX
        if not ok:
            log.info("rebuilding_segment_index", segment=self.log_path)
            self.rebuild_indexes()
            return
        self._index, self._time_index = index, time_index
        last_t = time_index.last()
        if last_t is not None:
            self._max_timestamp, rel = last_t
            self._offset_of_max_timestamp = self.base_offset + rel
        last = index.last()
        self._bytes_since_index_entry = size - (last[1] if last else 0)

    # --- header walks -------------------------------------------------------------------------

    def iter_headers(self, start: int, end: int | None = None) -> Iterator[tuple[int, BatchHeader]]:
        """(position, header) of each batch from ``start`` (a batch boundary) to ``end``. No
        checksums: the bytes were checked on append or on recovery. Raises BadPosition when the
        bytes at a position are not a plausible batch header."""
        end = self.size if end is None else end
        fd = self.fd
        pos = start
        buf = b""
        buf_start = start
        while pos + HEADER_SIZE <= end:
            rel = pos - buf_start
            if rel + HEADER_SIZE > len(buf):
                buf = os.pread(fd, min(SCAN_CHUNK_BYTES, end - pos), pos)
                buf_start, rel = pos, 0
                if len(buf) < HEADER_SIZE:
                    return
            h = records.read_header(buf, rel)
            size = h.batch_length + LOG_OVERHEAD
            if h.magic != records.MAGIC or size < HEADER_SIZE or pos + size > end:
                raise BadPosition(f"{self.log_path}: no batch header at position {pos}")
            yield pos, h
            pos += size

    def find_batch(self, offset: int) -> tuple[int, BatchHeader] | None:
        """(position, header) of the first batch whose last offset is >= ``offset``."""
        for attempt in (0, 1):
            index = self.index
            i = index.floor_by_key(offset - self.base_offset)
            start, expected = (0, None) if i < 0 else (index.values[i],
                                                       self.base_offset + index.keys[i])
            try:
                for pos, h in self.iter_headers(start):
                    if expected is not None:
                        if h.base_offset != expected:
                            raise BadPosition(f"{self.log_path}: index says offset {expected} "
                                              f"at {pos}, the batch there has {h.base_offset}")
                        expected = None
                    if h.base_offset + h.last_offset_delta >= offset:
                        return pos, h
                return None
            except BadPosition as e:
                if attempt or start == 0:
                    raise KafkaStorageError(str(e)) from None
                log.warning("segment_index_damaged", segment=self.log_path, error=str(e))
                self.rebuild_indexes()
        raise AssertionError("unreachable")

    # --- reads --------------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, max_offset: int, min_one_batch: bool) -> bytes:
        """Whole batches from the one holding ``offset``: as many as fit in ``max_bytes`` (the
        first one even if it alone is larger, when ``min_one_batch``), only batches whose last
        offset is below ``max_offset``. b"" when there is nothing to return."""
        found = self.find_batch(offset)
        if found is None:
            return b""
        pos, first = found
        if first.base_offset + first.last_offset_delta >= max_offset:
            return b""
        first_size = first.batch_length + LOG_OVERHEAD
        if first_size > max_bytes and not min_one_batch:
            return b""
        size = self.size
        limit = min(pos + max(max_bytes, first_size), size)
        end = pos + first_size
        # Jump towards the limit through the index (its positions are batch boundaries), then
        # walk the few headers left: a read costs O(log n) plus one index interval of headers.
        index = self.index
        walk = end
        i = index.floor_by_value(limit)
        if i >= 0 and index.values[i] > walk and self.base_offset + index.keys[i] < max_offset:
            walk = end = index.values[i]
        for p, h in self.iter_headers(walk, size):
            batch_end = p + h.batch_length + LOG_OVERHEAD
            if batch_end > limit or h.base_offset + h.last_offset_delta >= max_offset:
                break
            end = batch_end
        return os.pread(self.fd, end - pos, pos)

    def read_batch_at(self, pos: int, size: int) -> bytes:
        return os.pread(self.fd, size, pos)

    # --- appends ------------------------------------------------------------------------------

    def append(self, iovecs: list, nbytes: int,
               batches: list[tuple[int, int, int]]) -> None:
        """Write ``nbytes`` (the ``iovecs``, stamped batches back to back) at the end and index
        them. ``batches`` holds (base_offset, max_timestamp, size) per batch, in order. On a
        write error the file is cut back to where it was and KafkaStorageError raised."""
        fd, start = self.fd, self.size
        try:
            _pwritev_all(fd, iovecs, nbytes, start)
        except OSError as e:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise KafkaStorageError(f"cannot append to {self.log_path}: {e.strerror}") from None
        index, time_index = self.index, self.time_index
        base, interval = self.base_offset, self.index_interval_bytes
        since = self._bytes_since_index_entry
        max_ts, max_ts_offset = self._max_timestamp, self._offset_of_max_timestamp
        if self._first_batch_timestamp is None and start == 0:
            self._first_batch_timestamp = batches[0][1]
        pos = start
        for batch_base, batch_max_ts, size in batches:
            if batch_max_ts > max_ts:
                max_ts, max_ts_offset = batch_max_ts, batch_base
            if since > interval and not index.full:
                index.append(batch_base - base, pos)
                last_t = time_index.keys[-1] if time_index.keys else None
                if last_t is None or max_ts > last_t:
                    time_index.append(max_ts, max_ts_offset - base)
                since = 0
            since += size
            pos += size
        assert pos == start + nbytes, (pos, start, nbytes)
        self._bytes_since_index_entry = since
        self._max_timestamp, self._offset_of_max_timestamp = max_ts, max_ts_offset
        self._size = pos

    def finish_time_index(self) -> None:
        """Make the last time-index entry carry the segment's max timestamp (done when the
        segment stops being active and at shutdown, so retention can trust the index alone)."""
        ti = self.time_index
        if self._max_timestamp >= 0 and (not ti.keys or self._max_timestamp > ti.keys[-1]):
            rel = self._offset_of_max_timestamp - self.base_offset
            if not ti.values or rel > ti.values[-1]:
                ti.append(self._max_timestamp, rel)

    def write_indexes(self, fsync: bool = False) -> None:
        self.finish_time_index()
        self.index.write(fsync)
        self.time_index.write(fsync)

    def fsync_fds(self) -> list[int]:
        """Duplicates of the descriptors to fsync from another thread (the caller closes them):
        a duplicate stays valid even if this segment is closed or deleted meanwhile."""
        fds = [os.dup(self.fd)]
        for path in (self.index_path, self.time_index_path):
            try:
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                pass
        return fds

    def fsync(self) -> None:
        os.fsync(self.fd)

    # --- recovery and truncation --------------------------------------------------------------

    def rebuild_indexes(self) -> None:
        """Rebuild both indexes from the log with a header walk (no checksums)."""
        self._scan(verify=False)

    def recover(self, min_leader_epoch: int = -1) -> int:
        """Check every batch (header, checksum, offsets contiguous from the base offset, leader
        epochs never going back), cut the file at the first torn or bad one and rebuild the
        indexes. Returns the number of bytes cut off. (Base offset and epoch are outside the
        checksum; these checks catch most damage to them.)"""
        return self._scan(verify=True, min_leader_epoch=min_leader_epoch)

    def _scan(self, verify: bool, min_leader_epoch: int = -1) -> int:
        self._index = OffsetIndex(self.index_path, self.index_max_entries)
        self._time_index = TimeIndex(self.time_index_path, self.index_max_entries)
        self._max_timestamp = self._offset_of_max_timestamp = -1
        self._bytes_since_index_entry = 0
        self._first_batch_timestamp = None
        self._size = file_size = os.fstat(self.fd).st_size
        expected = self.base_offset
        epoch = min_leader_epoch
        good_end = 0
        batches: list[tuple[int, int, int]] = []
        try:
            if verify:
                for pos, h in self._iter_verified(file_size):
                    if h.base_offset != expected or \
                            h.base_offset + h.last_offset_delta - self.base_offset > RELATIVE_OFFSET_MAX:
                        raise CorruptMessage(f"batch at {pos} has base offset {h.base_offset}, "
                                             f"expected {expected}")
                    if h.partition_leader_epoch < epoch:
                        raise CorruptMessage(f"batch at {pos} has leader epoch "
                                             f"{h.partition_leader_epoch}, after {epoch}")
                    epoch = h.partition_leader_epoch
                    expected = h.base_offset + h.last_offset_delta + 1
                    batches.append((h.base_offset, h.max_timestamp, h.batch_length + LOG_OVERHEAD))
                    good_end = pos + h.batch_length + LOG_OVERHEAD
            else:
                for pos, h in self.iter_headers(0, file_size):
                    expected = h.base_offset + h.last_offset_delta + 1
                    batches.append((h.base_offset, h.max_timestamp, h.batch_length + LOG_OVERHEAD))
                    good_end = pos + h.batch_length + LOG_OVERHEAD
        except (CorruptMessage, BadPosition) as e:
            if not verify:
                raise KafkaStorageError(str(e)) from None
            log.warning("segment_corrupt_tail", segment=self.log_path, position=good_end,
                        error=str(e))
        cut = file_size - good_end
        if cut:
            if not verify:
                raise KafkaStorageError(f"{self.log_path}: {cut} bytes after the last batch")
            log.warning("segment_truncated_on_recovery", segment=self.log_path,
                        valid_bytes=good_end, cut_bytes=cut)
            os.ftruncate(self.fd, good_end)
        self._size = 0
        if batches:
            self._index_batches(batches)
        assert self._size == good_end
        self.next_offset = expected if batches else self.base_offset
        self.last_leader_epoch = epoch
        return cut

    def _index_batches(self, batches: list[tuple[int, int, int]]) -> None:
        # Same bookkeeping as append, without the write.
        index, time_index = self._index, self._time_index
        base, interval = self.base_offset, self.index_interval_bytes
        since, pos = 0, 0
        max_ts, max_ts_offset = -1, -1
        self._first_batch_timestamp = batches[0][1]
        for batch_base, batch_max_ts, size in batches:
            if batch_max_ts > max_ts:
                max_ts, max_ts_offset = batch_max_ts, batch_base
            if since > interval and not index.full:
                index.append(batch_base - base, pos)
                if not time_index.keys or max_ts > time_index.keys[-1]:
                    time_index.append(max_ts, max_ts_offset - base)
                since = 0
            since += size
            pos += size
        self._bytes_since_index_entry = since
        self._max_timestamp, self._offset_of_max_timestamp = max_ts, max_ts_offset
        self._size = pos

    def _iter_verified(self, end: int) -> Iterator[tuple[int, BatchHeader]]:
        """Every batch with its checksum checked, read in large chunks; raises CorruptMessage at
        the first torn or bad batch."""
        fd = self.fd
        pos = 0
        while pos < end:
            chunk = os.pread(fd, min(RECOVERY_CHUNK_BYTES, end - pos), pos)
            rel = 0
            while rel < len(chunk):
                size = records.peek_size(chunk, rel)
                if size is None:
                    if len(chunk) - rel < records.PREFIX_SIZE and pos + rel + records.PREFIX_SIZE <= end:
                        break  # the header straddles the chunk: read on from here
                    raise CorruptMessage(f"torn or bad batch header at {pos + rel}")
                if size > len(chunk) - rel:
                    if pos + rel + size > end or size < HEADER_SIZE:
                        raise CorruptMessage(f"batch at {pos + rel} is torn ({size} bytes "
                                             f"declared, {end - pos - rel} in the file)")
                    if rel == 0:  # one batch larger than a chunk
                        big = os.pread(fd, size, pos)
                        yield pos, records.validate_batch(big)
                        rel = size
                    break
                yield pos + rel, records.validate_batch(chunk, rel)
                rel += size
            if rel == 0:
                raise CorruptMessage(f"no progress at {pos}")
            pos += rel

    def truncate_to(self, offset: int) -> int:
        """Remove every batch whose last offset is >= ``offset`` (a batch holding ``offset`` goes
        whole). Returns the new next offset of this segment."""
        found = self.find_batch(offset)
        if found is None:
            return self.read_next_offset()
        cut, h = found
        new_next = h.base_offset if cut else self.base_offset
        os.ftruncate(self.fd, cut)
        self._size = cut
        index, time_index = self.index, self.time_index
        index.truncate_entries(index.floor_by_value(cut - 1) + 1)
        keep = 0
        while keep < len(time_index.values) and \
                self.base_offset + time_index.values[keep] < new_next:
            keep += 1
        time_index.truncate_entries(keep)
        # The max timestamp: the last time entry's, then whatever the batches after it carry.
        self._max_timestamp = self._offset_of_max_timestamp = -1
        scan_from = 0
        if time_index.keys:
            self._max_timestamp = time_index.keys[-1]
            self._offset_of_max_timestamp = self.base_offset + time_index.values[-1]
            i = index.floor_by_key(time_index.values[-1])
            scan_from = index.values[i] if i >= 0 else 0
        for _, bh in self.iter_headers(scan_from, cut):
            if bh.max_timestamp > self._max_timestamp:
                self._max_timestamp, self._offset_of_max_timestamp = bh.max_timestamp, bh.base_offset
        last = index.last()
        self._bytes_since_index_entry = cut - (last[1] if last else 0)
        if cut == 0:
            self._first_batch_timestamp = None
        self.next_offset = new_next
        return new_next

    def read_next_offset(self) -> int:
        """The offset after the last batch, from the last index entry and a short walk."""
        last = self.index.last()
        next_offset = self.base_offset
        for _, h in self.iter_headers(last[1] if last else 0):
            next_offset = h.base_offset + h.last_offset_delta + 1
        return next_offset

    # --- life cycle ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def rename_for_deletion(self) -> list[str]:
        """Close and rename the files to ``*.deleted`` (cheap); returns the new paths for the
        caller to unlink, off the request path."""
        self.close()
        out = []
        for path in (self.log_path, self.index_path, self.time_index_path):
            try:
                os.replace(path, path + DELETED_SUFFIX)
                out.append(path + DELETED_SUFFIX)
            except FileNotFoundError:
                pass
        return out


def _pwritev_all(fd: int, iovecs: list, nbytes: int, offset: int) -> None:
    written = 0
    for i in range(0, len(iovecs), IOV_MAX):
        group = iovecs[i:i + IOV_MAX]
        want = sum(len(b) for b in group) if len(iovecs) > IOV_MAX else nbytes
        n = os.pwritev(fd, group, offset + written)
        if n < want:  # short write (rare: signals, a full disk): finish with plain pwrites
            rest = memoryview(b"".join(bytes(b) for b in group))[n:]
            pos = offset + written + n
            while rest:
                k = os.pwrite(fd, rest, pos)
                if k <= 0:
                    raise OSError(28, "No space left on device")
                rest, pos = rest[k:], pos + k
        written += want
    assert written == nbytes, (written, nbytes)
