"""The replication state machine (zbroker/replication.py) driven by events, without processes:
truncation to the shared log (KIP-279, several rounds), the diverging epoch in Fetch (KIP-320),
fencing of replicas by broker epoch and of late fetches, acks=all waits, and impossible states."""

import pytest

from zbroker import errors
from zbroker.broker import metadata as md
from zbroker.replication import (Diverging, EpochQuery, FetchQuery, HighWatermarkMoved, Phase,
                                 ProduceDone, ReplicaCore, ReplicationBug, Role, Truncated)
from tests.sim.memlog import MemoryLog

pytestmark = pytest.mark.timeout(30)

EPOCHS = {1: 11, 2: 22, 3: 33}


def state(leader, epoch, isr=(1, 2, 3), version=0, replicas=(1, 2, 3)):
    return md.PartitionState("t", 0, tuple(replicas), leader, epoch, tuple(isr), 1, version)


def log_of(*runs) -> MemoryLog:
    """A log from (epoch, values) runs, one batch per run."""
    log = MemoryLog()
    for epoch, values in runs:
        log.append(tuple(values), epoch)
    return log


def leader_core(log: MemoryLog, epoch: int, me: int = 1, isr=(1, 2, 3)) -> ReplicaCore:
    core = ReplicaCore(me, log, "t-0")
    core.set_broker_epochs(EPOCHS)
    core.on_partition_state(state(me, epoch, isr), now_s=0.0)
    assert core.role is Role.LEADER
    return core


def follower_core(log: MemoryLog, leader: int, epoch: int, me: int = 2) -> ReplicaCore:
    core = ReplicaCore(me, log, "t-0")
    core.on_partition_state(state(leader, epoch), now_s=0.0)
    assert core.role is Role.FOLLOWER
    return core


def serve(leader: ReplicaCore, follower: ReplicaCore, rounds: int = 20) -> list:
    """Let ``follower`` talk to ``leader`` until it has nothing left to fetch; returns the
    follower's Truncated effects."""
    cuts = []
    for _ in range(rounds):
        q = follower.next_request()
        if isinstance(q, EpochQuery):
            got = leader.log.leader_epoch_cache.end_offset_for_epoch(q.epoch,
                                                                     leader.log.log_end_offset)
            effects = follower.on_epoch_end(*got)
        else:
            assert isinstance(q, FetchQuery)
            diverging, _ = leader.on_follower_fetch(follower.broker_id,
                                                    EPOCHS[follower.broker_id], q.fetch_offset,
                                                    q.last_fetched_epoch, now_s=1.0)
            blob = () if diverging else leader.log.read(q.fetch_offset, 100)
            effects = follower.on_fetch_data(leader.high_watermark, leader.log.log_start_offset,
                                             blob, diverging)
            if not blob and not diverging:
                cuts += [e for e in effects if isinstance(e, Truncated)]
                return cuts
        cuts += [e for e in effects if isinstance(e, Truncated)]
    raise AssertionError("the follower never caught up")


def test_a_follower_that_never_had_the_leaders_epoch_asks_again_down_to_the_shared_prefix():
    # offsets 0-4 epoch 0 everywhere. The follower then holds 5-9 of epoch 0 (written by an
    # epoch-0 leader, never committed) and 10-14 of epoch 2; the leader holds 5-7 of epoch 1
    # and 8-12 of epoch 3. Asked where epoch 2 ends, the leader says epoch 1 ends at 8: the
    # follower has no epoch 1, so nothing after its own epoch 0 can be shared with the leader.
    # (The rule before KIP-279 cut at min(8, ...) = 8 and kept 5-7 of epoch 0, which differ
    # from the leader's 5-7 of epoch 1.)
    leader_log = log_of((0, "abcde"), (1, "FGH"), (3, "IJKLM"))
    follower_log = log_of((0, "abcde"), (0, "vwxyz"), (2, "PQRST"))
    leader = leader_core(leader_log, 4)
    follower = follower_core(follower_log, leader=1, epoch=4)
    assert follower.next_request() == EpochQuery(4, 2)
    assert follower.on_epoch_end(1, 8) == [Truncated(15, 10, "epoch end")]
    assert follower.phase.value == "truncating"         # ask again, about epoch 0 now
    assert follower.next_request() == EpochQuery(4, 0)
    assert follower.on_epoch_end(0, 5) == [Truncated(10, 5, "epoch end")]
    assert follower.phase.value == "fetching"
    serve(leader, follower)
    assert follower_log.records() == leader_log.records()
    assert follower_log.leader_epoch_cache.entries() == [(0, 0), (1, 5), (3, 8)]


def test_a_diverging_epoch_in_the_fetch_answer_truncates_without_an_epoch_query():
    # The follower is already fetching (say it followed this leader before a pause) with a
    # log that diverged: its Fetch names epoch 2 as its last, the leader answers with where
    # its own largest epoch <= 2 ends instead of records.
    leader_log = log_of((0, "abc"), (1, "DEF"), (3, "GH"))
    follower_log = log_of((0, "abc"), (2, "xyzw"))
    leader = leader_core(leader_log, 4)
    follower = follower_core(follower_log, leader=1, epoch=4)
    follower._move(Role.FOLLOWER, Phase.FETCHING)       # as if its epoch query had passed
    q = follower.next_request()
    assert q == FetchQuery(fetch_offset=7, current_leader_epoch=4, last_fetched_epoch=2)
    assert leader.on_follower_fetch(2, 22, 7, 2, now_s=1.0) == (Diverging(1, 6), [])
    # the leader counted nothing for this fetch: the follower's log end is not 7
    assert leader.followers[2].log_end_offset == -1
    cuts = serve(leader, follower)
    assert cuts == [Truncated(7, 3, "diverging epoch")]
    assert follower_log.records() == leader_log.records()


def test_an_epoch_that_starts_at_the_log_end_is_forgotten_when_following():
    # It led in epoch 2 without writing anything; now it follows in epoch 3 a leader that never
    # had epoch 2. Keeping the empty epoch would refuse the leader's epoch-1 batches.
    log = log_of((1, "abc"))
    log.leader_epoch_cache.assign(2, 3)
    follower = follower_core(log, leader=1, epoch=3)
    assert log.leader_epoch_cache.entries() == [(1, 0)]
    assert follower.next_request() == EpochQuery(3, 1)


def test_replica_fetches_are_fenced_by_broker_epoch_and_order():
    log = log_of((0, "abc"))
    leader = leader_core(log, 1)
    leader.followers[3].log_end_offset = 3
    # an impostor (or an earlier life of broker 2) cannot move the HW or the ISR
    with pytest.raises(errors.StaleBrokerEpoch):
        leader.on_follower_fetch(2, 21, 3, 0, now_s=1.0)
    with pytest.raises(errors.NotLeaderOrFollower):
        leader.on_follower_fetch(7, 77, 3, 0, now_s=1.0)
    assert leader.high_watermark == 0 and leader.followers[2].log_end_offset == -1
    # the real broker 2: the HW moves
    assert leader.on_follower_fetch(2, 22, 3, 0, now_s=1.0, fetch_id=5) == \
        (None, [HighWatermarkMoved(3)])
    # a fetch sent before that one (queued on a connection it gave up) arrives late: refused
    with pytest.raises(errors.InvalidRequest):
        leader.on_follower_fetch(2, 22, 1, 0, now_s=1.1, fetch_id=4)
    assert leader.followers[2].log_end_offset == 3
    # a parked fetch read again counts once more; a new life of broker 2 starts its ids again
    leader.on_follower_fetch(2, 22, 3, 0, now_s=1.2, fetch_id=5)
    leader.set_broker_epochs({**EPOCHS, 2: 23})
    leader.on_follower_fetch(2, 23, 3, 0, now_s=1.3, fetch_id=1)


def test_acks_all_waits_are_answered_by_the_high_watermark_or_fail_with_the_leadership():
    log = log_of((0, "ab"))
    leader = leader_core(log, 1, isr=(1, 2))
    leader.min_insync_replicas = 2
    leader.check_produce(-1)
    log.append(("c",), 1)
    assert leader.on_leader_append() == []
    assert leader.wait_for_high_watermark("p1", 3) == []
    assert leader.on_follower_fetch(2, 22, 2, 0, now_s=1.0)[1] == [HighWatermarkMoved(2)]
    assert leader.on_follower_fetch(2, 22, 3, 1, now_s=1.1)[1] == \
        [HighWatermarkMoved(3), ProduceDone("p1", None)]
    # the ISR shrinks below min.insync.replicas: new acks=all produces are refused, and one
    # already waiting is answered NOT_ENOUGH_REPLICAS_AFTER_APPEND once the HW passes it
    log.append(("d",), 1)
    leader.wait_for_high_watermark("p2", 4)
    moved, done = leader.on_partition_state(state(1, 1, isr=(1,), version=1), now_s=2.0)
    assert moved == HighWatermarkMoved(4)
    assert done.token == "p2" and isinstance(done.error, errors.NotEnoughReplicasAfterAppend)
    with pytest.raises(errors.NotEnoughReplicas):
        leader.check_produce(-1)
    # losing the leadership fails what still waits
    log.append(("e",), 1)
    leader.on_partition_state(state(1, 1, isr=(1, 2), version=2), now_s=2.1)
    leader.wait_for_high_watermark("p3", 5)
    [done] = leader.on_partition_state(state(2, 2, isr=(2,), version=3), now_s=3.0)
    assert done.token == "p3" and isinstance(done.error, errors.NotLeaderOrFollower)
    assert leader.role is Role.FOLLOWER


def test_two_leaders_in_one_epoch_stop_loudly():
    core = leader_core(log_of((0, "a")), 1)
    with pytest.raises(ReplicationBug):
        core.on_partition_state(state(2, 1), now_s=1.0)
    core = follower_core(log_of((0, "a")), leader=1, epoch=1)
    with pytest.raises(ReplicationBug):
        core.on_partition_state(state(3, 1), now_s=1.0)
    # an older image than one applied changes nothing
    assert core.on_partition_state(state(3, 0), now_s=1.0) == [] and core.leader_id == 1


def test_a_follower_behind_the_leaders_log_start_starts_over_there():
    leader_log = log_of((0, "abc"), (0, "def"))
    leader_log.delete_records_before(3)
    follower_log = log_of((0, "ab"))
    leader = leader_core(leader_log, 1)
    follower = follower_core(follower_log, leader=1, epoch=1)
    follower.on_epoch_end(0, 6)
    with pytest.raises(errors.OffsetOutOfRange):
        leader.on_follower_fetch(2, 22, 2, 0, now_s=1.0)
    assert follower.on_out_of_range(3, 6) == [Truncated(2, 3, "the leader's log starts later"),
                                              HighWatermarkMoved(3)]
    serve(leader, follower)
    assert follower_log.log_start_offset == 3 and follower_log.records() == leader_log.records()


def test_a_leadership_written_before_this_life_registered_is_not_this_lifes():
    # The broker registered at zxid 500 (its broker epoch). The image still shows it leader by
    # a state written at zxid 400, in its earlier life: it must not serve that leadership (a
    # power loss may have shortened its log), until the controller's new state comes.
    core = ReplicaCore(1, log_of((0, "ab")), "t-0")
    core.on_partition_state(state(1, 3)._replace(zxid=400), now_s=0.0)
    assert core.role is Role.LEADER and not core.leads_in_this_life(500)
    core.on_partition_state(state(2, 4, version=1)._replace(zxid=510), now_s=1.0)
    assert core.role is Role.FOLLOWER and not core.leads_in_this_life(500)
    core.on_partition_state(state(1, 5, version=2)._replace(zxid=520), now_s=2.0)
    assert core.leads_in_this_life(500)
    # an ISR change in the same epoch keeps it this life's
    core.on_partition_state(state(1, 5, isr=(1, 2), version=3)._replace(zxid=530), now_s=3.0)
    assert core.leads_in_this_life(500) and core.state_zxid == 530
    # the simulator's states carry no zxid: they count as this life's
    other = ReplicaCore(1, log_of((0, "a")), "t-0")
    other.on_partition_state(state(1, 1), now_s=0.0)
    assert other.leads_in_this_life(10 ** 9)


class Session:
    """What the core reads of a fetch session (zbroker/broker/fetch_sessions.LeaderSession)."""

    def __init__(self, last_fetch_s):
        self.last_fetch_s, self.closed = last_fetch_s, False


def test_a_caught_up_follower_in_a_live_session_stays_in_sync_without_naming_the_partition():
    leader = leader_core(log_of((1, "abc")), 1)
    sessions = {r: Session(1.0) for r in (2, 3)}
    for r in (2, 3):
        leader.on_follower_fetch(r, EPOCHS[r], 3, 1, now_s=1.0, session=sessions[r])
    assert leader.high_watermark == 3
    # an idle minute: the sessions keep fetching (without naming the partition), follower 3
    # left its session for this partition (truncating, or moved)
    sessions[2].last_fetch_s = sessions[3].last_fetch_s = 60.0
    leader.follower_left_session(3)
    [w] = leader.tick(now_s=61.0, lag_max_s=30.0)
    assert w.isr == (1, 2) and w.replicas == (3,)
    leader.on_isr_write_failed(w.isr, w.leader_epoch)
    # follower 2's session closed (its broker registered again): no longer caught up either
    sessions[2].closed = True
    [w] = leader.tick(now_s=61.0, lag_max_s=30.0)
    assert w.isr == (1,)
    # a follower behind the log end is not kept by its session's fetches
    leader = leader_core(log_of((1, "abc")), 1, isr=(1, 2))
    s = Session(1.0)
    leader.on_follower_fetch(2, EPOCHS[2], 2, 1, now_s=1.0, session=s)
    s.last_fetch_s = 60.0
    assert leader.tick(now_s=61.0, lag_max_s=30.0)[0].isr == (1,)


def test_a_follower_that_caught_up_during_another_isr_change_joins_when_it_is_done():
    leader = leader_core(log_of((1, "abc")), 1, isr=(1,))
    s2, s3 = Session(1.0), Session(1.0)
    _, [w2] = leader.on_follower_fetch(2, EPOCHS[2], 3, 1, now_s=1.0, session=s2)
    assert w2.isr == (1, 2)
    _, effects = leader.on_follower_fetch(3, EPOCHS[3], 3, 1, now_s=1.0, session=s3)
    assert effects == [], "a second ISR change while one is pending"
    # follower 3 does not name the partition again (nothing changes for it); once follower 2's
    # change is written, 3 is taken in all the same
    effects = leader.on_isr_written(w2.isr, 1, w2.leader_epoch, 1.0)
    [w3] = [e for e in effects if hasattr(e, "isr")]
    assert w3.isr == (1, 2, 3) and w3.replicas == (3,)
    # but not a follower from an earlier life of its broker, nor one shutting down
    leader = leader_core(log_of((1, "abc")), 1, isr=(1,))
    _, [w2] = leader.on_follower_fetch(2, EPOCHS[2], 3, 1, now_s=1.0, session=Session(1.0))
    leader.on_follower_fetch(3, EPOCHS[3], 3, 1, now_s=1.0, session=Session(1.0))
    leader.set_broker_epochs({**EPOCHS, 3: 34})
    assert [e for e in leader.on_isr_written(w2.isr, 1, w2.leader_epoch, 1.0)
            if hasattr(e, "isr")] == []
    leader = leader_core(log_of((1, "abc")), 1, isr=(1,))
    _, [w2] = leader.on_follower_fetch(2, EPOCHS[2], 3, 1, now_s=1.0, session=Session(1.0))
    leader.on_follower_fetch(3, EPOCHS[3], 3, 1, now_s=1.0, session=Session(1.0))
    leader.set_broker_epochs(EPOCHS, frozenset({3}))
    assert [e for e in leader.on_isr_written(w2.isr, 1, w2.leader_epoch, 1.0)
            if hasattr(e, "isr")] == []


def test_a_follower_that_stopped_fetching_is_not_taken_back_in_after_leaving():
    # (the broker loop once took a SIGSTOPped follower out and straight back in, over and over)
    leader = leader_core(log_of((1, "abc")), 1, isr=(1, 2))
    s = Session(1.0)
    leader.on_follower_fetch(2, EPOCHS[2], 3, 1, now_s=1.0, session=s)
    [w] = leader.tick(now_s=40.0, lag_max_s=30.0)      # its session stopped fetching at 1.0
    assert w.isr == (1,)
    effects = leader.on_isr_written(w.isr, 1, w.leader_epoch, 40.0)
    assert [e for e in effects if hasattr(e, "isr")] == []
    _, [back] = leader.on_follower_fetch(2, EPOCHS[2], 3, 1, now_s=41.0, session=s)
    assert back.isr == (1, 2)                           # it fetches again: it is caught up


def test_a_caught_up_follower_whose_joining_write_failed_is_taken_in_by_tick():
    # its session fetches on without naming the partition (nothing changed for it), so no fetch
    # retries the write: the periodic tick must
    leader = leader_core(log_of((1, "abc")), 1, isr=(1,))
    s = Session(1.0)
    _, [w] = leader.on_follower_fetch(3, EPOCHS[3], 3, 1, now_s=1.0, session=s)
    leader.on_isr_write_failed(w.isr, w.leader_epoch)   # connection loss, BadVersion, ...
    s.last_fetch_s = 2.0
    [again] = leader.tick(now_s=2.0, lag_max_s=30.0)
    assert again.isr == (1, 3) and again.reason == "caught up"
    assert leader.tick(now_s=2.5, lag_max_s=30.0) == []        # one change at a time
    leader.on_isr_write_failed(again.isr, again.leader_epoch)
    assert leader.tick(now_s=40.0, lag_max_s=30.0) == [], "a follower that stopped fetching"
