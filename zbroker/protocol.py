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

APIs (fields beyond api/v/id). Every entry of a "parts" / "topics" / "brokers" list is one of
the named tuples below (ProducePart, ProduceResult, FetchPart, ReplicaFetchPart, FetchResult,
DivergingEpoch, EpochQueryPart, EpochEndResult, ListOffsetsPart, ListOffsetsResult,
BrokerEntry, TopicMetadataEntry, PartitionMetadataEntry), sent as a msgpack array in its field
order (compact on hot paths) and read back with ``decode_entries``:

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
                An idempotent producer's batches (producer id, epoch and sequence in their
                headers; zbroker/storage/producer_state.py) are checked per partition: one
                the leader has (one of its last five) is not written again and is answered
                with its original offset. When a part's batches did not land back to back
                (some were such duplicates), the response header also holds
                batch_offsets: [[part index, [base offset of each batch]]].
  InitProducerId  transactional_id: None  -> producer_id, producer_epoch (0)
                (any broker; ids come in blocks the broker claims in the coordinator, so
                they are unique in the cluster and across restarts)
  Fetch         replica_id (-1 client),  -> parts: [[topic, partition, err, high_watermark,
                replica_epoch (replicas), log_start_offset, log_end_offset]]
                max_wait_ms, min_bytes,      blobs: one per part (b"" when nothing)
                max_bytes,                   diverging (replicas, when any): [[topic,
                parts: [[topic, partition,     partition, epoch, end_offset]]
                         fetch_offset, leader_epoch,
                         partition_max_bytes
                         (, last_fetched_epoch: replicas)]]
                A consumer (replica_id -1) sees only batches below the high watermark; a follower
                (replica_id = its broker id, replica_epoch = its broker epoch, leader_epoch = the
                epoch it follows in, required) reads up to the log end offset, and its
                fetch_offset tells the leader its log end offset. When its last fetched epoch
                does not end at fetch_offset in the leader's log, the leader sends no records
                but a ``diverging`` entry: the largest epoch it has <= that one and where it
                ends (KIP-320). On OFFSET_OUT_OF_RANGE the leader still fills in
                log_start_offset and log_end_offset, so the follower can tell which end it fell
                off. A replica request whose broker epoch is not the registered one is refused
                (STALE_BROKER_EPOCH).
                Fetch sessions (KIP-227, replicas; zbroker/broker/fetch_sessions.py):
                session_id, session_epoch (-1: none, the default; 0: open one with this full
                request; n > 0: the n-th incremental request, naming only partitions whose
                request changed), forgotten: [[topic, partition]] that left the session ->
                session_id (of the session opened or used); an incremental answer holds only
                the partitions named or with news (records, a high watermark or log start
                that moved, an error). FETCH_SESSION_ID_NOT_FOUND / INVALID_FETCH_SESSION_EPOCH
                at the request level: open a new session.
  OffsetForLeaderEpoch  replica_id,      -> parts: [[topic, partition, err, leader_epoch,
                replica_epoch,                           end_offset]]
                parts: [[topic, partition,
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

Consumer groups (Kafka 4.0's protocol, KIP-848). The group coordinator of group G is the leader
of partition ``group_partition(G, n)`` of the internal topic ``__consumer_offsets`` (n partitions);
every API below but FindCoordinator and ListGroups must go there (another broker answers
NOT_COORDINATOR). Request-level errors (unknown member, fenced epoch, not the coordinator, ...)
are the header's ``err``; per-partition errors are inside the entries. Entries are the named
tuples below (``*Entry``), sent as msgpack arrays in their field order.

  FindCoordinator  key_type: "group", keys: [group ids]
                   -> coordinators: [CoordinatorEntry]  (err COORDINATOR_NOT_AVAILABLE while
                   __consumer_offsets is being created or the partition has no leader)
  ConsumerGroupHeartbeat
                   group_id, member_id (chosen by the client, stable across rejoins),
                   member_epoch (0 join, -1 leave, -2 leave for now: a static member coming
                   back), instance_id | None, rack_id | None, client_id | None,
                   rebalance_timeout_ms (-1 unchanged), session_timeout_ms and
                   heartbeat_interval_ms (what the member asks for, -1 for the group's default;
                   clamped to the broker's min/max), subscribed_topic_names: [name] | None
                   (None unchanged), subscribed_topic_regex: str | None (shown by describe; the
                   client resolves it), server_assignor | None, topic_partitions: [[topic,
                   [partition]]] | None (what the member owns now; None unchanged),
                   max_wait_ms (how long the coordinator may hold the heartbeat when it has
                   nothing new for the member: it answers at once when the member's assignment
                   moves)
                   -> member_id, member_epoch, heartbeat_interval_ms, session_timeout_ms,
                      assignment: [[topic, [partition]]] | None (None: unchanged)
  OffsetCommit     group_id, member_id ("" and member_epoch -1: no member, only for a group
                   without members), member_epoch, parts: [OffsetCommitPart]
                   -> parts: [PartitionResultEntry]
  OffsetFetch      group_id, parts: [[topic, partition]] | None (None: every committed offset)
                   -> parts: [OffsetFetchEntry]  (offset -1: nothing committed)
  ListGroups       states: [state] | None   -> groups: [ListedGroupEntry]  (this broker's)
  ConsumerGroupDescribe  group_ids: [group id] -> groups: [DescribedGroupEntry]
  DeleteGroups     group_ids: [group id]    -> groups: [GroupResultEntry]
  OffsetDelete     group_id, parts: [[topic, partition]] -> parts: [PartitionResultEntry]

A group coordinator answers a request only once what it wrote for it, and everything written
before, is replicated to every in-sync replica of its __consumer_offsets partition (the high
watermark passed it), so no answer ever tells of a state a coordinator failover could take back.

Errors are zbroker.errors codes (Kafka's where the meaning is Kafka's).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgpack
import xxhash

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
REPLICAS_PER_PARTITION_MAX = 64
PARTITIONS_PER_REQUEST_MAX = 10_000       # created by one CreateTopics or CreatePartitions
FETCH_WAIT_MS_MAX = 60_000
REQUEST_TIMEOUT_MS_MAX = 300_000

GROUP_ID_CHARS_MAX = 255
MEMBER_ID_CHARS_MAX = 64
INSTANCE_ID_CHARS_MAX = 255
CLIENT_ID_CHARS_MAX = 255
RACK_ID_CHARS_MAX = 255
ASSIGNOR_NAME_CHARS_MAX = 64
REGEX_CHARS_MAX = 1000
GROUPS_PER_REQUEST_MAX = 1000
HEARTBEAT_WAIT_MS_MAX = 60_000

OFFSETS_TOPIC = "__consumer_offsets"
INTERNAL_TOPICS = frozenset({OFFSETS_TOPIC})
JOIN_GROUP_MEMBER_EPOCH = 0
LEAVE_GROUP_MEMBER_EPOCH = -1
LEAVE_GROUP_STATIC_MEMBER_EPOCH = -2
NO_MEMBER_EPOCH = -1

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
    "Fetch": {"replica_id": ((_I,), False), "replica_epoch": ((_I,), False),
              "max_wait_ms": ((_I,), False),
              "min_bytes": ((_I,), False), "max_bytes": ((_I,), False),
              "session_id": ((_I,), False), "session_epoch": ((_I,), False),
              "forgotten": ((_L,), False), "parts": ((_L,), True)},
    "OffsetForLeaderEpoch": {"replica_id": ((_I,), True), "replica_epoch": ((_I,), False),
                             "parts": ((_L,), True)},
    "ListOffsets": {"parts": ((_L,), True)},
    "InitProducerId": {"transactional_id": ((_S, _N), False),
                       "transaction_timeout_ms": ((_I,), False)},
    "CreateTopics": {"topics": ((_L,), True), "timeout_ms": ((_I,), False),
                     "validate_only": ((_B,), False)},
    "DeleteTopics": {"topics": ((_L,), True), "timeout_ms": ((_I,), False)},
    "CreatePartitions": {"topics": ((_L,), True), "timeout_ms": ((_I,), False)},
}

# --- named entries: every request and response entry of the data APIs has one type here,
# sent as a msgpack array in its field order, used by the broker, the clients, the replica
# fetcher and the test fakes alike (golden bytes in tests/test_wire_golden.py)

class ProducePart(NamedTuple):
    topic: str
    partition: int
    leader_epoch: int


class ProduceResult(NamedTuple):
    topic: str
    partition: int
    err: int
    base_offset: int
    log_append_time_ms: int
    log_start_offset: int
    msg: str | None


class FetchPart(NamedTuple):
    topic: str
    partition: int
    fetch_offset: int
    leader_epoch: int
    partition_max_bytes: int


class ReplicaFetchPart(NamedTuple):
    topic: str
    partition: int
    fetch_offset: int
    leader_epoch: int
    partition_max_bytes: int
    last_fetched_epoch: int


class FetchResult(NamedTuple):
    topic: str
    partition: int
    err: int
    high_watermark: int
    log_start_offset: int
    log_end_offset: int


class DivergingEpoch(NamedTuple):
    topic: str
    partition: int
    epoch: int
    end_offset: int


class EpochQueryPart(NamedTuple):
    topic: str
    partition: int
    current_leader_epoch: int
    epoch: int


class EpochEndResult(NamedTuple):
    topic: str
    partition: int
    err: int
    leader_epoch: int
    end_offset: int


class ListOffsetsPart(NamedTuple):
    topic: str
    partition: int
    timestamp: int
    leader_epoch: int


class ListOffsetsResult(NamedTuple):
    topic: str
    partition: int
    err: int
    offset: int
    timestamp: int
    leader_epoch: int


class BrokerEntry(NamedTuple):
    node_id: int
    host: str
    port: int
    rack: str | None


class PartitionMetadataEntry(NamedTuple):
    partition: int
    err: int
    leader: int
    leader_epoch: int
    replicas: list
    isr: list
    offline_replicas: list


class TopicMetadataEntry(NamedTuple):
    name: str
    err: int
    internal: bool
    partitions: list            # [PartitionMetadataEntry]


# the field kinds of request entries, checked by check_entries() before they are named
PRODUCE_PART = (_S, _I, _I)
FETCH_PART = (_S, _I, _I, _I, _I)
REPLICA_FETCH_PART = (*FETCH_PART, _I)
FORGOTTEN_PART = (_S, _I)
OFFSET_FOR_EPOCH_PART = (_S, _I, _I, _I)
LIST_OFFSETS_PART = (_S, _I, _I, _I)
for _entry, _layout in ((ProducePart, PRODUCE_PART), (FetchPart, FETCH_PART),
                        (ReplicaFetchPart, REPLICA_FETCH_PART),
                        (EpochQueryPart, OFFSET_FOR_EPOCH_PART),
                        (ListOffsetsPart, LIST_OFFSETS_PART)):
    assert len(_entry._fields) == len(_layout), _entry
CREATE_TOPIC = (_S, _I, _I, (_M, _N), (_M, _N))  # name, partitions, rf, config, assignment
CREATE_PARTITIONS = (_S, _I)                     # name, total


# consumer group APIs (see the module docstring)
SCHEMAS.update({
    "FindCoordinator": {"key_type": ((_S,), False), "keys": ((_L,), True)},
    "ConsumerGroupHeartbeat": {
        "group_id": ((_S,), True), "member_id": ((_S,), True), "member_epoch": ((_I,), True),
        "instance_id": ((_S, _N), False), "rack_id": ((_S, _N), False),
        "client_id": ((_S, _N), False), "rebalance_timeout_ms": ((_I,), False),
        "session_timeout_ms": ((_I,), False), "heartbeat_interval_ms": ((_I,), False),
        "subscribed_topic_names": ((_L, _N), False), "subscribed_topic_regex": ((_S, _N), False),
        "server_assignor": ((_S, _N), False), "topic_partitions": ((_L, _N), False),
        "max_wait_ms": ((_I,), False)},
    "OffsetCommit": {"group_id": ((_S,), True), "member_id": ((_S,), False),
                     "member_epoch": ((_I,), False), "parts": ((_L,), True)},
    "OffsetFetch": {"group_id": ((_S,), True), "parts": ((_L, _N), False)},
    "ListGroups": {"states": ((_L, _N), False)},
    "ConsumerGroupDescribe": {"group_ids": ((_L,), True)},
    "DeleteGroups": {"group_ids": ((_L,), True)},
    "OffsetDelete": {"group_id": ((_S,), True), "parts": ((_L,), True)},
})
# ACL APIs (zbroker/acl.py): bindings are AclBinding arrays, filters AclFilter maps
SCHEMAS.update({
    "DescribeAcls": {"filter": ((_M,), False)},
    "CreateAcls": {"creations": ((_L,), True)},
    "DeleteAcls": {"filters": ((_L,), True)},
})
ACL_APIS = ("DescribeAcls", "CreateAcls", "DeleteAcls")
ACLS_PER_REQUEST_MAX = 1000
GROUP_APIS = ("ConsumerGroupHeartbeat", "OffsetCommit", "OffsetFetch", "ConsumerGroupDescribe",
              "DeleteGroups", "OffsetDelete")

OFFSET_COMMIT_PART = (_S, _I, _I, _I, (_S, _N))   # topic, partition, offset, epoch, metadata
TOPIC_PARTITION = (_S, _I)                         # topic, partition


class CoordinatorEntry(NamedTuple):
    key: str
    node_id: int
    host: str
    port: int
    err: int
    msg: str | None


class OffsetCommitPart(NamedTuple):
    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str | None


class PartitionResultEntry(NamedTuple):
    topic: str
    partition: int
    err: int
    msg: str | None


class OffsetFetchEntry(NamedTuple):
    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str | None
    err: int


class ListedGroupEntry(NamedTuple):
    group_id: str
    state: str
    group_type: str


class DescribedMemberEntry(NamedTuple):
    member_id: str
    instance_id: str | None
    rack_id: str | None
    member_epoch: int
    client_id: str
    client_host: str
    subscribed_topic_names: list
    subscribed_topic_regex: str | None
    assignment: list            # [[topic, [partition]]]
    target_assignment: list     # [[topic, [partition]]]
    state: str                  # the member's reconciliation state


class DescribedGroupEntry(NamedTuple):
    group_id: str
    err: int
    msg: str | None
    state: str
    group_epoch: int
    assignment_epoch: int
    assignor: str
    members: list               # [DescribedMemberEntry]


class GroupResultEntry(NamedTuple):
    group_id: str
    err: int
    msg: str | None


def decode_entries(cls, raw, what: str) -> list:
    """Named entries from a response's list of arrays; CorruptMessage when they do not fit."""
    n = len(cls._fields)
    if not isinstance(raw, (list, tuple)) or \
            not all(isinstance(e, (list, tuple)) and len(e) == n for e in raw):
        raise errors.CorruptMessage(f"The broker sent malformed {what} entries.")
    return [cls._make(e) for e in raw]


def group_partition(group_id: str, num_partitions: int) -> int:
    """The __consumer_offsets partition that holds group ``group_id`` (its coordinator is that
    partition's leader)."""
    return xxhash.xxh32_intdigest(group_id.encode("utf-8")) % num_partitions


def check_group_id(group_id: Any) -> None:
    """Raise InvalidGroupId unless ``group_id`` is a usable group id."""
    if not isinstance(group_id, str) or not group_id:
        raise errors.InvalidGroupId("A group id must be a non-empty string.")
    if len(group_id) > GROUP_ID_CHARS_MAX:
        raise errors.InvalidGroupId(f"A group id may be at most {GROUP_ID_CHARS_MAX} characters "
                                    f"long.")
    if not group_id.isprintable():
        raise errors.InvalidGroupId("A group id may only hold printable characters.")


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
            raise errors.InvalidRequest(f"Unknown api {repr(api)[:80]}; this broker speaks "
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
