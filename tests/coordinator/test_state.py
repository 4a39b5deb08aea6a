"""The coordinator's state machine, driven by transactions: no processes, no clocks."""

import pytest

from coordinator.state import CoordinatorState
from zbroker import errors


class Driver:
    def __init__(self):
        self.st = CoordinatorState()

    def __call__(self, *body, time_ms=1000):
        return self.st.apply([self.st.zxid + 1, time_ms, *body])


@pytest.fixture
def d():
    return Driver()


def test_create_get_set_delete_versions(d):
    assert d("create", 0, "/a", b"1", False, False)[0] == "/a"
    node = d.st.get("/a")
    assert (node.value, node.version, node.czxid) == (b"1", 0, 1)
    stat, changes = d("set", "/a", b"2", 0)
    assert stat[0] == 1 and changes[0].type == "changed"
    with pytest.raises(errors.BadVersion):
        d("set", "/a", b"3", 0)
    assert d.st.get("/a").value == b"2" and d.st.zxid == 2
    with pytest.raises(errors.BadVersion):
        d("delete", "/a", 0)
    d("delete", "/a", 1)
    with pytest.raises(errors.NoNode):
        d.st.get("/a")


def test_parents_children_and_sequential(d):
    with pytest.raises(errors.NoNode):
        d("create", 0, "/a/b", b"", False, False)
    d("create", 0, "/a", b"", False, False)
    names = [d("create", 0, "/a/q-", b"", False, True)[0] for _ in range(3)]
    assert names == ["/a/q-0000000000", "/a/q-0000000001", "/a/q-0000000002"]
    assert d.st.children("/a") == ["q-0000000000", "q-0000000001", "q-0000000002"]
    with pytest.raises(errors.NotEmpty):
        d("delete", "/a", -1)
    with pytest.raises(errors.NodeExists):
        d("create", 0, "/a", b"", False, False)


def test_ephemerals_belong_to_sessions_and_go_with_them(d):
    with pytest.raises(errors.SessionExpired):
        d("create", 99, "/e", b"", True, False)
    sid, _ = d("session", 5000, b"secret")
    d("create", sid, "/e", b"x", True, False)
    with pytest.raises(errors.NoChildrenForEphemerals):
        d("create", sid, "/e/child", b"", False, False)
    _, changes = d("close", sid)
    assert [(c.type, c.path) for c in changes] == [("deleted", "/e")]
    assert "/e" not in d.st.nodes and sid not in d.st.sessions


def test_multi_is_all_or_nothing(d):
    d("create", 0, "/x", b"", False, False)
    before = d.st.zxid
    with pytest.raises(errors.BadVersion) as e:
        d("multi", 0, [["create", "/x/a", b"1", False, False], ["set", "/x", b"v", 0],
                       ["delete", "/x/a", -1], ["check", "/x", 0]])
    assert e.value.index == 3
    assert d.st.zxid == before and d.st.children("/x") == [] and d.st.get("/x").version == 0
    results, changes = d("multi", 0, [["create", "/x/a", b"1", False, False],
                                       ["set", "/x", b"v", 0], ["check", "/x", 1]])
    assert results[0] == "/x/a" and len(changes) == 2


def test_fence_refuses_old_epochs(d):
    d("create", 0, "/controller_epoch", b"0", False, False)
    d("set", "/controller_epoch", b"1", 0)
    d("multi", 0, [["fence", "/controller_epoch", 1], ["create", "/w", b"", False, False]])
    d("set", "/controller_epoch", b"2", 1)
    with pytest.raises(errors.FencedEpoch):
        d("multi", 0, [["fence", "/controller_epoch", 1], ["create", "/w2", b"", False, False]])
    assert "/w2" not in d.st.nodes


def test_snapshot_round_trip(d):
    sid, _ = d("session", 3000, b"s")
    d("create", 0, "/a", b"1", False, False)
    d("create", 0, "/a/s-", b"", False, True)
    d("create", sid, "/a/e", b"e", True, False)
    copy = CoordinatorState.from_snapshot(d.st.to_snapshot())
    assert copy.to_snapshot() == d.st.to_snapshot()
    assert copy.sessions[sid].ephemerals == {"/a/e"}
    assert copy.children("/a") == ["e", "s-0000000000"]


def test_bad_paths_are_refused(d):
    for bad in ["a", "/a/", "//a", "/a/../b", "/" + "x" * 2000, "/a\x00b"]:
        with pytest.raises(errors.BadArguments):
            d("create", 0, bad, b"", False, False)
    assert d.st.zxid == 0
