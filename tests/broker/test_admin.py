"""Admin APIs at the controller: CreateTopics, DeleteTopics, CreatePartitions, auto-create."""

import os

import pytest

from zbroker import errors
from zbroker.broker.controller import assign_replicas, elect_leader, rack_alternated
from tests.broker.helpers import Conn, batch, leaders, values_of

pytestmark = pytest.mark.timeout(60)


def test_assignment_spreads_leaders_and_racks():
    brokers = {1: None, 2: None, 3: None}
    reps = assign_replicas(brokers, 6, 1, 0)
    assert [r[0] for r in reps] == [1, 2, 3, 1, 2, 3]
    reps = assign_replicas(brokers, 6, 3, 2)
    assert all(sorted(r) == [1, 2, 3] for r in reps)
    assert sorted(r[0] for r in reps) == [1, 1, 2, 2, 3, 3]
    racks = {1: "a", 2: "a", 3: "b", 4: "b"}
    assert rack_alternated(racks) == [1, 3, 2, 4]
    for r in assign_replicas(racks, 8, 2, 1):
        assert racks[r[0]] != racks[r[1]], r
    with pytest.raises(errors.InvalidReplicationFactor):
        assign_replicas(brokers, 1, 4)
    assert elect_leader((1, 2), (2,), {1, 2}) == 2
    assert elect_leader((1,), (1,), {2}) == -1


def admin(c, api, **fields):
    conn = Conn(c.broker(c.controller_id()).port)
    try:
        header, _ = conn.request(api, timeout_s=15, timeout_ms=10000, **fields)
        return header
    finally:
        conn.close()


def test_create_delete_and_grow_topics(cluster):
    c = cluster(2, racks=["r1", "r2"])
    cid = c.controller_id()
    other = next(b for b in c.brokers if b.broker_id != cid)

    # a non-controller refuses admin requests
    conn = Conn(other.port)
    header, _ = conn.request("CreateTopics", topics=[["x", 1, 1, {}, None]])
    assert header["err"] == errors.NotController.code
    conn.close()

    h = admin(c, "CreateTopics", topics=[
        ["good", 2, 2, {"retention.ms": "3600000"}, None],
        ["bad name!", 1, 1, {}, None],
        ["too-many-replicas", 1, 3, {}, None],
        ["zero", 0, 1, {}, None],
        ["badconf", 1, 1, {"no.such": "1"}, None],
        ["manual", 2, 1, {}, {0: [2], 1: [2]}],
        ["check-only", 1, 1, {}, None],
    ])
    codes = {t[0]: t[1] for t in h["topics"]}
    assert codes == {"good": 0, "bad name!": errors.InvalidTopic.code,
                     "too-many-replicas": errors.InvalidReplicationFactor.code,
                     "zero": errors.InvalidPartitions.code, "badconf": errors.InvalidConfig.code,
                     "manual": 0, "check-only": 0}
    # the controller answers once its own metadata has the topics
    md = c.metadata(["good", "manual"], via=c.broker(cid), allow_auto_create=False)
    good, manual = md["topics"]
    assert good[1] == 0 and len(good[3]) == 2
    for p in good[3]:
        assert sorted(p[4]) == [1, 2] and sorted(p[5]) == [1, 2]   # both racks, both in sync
    assert [p[2] for p in manual[3]] == [2, 2]
    h = admin(c, "CreateTopics", topics=[["good", 1, 1, {}, None]])
    assert h["topics"][0][1] == errors.TopicAlreadyExists.code
    h = admin(c, "CreateTopics", topics=[["vo", 1, 1, {}, None]], validate_only=True)
    assert h["topics"][0][1] == 0
    assert c.metadata(["vo"], allow_auto_create=False)["topics"][0][1] == \
        errors.UnknownTopicOrPartition.code

    # produce, then grow: old partitions keep their data, new ones are led and writable
    c.wait_topic("manual", 2)
    b2 = Conn(c.broker(2).port)
    assert b2.produce("manual", 0, batch([b"kept"]))[2] == 0
    h = admin(c, "CreatePartitions", topics=[["manual", 4], ["good", 1], ["nope", 3]])
    codes = {t[0]: t[1] for t in h["topics"]}
    assert codes == {"manual": 0, "good": errors.InvalidPartitions.code,
                     "nope": errors.UnknownTopicOrPartition.code}
    parts = c.wait_topic("manual", 4)
    lead = leaders(parts)
    for p in (2, 3):
        conn = Conn(c.broker(lead[p]).port)
        assert conn.produce("manual", p, batch([b"new"]))[2] == 0
        conn.close()
    assert values_of(b2.fetch("manual", 0, 0)[1]) == [(0, b"kept")]

    # delete: gone from metadata and from disk; a new topic of that name starts empty
    log_dir = c.broker(2).log_dir / "manual-0"
    assert log_dir.is_dir()
    h = admin(c, "DeleteTopics", topics=["manual", "nope"])
    codes = {t[0]: t[1] for t in h["topics"]}
    assert codes == {"manual": 0, "nope": errors.UnknownTopicOrPartition.code}
    c.wait_for(lambda: all(b.metadata(["manual"], allow_auto_create=False)["topics"][0][1] ==
                           errors.UnknownTopicOrPartition.code for b in c.brokers),
               what="deletion in every broker's metadata")
    c.wait_for(lambda: not log_dir.exists() and
               not any(n.startswith("manual-") for n in os.listdir(c.broker(2).log_dir)),
               what="log dirs deleted")
    assert b2.produce("manual", 0, batch([b"x"]))[2] == errors.UnknownTopicOrPartition.code
    h = admin(c, "CreateTopics", topics=[["manual", 1, 1, {}, {0: [2]}]])
    assert h["topics"][0][1] == 0
    c.wait_topic("manual", 1)
    meta, blob = b2.fetch("manual", 0, 0)
    assert meta[2] == 0 and meta[3] == 0 and blob == b""
    b2.close()


def test_delete_disabled(cluster):
    c = cluster(1, delete_topic_enable=False)
    c.create_topic("keep", 1)
    h = admin(c, "DeleteTopics", topics=["keep"])
    assert h["topics"][0][1] == errors.TopicDeletionDisabled.code


def test_metadata_auto_creates_when_allowed(cluster):
    c = cluster(2, num_partitions=3)
    md = c.metadata(["auto1"], allow_auto_create=False)
    assert md["topics"][0][1] == errors.UnknownTopicOrPartition.code
    md = c.metadata(["auto1"])
    assert md["topics"][0][1] in (errors.LeaderNotAvailable.code, 0)
    parts = c.wait_topic("auto1", 3)
    assert sorted(set(leaders(parts).values())) == [1, 2]
    md = c.metadata(["bad/name"])
    assert md["topics"][0][1] == errors.InvalidTopic.code
    md = c.metadata(None)
    assert [t[0] for t in md["topics"]] == ["auto1"]


def test_auto_create_disabled(cluster):
    c = cluster(1, auto_create_topics_enable=False)
    md = c.metadata(["auto2"])
    assert md["topics"][0][1] == errors.UnknownTopicOrPartition.code
