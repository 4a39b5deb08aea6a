"""Consumer groups through the client library against real brokers (consumers in this process):
splitting partitions, commits and committed offsets, a member leaving moves its partitions at
once, listeners, pause/resume, offset lookups, fencing, static members and bad settings."""

import threading
import time

import pytest

from clients import CommitFailedError, Consumer, OffsetAndMetadata, TopicPartition
from tests.groups.helpers import GROUP_SETTINGS, Recorder, consume_until, produce_keys

pytestmark = pytest.mark.timeout(120)


def group_cluster(cluster, n=3, **extra):
    return cluster(n, overrides={**GROUP_SETTINGS, **extra})


def member(c, group="g", **kw):
    kw.setdefault("auto_offset_reset", "earliest")
    kw.setdefault("session_timeout_ms", 6000)
    kw.setdefault("heartbeat_interval_ms", 1000)
    kw.setdefault("fetch_max_wait_ms", 100)
    return Consumer(bootstrap_servers=c.bootstrap, group_id=group, **kw)


def test_two_members_split_the_partitions_and_read_everything_once(cluster):
    c = group_cluster(cluster)
    c.create_topic("t", partitions=6, replication_factor=3)
    sent = produce_keys(c.bootstrap, "t", 3000)
    a, b = member(c), member(c)
    ra, rb = Recorder("a"), Recorder("b")
    try:
        a.subscribe(["t"], listener=ra)
        b.subscribe(["t"], listener=rb)
        got = consume_until([a, b], lambda recs: len(recs) >= 3000, timeout_s=30)
        assert sorted(r.value for r in got) == sorted(sent)
        assert len(got) == 3000                           # nobody read a record twice
        assert len(a.assignment()) == 3 and len(b.assignment()) == 3
        assert not a.assignment() & b.assignment()
        Recorder.assert_never_shared([ra, rb])
    finally:
        a.close()
        b.close()


def test_commit_committed_and_restart_from_the_commit(cluster):
    c = group_cluster(cluster)
    c.create_topic("t", partitions=2, replication_factor=3)
    produce_keys(c.bootstrap, "t", 200)
    with member(c, enable_auto_commit=False) as a:
        a.subscribe(["t"])
        got = consume_until([a], lambda recs: len(recs) >= 50 and len(a.assignment()) == 2,
                            timeout_s=20)
        positions = {tp: a.position(tp) for tp in a.assignment()}   # (known for both)
        a.commit()
        assert {tp: a.committed(tp) for tp in positions} == positions
        tp0 = TopicPartition("t", 0)
        a.commit({tp0: OffsetAndMetadata(3, "note")})
        assert a.committed(tp0, metadata=True) == OffsetAndMetadata(3, "note", -1)
        a.commit({tp0: positions[tp0]})
        assert len(got) >= 50
    # a new member of the group starts where the commits left off
    with member(c) as b:
        b.subscribe(["t"])
        rest = consume_until([b], lambda recs: len(recs) >= 200 - sum(positions.values()),
                             timeout_s=20)
        firsts = {}
        for r in rest:
            firsts.setdefault(TopicPartition(r.topic, r.partition), r.offset)
        assert firsts == {tp: off for tp, off in positions.items()
                          if off < b.end_offsets([tp])[tp]}


def test_close_moves_partitions_at_once_and_auto_commits(cluster):
    c = group_cluster(cluster)
    c.create_topic("t", partitions=4, replication_factor=3)
    produce_keys(c.bootstrap, "t", 400)
    a, b = member(c), member(c)
    try:
        a.subscribe(["t"])
        b.subscribe(["t"])
        consume_until([a, b], lambda recs: len(recs) >= 400, timeout_s=30)
        positions = {tp: a.position(tp) for tp in a.assignment()}
        started = time.monotonic()
        a.close()                             # commits, then leaves at once
        deadline = started + 4                # well within the 6 s session timeout
        while len(b.assignment()) < 4:
            b.poll(100)
            assert time.monotonic() < deadline, "partitions did not move when a member left"
        for tp, off in positions.items():
            assert b.committed(tp) == off
    finally:
        a.close()
        b.close()


def test_more_members_than_partitions_idle_members_take_over(cluster):
    c = group_cluster(cluster)
    c.create_topic("t", partitions=2, replication_factor=3)
    ms = [member(c) for _ in range(4)]
    try:
        for m in ms:
            m.subscribe(["t"])
        deadline = time.monotonic() + 20
        while sorted(len(m.assignment()) for m in ms) != [0, 0, 1, 1]:
            for m in ms:
                m.poll(50)
            assert time.monotonic() < deadline
        busy = next(m for m in ms if m.assignment())
        busy.close()
        rest = [m for m in ms if m is not busy]
        while sorted(len(m.assignment()) for m in rest) != [0, 1, 1]:
            for m in rest:
                m.poll(50)
            assert time.monotonic() < deadline + 10
    finally:
        for m in ms:
            m.close()


def test_pause_resume_and_offset_lookups(cluster):
    c = group_cluster(cluster, 1, **{"offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=2)
    before = int(time.time() * 1000)
    produce_keys(c.bootstrap, "t", 100)
    with member(c) as a:
        a.subscribe(["t"])
        consume_until([a], lambda recs: len(a.assignment()) == 2, timeout_s=20)
        tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
        ends = a.end_offsets([tp0, tp1])
        assert sum(ends.values()) == 100
        assert a.beginning_offsets([tp0, tp1]) == {tp0: 0, tp1: 0}
        found = a.offsets_for_times({tp0: before, tp1: int(time.time() * 1000) + 10**6})
        assert found[tp0].offset == 0 and found[tp1] is None
        a.seek_to_beginning()
        a.pause(tp0)
        assert a.paused() == {tp0}
        got = consume_until([a], lambda recs: len(recs) >= ends[tp1], timeout_s=10)
        assert {r.partition for r in got} == {1}
        a.resume(tp0)
        got = consume_until([a], lambda recs: len(recs) >= ends[tp0], timeout_s=10)
        assert {r.partition for r in got} == {0}


def test_a_fenced_member_cannot_commit_and_is_told_its_partitions_are_lost(cluster):
    c = group_cluster(cluster, 1, **{"offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=2)
    produce_keys(c.bootstrap, "t", 10)
    rec = Recorder("a")
    a = member(c, enable_auto_commit=False, max_poll_interval_ms=1500)
    try:
        a.subscribe(["t"], listener=rec)
        consume_until([a], lambda recs: len(recs) >= 10, timeout_s=20)
        owned = set(a.assignment())
        time.sleep(2.5)                       # too slow between polls: it leaves the group
        with pytest.raises(CommitFailedError, match="not a member|no longer"):
            a.commit({tp: 1 for tp in owned})
        a.poll(100)                           # the next poll tells the listener, rejoins
        assert rec.lost and rec.lost[-1] == owned
        consume_until([a], lambda recs: a.assignment() == owned, timeout_s=20)
    finally:
        a.close()


def test_commit_of_a_partition_the_member_does_not_own_is_refused(cluster):
    c = group_cluster(cluster, 1, **{"offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=2)
    a, b = member(c, enable_auto_commit=False), member(c, enable_auto_commit=False)
    try:
        a.subscribe(["t"])
        b.subscribe(["t"])
        consume_until([a, b], lambda recs: len(a.assignment()) == len(b.assignment()) == 1,
                      timeout_s=20)
        theirs = next(iter(b.assignment()))
        with pytest.raises(CommitFailedError, match="not assigned"):
            a.commit({theirs: 0})
        assert b.committed(theirs) is None    # nothing changed
    finally:
        a.close()
        b.close()


def test_heartbeats_keep_a_slow_member_alive_between_polls(cluster):
    c = group_cluster(cluster, 1, **{"offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=2)
    rec = Recorder("a")
    with member(c) as a:
        a.subscribe(["t"], listener=rec)
        consume_until([a], lambda recs: len(a.assignment()) == 2, timeout_s=20)
        time.sleep(8)                         # longer than the 6 s session, no poll()
        a.poll(100)
        assert len(a.assignment()) == 2 and not rec.lost and len(rec.assigned) == 1


def test_static_member_restart_moves_nothing(cluster):
    c = group_cluster(cluster, 1, **{"offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=4)
    ra, rb = Recorder("a"), Recorder("b")
    a = member(c, group_instance_id="host-a")
    b = member(c)
    try:
        a.subscribe(["t"], listener=ra)
        b.subscribe(["t"], listener=rb)
        consume_until([a, b], lambda recs: len(a.assignment()) == len(b.assignment()) == 2,
                      timeout_s=20)
        mine, theirs = set(a.assignment()), set(b.assignment())
        # (b may have joined first and given up half of its partitions when a came: what
        # counts is that nothing moves from here on)
        assigned, revoked = len(rb.assigned), len(rb.revoked)
        a.close()                              # a static member leaves "for now"
        stop = threading.Event()
        t = threading.Thread(target=lambda: [b.poll(50) for _ in iter(stop.is_set, True)])
        t.start()
        a2 = member(c, group_instance_id="host-a")
        a2.subscribe(["t"])
        consume_until([a2], lambda recs: a2.assignment() == mine, timeout_s=10)
        stop.set()
        t.join()
        assert b.assignment() == theirs, (b.assignment(), theirs)
        assert (len(rb.assigned), len(rb.revoked)) == (assigned, revoked), (rb.assigned,
                                                                            rb.revoked)
        a2.close()
    finally:
        a.close()
        b.close()


def test_pattern_subscription_picks_up_new_topics(cluster):
    c = group_cluster(cluster, 1, **{"offsets.topic.num.partitions": "1"})
    c.create_topic("logs-a", partitions=1)
    with member(c, metadata_max_age_ms=500) as a:
        a.subscribe(pattern=r"logs-.*")
        consume_until([a], lambda recs: a.assignment() == {TopicPartition("logs-a", 0)},
                      timeout_s=20)
        c.create_topic("logs-b", partitions=1)
        c.create_topic("other", partitions=1)
        consume_until([a], lambda recs: len(a.assignment()) == 2, timeout_s=20)
        assert {tp.topic for tp in a.assignment()} == {"logs-a", "logs-b"}


def test_bad_group_settings_are_sentences(cluster):
    c = group_cluster(cluster, 1, **{"offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=1)
    with member(c, session_timeout_ms=500, heartbeat_interval_ms=100) as a:
        a.subscribe(["t"])
        with pytest.raises(Exception, match="session timeout 500 ms is outside") as e:
            consume_until([a], lambda recs: False, timeout_s=10)
        assert e.type.__name__ == "InvalidSessionTimeout"
    with member(c, group_remote_assignor="sticky") as a:
        a.subscribe(["t"])
        with pytest.raises(Exception, match="'sticky' is not one") as e:
            consume_until([a], lambda recs: False, timeout_s=10)
        assert e.type.__name__ == "UnsupportedAssignor"


def test_a_joining_member_takes_only_its_share_and_the_others_keep_reading(cluster):
    c = group_cluster(cluster)
    c.create_topic("t", partitions=12, replication_factor=3)
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            produce_keys(c.bootstrap, "t", 120, start=i)
            i += 120
    producer = threading.Thread(target=produce)
    producer.start()
    recs = {n: Recorder(n) for n in "abc"}
    ms = {n: member(c) for n in "abc"}
    seen: dict = {n: {} for n in "abc"}

    def poll(n):
        for tp, rs in ms[n].poll(20).items():
            offs = seen[n].setdefault(tp, [])
            for r in rs:
                assert not offs or r.offset == offs[-1] + 1, f"{n} jumped on {tp}"
                offs.append(r.offset)
    try:
        for n in "ab":
            ms[n].subscribe(["t"], listener=recs[n])
        deadline = time.monotonic() + 20
        while len(ms["a"].assignment()) != 6 or len(ms["b"].assignment()) != 6:
            poll("a")
            poll("b")
            assert time.monotonic() < deadline
        before = {n: set(ms[n].assignment()) for n in "ab"}
        revocations = {n: len(recs[n].revoked) for n in "ab"}
        ms["c"].subscribe(["t"], listener=recs["c"])
        while len(ms["c"].assignment()) < 4:
            for n in "abc":
                poll(n)
            assert time.monotonic() < deadline + 20
        for _ in range(20):
            for n in "abc":
                poll(n)
        moved = before["a"] - ms["a"].assignment() | before["b"] - ms["b"].assignment()
        assert moved == ms["c"].assignment()
        for n in "ab":
            revoked = set().union(set(), *recs[n].revoked[revocations[n]:])
            assert revoked == before[n] - ms[n].assignment()     # only what moved
            assert ms[n].assignment() <= before[n] and not recs[n].lost
        Recorder.assert_never_shared(recs.values())
    finally:
        stop.set()
        producer.join(30)
        for m in ms.values():
            m.close()
