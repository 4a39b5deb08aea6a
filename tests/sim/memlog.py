"""An in-memory partition log with PartitionLog's replication semantics, for the simulator.

Batches are ``Batch`` tuples, not bytes: the replication core never looks inside a blob, it only
hands what a leader read to a follower's ``append_as_follower``. What matters is kept faithful:
offsets continue the log exactly, epochs never go back (the same checks as PartitionLog, with
the same CorruptMessage), truncation drops whole batches and the epochs that start after the new
end (the real LeaderEpochCache, kept in memory), the log start offset moves by DeleteRecords or
retention, and a power loss keeps only what was flushed (``flushed_offset``), as a machine crash
does to a log left to the page cache; a process crash keeps everything. Idempotent producers'
batches are checked and remembered by the broker's own ProducerStateManager, rebuilt from the
batches after a truncation or a power loss, as PartitionLog rebuilds it from the log.
"""

from __future__ import annotations

from typing import NamedTuple

from zbroker.errors import CorruptMessage, OffsetOutOfRange
from zbroker.records import BatchHeader
from zbroker.storage.checkpoints import LeaderEpochCache
from zbroker.storage.producer_state import ProducerStateManager

NO_PRODUCER = (-1, -1, -1)


class Batch(NamedTuple):
    base_offset: int
    epoch: int
    values: tuple       # one value per record
    producer: tuple = NO_PRODUCER   # (producer id, producer epoch, base sequence)

    @property
    def next_offset(self) -> int:
        return self.base_offset + len(self.values)

    def header(self) -> BatchHeader:
        pid, pepoch, seq = self.producer
        return BatchHeader(self.base_offset, 0, self.epoch, 2, 0, 0, len(self.values) - 1,
                           0, 0, pid, pepoch, seq, len(self.values))


class MemoryLog:
    def __init__(self):
        self.batches: list[Batch] = []
        self.leader_epoch_cache = LeaderEpochCache(None)
        self._start = 0
        self._end = 0
        self.flushed_offset = 0
        self.high_watermark_checkpoint = 0
        self.producer_state = ProducerStateManager()

    @property
    def log_start_offset(self) -> int:
        return self._start

    @property
    def log_end_offset(self) -> int:
        return self._end

    # --- writes --------------------------------------------------------------------------------
    def append(self, values: tuple, leader_epoch: int,
               producer: tuple = NO_PRODUCER) -> tuple[int, int, bool]:
        """As leader: one batch of ``values`` at the log end, unless it duplicates one an
        idempotent producer wrote (raises the ZbError the sequence checks name). Returns its
        base offset, the offset after it and whether it was written now."""
        dup, = self.producer_state.check([Batch(self._end, leader_epoch, tuple(values),
                                                producer).header()])
        if dup is not None:
            return dup.base_offset, dup.last_offset + 1, False
        cache = self.leader_epoch_cache
        if leader_epoch < cache.latest_epoch:
            raise ValueError(f"leader epoch {leader_epoch} is older than the log's "
                             f"{cache.latest_epoch}")
        if leader_epoch > cache.latest_epoch:
            cache.assign(leader_epoch, self._end)
        b = Batch(self._end, leader_epoch, tuple(values), producer)
        self.batches.append(b)
        self._end = b.next_offset
        self.producer_state.update(b.header())
        return b.base_offset, b.next_offset, True

    def append_as_follower(self, blob: tuple) -> None:
        expected = self._end
        latest = self.leader_epoch_cache.latest_epoch
        epochs = []
        for b in blob:
            if b.base_offset != expected:
                raise CorruptMessage(f"batch base offset {b.base_offset} does not continue the "
                                     f"log at {expected}")
            if b.epoch < latest:
                raise CorruptMessage(f"batch leader epoch {b.epoch} is older than the log's "
                                     f"{latest}")
            if b.epoch > latest:
                latest = b.epoch
                epochs.append((latest, b.base_offset))
            expected = b.next_offset
        for epoch, start in epochs:
            self.leader_epoch_cache.assign(epoch, start)
        self.batches.extend(blob)
        self._end = expected
        for b in blob:
            self.producer_state.update(b.header())

    def _rebuild_producers(self) -> None:
        self.producer_state.clear()
        for b in self.batches:
            self.producer_state.update(b.header())
        self.producer_state.evict_below(self._start)

    def truncate_to(self, offset: int) -> None:
        if offset >= self._end:
            return
        if offset <= self._start:
            self.truncate_fully_and_start_at(offset)
            return
        keep = [b for b in self.batches if b.next_offset <= offset]   # a batch holding it goes
        self.batches = keep
        self._end = keep[-1].next_offset if keep else self._start
        self.leader_epoch_cache.truncate_from_end(self._end)
        self.flushed_offset = min(self.flushed_offset, self._end)
        self.high_watermark_checkpoint = min(self.high_watermark_checkpoint, self._end)
        self._rebuild_producers()

    def truncate_fully_and_start_at(self, offset: int) -> None:
        self.batches = []
        self._start = self._end = self.flushed_offset = offset
        self.leader_epoch_cache.clear()
        self.high_watermark_checkpoint = offset
        self.producer_state.clear()

    def delete_records_before(self, offset: int) -> int:
        if offset > self._end or offset < 0:
            raise OffsetOutOfRange(f"offset {offset} is outside [0, {self._end}]")
        if offset > self._start:
            self._start = offset
            self.leader_epoch_cache.truncate_from_start(offset)
            self.batches = [b for b in self.batches if b.next_offset > offset]
            self.producer_state.evict_below(offset)
        return self._start

    def flush(self) -> None:
        self.flushed_offset = self._end

    def lose_unflushed(self) -> None:
        """A power loss: what was not flushed is gone (whole batches)."""
        keep = [b for b in self.batches if b.next_offset <= self.flushed_offset]
        self.batches = keep
        self._end = keep[-1].next_offset if keep else self._start
        self.leader_epoch_cache.truncate_from_end(self._end)
        self.high_watermark_checkpoint = min(self.high_watermark_checkpoint, self._end)
        self._rebuild_producers()

    # --- reads ---------------------------------------------------------------------------------
    def read(self, offset: int, max_batches: int) -> tuple:
        """Whole batches from the one holding ``offset``."""
        out = []
        for b in self.batches:
            if b.next_offset > offset:
                out.append(b)
                if len(out) >= max_batches:
                    break
        return tuple(out)

    def records(self) -> dict[int, tuple]:
        """offset -> (epoch, value) of every record held."""
        out = {}
        for b in self.batches:
            for i, v in enumerate(b.values):
                if b.base_offset + i >= self._start:
                    out[b.base_offset + i] = (b.epoch, v)
        return out

    def records_between(self, start: int, end: int) -> dict[int, tuple]:
        """offset -> (epoch, value) for start <= offset < end (newest batches are searched
        first: the checker asks about what just got committed)."""
        out = {}
        for b in reversed(self.batches):
            if b.next_offset <= start:
                break
            for i, v in enumerate(b.values):
                if start <= b.base_offset + i < end:
                    out[b.base_offset + i] = (b.epoch, v)
        return out

    def check_contiguous(self) -> None:
        at = None
        for b in self.batches:
            assert at is None or b.base_offset == at, (at, b)
            at = b.next_offset
        assert at is None or at == self._end, (at, self._end)
