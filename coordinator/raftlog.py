"""An ensemble member's Raft log, kept in the coordinator's own transaction log files.

The files and records are the single coordinator's (``coordinator.txnlog``): a record is
``[zxid, time_ms, kind, *args]`` and the zxid is the Raft index. Raft also needs each entry's
term; it is not stored per record. A new leader's first entry is a marker
``[zxid, time_ms, "leader", term]``, and every entry after a marker belongs to that marker's term
until the next one: a leader's entries follow its own marker in its log, and a follower's log is
a prefix of some leader's log, so terms change only at markers. Recovery reads the terms back
that way (the snapshot stores the term of its last entry; logs written by a single coordinator,
which have no markers, are term 0). So a data directory moves between a single coordinator and
an ensemble member unchanged.

What Raft adds to the single coordinator's log:

- entries are appended before they are committed, and a new leader may replace uncommitted
  ones: ``truncate_from(index)`` drops every file after the one holding ``index``, and zeroes
  that file from the entry on (O_DSYNC writes), so the dropped records cannot come back at
  recovery (recovery stops at the zeros, or cuts a torn tail);
- nothing is applied at recovery: the entries after the snapshot come back as the log, and are
  applied as the leader says they are committed;
- ``raft.state`` holds the term and vote (written and fsynced, then renamed, before any answer
  that depends on them);
- a member that is far behind receives the leader's snapshot file whole and restarts its log
  after it (``restore``).
"""

from __future__ import annotations

import os
import struct
import threading

import msgpack
import xxhash

from coordinator.state import CoordinatorState
from coordinator.txnlog import (LOG_PREFIX, SNAP_HEADER, SNAP_MAGIC, SNAP_PREFIX, RecoveryError,
                                TxnLog, _fsync_dir, _list, _name, encode_record, iter_records)

STATE_FILE = "raft.state"
_STATE_HEADER = struct.Struct(">4sI")
_STATE_MAGIC = b"ZBRS"
_xxh32 = xxhash.xxh32_intdigest


def entry_record(index: int, term: int, body) -> bytes:
    """The log record of the entry at ``index``: a leader's marker when ``body`` is None."""
    if body is None:
        return encode_record([index, 0, "leader", term])
    return encode_record([index, *body])


def check_snapshot_bytes(data: bytes):
    """The decoded snapshot in a snapshot file's bytes, or None when they do not hold one."""
    if not isinstance(data, bytes) or len(data) < SNAP_HEADER.size:
        return None
    magic, checksum = SNAP_HEADER.unpack_from(data)
    payload = memoryview(data)[SNAP_HEADER.size:]
    if magic != SNAP_MAGIC or _xxh32(payload) != checksum:
        return None
    try:
        snap = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        CoordinatorState.from_snapshot(snap)
    except Exception:
        return None
    if not isinstance(snap, dict) or not isinstance(snap.get("zxid"), int):
        return None
    return snap


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class RaftLog(TxnLog):
    def __init__(self, data_dir: str, snap_retain_count: int = 3):
        super().__init__(data_dir, snap_retain_count)
        self.files_lock = threading.Lock()
        self.snapshot_term = 0
        self._path = ""
        self._first = 1             # the index of _where[0]
        self._where: list[tuple[str, int]] = []     # (file, start) of each entry from _first on
        self._ends: dict[str, int] = {}             # where the records of a rolled file end
        self._staged: list[bytes] = []
        self._staged_bytes = 0

    # --- term and vote ------------------------------------------------------------------------
    def load_vote(self) -> tuple[int, int | None]:
        path = os.path.join(self.data_dir, STATE_FILE)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return 0, None
        magic, checksum = _STATE_HEADER.unpack_from(data) if len(data) >= 8 else (b"", 0)
        payload = data[_STATE_HEADER.size:]
        if magic != _STATE_MAGIC or _xxh32(payload) != checksum:
            raise RecoveryError(f"The Raft state file {path} is damaged; the member's term and "
                                f"vote cannot be trusted.")
        term, voted_for = msgpack.unpackb(payload)
        return term, voted_for

    def save_vote(self, term: int, voted_for: int | None) -> None:
        payload = msgpack.packb([term, voted_for])
        path = os.path.join(self.data_dir, STATE_FILE)
        with open(path + ".tmp", "wb") as f:
            f.write(_STATE_HEADER.pack(_STATE_MAGIC, _xxh32(payload)) + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        _fsync_dir(self.data_dir)

    # --- recovery -------------------------------------------------------------------------------
    def recover_entries(self) -> tuple[CoordinatorState, list]:
        """The snapshot's state and the log after it as [(term, body)] (nothing applied)."""
        for name in os.listdir(self.data_dir):
            if name.startswith(SNAP_PREFIX) and name.endswith(".tmp"):
                os.unlink(os.path.join(self.data_dir, name))
        state = self._load_snapshot()
        self.snapshot_term = self._snapshot_term
        for name in os.listdir(self.data_dir):      # a snapshot install that was under way
            if name.startswith(LOG_PREFIX) and name.endswith(".tmp"):
                path = os.path.join(self.data_dir, name)
                if name == _name(LOG_PREFIX, state.zxid + 1) + ".tmp":
                    self._finish_restore(path[:-len(".tmp")])
                else:
                    os.unlink(path)
        expected = state.zxid + 1
        self._first = expected
        term = self.snapshot_term
        entries: list = []
        logs = _list(self.data_dir, LOG_PREFIX)
        for i, (_, path) in enumerate(logs):
            is_last = i == len(logs) - 1
            if not is_last and logs[i + 1][0] <= expected:
                continue
            with open(path, "rb") as f:
                data = f.read()
            good_end = 0
            for end, txn in iter_records(data):
                start, good_end = good_end, end
                index = txn[0]
                if index < expected:
                    continue
                if index != expected:
                    raise RecoveryError(f"The transaction log {path} jumps from entry "
                                        f"{expected - 1} to {index}; entries are missing.")
                if len(txn) >= 4 and txn[2] == "leader":
                    term, body = txn[3], None
                else:
                    body = txn[1:]
                entries.append((term, body))
                self._where.append((path, start))
                expected += 1
            self._cut_tail(path, data, good_end, is_last)
            self._ends[path] = good_end
            if is_last:
                self._open(path, good_end)
        if not logs:
            self._open(os.path.join(self.data_dir, _name(LOG_PREFIX, expected)), 0)
        self.recovered_txns = len(entries)
        return state, entries

    _snapshot_term = 0

    def _load_snapshot(self) -> CoordinatorState:
        state = super()._load_snapshot()
        self._snapshot_term = 0
        if self.snapshot_zxid:
            path = os.path.join(self.data_dir, _name(SNAP_PREFIX, self.snapshot_zxid))
            snap = check_snapshot_bytes(open(path, "rb").read())
            self._snapshot_term = snap.get("term", 0) if snap else 0
        return state

    def _open(self, path: str, end: int) -> None:
        super()._open(path, end)
        self._path = path

    # --- writing --------------------------------------------------------------------------------
    @property
    def last_index(self) -> int:
        return self._first + len(self._where) - 1

    def stage(self, index: int, term: int, body) -> None:
        """Queue the entry at ``index`` (the next one); ``flush`` makes it durable."""
        if index != self.last_index + 1:
            raise AssertionError(f"entry {index} staged after {self.last_index}")
        record = entry_record(index, term, body)
        self._where.append((self._path, self._pos + self._staged_bytes))
        self._staged.append(record)
        self._staged_bytes += len(record)

    def flush(self) -> int:
        """Write every staged entry in one durable write; returns how many there were."""
        n = len(self._staged)
        if n:
            data = b"".join(self._staged)
            self._staged, self._staged_bytes = [], 0
            self.append_and_sync(data)
        return n

    def truncate_from(self, index: int) -> None:
        """Drop the entries from ``index`` on (never a committed one: Raft's rule)."""
        k = index - self._first
        if k < 0:
            raise AssertionError(f"truncating at {index}, below the snapshot")
        if k >= len(self._where):
            return
        written = len(self._where) - len(self._staged)
        if k >= written:                # only staged records: never written
            drop = self._staged[k - written:]
            del self._staged[k - written:]
            self._staged_bytes -= sum(len(r) for r in drop)
            del self._where[k:]
            return
        self._staged, self._staged_bytes = [], 0
        path, pos = self._where[k]
        del self._where[k:]
        files = _list(self.data_dir, LOG_PREFIX)
        first_of = {p: first for first, p in files}
        newer = [p for first, p in files if first > first_of.get(path, 0)]
        for p in newer:                 # delete newer files first: a crash leaves old entries
            if p == self._path:
                os.close(self._fd)
                self._fd = None
            os.unlink(p)
            self._ends.pop(p, None)
        if newer:
            _fsync_dir(self.data_dir)
        if path != self._path or self._fd is None:
            if self._fd is not None:
                os.close(self._fd)
            end = self._ends.get(path, 0)
            self._fd = os.open(path, os.O_WRONLY | os.O_DSYNC)
            self._allocated = os.fstat(self._fd).st_size
            self._path = path
        else:
            end = self._pos
        if end > pos:
            os.pwrite(self._fd, bytes(end - pos), pos)
        self._pos = pos

    def roll(self, next_zxid: int) -> None:
        self._ends[self._path] = self._pos
        super().roll(next_zxid)

    def compact(self, index: int) -> None:
        """A snapshot at ``index`` is durable: forget where the entries up to it are."""
        k = index - self._first + 1
        if k > 0:
            del self._where[:k]
            self._first = index + 1

    def snapshot_bytes(self, index: int) -> bytes | None:
        try:
            with open(os.path.join(self.data_dir, _name(SNAP_PREFIX, index)), "rb") as f:
                return f.read()
        except OSError:
            return None

    def restore(self, data: bytes, last_index: int, keep: list) -> None:
        """Install a snapshot received from the leader (checked by ``check_snapshot_bytes``) and
        start the log after it with the entries ``keep`` [(term, body)] that follow it.

        Crash-safe in three steps: (1) the new log, ``keep`` only, is written and fsynced as
        ``txlog.<last_index + 1>.tmp``; (2) the snapshot is renamed into place, the point of no
        return; (3) every other log file goes and the new one takes its name. A recovery that
        finds a ``.tmp`` log beside the newest snapshot just before it finishes step 3 (so the
        old files, whose entries after the snapshot are not the leader's, are never read);
        one that finds it without that snapshot drops it (the install never happened)."""
        new_log = os.path.join(self.data_dir, _name(LOG_PREFIX, last_index + 1))
        with open(new_log + ".tmp", "wb") as f:
            f.write(b"".join(entry_record(last_index + 1 + i, term, body)
                             for i, (term, body) in enumerate(keep)))
            f.flush()
            os.fsync(f.fileno())
        final = os.path.join(self.data_dir, _name(SNAP_PREFIX, last_index))
        with open(final + ".tmp", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with self.files_lock:
            os.replace(final + ".tmp", final)
            _fsync_dir(self.data_dir)
            os.close(self._fd)
            self._fd = None
            self._finish_restore(new_log)
        self._ends.clear()
        self._staged, self._staged_bytes = [], 0
        self._first = last_index + 1
        self._where = []
        self.snapshot_zxid = last_index
        pos = 0
        with open(new_log, "rb") as f:
            for end, _ in iter_records(f.read()):
                self._where.append((new_log, pos))
                pos = end
        self._open(new_log, pos)
        self._purge()

    def _finish_restore(self, new_log: str) -> None:
        """Step 3 of ``restore``: only the new log file remains, under its own name."""
        for _, p in _list(self.data_dir, LOG_PREFIX):
            if p != new_log:
                _unlink(p)
        os.replace(new_log + ".tmp", new_log)
        _fsync_dir(self.data_dir)

    def _purge(self) -> None:
        with self.files_lock:       # (the snapshot thread and the loop's restore both delete)
            try:
                super()._purge()
            except FileNotFoundError:
                pass
