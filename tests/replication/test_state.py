"""The replication state machines without processes: the controller's partition decisions and
a leader's ISR / high watermark bookkeeping."""

import pytest

from zbroker.broker import metadata as md
from zbroker.broker.controller import decide_partition
from zbroker.broker.replicas import Partition
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
    part = Partition("t", 0, "id", plog, broker_id=1)
    part.become_leader(state(1, 3, (1, 2, 3), 7), now_s=100.0)
    assert plog.leader_epoch_cache.latest_epoch == 3
    plog.append(batch([b"a", b"b"]), 3)
    # followers have not fetched in this epoch: the HW waits for them
    assert not part.maybe_advance_high_watermark() and part.high_watermark == 0
    part.update_follower(2, 2, now_s=100.1)
    assert not part.maybe_advance_high_watermark()
    part.update_follower(3, 1, now_s=100.1)
    assert part.maybe_advance_high_watermark() and part.high_watermark == 1
    # 3 does not catch up for longer than the lag limit: it is shrunk out
    part.update_follower(2, 2, now_s=101.0)
    assert part.isr_to_shrink(now_s=101.0, lag_max_s=0.5) == (1, 2)
    part.pending_isr = (1, 2)
    assert part.maximal_isr() == (1, 2, 3)       # the HW still counts 3 until written
    part.isr_written((1, 2), 8)
    assert part.maybe_advance_high_watermark() and part.high_watermark == 2
    # 3 catches up: back in
    part.update_follower(3, 2, now_s=102.0)
    assert part.isr_to_expand(3, frozenset()) == (1, 2, 3)
    assert part.isr_to_expand(3, frozenset({3})) is None     # not while it shuts down
    # a newer version of the state from the controller in the same epoch is adopted
    assert part.adopt_state(state(1, 3, (1,), 9))
    assert part.isr == (1,) and not part.adopt_state(state(1, 3, (1, 2), 8))
    plog.close()


def test_follower_role_and_high_watermark_never_above_the_log(tmp_path):
    plog = PartitionLog(str(tmp_path / "t-0"))
    part = Partition("t", 0, "id", plog, broker_id=2)
    part.become_follower(state(1, 0, (1, 2), 0))
    assert not part.is_leader and part.leader_id == 1
    assert not part.maybe_advance_high_watermark()
    plog.close()
