"""The record batch format, shared by the producer (builds), the broker (validates the header and
checksum, stamps offsets) and the consumer (decodes). Nothing else spells a batch literal.

A batch is a fixed 61-byte big-endian header followed by its record section (Kafka's v2 layout)::

    offset  size  field
         0     8  base_offset             int64   first offset of the batch (set by the broker)
         8     4  batch_length            int32   bytes after this field (whole batch = 12 + this)
        12     4  partition_leader_epoch  int32   set by the broker, like base_offset
        16     1  magic                   int8    = 2
        17     4  crc                     uint32  checksum of bytes [21, end) (see below)
        21     2  attributes              int16   bits 0-2: compression codec; others reserved (0)
        23     4  last_offset_delta       int32   offset of the last record minus base_offset
        27     8  base_timestamp          int64   timestamp of the first record, ms since the epoch
        35     8  max_timestamp           int64   largest record timestamp, ms
        43     8  producer_id             int64   -1 when not idempotent
        51     2  producer_epoch          int16   -1 when not idempotent
        53     4  base_sequence           int32   -1 when not idempotent
        57     4  records_count           int32   >= 1
        61   ...  records                         the record section, compressed as one blob
                                                  when a codec is set

The checksum is the low 32 bits of xxh3_64 over everything after the crc field (attributes to the
end). xxh3 rather than xxh32: on this machine it hashes at ~26 GB/s against ~5 GB/s, so checking
every batch on append and on recovery costs next to nothing. Because base_offset, batch_length,
partition_leader_epoch and magic precede the crc, a broker rewrites base_offset and the leader
epoch in place and the checksum stays valid.

The record section is one msgpack array of records, each an array
``[offset_delta, timestamp_delta, key, value, headers]``: key and value are bin or nil, headers an
array of ``[key (str), value (bin or nil)]`` pairs. msgpack decodes the whole section in C (about
5 M records/s here); turning rows into ``Record`` objects is the only per-record Python work.

Codecs: 0 none, 1 zlib (standard library). Kafka numbers gzip as 1; our 1 is zlib's own format.
"""

from __future__ import annotations

import struct
import time
import zlib
from operator import itemgetter as _itemgetter
from typing import Iterable, Iterator, NamedTuple

import msgpack
import xxhash

from zbroker.errors import CorruptMessage, MessageTooLarge

MAGIC = 2
HEADER_SIZE = 61
LENGTH_OFFSET = 8            # where batch_length starts
LOG_OVERHEAD = 12            # base_offset + batch_length: bytes not counted by batch_length
CRC_OFFSET = 17
ATTRIBUTES_OFFSET = 21       # the checksum covers [ATTRIBUTES_OFFSET, end)
PREFIX_SIZE = CRC_OFFSET     # base_offset, batch_length, leader epoch, magic: outside the checksum

CODEC_NONE = 0
CODEC_ZLIB = 1
CODEC_MASK = 0x07
CODECS = {"none": CODEC_NONE, "zlib": CODEC_ZLIB}

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_PARTITION_LEADER_EPOCH = -1

RECORDS_COUNT_MAX = 1 << 20  # a sanity bound: more records than this in one batch is malformed
DECOMPRESSED_BYTES_MAX = 64 << 20  # a record section that inflates past this is refused

_HEADER = struct.Struct(">qiibIhiqqqhii")
_PREFIX = struct.Struct(">qiib")
_BASE_OFFSET = struct.Struct(">q")
_LEADER_EPOCH = struct.Struct(">i")
_LENGTH_MAGIC = struct.Struct(">qiib")  # enough of the header to know the size and the version
assert _HEADER.size == HEADER_SIZE and _PREFIX.size == PREFIX_SIZE
_tuple_new = tuple.__new__


def checksum(buf, start: int = ATTRIBUTES_OFFSET, end: int | None = None) -> int:
    """The batch checksum of ``buf[start:end]`` (pass a memoryview to avoid a copy)."""
    view = memoryview(buf)
    return xxhash.xxh3_64_intdigest(view[start:end]) & 0xFFFFFFFF


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        """Bytes of the whole batch, header included."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self) -> int:
        return self.attributes & CODEC_MASK


class Record(tuple):
    """One decoded record: ``offset``, ``timestamp``, ``key``, ``value``, ``headers`` (a tuple
    of ``(str, bytes | None)`` pairs).

    A tuple subclass (as kafka-python's ConsumerRecord is a namedtuple): ``decode_records``
    makes each record in one C-level ``tuple.__new__`` call, which is most of what reading a
    record costs; a class with ``__slots__`` and an ``__init__`` cost a Python frame per record.
    """

    __slots__ = ()

    def __new__(cls, offset: int, timestamp: int, key, value, headers):
        return _tuple_new(cls, (offset, timestamp, key, value, headers))

    offset = property(_itemgetter(0), doc="the record's offset in its partition")
    timestamp = property(_itemgetter(1), doc="ms since the epoch")
    key = property(_itemgetter(2), doc="bytes or None")
    value = property(_itemgetter(3), doc="bytes or None")
    headers = property(_itemgetter(4), doc="a tuple of (str, bytes | None) pairs")

    def __getnewargs__(self):
        return tuple(self)

    def __eq__(self, other):
        if not isinstance(other, Record):
            return NotImplemented
        return tuple.__eq__(self, other)

    def __ne__(self, other):        # tuple's own != would skip a subclass's __eq__
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = tuple.__hash__

    def __repr__(self):
        return (f"Record(offset={self[0]}, timestamp={self[1]}, key={self[2]!r}, "
                f"value={self[3]!r}, headers={self[4]!r})")


# --- building (producer) -----------------------------------------------------------------------

def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_BYTES_TYPES = (bytes, bytearray, memoryview)
NO_HEADERS = ()              # packs as an empty array, like []; one shared, untracked object
ROW_BYTES = 24               # a bound of one row's msgpack framing (without key, value, headers)


def make_row(offset_delta: int, timestamp_delta: int, key, value,
             headers: Iterable[tuple[str, object]] | None) -> tuple[tuple, int]:
    """One record's row of the record section, checked, and a bound of its packed size.

    A row is ``(offset_delta, timestamp_delta, key, value, headers)``; a producer that checked
    the types itself may append such tuples directly (see ``build_rows``)."""
    if value is not None and not isinstance(value, _BYTES_TYPES):
        raise TypeError(f"a record value must be bytes or None, not {type(value).__name__}")
    if key is not None and not isinstance(key, _BYTES_TYPES):
        raise TypeError(f"a record key must be bytes or None, not {type(key).__name__}")
    size = ROW_BYTES + (len(value) if value is not None else 0) + (
        len(key) if key is not None else 0)
    hdrs = NO_HEADERS
    if headers:
        hdrs = []
        for hk, hv in headers:
            if not isinstance(hk, str):
                raise TypeError("a header key must be str")
            if hv is not None and not isinstance(hv, _BYTES_TYPES):
                raise TypeError("a header value must be bytes or None")
            hdrs.append((hk, hv))
            size += 10 + len(hk.encode()) + (len(hv) if hv is not None else 0)
        hdrs = tuple(hdrs)
    return (offset_delta, timestamp_delta, key, value, hdrs), size


def build_rows(rows: list[tuple], base_timestamp: int, compression: int = CODEC_NONE, *,
               producer_id: int = NO_PRODUCER_ID, producer_epoch: int = NO_PRODUCER_EPOCH,
               base_sequence: int = NO_SEQUENCE, compression_level: int = 6) -> bytes:
    """The batch of ``rows`` (from ``make_row``, or tuples of the same shape whose offset
    deltas are 0, 1, 2, ... in order and whose types are checked): the whole record section is
    packed by one msgpack call, in C."""
    if not rows:
        raise ValueError("a batch needs at least one record")
    section = msgpack.packb(rows)
    if compression == CODEC_ZLIB:
        section = zlib.compress(section, compression_level)
    return _assemble(section, attributes=compression, last_offset_delta=len(rows) - 1,
                     base_timestamp=base_timestamp,
                     max_timestamp=base_timestamp + max(map(_itemgetter(1), rows)),
                     producer_id=producer_id, producer_epoch=producer_epoch,
                     base_sequence=base_sequence, records_count=len(rows))


class BatchBuilder:
    """Collects records for one batch. ``append`` returns the record's offset delta; ``build``
    returns the batch with base offset 0 and leader epoch -1 (the broker stamps both).

    ``size_in_bytes`` is an upper-bound estimate of the built size (before compression), for a
    producer deciding when a batch is full.
    """

    def __init__(self, compression: int | str = CODEC_NONE, *, producer_id: int = NO_PRODUCER_ID,
                 producer_epoch: int = NO_PRODUCER_EPOCH, base_sequence: int = NO_SEQUENCE,
                 compression_level: int = 6):
        self.compression = codec_of(compression)
        self.compression_level = compression_level
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self._rows: list[tuple] = []
        self._base_timestamp: int | None = None
        self.size_in_bytes = HEADER_SIZE + 5

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, value, key=None, headers: Iterable[tuple[str, object]] | None = None,
               timestamp_ms: int | None = None) -> int:
        if timestamp_ms is None:
            timestamp_ms = _now_ms()
        if self._base_timestamp is None:
            self._base_timestamp = timestamp_ms
        delta = len(self._rows)
        row, size = make_row(delta, timestamp_ms - self._base_timestamp, key, value, headers)
        self._rows.append(row)
        self.size_in_bytes += size
        return delta

    def build(self) -> bytes:
        return build_rows(self._rows, self._base_timestamp, self.compression,
                          producer_id=self.producer_id, producer_epoch=self.producer_epoch,
                          base_sequence=self.base_sequence,
                          compression_level=self.compression_level)


def codec_of(compression: int | str) -> int:
    """The codec number of ``"none"``, ``"zlib"``, 0 or 1; ValueError for anything else."""
    if isinstance(compression, str):
        if compression not in CODECS:
            raise ValueError(f"unknown compression {compression!r}; known: {sorted(CODECS)}")
        compression = CODECS[compression]
    if compression not in (CODEC_NONE, CODEC_ZLIB):
        raise ValueError(f"unknown compression codec {compression}")
    return compression


def _assemble(section: bytes, *, attributes: int, last_offset_delta: int, base_timestamp: int,
              max_timestamp: int, producer_id: int, producer_epoch: int, base_sequence: int,
              records_count: int, base_offset: int = 0,
              partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH) -> bytes:
    buf = bytearray(HEADER_SIZE + len(section))
    _HEADER.pack_into(buf, 0, base_offset, len(buf) - LOG_OVERHEAD, partition_leader_epoch, MAGIC,
                      0, attributes, last_offset_delta, base_timestamp, max_timestamp,
                      producer_id, producer_epoch, base_sequence, records_count)
    buf[HEADER_SIZE:] = section
    struct.pack_into(">I", buf, CRC_OFFSET, checksum(buf))
    return bytes(buf)


_PRODUCER_FIELDS = struct.Struct(">qhi")
PRODUCER_FIELDS_OFFSET = 43  # producer_id, producer_epoch, base_sequence


def with_producer(batch, producer_id: int, producer_epoch: int, base_sequence: int) -> bytes:
    """A copy of a built batch with the idempotent producer's fields set and the checksum
    made again (it covers them): the producer stamps a batch's sequence when it first sends
    it, and again after an epoch bump."""
    buf = bytearray(batch)
    _PRODUCER_FIELDS.pack_into(buf, PRODUCER_FIELDS_OFFSET, producer_id, producer_epoch,
                               base_sequence)
    struct.pack_into(">I", buf, CRC_OFFSET, checksum(buf))
    return bytes(buf)


def build_batch(values: Iterable, *, compression: int | str = CODEC_NONE,
                timestamp_ms: int | None = None) -> bytes:
    """A batch of keyless records with one timestamp: a shorthand for tests and benchmarks."""
    builder = BatchBuilder(compression)
    ts = _now_ms() if timestamp_ms is None else timestamp_ms
    for v in values:
        builder.append(v, timestamp_ms=ts)
    return builder.build()


# --- validation (broker) -----------------------------------------------------------------------

def read_header(buf, pos: int = 0) -> BatchHeader:
    """Unpack the header at ``pos`` without checking anything. ``buf`` must hold 61 bytes there."""
    return BatchHeader._make(_HEADER.unpack_from(buf, pos))


def peek_size(buf, pos: int = 0) -> int | None:
    """The whole size of the batch at ``pos`` from its length field, or None if fewer than 17
    bytes are there or the magic is wrong."""
    if len(buf) - pos < PREFIX_SIZE:
        return None
    _, length, _, magic = _LENGTH_MAGIC.unpack_from(buf, pos)
    if magic != MAGIC:
        return None
    return length + LOG_OVERHEAD


def validate_batch(buf, pos: int = 0, max_bytes: int | None = None) -> BatchHeader:
    """Check the header and checksum of the batch that starts at ``buf[pos]`` (records are not
    decoded) and return its header. The batch may be followed by more bytes: ``header.size`` says
    where it ends. Raises MessageTooLarge when the batch is over ``max_bytes`` and CorruptMessage
    for anything malformed, truncated or failing its checksum."""
    available = len(buf) - pos
    if available < HEADER_SIZE:
        raise CorruptMessage(f"a record batch needs {HEADER_SIZE} header bytes, "
                             f"only {available} are there")
    h = BatchHeader._make(_HEADER.unpack_from(buf, pos))
    if h.magic != MAGIC:
        raise CorruptMessage(f"record batch magic is {h.magic}, expected {MAGIC}")
    size = h.batch_length + LOG_OVERHEAD
    if size < HEADER_SIZE:
        raise CorruptMessage(f"record batch length {h.batch_length} is shorter than its header")
    if max_bytes is not None and size > max_bytes:
        raise MessageTooLarge(f"the record batch is {size} bytes, over the limit of {max_bytes}")
    if size > available:
        raise CorruptMessage(f"the record batch says it is {size} bytes, only {available} are there")
    if not 1 <= h.records_count <= RECORDS_COUNT_MAX:
        raise CorruptMessage(f"record batch has {h.records_count} records")
    if h.last_offset_delta < h.records_count - 1:
        raise CorruptMessage(f"record batch last offset delta {h.last_offset_delta} is below its "
                             f"record count {h.records_count}")
    codec = h.attributes & CODEC_MASK
    if codec not in (CODEC_NONE, CODEC_ZLIB):
        raise CorruptMessage(f"record batch uses unknown compression codec {codec}")
    if checksum(buf, pos + ATTRIBUTES_OFFSET, pos + size) != h.crc:
        raise CorruptMessage("record batch checksum does not match")
    return h


def validate_batches(buf, max_batch_bytes: int | None = None) -> list[tuple[int, BatchHeader]]:
    """Validate a frame holding one or more whole batches back to back; returns (position,
    header) for each. Any bad batch refuses the whole frame (nothing should be written)."""
    out = []
    pos, end = 0, len(buf)
    if end == 0:
        raise CorruptMessage("the frame holds no record batch")
    while pos < end:
        h = validate_batch(buf, pos, max_batch_bytes)
        out.append((pos, h))
        pos += h.batch_length + LOG_OVERHEAD
    return out


def set_base_offset_and_epoch(buf, base_offset: int, leader_epoch: int, pos: int = 0) -> None:
    """Stamp the broker's fields into a writable buffer (bytearray, writable memoryview) in place.
    The checksum does not cover them, so the batch stays valid."""
    _BASE_OFFSET.pack_into(buf, pos, base_offset)
    _LEADER_EPOCH.pack_into(buf, pos + 12, leader_epoch)


def header_prefix(base_offset: int, batch_length: int, leader_epoch: int) -> bytes:
    """The 17 bytes before the checksum, for writing a stamped batch as prefix + the rest of the
    original (``os.writev``) without copying or mutating the original."""
    return _PREFIX.pack(base_offset, batch_length, leader_epoch, MAGIC)


# --- reading (consumer) ------------------------------------------------------------------------

def iter_batches(buf) -> Iterator[tuple[BatchHeader, memoryview]]:
    """(header, view of the whole batch) for each whole batch in ``buf``; a partial batch at the
    end is skipped silently (a fetch may end in one). Checksums are not checked here:
    ``decode_records`` does that."""
    view = memoryview(buf)
    pos, end = 0, len(view)
    while end - pos >= HEADER_SIZE:
        h = BatchHeader._make(_HEADER.unpack_from(view, pos))
        size = h.batch_length + LOG_OVERHEAD
        if h.magic != MAGIC or size < HEADER_SIZE:
            raise CorruptMessage(f"malformed record batch header at position {pos}")
        if size > end - pos:
            return
        yield h, view[pos:pos + size]
        pos += size


def decode_records(batch, check_crc: bool = True, record_class: type = Record) -> list[Record]:
    """The records of one whole batch (bytes or memoryview), with absolute offsets and
    timestamps, as instances of ``record_class`` (Record or a subclass that adds no fields).
    Raises CorruptMessage for a bad checksum or a malformed record section."""
    h = validate_batch(batch) if check_crc else read_header(batch)
    view = memoryview(batch)[HEADER_SIZE:h.batch_length + LOG_OVERHEAD]
    codec = h.attributes & CODEC_MASK
    try:
        if codec == CODEC_ZLIB:
            inflater = zlib.decompressobj()
            view = inflater.decompress(view, DECOMPRESSED_BYTES_MAX)
            if inflater.unconsumed_tail or not inflater.eof:
                raise CorruptMessage(f"the compressed records of the batch at offset "
                                     f"{h.base_offset} are truncated or inflate past "
                                     f"{DECOMPRESSED_BYTES_MAX} bytes")
        elif codec != CODEC_NONE:
            raise CorruptMessage(f"record batch uses unknown compression codec {codec}")
        rows = msgpack.unpackb(view, use_list=False)
        base, bts = h.base_offset, h.base_timestamp
        new = _tuple_new
        records = [new(record_class, (base + od, bts + td, k, v, hs))
                   for od, td, k, v, hs in rows]
    except CorruptMessage:
        raise
    except Exception as e:  # zlib.error, msgpack's errors, a row of the wrong shape
        raise CorruptMessage(f"the record section of the batch at offset {h.base_offset} "
                             f"is malformed: {e}") from None
    if len(records) != h.records_count:
        raise CorruptMessage(f"the batch at offset {h.base_offset} says {h.records_count} "
                             f"records and holds {len(records)}")
    return records


def iter_records(buf, check_crc: bool = True) -> Iterator[Record]:
    """Every record of every whole batch in ``buf`` (a fetch response's record frame)."""
    for _, batch in iter_batches(buf):
        yield from decode_records(batch, check_crc)


__all__ = ["MAGIC", "HEADER_SIZE", "CODEC_NONE", "CODEC_ZLIB", "CODECS", "BatchHeader", "Record",
           "BatchBuilder", "NO_HEADERS", "make_row", "build_rows", "codec_of", "with_producer", "build_batch", "checksum", "read_header", "peek_size", "validate_batch",
           "validate_batches", "set_base_offset_and_epoch", "header_prefix", "iter_batches",
           "decode_records", "iter_records"]
