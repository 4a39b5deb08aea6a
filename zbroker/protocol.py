"""The broker's wire protocol (clients <-> brokers, and followers -> leaders): the one place that
spells its frames, APIs and limits.

Transport: each broker binds one ZeroMQ ROUTER socket (``listeners``, e.g. tcp://0.0.0.0:9092);
each client holds one DEALER socket per broker it talks to. One request is one message:

    request   [header, blob, blob, ...]   header = msgpack map {"api": <name>, "v": VERSION,
                                          "id": <correlation id>, ...fields}; the blobs are raw
                                          record batches (see zbroker/records.py), never inside
                                          msgpack, so a broker never decodes or re-encodes them
    response  [header, blob, ...]         header = {"id": <same id>, "err": 0 | code,
                                          "msg": <sentence, when err>, ...fields}

(A ROUTER also sees the peer's identity frame first.) Many requests may be in flight on one
connection; responses may come back in any order: match them by ``id``. A request whose id
cannot be read gets a response with ``"id": None``. ``err`` in the header is a request-level
error (malformed request, unknown api); per-partition errors are inside the fields.

APIs (fields beyond api/v/id; "p" lists are positional for compactness on hot paths):

  ApiVersions   -                        -> apis: {name: [min_v, max_v]}
  Metadata      topics: [name] | None    -> brokers: [[id, host, port, rack]], controller_id,
                (None = all topics)         cluster_id, topics: [[name, err, internal,
                allow_auto_create: bool       [[partition, err, leader, leader_epoch, replicas,
                                               isr, offline_replicas]]]]
  Produce       acks: 0 | 1 | -1,        -> parts: [[topic, partition, err, base_offset,
                timeout_ms,                  log_append_time_ms, log_start_offset, msg]]
                parts: [[topic, partition,   (no response at all when acks=0)
                         leader_epoch]]
                blobs: one per part: the partition's batches back to back
  Fetch         replica_id (-1 client),  -> parts: [[topic, partition, err, high_watermark,
                max_wait_ms, min_bytes,      log_start_offset, log_end_offset]]
                max_bytes,                   blobs: one per part (b"" when nothing)
                parts: [[topic, partition,
                         fetch_offset, leader_epoch,
                         partition_max_bytes]]
                A consumer (replica_id -1) sees only batches below the high watermark; a follower
                (replica_id = its broker id, leader_epoch = the epoch it follows in) reads up to
                the log end offset, and its fetch_offset tells the leader its log end offset.
                On OFFSET_OUT_OF_RANGE the leader still fills in log_start_offset and
                log_end_offset, so the follower can tell which end it fell off.
  OffsetForLeaderEpoch  replica_id,      -> parts: [[topic, partition, err, leader_epoch,
                parts: [[topic, partition,               end_offset]]
                         current_leader_epoch, epoch]]
                (broker to broker) Where ``epoch`` ends in the leader's log: the largest epoch
                the leader knows that is <= ``epoch``, and the offset where it ended (the log
                end offset for the leader's latest epoch); -1, -1 when the leader knows none.
                A follower that starts following a new leader truncates its log there first.
  ListOffsets   parts: [[topic, partition,   -> parts: [[topic, partition, err, offset,
                         timestamp,                      timestamp, leader_epoch]]
                         leader_epoch]]
                timestamp -2 = earliest, -1 = latest, otherwise the first offset whose
                timestamp is >= it (offset -1 when none)
  CreateTopics  topics: [[name, num_partitions, replication_factor, config {str: str},
                          assignment {partition: [broker ids]} | None]],
                timeout_ms, validate_only    -> topics: [[name, err, msg]]
  DeleteTopics  topics: [name], timeout_ms -> topics: [[name, err, msg]]
  CreatePartitions  topics: [[name, total_count]], timeout_ms -> topics: [[name, err, msg]]

Admin APIs (CreateTopics, DeleteTopics, CreatePartitions) are answered by the controller; another
broker answers NOT_CONTROLLER and the client retries at the controller named by Metadata.

Errors are zbroker.errors codes (Kafka's where the meaning is Kafka's).
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from zbroker import errors

VERSION = 1

# --- limits (unit last) ---------------------------------------------------------------------
HEADER_BYTES_MAX = 1024 * 1024            # one msgpack header
REQUEST_BYTES_MAX = 64 * 1024 * 1024      # header + blobs of one request (socket MAXMSGSIZE is
                                          # per frame: set to MESSAGE_BYTES_MAX_LIMIT)
FRAME_BYTES_MAX = 64 * 1024 * 1024        # one frame; the socket drops a peer that sends more
PARTS_PER_REQUEST_MAX = 10_000
TOPICS_PER_REQUEST_MAX = 1000
TOPIC_NAME_CHARS_MAX = 249                # Kafka's
PARTITIONS_PER_TOPIC_MAX = 10_000
FETCH_WAIT_MS_MAX = 60_000
REQUEST_TIMEOUT_MS_MAX = 300_000

EARLIEST_TIMESTAMP = -2
LATEST_TIMESTAMP = -1
CONSUMER_REPLICA_ID = -1

TOPIC_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+$")

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    return _packer.pack(obj)


def unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False,
                           max_bin_len=HEADER_BYTES_MAX, max_str_len=HEADER_BYTES_MAX,
                           max_array_len=PARTS_PER_REQUEST_MAX * 8,
                           max_map_len=PARTS_PER_REQUEST_MAX)


def check_topic_name(name: Any) -> None:
    """Raise InvalidTopic unless ``name`` is a legal topic name (Kafka's rules)."""
    if not isinstance(name, str) or not name:
        raise errors.InvalidTopic("A topic name must be a non-empty string.")
    if len(name) > TOPIC_NAME_CHARS_MAX:
        raise errors.InvalidTopic(f"A topic name may be at most {TOPIC_NAME_CHARS_MAX} "
                                  f"characters long.")
    if name in (".", "..") or not TOPIC_NAME_RE.match(name):
        raise errors.InvalidTopic(f"The topic name {name!r} may only hold ASCII letters, digits, "
                                  f"'.', '_' and '-', and may not be '.' or '..'.")


# --- requests -------------------------------------------------------------------------------

_I, _B, _S, _L, _M, _N = "int", "bool", "str", "list", "map", "none"

# api -> {field: (kinds, required)}
SCHEMAS: dict[str, dict[str, tuple[tuple[str, ...], bool]]] = {
    "ApiVersions": {},
    "Metadata": {"topics": ((_L, _N), False), "allow_auto_create": ((_B,), False)},
    "Produce": {"acks": ((_I,), True), "timeout_ms": ((_I,), False), "parts": ((_L,), True)},
    "Fetch": {"replica_id": ((_I,), False), "max_wait_ms": ((_I,), False),
              "min_bytes": ((_I,), False), "max_bytes": ((_I,), False),
              "parts": ((_L,), True)},
    "OffsetForLeaderEpoch": {"replica_id": ((_I,), True), "parts": ((_L,), True)},
    "ListOffsets": {"parts": ((_L,), True)},
    "CreateTopics": {"topics": ((_L,), True), "timeout_ms": ((_I,), False),
                     "validate_only": ((_B,), False)},
    "DeleteTopics": {"topics": ((_L,), True), "timeout_ms": ((_I,), False)},
    "CreatePartitions": {"topics": ((_L,), True), "timeout_ms": ((_I,), False)},
}

# positional layouts of the "parts" / "topics" entries, checked by check_entries()
PRODUCE_PART = (_S, _I, _I)                      # topic, partition, leader_epoch
FETCH_PART = (_S, _I, _I, _I, _I)                # topic, partition, offset, epoch, max_bytes
OFFSET_FOR_EPOCH_PART = (_S, _I, _I, _I)        # topic, partition, current epoch, epoch
LIST_OFFSETS_PART = (_S, _I, _I, _I)             # topic, partition, timestamp, epoch
CREATE_TOPIC = (_S, _I, _I, (_M, _N), (_M, _N))  # name, partitions, rf, config, assignment
CREATE_PARTITIONS = (_S, _I)                     # name, total


def _is(value: Any, kind: str) -> bool:
    if kind == _I:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _B:
        return isinstance(value, bool)
    if kind == _S:
        return isinstance(value, str)
    if kind == _L:
        return isinstance(value, (list, tuple))
    if kind == _M:
        return isinstance(value, dict)
    if kind == _N:
        return value is None
    raise AssertionError(kind)


def decode_request(frames: list[bytes]) -> tuple[dict, list[bytes]]:
    """Decode and check a request message ``[header, blob...]`` (identity already removed).

    Returns (header, blobs). Raises a ZbError with a sentence for anything a client got wrong;
    the header it raises for has an int "id" when one could be read (``e.request_id``)."""
    if not frames:
        raise errors.InvalidRequest("The message is empty.")
    if len(frames[0]) > HEADER_BYTES_MAX:
        raise errors.InvalidRequest(f"The request header is larger than {HEADER_BYTES_MAX} "
                                    f"bytes.")
    try:
        header = unpack(frames[0])
    except Exception:
        raise errors.InvalidRequest("The request header is not a valid msgpack message.") \
            from None
    if not isinstance(header, dict):
        raise errors.InvalidRequest("The request header must be a msgpack map.")
    req_id = header.get("id")
    if not _is(req_id, _I):
        raise errors.InvalidRequest("The request has no integer correlation id.")
    try:
        api = header.get("api")
        schema = SCHEMAS.get(api) if isinstance(api, str) else None
        if schema is None:
            raise errors.InvalidRequest(f"Unknown api {api!r}; this broker speaks "
                                        f"{', '.join(sorted(SCHEMAS))}.")
        if header.get("v") != VERSION:
            raise errors.UnsupportedVersion(f"This broker speaks version {VERSION} of {api}, "
                                            f"not {header.get('v')!r}.")
        for field, (kinds, required) in schema.items():
            if field not in header:
                if required:
                    raise errors.InvalidRequest(f"The {api} request needs the field {field!r}.")
                continue
            if not any(_is(header[field], k) for k in kinds):
                raise errors.InvalidRequest(f"The field {field!r} of {api} has the wrong type "
                                            f"({type(header[field]).__name__}).")
    except errors.ZbError as e:
        e.request_id = req_id
        raise
    return header, frames[1:]


def check_entries(api: str, field: str, entries: list, layout: tuple) -> None:
    """Check a positional list of entries (e.g. Produce "parts") against ``layout``."""
    if len(entries) > PARTS_PER_REQUEST_MAX:
        raise errors.InvalidRequest(f"A {api} request may name at most {PARTS_PER_REQUEST_MAX} "
                                    f"{field}.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, (list, tuple)) or len(entry) != len(layout):
            raise errors.InvalidRequest(f"Entry {i} of {field} in {api} must be a list of "
                                        f"{len(layout)} fields.")
        for value, kinds in zip(entry, layout):
            kinds = kinds if isinstance(kinds, tuple) else (kinds,)
            if not any(_is(value, k) for k in kinds):
                raise errors.InvalidRequest(f"Entry {i} of {field} in {api} has a field of the "
                                            f"wrong type ({type(value).__name__}).")


def encode_request(api: str, req_id: int, blobs: list[bytes] | None = None,
                   **fields: Any) -> list[bytes]:
    fields["api"] = api
    fields["v"] = VERSION
    fields["id"] = req_id
    return [pack(fields), *(blobs or ())]


# --- responses ------------------------------------------------------------------------------

def encode_response(req_id: int | None, blobs: list[bytes] | None = None,
                    **fields: Any) -> list[bytes]:
    fields["id"] = req_id
    fields.setdefault("err", 0)
    return [pack(fields), *(blobs or ())]


def encode_error(req_id: int | None, err: errors.ZbError) -> list[bytes]:
    return [pack({"id": req_id, "err": err.code, "msg": str(err)})]


def decode_response(frames: list[bytes]) -> tuple[dict, list[bytes]]:
    header = unpack(frames[0])
    if not isinstance(header, dict):
        raise errors.CorruptMessage("The broker sent a response that is not a msgpack map.")
    return header, frames[1:]


def response_error(header: dict) -> errors.ZbError | None:
    """The request-level error a response names, or None."""
    code = header.get("err", 0)
    return errors.make_error(code, header.get("msg")) if code else None
