"""What a partition knows about its idempotent producers: per producer id, its epoch and the
sequence numbers and offsets of its last five runs of batches (a run: batches written back to
back, each continuing the sequence and the offsets of the one before; one produce frame at
least). Pure: no I/O (snapshots are bytes in and out); the
partition log (log.py) owns one and feeds it every batch it writes, as leader or follower, and
every batch it replays after opening or truncating.

Leader checks, per batch of a produce frame, in order (Kafka's rules, KIP-98 and KIP-360)::

    epoch older than the producer's            INVALID_PRODUCER_EPOCH
    a new epoch (or an unknown producer)       the sequence must start at 0; otherwise
                                               OUT_OF_ORDER_SEQUENCE_NUMBER (known producer)
                                               or UNKNOWN_PRODUCER_ID (unknown: its state expired
                                               or its records were deleted)
    same epoch, inside one of the last five    a duplicate: not written again, answered with its
    runs                                       original offsets (a sequence maps to an offset
                                               one for one inside a run)
    same epoch, an older sequence              a duplicate whose offsets are forgotten: not
                                               written, answered with offset -1 (Kafka
                                               answers DUPLICATE_SEQUENCE_NUMBER, which its
                                               client takes as success; here the batches after
                                               it in the frame are still checked and written)
    same epoch, next sequence                  written
    same epoch, anything else                  OUT_OF_ORDER_SEQUENCE_NUMBER

Kafka keeps the last five batches, since its producer sends one batch per partition per
request; ours packs a partition's ready batches into one frame, so a run covers them all, and
five requests in flight per partition stay within what the leader remembers.

Sequences are int32 and wrap from 2**31 - 1 to 0. Followers and replays apply batches without
checks: the leader's log is the truth. Memory is bounded: at most ``producers_max`` producers
per partition, the least recently written forgotten first (an O(1) ordered dict); every operation
per batch is O(1).

Snapshot (``encode_snapshot``): b"ZBPS" + version byte + 4-byte xxh3 of the payload + msgpack
payload ``[[producer_id, epoch, last_timestamp, [[first_seq, last_seq, base_offset,
last_offset] per run], ...]], ...]``, least recently written first.
"""

from __future__ import annotations

import collections
import struct
from typing import NamedTuple

import msgpack
import xxhash

from zbroker import errors
from zbroker.records import BatchHeader

RUNS_KEPT = 5                       # per producer: the client's requests in flight per partition
SEQUENCE_MODULUS = 1 << 31
PRODUCERS_MAX_DEFAULT = 10_000
SNAPSHOT_MAGIC = b"ZBPS"
SNAPSHOT_VERSION = 1
_SNAPSHOT_HEAD = struct.Struct(">4sBI")


class BatchMetadata(NamedTuple):
    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int


class ProducerEntry:
    __slots__ = ("producer_id", "epoch", "runs", "last_timestamp")

    def __init__(self, producer_id: int, epoch: int, last_timestamp: int):
        self.producer_id = producer_id
        self.epoch = epoch
        self.runs: list[BatchMetadata] = []     # oldest first
        self.last_timestamp = last_timestamp

    @property
    def last_seq(self) -> int:
        return self.runs[-1].last_seq if self.runs else -1

    @property
    def last_offset(self) -> int:
        return self.runs[-1].last_offset if self.runs else -1

    def find(self, first_seq: int, last_seq: int) -> BatchMetadata | None:
        """The offsets of the batch with these sequences, when a run holds it whole."""
        for r in self.runs:
            start = (first_seq - r.first_seq) % SEQUENCE_MODULUS
            if start <= (last_seq - r.first_seq) % SEQUENCE_MODULUS <= \
                    (r.last_seq - r.first_seq) % SEQUENCE_MODULUS:
                base = r.base_offset + start
                return BatchMetadata(first_seq, last_seq, base,
                                     base + (last_seq - first_seq) % SEQUENCE_MODULUS)
        return None


def last_sequence(h: BatchHeader) -> int:
    return (h.base_sequence + h.last_offset_delta) % SEQUENCE_MODULUS


def _behind(seq: int, last_seq: int) -> bool:
    """``seq`` is at or before ``last_seq`` (modulo 2**31, within half the range)."""
    return (last_seq - seq) % SEQUENCE_MODULUS < SEQUENCE_MODULUS // 2


class ProducerStateManager:
    def __init__(self, producers_max: int = PRODUCERS_MAX_DEFAULT):
        if producers_max < 1:
            raise ValueError("producers_max must be at least 1")
        self.producers_max = producers_max
        self.entries: collections.OrderedDict[int, ProducerEntry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    # --- the leader's checks --------------------------------------------------------------------

    def check(self, headers: list[BatchHeader]) -> list[BatchMetadata | None]:
        """For each batch of a produce frame (in order), None when it is to be written or the
        metadata of the batch it duplicates. Raises a ZbError for the first batch that may not
        be written; the state does not change either way (``update`` does that once the batches
        are written)."""
        plan: list[BatchMetadata | None] = []
        pending: dict[int, tuple[int, int]] = {}  # producer id -> (epoch, last seq) in this frame
        for h in headers:
            pid = h.producer_id
            if pid < 0:
                plan.append(None)
                continue
            if h.producer_epoch < 0 or h.base_sequence < 0:
                raise errors.CorruptMessage(
                    f"A batch with producer id {pid} must carry a producer epoch and a base "
                    f"sequence (it has {h.producer_epoch} and {h.base_sequence}).")
            entry = self.entries.get(pid)
            epoch, last_seq = pending.get(pid) or (
                (entry.epoch, entry.last_seq) if entry is not None else (None, -1))
            seq, batch_last_seq = h.base_sequence, last_sequence(h)
            if epoch is not None and h.producer_epoch < epoch:
                raise errors.InvalidProducerEpoch(
                    f"Producer {pid} wrote with epoch {h.producer_epoch}, older than its "
                    f"epoch {epoch} on this partition.")
            if epoch is None or h.producer_epoch > epoch or last_seq < 0:
                if seq != 0:
                    if epoch is None:
                        raise errors.UnknownProducerId(
                            f"This partition has no state for producer {pid} (it expired or "
                            f"its records were deleted) and the batch starts at sequence "
                            f"{seq}, not 0.")
                    raise errors.OutOfOrderSequenceNumber(
                        f"Producer {pid}'s new epoch {h.producer_epoch} must start at sequence "
                        f"0, not {seq}.")
            elif pid not in pending:
                dup = entry.find(seq, batch_last_seq)
                oldest = entry.runs[0]
                if dup is None and batch_last_seq != oldest.first_seq and \
                        _behind(batch_last_seq, oldest.first_seq):
                    # written before the runs still remembered: its offsets are unknown, but
                    # below the oldest run's (an acks=all answer waits for those to commit)
                    dup = BatchMetadata(seq, batch_last_seq, -1, oldest.base_offset - 1)
                if dup is not None:
                    plan.append(dup)
                    continue
                if seq != (last_seq + 1) % SEQUENCE_MODULUS:
                    raise errors.OutOfOrderSequenceNumber(
                        f"Producer {pid} sent sequence {seq}; the next one expected on this "
                        f"partition is {(last_seq + 1) % SEQUENCE_MODULUS}.")
            elif seq != (last_seq + 1) % SEQUENCE_MODULUS:
                raise errors.OutOfOrderSequenceNumber(
                    f"Producer {pid}'s batches in one request do not follow each other: "
                    f"sequence {seq} after {last_seq}.")
            pending[pid] = (h.producer_epoch, batch_last_seq)
            plan.append(None)
        return plan

    # --- applying written batches -------------------------------------------------------------

    def update(self, h: BatchHeader, now_ms: int | None = None) -> None:
        """A batch with its final base offset is in the log (leader, follower or replay).
        ``now_ms`` (the broker's clock at the append) keeps a producer whose records carry old
        timestamps (a mirror) from expiring while it writes; a replay goes by timestamps."""
        pid = h.producer_id
        if pid < 0:
            return
        entries = self.entries
        entry = entries.get(pid)
        seen = h.max_timestamp if now_ms is None else max(h.max_timestamp, now_ms)
        if entry is None:
            entry = entries[pid] = ProducerEntry(pid, h.producer_epoch, seen)
            if len(entries) > self.producers_max:
                entries.popitem(last=False)
        else:
            entries.move_to_end(pid)
            if h.producer_epoch != entry.epoch:
                entry.epoch = h.producer_epoch
                entry.runs = []
        runs = entry.runs
        last_seq = last_sequence(h)
        last_offset = h.base_offset + h.last_offset_delta
        if runs:
            r = runs[-1]
            if r.last_offset + 1 == h.base_offset and \
                    (r.last_seq + 1) % SEQUENCE_MODULUS == h.base_sequence:
                runs[-1] = BatchMetadata(r.first_seq, last_seq, r.base_offset, last_offset)
                if seen > entry.last_timestamp:
                    entry.last_timestamp = seen
                return
        runs.append(BatchMetadata(h.base_sequence, last_seq, h.base_offset, last_offset))
        if len(runs) > RUNS_KEPT:
            del runs[0]
        if seen > entry.last_timestamp:
            entry.last_timestamp = seen

    def evict_below(self, log_start_offset: int) -> int:
        """Forget producers whose every batch is below the log start offset (retention or
        DeleteRecords took them), as Kafka does; returns how many."""
        doomed = [pid for pid, e in self.entries.items() if e.last_offset < log_start_offset]
        for pid in doomed:
            del self.entries[pid]
        return len(doomed)

    def expire(self, now_ms: int, expiration_ms: int) -> int:
        """Forget producers that wrote nothing for ``expiration_ms`` (by their batches'
        timestamps, as Kafka's ``producer.id.expiration.ms``); returns how many."""
        limit = now_ms - expiration_ms
        doomed = [pid for pid, e in self.entries.items() if e.last_timestamp < limit]
        for pid in doomed:
            del self.entries[pid]
        return len(doomed)

    def clear(self) -> None:
        self.entries.clear()

    # --- snapshots -------------------------------------------------------------------------------

    def encode_snapshot(self) -> bytes:
        payload = msgpack.packb([[e.producer_id, e.epoch, e.last_timestamp,
                                  [list(r) for r in e.runs]] for e in self.entries.values()])
        return _SNAPSHOT_HEAD.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION,
                                   xxhash.xxh3_64_intdigest(payload) & 0xFFFFFFFF) + payload

    def load_snapshot(self, data: bytes) -> None:
        """Replace the state with a snapshot's; ValueError (state unchanged) for a bad one."""
        if len(data) < _SNAPSHOT_HEAD.size:
            raise ValueError("the producer state snapshot is truncated")
        magic, version, digest = _SNAPSHOT_HEAD.unpack_from(data)
        payload = memoryview(data)[_SNAPSHOT_HEAD.size:]
        if magic != SNAPSHOT_MAGIC or version != SNAPSHOT_VERSION:
            raise ValueError("not a producer state snapshot of a known version")
        if xxhash.xxh3_64_intdigest(payload) & 0xFFFFFFFF != digest:
            raise ValueError("the producer state snapshot fails its checksum")
        try:
            rows = msgpack.unpackb(payload)
            entries = collections.OrderedDict()
            for pid, epoch, last_ts, runs in rows:
                e = ProducerEntry(pid, epoch, last_ts)
                e.runs = [BatchMetadata(*r) for r in runs]
                entries[pid] = e
        except (ValueError, TypeError) as e:
            raise ValueError(f"the producer state snapshot is malformed: {e}") from None
        while len(entries) > self.producers_max:
            entries.popitem(last=False)
        self.entries = entries


__all__ = ["ProducerStateManager", "ProducerEntry", "BatchMetadata", "RUNS_KEPT",
           "SEQUENCE_MODULUS", "last_sequence"]
