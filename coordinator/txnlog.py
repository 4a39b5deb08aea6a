"""The coordinator's transaction log and snapshots on disk, and recovery from them.

Files in ``data.dir``:

    txlog.<first zxid, 20 digits>     records: [u32 payload length][u32 xxh32(payload)][payload]
                                      payload = msgpack [zxid, time_ms, kind, *args]
    snapshot.<zxid, 20 digits>        b"ZBSN" [u32 xxh32(payload)] [payload = msgpack state]

Appends happen on the server's loop (group commit: the records of one loop turn go out in one
write). The log file is opened with O_DSYNC, so one pwrite is one
durable write, and it is zero-filled ahead of the writes in
``PREALLOC_BYTES`` steps, as ZooKeeper does, so a write does not change the file's size and the
sync carries no metadata; that roughly halves the cost of a sync here. The zeros after the last
record are padding, not damage: recovery tells the two apart. At a snapshot the loop makes the
log durable, rolls it to a new file, and hands the state to a background thread, which writes it
(temp file, fsync, rename, directory fsync) and then drops the files no longer needed by the
newest ``retain`` snapshots.

Recovery loads the newest snapshot whose checksum holds, replays every later record through
``CoordinatorState.apply`` (a log an ensemble member wrote, which has ``leader`` markers, may
hold writes that were rejected when applied: they are skipped again; and its tail may hold
entries the ensemble never committed, which a single coordinator then applies), and cuts the newest log file at its first torn or corrupt record (an
unacknowledged write that was being written when the process died). Damage anywhere else, or a
gap in transaction ids, stops the start with a sentence saying which file is damaged.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator

import msgpack
import xxhash

from coordinator.state import CoordinatorState
from zbroker import errors

RECORD_HEADER = struct.Struct(">II")
SNAP_MAGIC = b"ZBSN"
SNAP_HEADER = struct.Struct(">4sI")
LOG_PREFIX = "txlog."
SNAP_PREFIX = "snapshot."
RECORD_BYTES_MAX = 8 * 1024 * 1024
PREALLOC_BYTES = 16 * 1024 * 1024
_xxh32 = xxhash.xxh32_intdigest


class RecoveryError(Exception):
    """The data directory cannot be recovered safely; the text says why."""


def encode_record(txn: list) -> bytes:
    payload = msgpack.packb(txn, use_bin_type=True)
    return RECORD_HEADER.pack(len(payload), _xxh32(payload)) + payload


def _name(prefix: str, zxid: int) -> str:
    return f"{prefix}{zxid:020d}"


def _list(data_dir: str, prefix: str) -> list[tuple[int, str]]:
    out = []
    for name in os.listdir(data_dir):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            out.append((int(name[len(prefix):]), os.path.join(data_dir, name)))
    return sorted(out)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_records(data: bytes) -> Iterator[tuple[int, list]]:
    """(end position, txn) for each intact record; stops at the first torn or corrupt one."""
    pos, size = 0, len(data)
    while pos + RECORD_HEADER.size <= size:
        length, checksum = RECORD_HEADER.unpack_from(data, pos)
        start = pos + RECORD_HEADER.size
        end = start + length
        if length > RECORD_BYTES_MAX or end > size:
            return
        payload = data[start:end]
        if _xxh32(payload) != checksum:
            return
        try:
            txn = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception:
            return
        yield end, txn
        pos = end


class TxnLog:
    def __init__(self, data_dir: str, snap_retain_count: int = 3):
        self.data_dir = data_dir
        self.snap_retain_count = snap_retain_count
        self._fd: int | None = None
        self._pos = 0           # where the next record goes
        self._allocated = 0     # file size (zero padding beyond _pos)
        self.recovered_txns = 0
        self.truncated_bytes = 0
        self.snapshot_zxid = 0

    # --- recovery (loop thread, before serving) ------------------------------------------------
    def recover(self, on_change=None) -> CoordinatorState:
        for name in os.listdir(self.data_dir):      # a snapshot that was being written
            if name.startswith(SNAP_PREFIX) and name.endswith(".tmp"):
                os.unlink(os.path.join(self.data_dir, name))
        state = self._load_snapshot()
        logs = _list(self.data_dir, LOG_PREFIX)
        from_ensemble = False
        for i, (first_zxid, path) in enumerate(logs):
            is_last = i == len(logs) - 1
            if not is_last and logs[i + 1][0] <= state.zxid + 1:
                continue        # everything in this file is in the snapshot
            with open(path, "rb") as f:
                data = f.read()
            good_end = 0
            for end, txn in iter_records(data):
                good_end = end
                if txn[0] <= state.zxid:
                    continue
                if txn[0] != state.zxid + 1:
                    raise RecoveryError(f"The transaction log {path} jumps from transaction "
                                        f"{state.zxid} to {txn[0]}; transactions are missing.")
                if len(txn) > 2 and txn[2] == "leader":
                    from_ensemble = True    # an ensemble member's log: see below
                try:
                    _, changes = state.apply(txn)
                except errors.ZbError as e:
                    if not from_ensemble:
                        raise RecoveryError(f"Transaction {txn[0]} in {path} cannot be replayed "
                                            f"({e}); the data directory is inconsistent.") from None
                    state.skip(txn[0])      # an ensemble logs writes it then rejects
                    changes = []
                except Exception as e:
                    raise RecoveryError(f"Transaction {txn[0]} in {path} cannot be replayed "
                                        f"({e}); the data directory is inconsistent.") from None
                self.recovered_txns += 1
                if on_change is not None:
                    for ch in changes:
                        on_change(ch)
            self._cut_tail(path, data, good_end, is_last)
            if is_last:
                self._open(path, good_end)
        if not logs:
            self._open(os.path.join(self.data_dir, _name(LOG_PREFIX, state.zxid + 1)), 0)
        return state

    def _cut_tail(self, path: str, data: bytes, good_end: int, is_last: bool) -> None:
        """After the last intact record: zero padding, or a torn tail (cut off, so nothing of
        it can come back) in the newest file only; damage anywhere else stops the start."""
        if data.count(0, good_end) == len(data) - good_end:
            return
        if not is_last:
            raise RecoveryError(f"The transaction log {path} is damaged at byte "
                                f"{good_end}, and it is not the newest log file.")
        self.truncated_bytes = len(data) - good_end
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())

    def _load_snapshot(self) -> CoordinatorState:
        for zxid, path in reversed(_list(self.data_dir, SNAP_PREFIX)):
            with open(path, "rb") as f:
                data = f.read()
            if len(data) < SNAP_HEADER.size:
                continue
            magic, checksum = SNAP_HEADER.unpack_from(data)
            payload = data[SNAP_HEADER.size:]
            if magic != SNAP_MAGIC or _xxh32(payload) != checksum:
                continue
            snap = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            if snap["zxid"] != zxid:
                continue
            self.snapshot_zxid = zxid
            return CoordinatorState.from_snapshot(snap)
        return CoordinatorState()

    def _open(self, path: str, end: int) -> None:
        existed = os.path.exists(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o644)
        self._pos = end
        self._allocated = os.fstat(self._fd).st_size
        if not existed:
            _fsync_dir(self.data_dir)

    # --- writing ----------------------------------------------------------------------------------
    def append_and_sync(self, data: bytes) -> None:
        """Write ``data`` after the last record; durable when this returns (O_DSYNC)."""
        if self._pos + len(data) > self._allocated:
            self._preallocate(self._pos + len(data))
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._pos)
            self._pos += written
            view = view[written:]

    def _preallocate(self, needed: int) -> None:
        new_size = max(needed, self._allocated) + PREALLOC_BYTES
        zeros = bytes(1024 * 1024)
        pos = self._allocated
        while pos < new_size:
            pos += os.pwrite(self._fd, zeros[:new_size - pos], pos)
        os.fsync(self._fd)              # the new size is metadata: make it durable once
        self._allocated = new_size

    def roll(self, next_zxid: int) -> None:
        """Start a new log file whose first record will be ``next_zxid`` (at a snapshot)."""
        os.close(self._fd)
        self._open(os.path.join(self.data_dir, _name(LOG_PREFIX, next_zxid)), 0)

    def write_snapshot(self, zxid: int, snapshot: dict) -> None:
        """Write a snapshot of the state at ``zxid`` and drop the files no longer needed. Safe on
        a background thread: it touches no file the loop writes. Only call once every record up
        to ``zxid`` is on disk and the log has rolled past it."""
        payload = msgpack.packb(snapshot, use_bin_type=True)
        final = os.path.join(self.data_dir, _name(SNAP_PREFIX, zxid))
        tmp = final + ".tmp"
        with open(tmp, "wb") as f:
            f.write(SNAP_HEADER.pack(SNAP_MAGIC, _xxh32(payload)))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.data_dir)
        self._purge()

    def _purge(self) -> None:
        snaps = _list(self.data_dir, SNAP_PREFIX)
        if len(snaps) <= self.snap_retain_count:
            return
        for _, path in snaps[:-self.snap_retain_count]:
            os.unlink(path)
        oldest_kept = snaps[-self.snap_retain_count][0]
        logs = _list(self.data_dir, LOG_PREFIX)
        for i, (first, path) in enumerate(logs[:-1]):
            if logs[i + 1][0] <= oldest_kept + 1:
                os.unlink(path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
