"""The records a group coordinator writes to its ``__consumer_offsets`` partition: the one
place that spells them. A group's whole state is the replay of these records in log order, so a
broker that takes over the partition rebuilds every group by reading it.

Each record's key is a msgpack array ``[type, group_id, ...]``; its value a msgpack map, or no
value at all (None, a tombstone) when the thing the key names is gone. A later record with the
same key replaces an earlier one (the log could be compacted by key).

    type  key                              value
    1     [1, group, topic, partition]     OffsetCommit: offset, leader_epoch, metadata,
                                           commit_timestamp_ms
    2     [2, group]                       GroupMetadata: epoch (the group epoch),
                                           empty_since_ms; a tombstone deletes the group
    3     [3, group]                       SubscriptionMetadata: topics {name: partitions} the
                                           group's members subscribe to, as of the last epoch
    4     [4, group, member_id]            MemberMetadata: instance_id, rack_id, client_id,
                                           client_host, topics, regex, assignor,
                                           rebalance_timeout_ms, session_timeout_ms,
                                           heartbeat_interval_ms, replaced
    5     [5, group]                       TargetAssignmentMetadata: epoch
    6     [6, group, member_id]            TargetAssignmentMember: partitions
    7     [7, group, member_id]            CurrentAssignment: epoch, previous_epoch, state,
                                           assigned, revoking (the member's reconciliation)

Partitions travel as ``{topic: [partition, ...]}``; in memory they are frozensets of
``(topic, partition)`` tuples.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

OFFSET_COMMIT = 1
GROUP_METADATA = 2
SUBSCRIPTION_METADATA = 3
MEMBER_METADATA = 4
TARGET_ASSIGNMENT_METADATA = 5
TARGET_ASSIGNMENT_MEMBER = 6
CURRENT_ASSIGNMENT = 7

KEY_LENGTHS = {OFFSET_COMMIT: 4, GROUP_METADATA: 2, SUBSCRIPTION_METADATA: 2, MEMBER_METADATA: 3,
               TARGET_ASSIGNMENT_METADATA: 2, TARGET_ASSIGNMENT_MEMBER: 3, CURRENT_ASSIGNMENT: 3}

Partitions = frozenset  # of (topic, partition)


class GroupRecord(NamedTuple):
    """One decoded record: ``key`` is the tuple after the type; ``value`` a dict or None."""
    type: int
    group_id: str
    key: tuple
    value: dict | None


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode(rtype: int, group_id: str, *key: Any, value: dict | None) -> tuple[bytes,
                                                                             bytes | None]:
    """(key bytes, value bytes or None) of one record."""
    return pack([rtype, group_id, *key]), (None if value is None else pack(value))


def decode(key: bytes | None, value: bytes | None) -> GroupRecord:
    """Raise ValueError for anything that is not a record of ours."""
    if key is None:
        raise ValueError("a group record needs a key")
    k = msgpack.unpackb(key, raw=False, strict_map_key=False)
    if not isinstance(k, list) or len(k) < 2 or k[0] not in KEY_LENGTHS or \
            len(k) != KEY_LENGTHS[k[0]] or not isinstance(k[1], str):
        raise ValueError(f"not a group record key: {k!r}")
    v = None if value is None else msgpack.unpackb(value, raw=False, strict_map_key=False)
    if v is not None and not isinstance(v, dict):
        raise ValueError("a group record value must be a map")
    return GroupRecord(k[0], k[1], tuple(k[2:]), v)


def partitions_to_wire(parts) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for t, p in sorted(parts):
        out.setdefault(t, []).append(p)
    return out


def partitions_from_wire(d) -> frozenset:
    if not d:
        return frozenset()
    return frozenset((t, p) for t, ps in d.items() for p in ps)


def partitions_to_list(parts) -> list:
    """The ``[[topic, [partition, ...]], ...]`` form of the heartbeat and describe APIs."""
    return [[t, ps] for t, ps in partitions_to_wire(parts).items()]


def partitions_from_list(entries) -> frozenset:
    return frozenset((t, p) for t, ps in entries for p in ps)


# --- constructors, one per record type ----------------------------------------------------------

def offset_commit(group_id: str, topic: str, partition: int, offset: int, leader_epoch: int,
                  metadata: str | None, commit_timestamp_ms: int):
    return encode(OFFSET_COMMIT, group_id, topic, partition,
                  value={"offset": offset, "leader_epoch": leader_epoch, "metadata": metadata,
                         "commit_timestamp_ms": commit_timestamp_ms})


def offset_tombstone(group_id: str, topic: str, partition: int):
    return encode(OFFSET_COMMIT, group_id, topic, partition, value=None)


def group_epoch(group_id: str, epoch: int, empty_since_ms: int | None = None):
    """``empty_since_ms``: when the group lost its last member (wall clock; None while it has
    members, or never had any)."""
    return encode(GROUP_METADATA, group_id, value={"epoch": epoch,
                                                   "empty_since_ms": empty_since_ms})


def group_tombstone(group_id: str):
    return encode(GROUP_METADATA, group_id, value=None)


def subscription_metadata(group_id: str, topics: dict[str, int] | None):
    return encode(SUBSCRIPTION_METADATA, group_id,
                  value=None if topics is None else {"topics": dict(sorted(topics.items()))})


def member_metadata(group_id: str, m) -> tuple:
    """``m`` is a model.Member."""
    return encode(MEMBER_METADATA, group_id, m.member_id, value={
        "instance_id": m.instance_id, "rack_id": m.rack_id, "client_id": m.client_id,
        "client_host": m.client_host, "topics": list(m.subscribed_topics),
        "regex": m.subscribed_regex, "assignor": m.server_assignor,
        "rebalance_timeout_ms": m.rebalance_timeout_ms,
        "session_timeout_ms": m.session_timeout_ms,
        "heartbeat_interval_ms": m.heartbeat_interval_ms, "replaced": m.replaced})


def member_tombstone(group_id: str, member_id: str):
    return encode(MEMBER_METADATA, group_id, member_id, value=None)


def target_epoch(group_id: str, epoch: int | None):
    return encode(TARGET_ASSIGNMENT_METADATA, group_id,
                  value=None if epoch is None else {"epoch": epoch})


def target_member(group_id: str, member_id: str, parts: frozenset | None):
    return encode(TARGET_ASSIGNMENT_MEMBER, group_id, member_id,
                  value=None if parts is None else {"partitions": partitions_to_wire(parts)})


def current_assignment(group_id: str, m) -> tuple:
    return encode(CURRENT_ASSIGNMENT, group_id, m.member_id, value={
        "epoch": m.member_epoch, "previous_epoch": m.previous_epoch, "state": m.state.value,
        "assigned": partitions_to_wire(m.assigned), "revoking": partitions_to_wire(m.revoking)})


def current_assignment_tombstone(group_id: str, member_id: str):
    return encode(CURRENT_ASSIGNMENT, group_id, member_id, value=None)
