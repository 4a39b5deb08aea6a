"""Small state files beside a partition's log, written atomically (temp file, fsync, rename,
fsync of the directory) so a crash leaves either the old or the new content, never a mix.

Formats are Kafka's plain-text ones: a version line, a count line, then one entry a line.

    high-watermark-checkpoint, recovery-point-checkpoint, log-start-offset-checkpoint:
        0\\n1\\n<offset>\\n
    leader-epoch-checkpoint:
        0\\n<n>\\n<epoch> <start_offset>\\n ... (ascending)
    replication-offset-checkpoint (one per log directory, every partition's high watermark):
        0\\n<n>\\n<topic> <partition> <offset>\\n ...
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_right

from zbroker.logs import get_logger

log = get_logger(__name__)

VERSION = 0
UNDEFINED_EPOCH = -1
UNDEFINED_EPOCH_OFFSET = -1


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def encode_entries(entries: list[tuple[int, ...]]) -> bytes:
    lines = [str(VERSION), str(len(entries))] + [" ".join(map(str, e)) for e in entries]
    return ("\n".join(lines) + "\n").encode()


def write_entries(path: str, entries: list[tuple[int, ...]]) -> None:
    write_atomically(path, encode_entries(entries))


def read_entries(path: str, width: int) -> list[tuple[int, ...]] | None:
    """The entries of a checkpoint file; None if it is missing or malformed (logged)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warning("checkpoint_unreadable", path=path, error=str(e))
        return None
    try:
        lines = text.split("\n")
        if int(lines[0]) != VERSION:
            raise ValueError(f"version {lines[0]}")
        n = int(lines[1])
        entries = [tuple(int(x) for x in line.split()) for line in lines[2:2 + n]]
        if len(entries) != n or any(len(e) != width for e in entries):
            raise ValueError("wrong entry count or width")
        return entries
    except (ValueError, IndexError) as e:
        log.warning("checkpoint_malformed", path=path, error=str(e))
        return None


class OffsetCheckpoint:
    """One offset in a file (high watermark, recovery point, log start offset)."""

    def __init__(self, path: str):
        self.path = path

    def read(self, default: int = 0) -> int:
        entries = read_entries(self.path, 1)
        return entries[0][0] if entries else default

    def write(self, offset: int) -> None:
        write_entries(self.path, [(offset,)])


class LeaderEpochCache:
    """Which leader epoch started at which offset, for replication: a follower that starts
    following a new leader asks where its last epoch ends there and truncates to that.

    Entries are (epoch, start_offset), both strictly increasing. The epoch of appended records
    and ``clear`` are checkpointed before the call returns, and whatever is pending before the
    log appends (``flush``): recovery relies on knowing the epoch of every batch on disk. An
    election's new epoch (starting at the log end, so no records yet) and truncations are handed to ``writer`` (a CheckpointWriter)
    when there is one, so a loop making thousands of partitions followers does not wait for
    thousands of fsyncs: a truncation lost in a crash is done again when the log is opened
    (``PartitionLog`` truncates the cache to the log it finds). A synchronous write first settles
    what the writer holds for the file, so older content never lands after newer.
    ``path=None`` keeps it in memory only (the replication simulator's logs)."""

    def __init__(self, path: str | None, writer: "CheckpointWriter | None" = None):
        self.path = path
        self.writer = writer
        self._unsaved = False           # a truncation handed to the writer since the last write
        entries = (read_entries(path, 2) if path is not None else None) or []
        self._epochs = [e for e, _ in entries]
        self._starts = [o for _, o in entries]
        if not _ascending(self._epochs) or not _ascending(self._starts):
            log.warning("leader_epoch_checkpoint_not_ascending", path=path)
            self._epochs, self._starts = [], []

    def entries(self) -> list[tuple[int, int]]:
        return list(zip(self._epochs, self._starts))

    @property
    def latest_epoch(self) -> int:
        return self._epochs[-1] if self._epochs else UNDEFINED_EPOCH

    def assign(self, epoch: int, start_offset: int, durable: bool = True) -> bool:
        """Record that ``epoch`` starts at ``start_offset``. Entries that contradict it (an equal
        or later epoch, or a start at or after it) are dropped. True when the cache changed.
        ``durable=False`` (an epoch that starts at the log end, at an election) hands the write
        to the writer: the log calls ``flush`` before it appends anything."""
        if epoch < 0 or start_offset < 0:
            raise ValueError(f"leader epoch {epoch} and start offset {start_offset} must be >= 0")
        if self._epochs and self._epochs[-1] == epoch and self._starts[-1] <= start_offset:
            return False
        keep = len(self._epochs)
        while keep and (self._epochs[keep - 1] >= epoch or self._starts[keep - 1] >= start_offset):
            keep -= 1
        del self._epochs[keep:], self._starts[keep:]
        self._epochs.append(epoch)
        self._starts.append(start_offset)
        self._save(durable)
        return True

    def end_offset_for_epoch(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """(largest known epoch <= ``epoch``, the offset where that epoch ended), as Kafka's
        OffsetsForLeaderEpoch answers: the latest epoch ends at the log end offset; an epoch
        newer than any known, or none known, gives (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)."""
        if epoch == UNDEFINED_EPOCH or not self._epochs:
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
        if epoch == self._epochs[-1]:
            return epoch, log_end_offset
        higher = bisect_right(self._epochs, epoch)
        if higher == len(self._epochs):
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
        if higher == 0:
            return epoch, self._starts[0]
        return self._epochs[higher - 1], self._starts[higher]

    def truncate_from_end(self, end_offset: int) -> None:
        """The log was truncated to ``end_offset``: forget epochs that start at or after it."""
        keep = len(self._starts)
        while keep and self._starts[keep - 1] >= end_offset:
            keep -= 1
        if keep != len(self._starts):
            del self._epochs[keep:], self._starts[keep:]
            self._save(durable=False)

    def truncate_from_start(self, start_offset: int) -> None:
        """The log now starts at ``start_offset``: drop epochs that ended before it and move the
        start of the epoch that covers it up to it."""
        i = bisect_right(self._starts, start_offset) - 1
        if i < 0 or (i == 0 and self._starts[0] == start_offset):
            return
        del self._epochs[:i], self._starts[:i]
        self._starts[0] = start_offset
        self._save(durable=False)

    def clear(self) -> None:
        if self._epochs:
            self._epochs, self._starts = [], []
            self._save()

    def flush(self) -> None:
        """Write what the writer may still hold, now (a log being closed)."""
        if self._unsaved:
            self._save()

    def _save(self, durable: bool = True) -> None:
        if self.path is None:
            return
        if self.writer is not None:
            if not durable:
                self.writer.write(self.path, encode_entries(self.entries()))
                self._unsaved = True
                return
            self.writer.settle(self.path)
        write_entries(self.path, self.entries())
        self._unsaved = False


def _ascending(xs: list[int]) -> bool:
    return all(a < b for a, b in zip(xs, xs[1:]))


# --- one file per log directory: every partition's high watermark (Kafka's
# replication-offset-checkpoint): 0\n<n>\n<topic> <partition> <offset>\n ...

REPLICATION_OFFSET_CHECKPOINT = "replication-offset-checkpoint"


def encode_partition_offsets(offsets: dict[tuple[str, int], int]) -> bytes:
    lines = [str(VERSION), str(len(offsets))]
    lines += [f"{t} {p} {o}" for (t, p), o in sorted(offsets.items())]
    return ("\n".join(lines) + "\n").encode()


def read_partition_offsets(path: str) -> dict[tuple[str, int], int]:
    """{(topic, partition): offset} of a per-directory checkpoint; {} when missing or
    malformed (logged: the partitions' own files are the fallback)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("ascii")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        log.warning("checkpoint_unreadable", path=path, error=str(e))
        return {}
    try:
        lines = text.split("\n")
        if int(lines[0]) != VERSION:
            raise ValueError(f"version {lines[0]}")
        n = int(lines[1])
        out = {}
        for line in lines[2:2 + n]:
            topic, p, offset = line.split(" ")
            out[(topic, int(p))] = int(offset)
        if len(out) != n:
            raise ValueError("wrong entry count")
        return out
    except (ValueError, IndexError) as e:
        log.warning("checkpoint_malformed", path=path, error=str(e))
        return {}


class CheckpointWriter:
    """Writes checkpoint files on a thread of its own, so an event loop never waits for their
    fsyncs: ``write(path, data)`` hands over the newest content of a file (a newer one replaces
    content not yet written); ``flush()`` waits until everything handed over is on disk."""

    def __init__(self, name: str = "zb-checkpoints"):
        self._pending: dict[str, bytes] = {}
        self._busy = False
        self._writing: str | None = None            # the path being written now
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, path: str, data: bytes) -> None:
        with self._cv:
            self._pending[path] = data
            self._cv.notify_all()

    def settle(self, path: str) -> None:
        """Drop content of ``path`` not yet written and wait for a write of it in progress: the
        caller writes the file itself next (so, with no time limit: writing beside the thread
        could land the older content last)."""
        with self._cv:
            self._pending.pop(path, None)
            self._cv.wait_for(lambda: self._writing != path)

    def flush(self, timeout_s: float = 10.0) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: not self._pending and not self._busy, timeout_s)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending)
                path, data = self._pending.popitem()
                self._busy = True
                self._writing = path
            try:
                write_atomically(path, data)
            except OSError as e:
                log.error("checkpoint_write_failed", path=path, error=e.strerror)
            finally:
                with self._cv:
                    self._busy = False
                    self._writing = None
                    self._cv.notify_all()
