"""The linearizability checker itself, on hand-made histories (no processes)."""

import pytest

from tests.coordinator.linearizability import Op, check

pytestmark = pytest.mark.timeout(30)
INIT = (b"0", 0)


def test_sequential_history_is_linearizable():
    h = [Op(1, "k", "write", b"a", 0, 1, 1), Op(1, "k", "read", None, 2, 3, (b"a", 1)),
         Op(1, "k", "cas", (1, b"b"), 4, 5, 2), Op(1, "k", "cas", (1, b"c"), 6, 7, "bad_version"),
         Op(1, "k", "read", None, 8, 9, (b"b", 2))]
    assert check(h, INIT)[0]


def test_stale_read_after_acknowledged_write_is_caught():
    h = [Op(1, "k", "write", b"a", 0, 1, 1), Op(2, "k", "read", None, 2, 3, (b"0", 0))]
    ok, why = check(h, INIT)
    assert not ok and "k" in why


def test_concurrent_operations_may_take_either_order():
    h = [Op(1, "k", "write", b"a", 0, 10, 1), Op(2, "k", "read", None, 1, 2, (b"a", 1)),
         Op(3, "k", "read", None, 3, 4, (b"a", 1))]
    assert check(h, INIT)[0]
    # ... but two reads that disagree about an order after both returned cannot be explained
    h2 = h + [Op(3, "k", "read", None, 11, 12, (b"0", 0))]
    assert not check(h2, INIT)[0]


def test_unknown_outcome_may_or_may_not_have_happened():
    lost = Op(1, "k", "write", b"a", 0, None, None)
    assert check([lost, Op(2, "k", "read", None, 5, 6, (b"a", 1))], INIT)[0]
    assert check([lost, Op(2, "k", "read", None, 5, 6, (b"0", 0))], INIT)[0]
    # but it cannot have happened before it was called
    assert not check([Op(2, "k", "read", None, 0, 1, (b"a", 1)),
                      Op(1, "k", "write", b"a", 2, None, None)], INIT)[0]


def test_lost_acknowledged_write_is_caught():
    h = [Op(1, "k", "write", b"a", 0, 1, 1), Op(1, "k", "write", b"b", 2, 3, 2),
         Op(2, "k", "read", None, 4, 5, (b"a", 1))]
    assert not check(h, INIT)[0]
