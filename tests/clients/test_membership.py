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
