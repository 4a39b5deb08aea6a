"""zbroker's Python client library: Producer, Consumer and AdminClient, with kafka-python's
names and habits.

    from clients import Producer, Consumer, AdminClient, TopicPartition

    admin = AdminClient(bootstrap_servers="127.0.0.1:9092")
    admin.create_topic("events", partitions=6, replication_factor=3)

    with Producer(bootstrap_servers="127.0.0.1:9092", acks="all") as producer:
        producer.send("events", b"hello", key=b"user-1").result(10)

    with Consumer("events", bootstrap_servers="127.0.0.1:9092",
                  auto_offset_reset="earliest", consumer_timeout_ms=2000) as consumer:
        for record in consumer:
            print(record.partition, record.offset, record.key, record.value)

Every error is a ``clients.errors`` class (re-exported here): the wire errors of
``zbroker.errors`` with their ``retriable`` flag, plus ``NoBrokersAvailable``,
``BrokerConnectionError``, ``IllegalStateError`` and ``CommitFailedError``. The library logs through the standard
``logging`` module (loggers ``clients.*``) and configures nothing itself.
"""

from clients import errors as _errors
from clients.admin import AdminClient
from clients.consumer import Consumer, ConsumerRebalanceListener
from clients.errors import *  # noqa: F401,F403
from clients.producer import FutureRecordMetadata, Producer
from zbroker.acl import AclBinding, AclFilter
from clients.structs import (BrokerMetadata, ConsumerGroupDescription, ConsumerRecord,
                             GroupListing, MemberDescription, OffsetAndMetadata,
                             OffsetAndTimestamp, PartitionMetadata, RecordMetadata,
                             TopicDescription, TopicPartition)

__all__ = ["Producer", "Consumer", "ConsumerRebalanceListener", "AdminClient",
           "TopicPartition", "RecordMetadata", "ConsumerRecord", "FutureRecordMetadata",
           "OffsetAndMetadata", "OffsetAndTimestamp", "BrokerMetadata", "PartitionMetadata",
           "TopicDescription", "ConsumerGroupDescription", "MemberDescription", "GroupListing",
           "AclBinding", "AclFilter",
           *_errors.__all__]
