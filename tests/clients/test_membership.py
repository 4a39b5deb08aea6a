"""The consumer's group membership state machine (clients._group.Membership) driven by events,
without processes: joining, reconciling through the caller's thread, held heartbeats, fencing,
self-fencing after a silent session, polls that come too late, leaving, fatal errors."""

import pytest

from clients._group import Membership, State
from clients.structs import TopicPartition
from zbroker import errors

T0, T1, T2 = (TopicPartition("t", p) for p in range(3))


def answer(epoch, parts, interval_ms=1000, session_ms=6000):
    by = {}
    for tp in sorted(parts):
        by.setdefault(tp.topic, []).append(tp.partition)
    return {"member_epoch": epoch, "heartbeat_interval_ms": interval_ms,
            "session_timeout_ms": session_ms, "assignment": [[t, ps] for t, ps in by.items()]}


def same(task, revoke=(), assign=(), lost=False):
    return task is not None and (task.revoke, task.assign, task.lost) == \
        (frozenset(revoke), frozenset(assign), lost)


def done(m, owned, now):
    """The caller ran the membership's current task and holds ``owned``."""
    return m.task_done(frozenset(owned), now, m.incarnation)


def joined(parts=(T0, T1), now=0.0):
    """A member that joined, was given ``parts`` and took them."""
    m = Membership("g", member_id="m1", session_timeout_ms=6000, heartbeat_interval_ms=1000)
    m.subscribe(["t"], None, now)
    seq, fields, _ = m.heartbeat(now)
    assert fields["member_epoch"] == 0 and fields["topic_partitions"] == []
    task = m.on_answer(seq, answer(1, parts), None, now)
    assert same(task, assign=parts)
    assert m.state is State.RECONCILING
    done(m, parts, now)
    seq, fields, _ = m.heartbeat(now)          # forced: tells the coordinator at once
    assert sorted(map(tuple, fields["topic_partitions"])) == [("t", [tp.partition for tp in
                                                                     sorted(parts)])]
    assert m.on_answer(seq, answer(1, parts), None, now) is None
    assert m.state is State.STABLE
    return m


def test_join_reconcile_and_then_held_heartbeats():
    m = joined()
    seq, fields, timeout_ms = m.heartbeat(0.01)
    assert fields["max_wait_ms"] == 1000 and timeout_ms >= 1000 + 2000
    assert m.heartbeat(0.02) is None              # one held at a time
    assert m.on_answer(seq, answer(1, [T0, T1]), None, 1.0) is None
    assert m.heartbeat(1.0) is not None           # the next goes at once


def test_revocation_goes_through_the_caller_before_it_is_reported():
    m = joined()
    seq, _, _ = m.heartbeat(0.1)
    task = m.on_answer(seq, answer(1, [T0]), None, 0.2)
    assert same(task, revoke={T1})
    # while the caller has not run it, heartbeats still report both and are not held
    seq, fields, _ = m.heartbeat(1.3)
    assert fields["max_wait_ms"] == 0 and len(fields["topic_partitions"][0][1]) == 2
    assert m.on_answer(seq, answer(1, [T0]), None, 1.3) is None      # no second task
    done(m, {T0}, 1.4)
    seq, fields, _ = m.heartbeat(1.4)
    assert fields["topic_partitions"] == [["t", [0]]]
    assert same(m.on_answer(seq, answer(2, [T0, T2]), None, 1.5), assign={T2})


def test_only_the_latest_heartbeat_answer_counts():
    m = joined()
    old, _, _ = m.heartbeat(0.1)
    m.tasks_open = 1                        # as if a task had just run
    done(m, m.owned, 0.2)                   # the caller finished: an ack goes at once
    new, _, _ = m.heartbeat(0.2)
    assert m.on_answer(old, answer(1, [T0]), None, 0.3) is None   # stale: ignored
    assert m.assigned == {T0, T1}
    assert m.on_answer(new, answer(1, [T0, T1]), None, 0.4) is None


def test_fenced_member_gives_up_everything_then_rejoins_with_epoch_0():
    m = joined()
    seq, _, _ = m.heartbeat(0.1)
    task = m.on_answer(seq, None, errors.FencedMemberEpoch("fenced"), 0.2)
    assert same(task, revoke={T0, T1}, lost=True)
    assert m.state is State.FENCED and m.heartbeat(0.3) is None
    done(m, (), 0.4)
    assert m.state is State.JOINING
    seq, fields, _ = m.heartbeat(0.4)
    assert fields["member_epoch"] == 0 and fields["member_id"] == "m1"


def test_fenced_while_the_caller_runs_a_task():
    m = joined()
    seq, _, _ = m.heartbeat(0.1)
    m.on_answer(seq, answer(2, [T0, T1, T2]), None, 0.2)      # a task for T2 is out
    first_incarnation = m.incarnation
    seq, fields, _ = m.heartbeat(1.3)
    # what the task is about to take counts as held: nobody else may get it meanwhile
    assert fields["topic_partitions"] == [["t", [0, 1, 2]]]
    incarnation = m.incarnation
    lost = m.on_answer(seq, None, errors.UnknownMemberId("gone"), 1.4)
    assert same(lost, revoke={T0, T1, T2}, lost=True)         # at once, queued
    assert m.incarnation == incarnation + 1                   # older commits cannot land now
    # the assign task finishes (of the old incarnation: it no longer counts)
    assert m.task_done(frozenset({T0, T1, T2}), 1.5, first_incarnation) is None
    assert m.state is State.FENCED                            # the lost task is still to run
    done(m, (), 1.6)
    assert m.state is State.JOINING


def test_retriable_errors_back_off_and_fatal_ones_stop():
    m = joined()
    seq, _, _ = m.heartbeat(0.1)
    assert m.on_answer(seq, None, errors.NotCoordinator("moved"), 0.2) is None
    assert m.state is State.STABLE and m.heartbeat(0.21) is None
    assert m.heartbeat(0.4) is not None
    m2 = joined()
    seq, _, _ = m2.heartbeat(0.1)
    lost = m2.on_answer(seq, None, errors.FencedInstanceId("taken"), 0.2)
    assert lost.lost and m2.state is State.STALE              # drop everything, say so, stop
    assert m2.heartbeat(0.25) is None                         # not before the caller dropped
    done(m2, (), 0.3)
    seq, fields, _ = m2.heartbeat(0.3)
    assert fields["member_epoch"] == -1
    m2.on_answer(seq, {"member_epoch": -1}, None, 0.4)
    assert m2.state is State.FATAL and isinstance(m2.error, errors.FencedInstanceId)
    m3 = joined()
    seq, _, _ = m3.heartbeat(0.1)
    m3.on_answer(seq, None, errors.InvalidRequest("bad"), 0.2)
    assert m3.state is State.FATAL


def test_silence_for_a_session_means_the_partitions_are_lost():
    m = joined()
    assert m.lose_at == pytest.approx(5.9)      # a little before the coordinator's deadline
    assert m.check(5.8) is None
    task = m.check(5.95)
    assert task is not None and task.lost and task.revoke == {T0, T1}


def test_too_slow_between_polls_leaves_then_loses_then_rejoins():
    m = joined()
    task = m.poll_timed_out(10.0)
    assert task.lost and task.revoke == {T0, T1}          # dropped before the leave goes
    seq, fields, _ = m.heartbeat(10.0)
    assert fields["member_epoch"] == -1
    assert m.on_answer(seq, {"member_epoch": -1}, None, 10.1) is None
    assert m.state is State.STALE                         # until the caller ran the task
    done(m, (), 10.2)
    assert m.state is State.JOINING
    m2 = joined()                                         # no coordinator to tell: join anyway
    m2.poll_timed_out(10.0)
    leave_seq, _, _ = m2.heartbeat(10.0)
    done(m2, (), 10.5)
    assert m2.state is State.JOINING
    join_seq, fields, _ = m2.heartbeat(10.5)               # not held back by the leave
    assert fields["member_epoch"] == 0
    assert m2.on_answer(leave_seq, {"member_epoch": -1}, None, 10.6) is None
    assert m2.state is State.JOINING and m2.epoch == 0     # not taken for the join's answer


def test_static_member_leaves_for_now_with_epoch_minus_2():
    m = Membership("g", member_id="m1", instance_id="host-a")
    m.subscribe(["t"], None, 0)
    seq, _, _ = m.heartbeat(0)
    m.on_answer(seq, answer(3, []), None, 0)
    m.leave(0.1)
    seq, fields, _ = m.heartbeat(0.1)
    assert fields["member_epoch"] == -2 and fields["instance_id"] == "host-a"
    m.on_answer(seq, {"member_epoch": -2}, None, 0.2)
    assert m.state is State.UNSUBSCRIBED


def test_transitions_are_checked():
    m = Membership("g")
    with pytest.raises(AssertionError):
        m._to(State.STABLE)


def test_a_late_answer_to_an_earlier_leave_is_not_taken_for_the_current_one():
    m = joined()
    m.poll_timed_out(10.0)
    first_leave, _, _ = m.heartbeat(10.0)
    done(m, (), 10.5)                                   # rejoins while that leave is in flight
    join, _, _ = m.heartbeat(10.5)
    m.on_answer(join, answer(3, [T0]), None, 10.6)
    done(m, {T0}, 10.6)
    seq, _, _ = m.heartbeat(10.6)
    m.on_answer(seq, answer(3, [T0]), None, 10.7)
    m.poll_timed_out(11.0)                              # too slow again; its leave not sent yet
    m.on_answer(first_leave, {"member_epoch": -1}, None, 11.1)
    seq, fields, _ = m.heartbeat(11.1)                   # the new leave still goes
    assert fields["member_epoch"] == -1 and seq != first_leave


def test_closing_right_after_fenced_instance_id_still_tells_the_coordinator():
    m = joined()
    seq, _, _ = m.heartbeat(0.1)
    m.on_answer(seq, None, errors.FencedInstanceId("taken"), 0.2)
    done(m, (), 0.3)
    m.leave(0.3)                                        # close() before the leave went out
    seq, fields, _ = m.heartbeat(0.3)
    assert fields["member_epoch"] == -1


class FakeNet:
    """A NetworkClient stand-in that records requests; the test answers them."""

    class cluster:
        brokers = {1: None}

    def __init__(self):
        self.sent = []

    def ready(self, node):
        return True

    def metadata_nodes(self):
        return [1]

    def request_metadata(self, topics):
        pass

    def send(self, node, api, fields, handler=None, timeout_ms=None, blobs=None):
        self.sent.append((api, fields, handler))
        return len(self.sent)

    def last(self, api):
        return [x for x in self.sent if x[0] == api][-1]


def group_io():
    from clients._group import GroupIO
    net = FakeNet()
    m = Membership("g", member_id="m1")
    m.state, m.epoch, m._next_at = State.STABLE, 3, float("inf")
    io = GroupIO(net, m, lambda task: None)
    io.tick(0.0)
    net.last("FindCoordinator")[2]({"coordinators": [["g", 1, "h", 1, 0, None]]}, [], None)
    return net, io


def test_a_retried_commit_never_overtakes_a_newer_one_and_ends_as_it_ends(monkeypatch):
    import clients._group
    from clients.structs import OffsetAndMetadata
    monkeypatch.setattr(clients._group, "_monotonic", lambda: 0.0)     # retries due at 0.1
    net, io = group_io()
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    c1 = io.submit_commit({a: OffsetAndMetadata(50), b: OffsetAndMetadata(5)}, 60, True)
    io.tick(0.0)
    net.last("OffsetCommit")[2](None, [], errors.StaleMemberEpoch("retry"))
    c2 = io.submit_commit({a: OffsetAndMetadata(60)}, 60, True)
    io.tick(0.0)
    sent = net.last("OffsetCommit")
    assert sent[1]["parts"] == [["t", 0, 60, -1, None]]
    io.tick(1.0)                                        # c1's retry: only b, not a's old 50
    retry = net.last("OffsetCommit")
    assert retry[1]["parts"] == [["t", 1, 5, -1, None]]
    retry[2](None, [], errors.StaleMemberEpoch("retry again"))
    c3 = io.submit_commit({b: OffsetAndMetadata(7)}, 60, True)
    io.tick(1.0)
    net.last("OffsetCommit")[2]({"parts": [["t", 1, 0, None]]}, [], None)     # c3 ok
    sent[2]({"parts": [["t", 0, 1, "out of range"]]}, [], None)               # c2 fails
    io.tick(2.0)
    assert c3.exception() is None and c2.exception() is not None
    assert c1.done() and c1.exception() is not None     # one of its successors failed
    assert len([x for x in net.sent if x[0] == "OffsetCommit"]) == 4


def test_a_commit_from_an_earlier_membership_never_lands():
    from clients.errors import CommitFailedError
    from clients.structs import OffsetAndMetadata
    net, io = group_io()
    c = io.submit_commit({T0: OffsetAndMetadata(5)}, 60, True)
    io.membership.incarnation += 1                      # lost and joined again meanwhile
    io.tick(0.0)
    assert isinstance(c.exception(), CommitFailedError)
    assert not [x for x in net.sent if x[0] == "OffsetCommit"]
