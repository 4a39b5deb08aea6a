"""AdminClient against the fake broker: the calls, their results and their errors."""

import pytest

from clients import (AdminClient, InvalidPartitions, InvalidReplicationFactor, InvalidTopic,
                     NoBrokersAvailable, TopicAlreadyExists, UnknownTopicOrPartition)
from tests.procs import free_port

pytestmark = pytest.mark.timeout(30)


def test_create_describe_list_alter_delete(fake_broker):
    with AdminClient(fake_broker.bootstrap) as admin:
        admin.create_topic("new", 4, 1, config={"retention.ms": 1000})
        assert "new" in admin.list_topics()
        d = admin.describe_topic("new")
        assert [p.partition for p in d.partitions] == [0, 1, 2, 3]
        assert all(p.leader == 0 and p.replicas == [0] and p.isr == [0] for p in d.partitions)
        created = [r for r in fake_broker.requests if r["api"] == "CreateTopics"][0]
        assert created["topics"][0][3] == {"retention.ms": "1000"}
        admin.create_partitions("new", 6)
        assert len(admin.describe_topic("new").partitions) == 6
        admin.delete_topic("new")
        assert "new" not in admin.list_topics()
        assert admin.describe_cluster()["controller_id"] == 0


def test_errors_are_sentences(fake_broker):
    with AdminClient(fake_broker.bootstrap, request_timeout_ms=3000) as admin:
        with pytest.raises(TopicAlreadyExists):
            admin.create_topic("t", 1, 1)
        with pytest.raises(InvalidReplicationFactor):
            admin.create_topic("x", 1, 3)
        with pytest.raises(UnknownTopicOrPartition, match="'gone'"):
            admin.describe_topic("gone")
        with pytest.raises(UnknownTopicOrPartition):
            admin.delete_topic("gone")
        with pytest.raises(InvalidPartitions):
            admin.create_partitions("t", 2)
        with pytest.raises(InvalidTopic):
            admin.create_topic("bad name!", 1, 1)
    port = free_port()
    with pytest.raises(NoBrokersAvailable, match=f"127.0.0.1:{port}"):
        AdminClient(f"127.0.0.1:{port}", bootstrap_timeout_ms=300)
