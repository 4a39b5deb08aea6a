"""The small value types of the client library: what users pass in and get back."""

from __future__ import annotations

from typing import NamedTuple


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


class ConsumerRecord:
    """One record read by a Consumer. ``key`` and ``value`` are bytes or None; ``headers`` is a
    tuple of ``(str, bytes | None)`` pairs; ``timestamp`` is in ms since the epoch."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "key", "value", "headers")

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int, key, value,
                 headers):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.value = value
        self.headers = headers

    def _tuple(self):
        return (self.topic, self.partition, self.offset, self.timestamp, self.key, self.value,
                self.headers)

    def __eq__(self, other):
        if not isinstance(other, ConsumerRecord):
            return NotImplemented
        return self._tuple() == other._tuple()

    def __hash__(self):
        return hash((self.topic, self.partition, self.offset))

    def __repr__(self):
        return (f"ConsumerRecord(topic={self.topic!r}, partition={self.partition}, "
                f"offset={self.offset}, timestamp={self.timestamp}, key={self.key!r}, "
                f"value={self.value!r}, headers={self.headers!r})")


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


__all__ = ["TopicPartition", "RecordMetadata", "ConsumerRecord", "BrokerMetadata",
           "PartitionMetadata", "TopicDescription"]
