"""The replication state machines without processes: the controller's partition decisions and
a leader's ISR / high watermark bookkeeping."""

import pytest

from zbroker.broker import metadata as md
from zbroker.broker.controller import decide_partition
from zbroker.replication import FetchQuery, HighWatermarkMoved, ReplicaCore, Role
from zbroker.storage import PartitionLog
from tests.broker.helpers import batch

pytestmark = pytest.mark.timeout(30)


def test_failover_elects_from_the_isr_only():
    # leader 1 died: the next in-sync replica leads, the ISR loses 1, the epoch is bumped
    assert decide_partition((1, 2, 3), 1, (1, 2, 3), {2, 3}) == (2, [2, 3], True)
    # 2 is alive but out of sync: not elected; 3 is
    assert decide_partition((1, 2, 3), 1, (1, 3), {2, 3}) == (3, [3], True)
    # nobody in sync is alive: no leader, the ISR keeps its last members
    assert decide_partition((1, 2, 3), 1, (1,), {2, 3}) == (md.NO_LEADER, [1], True)
    assert decide_partition((1, 2, 3), md.NO_LEADER, (1,), {2, 3}) is None
    # ... unless the topic allows an unclean election
    assert decide_partition((1, 2, 3), 1, (1,), {2, 3}, unclean=True) == (2, [2], True)
    # the last in-sync replica returns: it leads again
    assert decide_partition((1, 2, 3), md.NO_LEADER, (1,), {1, 2, 3}) == (1, [1], True)


def test_dead_followers_leave_the_isr_without_a_new_epoch():
    assert decide_partition((1, 2, 3), 1, (1, 2, 3), {1, 3}) == (1, [1, 3], False)
    assert decide_partition((1, 2, 3), 1, (1, 2, 3), {1, 2, 3}) is None


def test_controlled_shutdown_moves_leadership_and_leaves_the_isr():
    assert decide_partition((1, 2, 3), 1, (1, 2, 3), {1, 2, 3}, {1}) == (2, [2, 3], True)
    assert decide_partition((2, 1, 3), 2, (1, 2, 3), {1, 2, 3}, {1}) == (2, [2, 3], False)
    # nobody else in sync: it stays leader
    assert decide_partition((1, 2), 1, (1,), {1, 2}, {1}) is None
    # not elected while shutting down
    assert decide_partition((1, 2), md.NO_LEADER, (1,), {1, 2}, {1}) is None


def test_preferred_leader_returns_when_in_sync():
    assert decide_partition((1, 2, 3), 2, (2, 3), {1, 2, 3}, preferred=True) is None
    assert decide_partition((1, 2, 3), 2, (1, 2, 3), {1, 2, 3}, preferred=True) == \
        (1, [1, 2, 3], True)
    assert decide_partition((1, 2, 3), 2, (1, 2, 3), {1, 2, 3}, {1}, preferred=True) == \
        (2, [2, 3], False)


def state(leader, epoch, isr, version, replicas=(1, 2, 3)):
    return md.PartitionState("t", 0, tuple(replicas), leader, epoch, tuple(isr), 1, version)


def test_leader_high_watermark_and_isr(tmp_path):
    plog = PartitionLog(str(tmp_path / "t-0"))
    core = ReplicaCore(1, plog, "t-0")
    core.set_broker_epochs({1: 10, 2: 20, 3: 30})
    assert core.on_partition_state(state(1, 3, (1, 2, 3), 7), now_s=100.0) == []
    assert core.role is Role.LEADER and plog.leader_epoch_cache.latest_epoch == 3
    plog.append(batch([b"a", b"b"]), 3)
    # followers have not fetched in this epoch: the HW waits for them
    assert core.on_leader_append() == [] and core.high_watermark == 0
    assert core.on_follower_fetch(2, 20, 2, 3, now_s=100.1) == (None, [])
    assert core.on_follower_fetch(3, 30, 1, 3, now_s=100.1) == (None, [HighWatermarkMoved(1)])
    # 3 does not catch up for longer than the lag limit: it is shrunk out
    core.on_follower_fetch(2, 20, 2, 3, now_s=101.0)
    [w] = core.tick(now_s=101.0, lag_max_s=0.5)
    assert (w.isr, w.version, w.leader_epoch, w.reason, w.replicas) == \
        ((1, 2), 7, 3, "lagging", (3,))
    assert core.maximal_isr() == (1, 2, 3)       # the HW still counts 3 until written
    assert core.tick(now_s=101.0, lag_max_s=0.5) == []       # one ISR change at a time
    assert core.on_isr_written((1, 2), 8, 3, 101.0) == [HighWatermarkMoved(2)]
    # 3 catches up: back in, but not while it shuts down
    assert core.on_follower_fetch(3, 30, 2, 3, now_s=102.0, shutting_down={3}) == (None, [])
    _, [w] = core.on_follower_fetch(3, 30, 2, 3, now_s=102.0)
    assert (w.isr, w.version, w.reason) == ((1, 2, 3), 8, "caught up")
    core.on_isr_write_failed((1, 2, 3), 3)      # the controller wrote first
    # a newer version of the state from the controller in the same epoch is adopted
    core.on_partition_state(state(1, 3, (1,), 9), now_s=103.0)
    assert core.isr == (1,)
    core.on_partition_state(state(1, 3, (1, 2), 8), now_s=103.0)   # older: ignored
    assert core.isr == (1,) and core.state_version == 9
    plog.close()


def test_follower_role_and_high_watermark_never_above_the_log(tmp_path):
    plog = PartitionLog(str(tmp_path / "t-0"))
    core = ReplicaCore(2, plog, "t-0")
    core.on_partition_state(state(1, 0, (1, 2), 0), now_s=0.0)
    assert core.role is Role.FOLLOWER and core.leader_id == 1
    assert core.next_request() == FetchQuery(0, 0, -1)      # nothing of ours to check
    assert core.on_fetch_data(high_watermark=5, leader_log_start=0, blob=b"") == []
    assert core.high_watermark == 0
    plog.close()


def test_a_broker_registered_after_the_state_was_written_counts_as_a_new_life():
    from zbroker.broker.controller import registered_after
    st = md.PartitionState("t", 0, (1, 2, 3), 1, 4, (1, 2, 3), 1, 9, zxid=1000)
    live = {1: (None, 1200), 2: (None, 900), 3: (None, 1001)}
    # the leader and a follower came back after the state was written; 2 is the same life
    assert registered_after(st, live) == {1, 3}
    # a leaderless partition: the last in-sync replica to return may lead again
    assert registered_after(st._replace(leader=md.NO_LEADER), live) == set()
    # a state whose write zxid is not known says nothing
    assert registered_after(st._replace(zxid=-1), live) == set()
    # with 1 and 3 counted gone, 2 leads in a new epoch and the ISR keeps only it
    assert decide_partition(st.replicas, st.leader, st.isr, {2}) == (2, [2], True)
