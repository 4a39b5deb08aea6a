"""Sparse indexes of one segment: offset -> file position, and timestamp -> offset.

Both are kept in memory as two parallel ``array`` columns (binary search with ``bisect`` runs in
C) and written to disk whole when the segment stops being the active one and at a clean shutdown.
The active segment's index is never trusted after a crash: recovery rebuilds it by scanning the
segment, so appends never pay a write per index entry.

On disk an index is a flat run of little-endian pairs, no header:

    .index       (relative_offset uint32, position uint32)      8 bytes an entry
    .timeindex   (timestamp_ms int64, relative_offset int64)   16 bytes an entry

Entries are strictly increasing in both columns. A file that is missing, of an odd size or not
increasing fails ``load`` (returns None) and the owner rebuilds it from the log.
"""

from __future__ import annotations

import os
import sys
from array import array
from bisect import bisect_right
from itertools import islice
from operator import lt


class PairIndex:
    """Two strictly increasing columns ``keys`` and ``values`` of one array typecode."""

    typecode = "I"

    def __init__(self, path: str, max_entries: int):
        self.path = path
        self.max_entries = max_entries
        self.keys = array(self.typecode)
        self.values = array(self.typecode)

    @property
    def entry_size(self) -> int:
        return 2 * array(self.typecode).itemsize

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def full(self) -> bool:
        return len(self.keys) >= self.max_entries

    def append(self, key: int, value: int) -> None:
        assert not self.keys or (key > self.keys[-1] and value > self.values[-1]), \
            (key, value, self.keys[-1], self.values[-1])
        self.keys.append(key)
        self.values.append(value)

    def last(self) -> tuple[int, int] | None:
        return (self.keys[-1], self.values[-1]) if self.keys else None

    def floor_by_key(self, key: int) -> int:
        """Index of the last entry with key <= ``key``, or -1."""
        return bisect_right(self.keys, key) - 1

    def floor_by_value(self, value: int) -> int:
        return bisect_right(self.values, value) - 1

    def truncate_entries(self, n: int) -> None:
        """Keep the first ``n`` entries."""
        del self.keys[n:]
        del self.values[n:]

    def clear(self) -> None:
        self.truncate_entries(0)

    # --- file ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        pairs = array(self.typecode, bytes(self.entry_size * len(self.keys)))
        pairs[0::2] = self.keys
        pairs[1::2] = self.values
        if sys.byteorder == "big":
            pairs.byteswap()
        return pairs.tobytes()

    def write(self, fsync: bool = False) -> None:
        """Replace the file with the in-memory entries (temp + rename). Without ``fsync`` the
        caller fsyncs the file later (the background worker does, after a roll)."""
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self.to_bytes())
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def load(self) -> bool:
        """Read the file; False (entries left empty) when it is missing or fails the checks."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return False
        if len(data) % self.entry_size:
            return False
        pairs = array(self.typecode)
        pairs.frombytes(data)
        if sys.byteorder == "big":
            pairs.byteswap()
        keys, values = pairs[0::2], pairs[1::2]
        if not (_strictly_increasing(keys) and _strictly_increasing(values)):
            return False
        if len(keys) > self.max_entries:
            return False
        self.keys, self.values = keys, values
        return True


def _strictly_increasing(a: array) -> bool:
    return all(map(lt, a, islice(a, 1, None)))


class OffsetIndex(PairIndex):
    """keys: offset relative to the segment's base offset; values: file position of the batch
    that starts with that offset."""

    typecode = "I"


class TimeIndex(PairIndex):
    """keys: the largest timestamp seen so far; values: relative offset of the (first) batch
    that carried it. Every batch before that one has only smaller timestamps."""

    typecode = "q"


def offset_index_max_entries(index_bytes: int) -> int:
    return max(1, index_bytes // 8)
