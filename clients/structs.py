"""The small value types of the client library: what users pass in and get back."""

from __future__ import annotations

from typing import NamedTuple

from zbroker.records import Record


class TopicPartition(NamedTuple):
    """One partition of one topic; hashable, usable as a dict key (as in kafka-python)."""
    topic: str
    partition: int


class RecordMetadata(NamedTuple):
    """Where a produced record landed. ``offset`` is -1 with acks=0 (the broker does not say);
    ``timestamp`` is the record's create time, or the broker's append time when the topic uses
    LogAppendTime."""
    topic: str
    partition: int
    offset: int
    timestamp: int


class ConsumerRecord(Record):
    """One record read by a Consumer: ``topic``, ``partition``, ``offset``, ``timestamp`` (ms
    since the epoch), ``key`` and ``value`` (bytes or None), ``headers`` (a tuple of
    ``(str, bytes | None)`` pairs).

    It is a ``zbroker.records.Record`` (a tuple of offset, timestamp, key, value, headers, as
    kafka-python's ConsumerRecord is a namedtuple) whose ``topic`` and ``partition`` are
    attributes of a per-partition subclass (``ConsumerRecord.of(topic, partition)``, made once
    and cached). The consumer has ``records.decode_records`` make instances of that subclass
    directly, so decoding makes one object per record, in C, without a Python frame. Make one
    yourself with ``ConsumerRecord.of(topic, partition)(offset, timestamp, key, value, headers)``.
    """

    __slots__ = ()
    topic: str = ""
    partition: int = -1
    _classes: dict = {}

    @classmethod
    def of(cls, topic: str, partition: int) -> type["ConsumerRecord"]:
        """The ConsumerRecord class of one partition (its instances carry topic and partition
        without storing them)."""
        key = (topic, partition)
        sub = ConsumerRecord._classes.get(key)
        if sub is None:
            sub = type("ConsumerRecord", (ConsumerRecord,),
                       {"__slots__": (), "topic": topic, "partition": partition,
                        "__module__": __name__, "__qualname__": "ConsumerRecord"})
            ConsumerRecord._classes[key] = sub
        return sub

    def _tuple(self):
        return (self.topic, self.partition, self.offset, self.timestamp, self.key, self.value,
                self.headers)

    def __eq__(self, other):
        if not isinstance(other, ConsumerRecord):
            return NotImplemented
        return self._tuple() == other._tuple()

    def __hash__(self):
        return hash((self.topic, self.partition, self.offset))

    def __reduce__(self):
        return (_make_consumer_record, self._tuple())

    def __repr__(self):
        return (f"ConsumerRecord(topic={self.topic!r}, partition={self.partition}, "
                f"offset={self.offset}, timestamp={self.timestamp}, key={self.key!r}, "
                f"value={self.value!r}, headers={self.headers!r})")


def _make_consumer_record(topic, partition, offset, timestamp, key, value, headers):
    return ConsumerRecord.of(topic, partition)(offset, timestamp, key, value, headers)


class BrokerMetadata(NamedTuple):
    """A broker as Metadata names it."""
    node_id: int
    host: str
    port: int
    rack: str | None


class PartitionMetadata(NamedTuple):
    """One partition as Metadata describes it. ``leader`` is -1 when it has none;
    ``error`` is 0 or a zbroker error code."""
    topic: str
    partition: int
    leader: int
    leader_epoch: int
    replicas: list[int]
    isr: list[int]
    offline_replicas: list[int]
    error: int


class TopicDescription(NamedTuple):
    """A topic as ``AdminClient.describe_topic`` returns it: partitions sorted by number."""
    name: str
    internal: bool
    partitions: list[PartitionMetadata]


class OffsetAndMetadata(NamedTuple):
    """A committed offset: the offset of the next record to read, the committer's metadata
    string, and the leader epoch of the record before it (-1 when unknown), as kafka-python's."""
    offset: int
    metadata: str | None = None
    leader_epoch: int = -1


class OffsetAndTimestamp(NamedTuple):
    """What ``Consumer.offsets_for_times`` finds: the first offset at or after the time asked
    for, and that record's timestamp."""
    offset: int
    timestamp: int


class MemberDescription(NamedTuple):
    """A member of a consumer group as ``AdminClient.describe_consumer_groups`` sees it.
    ``assignment`` is what it owns now, ``target_assignment`` what it is moving to."""
    member_id: str
    group_instance_id: str | None
    client_id: str
    host: str
    member_epoch: int
    subscribed_topics: list[str]
    subscribed_topic_regex: str | None
    assignment: set
    target_assignment: set
    rack_id: str | None = None


class ConsumerGroupDescription(NamedTuple):
    """A consumer group: its state (Empty, Assigning, Reconciling, Stable, Dead), epochs,
    assignor and members, and the broker that coordinates it."""
    group_id: str
    state: str
    group_epoch: int
    assignment_epoch: int
    partition_assignor: str
    members: list[MemberDescription]
    coordinator: BrokerMetadata | None


class GroupListing(NamedTuple):
    group_id: str
    state: str
    group_type: str = "consumer"


__all__ = ["TopicPartition", "RecordMetadata", "ConsumerRecord", "BrokerMetadata",
           "PartitionMetadata", "TopicDescription", "OffsetAndMetadata", "OffsetAndTimestamp",
           "MemberDescription", "ConsumerGroupDescription", "GroupListing"]
