"""The group coordinator in real broker processes, through raw requests: __consumer_offsets is
created on first use, joins and commits are written and replicated before they are answered,
held heartbeats answer as soon as the assignment moves, and a kill -9 of the coordinator's
broker loses neither a commit nor the members' assignments."""

import time

import pytest

from tests.broker.helpers import Conn
from tests.groups.helpers import GROUP_SETTINGS, call, find_coordinator
from tests.replication.helpers import FAST
from zbroker import errors, protocol

pytestmark = pytest.mark.timeout(120)


def join(cluster, group, member, topics, **extra):
    return call(cluster, group, "ConsumerGroupHeartbeat", group_id=group, member_id=member,
                member_epoch=0, subscribed_topic_names=topics, topic_partitions=[],
                session_timeout_ms=6000, heartbeat_interval_ms=1000, **extra)


def owned(header):
    return {(t, p) for t, ps in header["assignment"] for p in ps}


def test_offsets_topic_created_on_first_use_with_kafkas_defaults(cluster):
    c = cluster(3, overrides=GROUP_SETTINGS)
    node, _ = find_coordinator(c, "g1")
    parts = c.wait_topic(protocol.OFFSETS_TOPIC, 50)
    assert all(len(p[4]) == 3 for p in parts)          # replication factor 3
    md = c.metadata([protocol.OFFSETS_TOPIC])["topics"][0]
    assert md[2] is True                                # marked internal
    leader = {p[0]: p[2] for p in parts}[protocol.group_partition("g1", 50)]
    assert node == leader
    # Clients may not write to it, delete it or grow it.
    conn = Conn(c.brokers[0].port)
    try:
        from tests.broker.helpers import batch
        r = conn.produce(protocol.OFFSETS_TOPIC, 0, [batch([b"x"])])
        assert r[2] == errors.InvalidTopic.code
    finally:
        conn.close()


def test_join_commit_fetch_and_coordinator_kill9(cluster):
    c = cluster(3, overrides={**GROUP_SETTINGS, **FAST, "offsets.topic.num.partitions": "3"})
    c.create_topic("t", partitions=4, replication_factor=3)
    a = join(c, "g", "member-a", ["t"])
    assert a["err"] == 0 and a["member_epoch"] == 1
    assert owned(a) == {("t", p) for p in range(4)}
    r = call(c, "g", "OffsetCommit", group_id="g", member_id="member-a",
             member_epoch=a["member_epoch"],
             parts=[["t", 0, 0, -1, "meta"], ["t", 1, 0, -1, None], ["t", 7, 1, -1, None]])
    assert [e[2] for e in r["parts"]] == [0, 0, errors.UnknownTopicOrPartition.code]
    f = call(c, "g", "OffsetFetch", group_id="g", parts=[["t", 0], ["t", 2]])
    got = [protocol.OffsetFetchEntry._make(e) for e in f["parts"]]
    assert [(e.offset, e.metadata) for e in got] == [(0, "meta"), (-1, None)]
    # kill -9 the coordinator's broker: another broker takes over the partition and has the
    # same group (same member, same epoch, same assignment) and the commit.
    node, _ = find_coordinator(c, "g")
    c.broker(node).kill9()
    c.wait_for(lambda: find_coordinator(c, "g")[0] != node, 20, "a new coordinator")
    hb = call(c, "g", "ConsumerGroupHeartbeat", group_id="g", member_id="member-a",
              member_epoch=a["member_epoch"], topic_partitions=a["assignment"])
    assert hb["err"] == 0, hb
    assert hb["member_epoch"] == a["member_epoch"] and owned(hb) == owned(a)
    f = call(c, "g", "OffsetFetch", group_id="g", parts=[["t", 0]])
    assert f["parts"][0][2:5] == [0, -1, "meta"]
    d = call(c, "g", "ConsumerGroupDescribe", group_ids=["g"])
    g = protocol.DescribedGroupEntry._make(d["groups"][0])
    assert g.err == 0 and g.state == "Stable" and len(g.members) == 1
    m = protocol.DescribedMemberEntry._make(g.members[0])
    assert m.member_id == "member-a" and m.client_host == "127.0.0.1"


def test_held_heartbeat_is_answered_when_partitions_move(cluster):
    c = cluster(1, overrides={**GROUP_SETTINGS, "offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=2)
    a = join(c, "g", "a", ["t"])
    _, port = find_coordinator(c, "g")
    conn = Conn(port)
    try:
        # a's heartbeat has nothing new: held (up to its 1 s interval)...
        req_id = conn.send("ConsumerGroupHeartbeat", group_id="g", member_id="a",
                           member_epoch=a["member_epoch"], topic_partitions=a["assignment"],
                           max_wait_ms=5000)
        with pytest.raises(TimeoutError):
            conn.recv(timeout_s=0.3)
        # ... until b joins: then a is told at once to give one partition up.
        started = time.monotonic()
        b = join(c, "g", "b", ["t"])
        assert b["err"] == 0 and owned(b) == set()       # a still holds both
        header, _ = conn.recv(timeout_s=2)
        assert header["id"] == req_id and time.monotonic() - started < 0.5
        assert len(owned(header)) == 1                    # keep one, revoke the other
        # a confirms it gave it up; b's held heartbeat gets it right away.
        b_id = conn.send("ConsumerGroupHeartbeat", group_id="g", member_id="b",
                         member_epoch=b["member_epoch"], topic_partitions=[], max_wait_ms=5000)
        with pytest.raises(TimeoutError):
            conn.recv(timeout_s=0.3)
        ack = call(c, "g", "ConsumerGroupHeartbeat", group_id="g", member_id="a",
                   member_epoch=header["member_epoch"], topic_partitions=header["assignment"])
        assert ack["err"] == 0
        got, _ = conn.recv(timeout_s=2)
        assert got["id"] == b_id and len(owned(got)) == 1
        assert not owned(got) & owned(ack)
    finally:
        conn.close()


def test_group_requests_refuse_bad_input_and_change_nothing(cluster):
    c = cluster(1, overrides={**GROUP_SETTINGS, "offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=1)
    a = join(c, "g", "a", ["t"])
    bad = [({"group_id": "", "member_id": "x", "member_epoch": 0},
            errors.InvalidGroupId),
           ({"group_id": "g", "member_id": "x" * 100, "member_epoch": 0,
             "subscribed_topic_names": ["t"]}, errors.InvalidRequest),
           ({"group_id": "g", "member_id": "a", "member_epoch": 99,
             "topic_partitions": []}, errors.FencedMemberEpoch),
           ({"group_id": "g", "member_id": "ghost", "member_epoch": 3,
             "topic_partitions": []}, errors.UnknownMemberId),
           ({"group_id": "g", "member_id": "a", "member_epoch": "one"}, errors.InvalidRequest)]
    for fields, err in bad:
        h = call(c, "g", "ConsumerGroupHeartbeat", **fields)
        assert h["err"] == err.code, (fields, h)
        assert h.get("msg")
    r = call(c, "g", "OffsetCommit", group_id="g", member_id="a",
             member_epoch=a["member_epoch"] + 1, parts=[["t", 0, 1, -1, None]])
    assert r["err"] == errors.FencedMemberEpoch.code
    r = call(c, "g", "OffsetCommit", group_id="g", member_id="a",
             member_epoch=a["member_epoch"], parts=[["t", 0, 10**6, -1, None]])
    assert r["parts"][0][2] == errors.OffsetOutOfRange.code     # beyond the log end
    f = call(c, "g", "OffsetFetch", group_id="g", parts=[["t", 0]])
    assert f["parts"][0][2] == -1                                # nothing was committed
    d = call(c, "g", "ConsumerGroupDescribe", group_ids=["g"])
    m = protocol.DescribedMemberEntry._make(protocol.DescribedGroupEntry._make(
        d["groups"][0]).members[0])
    assert m.member_epoch == a["member_epoch"]                   # nothing changed


def test_snapshots_let_the_log_start_later_and_a_new_coordinator_still_has_everything(cluster):
    c = cluster(3, overrides={**GROUP_SETTINGS, **FAST, "offsets.topic.num.partitions": "1",
                              "offsets.topic.snapshot.records": "50"})
    c.create_topic("t", partitions=2, replication_factor=3)
    c.create_topic("u", partitions=1, replication_factor=3)
    a = join(c, "g", "a", ["t"])
    for i in range(300):
        r = call(c, "g", "OffsetCommit", group_id="g", member_id="a",
                 member_epoch=a["member_epoch"], parts=[["t", 0, 0, -1, f"n{i}"]])
        assert r["err"] == 0 and r["parts"][0][2] == 0
    r = call(c, "other", "OffsetCommit", group_id="other", parts=[["u", 0, 0, -1, "kept"]])
    assert r["parts"][0][2] == 0

    def log_start():
        leader = c.metadata([protocol.OFFSETS_TOPIC])["topics"][0][3][0][2]
        conn = Conn(c.broker(leader).port)
        try:
            return conn.list_offset(protocol.OFFSETS_TOPIC, 0, protocol.EARLIEST_TIMESTAMP)[3]
        finally:
            conn.close()
    assert log_start() > 200                     # most of the history is gone
    node, _ = find_coordinator(c, "g")
    c.broker(node).kill9()
    c.wait_for(lambda: find_coordinator(c, "g")[0] != node, 20, "a new coordinator")
    assert log_start() > 200                     # the followers moved their log start too
    f = call(c, "g", "OffsetFetch", group_id="g", parts=[["t", 0]])
    assert f["parts"][0][4] == "n299"
    f = call(c, "other", "OffsetFetch", group_id="other", parts=[["u", 0]])
    assert f["parts"][0][4] == "kept"
    hb = call(c, "g", "ConsumerGroupHeartbeat", group_id="g", member_id="a",
              member_epoch=a["member_epoch"], topic_partitions=a["assignment"])
    assert hb["err"] == 0 and owned(hb) == owned(a)


def test_commits_beyond_the_log_end_are_refused_wherever_the_partition_is_led(cluster):
    c = cluster(3, overrides={**GROUP_SETTINGS, "offsets.topic.num.partitions": "1"})
    parts = c.create_topic("t", partitions=6, replication_factor=1)
    node, _ = find_coordinator(c, "tool")
    leaders = {p[0]: p[2] for p in parts}
    remote = [p for p, leader in leaders.items() if leader != node]
    local = [p for p, leader in leaders.items() if leader == node]
    assert remote and local
    from tests.broker.helpers import batch
    for p, leader in leaders.items():
        conn = Conn(c.broker(leader).port)
        try:
            assert conn.produce("t", p, [batch([b"a", b"b", b"c"])])[2] == 0
        finally:
            conn.close()
    for p in (remote[0], local[0]):
        r = call(c, "tool", "OffsetCommit", group_id="tool",
                 parts=[["t", p, 3, -1, None], ["t", p, 4, -1, None]])
        assert [e[2] for e in r["parts"]] == [0, errors.OffsetOutOfRange.code], (p, r)
        assert "beyond its end (3)" in r["parts"][1][3]
    f = call(c, "tool", "OffsetFetch", group_id="tool", parts=[["t", remote[0]]])
    assert f["parts"][0][2] == 3                     # the refused one changed nothing
    conn = Conn(c.broker(leaders[remote[0]]).port)
    try:
        conn.produce("t", remote[0], [batch([b"d"])])
    finally:
        conn.close()
    r = call(c, "tool", "OffsetCommit", group_id="tool", parts=[["t", remote[0], 4, -1, None]])
    assert r["parts"][0][2] == 0                     # asked the leader again: now it fits
