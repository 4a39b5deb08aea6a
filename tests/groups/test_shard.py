"""The group coordinator's state machine (zbroker.groups.shard) driven by events, without
processes: joins, heartbeats, revocation before reassignment, fencing, static members, session
and rebalance timeouts, commits and their checks, and replay giving the same state."""

import random

import pytest

from zbroker import errors
from zbroker.groups import records as rec
from zbroker.groups.model import GroupState, MemberState
from zbroker.groups.shard import GroupShard, ShardConfig

CONFIG = ShardConfig(session_timeout_ms=10000, min_session_timeout_ms=1000,
                     heartbeat_interval_ms=1000, min_heartbeat_interval_ms=100)


class Client:
    """A member as a client would behave: owns what it was given, gives up what it lost (at
    once, or when ``release`` is called), and reports what it owns in every heartbeat."""

    def __init__(self, shard, group, member_id, topics, instance_id=None, auto_release=True):
        self.shard, self.group, self.member_id = shard, group, member_id
        self.topics, self.instance_id = topics, instance_id
        self.epoch = 0
        self.owned = frozenset()
        self.to_release = frozenset()
        self.auto_release = auto_release
        self.log = []
        self.fenced = False
        self.last_ok = None

    def heartbeat(self, now=0.0, **extra):
        if self.last_ok is not None and now - self.last_ok > CONFIG.session_timeout_ms / 1000:
            # no answer for a whole session: it may have been removed, so it lets go first
            self.owned, self.epoch, self.last_ok = frozenset(), 0, None
            self.log.append(("lost", "session"))
        sent = now
        req = {"group_id": self.group, "member_id": self.member_id, "member_epoch": self.epoch,
               "instance_id": self.instance_id, "subscribed_topic_names": list(self.topics),
               "topic_partitions": rec.partitions_to_list(self.owned), **extra}
        try:
            result = self.shard.heartbeat(req, "127.0.0.1", now)
        except (errors.FencedMemberEpoch, errors.UnknownMemberId) as e:
            self.fenced = True
            self.owned = frozenset()
            self.epoch = 0
            self.log.append(("fenced", type(e).__name__))
            return None
        resp = result.response
        self.last_ok = sent
        self.epoch = resp["member_epoch"]
        if resp["assignment"] is not None:
            given = rec.partitions_from_list(resp["assignment"])
            lost = self.owned - given
            self.owned = (self.owned & given) | (given - self.owned)
            if lost:
                if self.auto_release:
                    self.owned -= lost
                else:
                    self.owned |= lost          # keeps them until release()
                    self.to_release |= lost
        return result

    def release(self):
        self.owned -= self.to_release
        self.to_release = frozenset()

    def leave(self, static=False):
        req = {"group_id": self.group, "member_id": self.member_id,
               "member_epoch": -2 if static else -1, "instance_id": self.instance_id}
        return self.shard.heartbeat(req, "127.0.0.1", 0.0)


def assert_disjoint(clients):
    seen = {}
    for c in clients:
        for tp in c.owned:
            assert tp not in seen, f"{tp} owned by {seen[tp]} and {c.member_id}"
            seen[tp] = c.member_id


def converge(clients, rounds=10, now=0.0):
    for _ in range(rounds):
        for c in clients:
            c.heartbeat(now)
            assert_disjoint(clients)


def group(shard, gid="g"):
    return shard.groups[gid]


def test_first_member_gets_everything_and_group_is_stable():
    shard = GroupShard(0, CONFIG, {"t": 4})
    a = Client(shard, "g", "a", ["t"])
    result = a.heartbeat()
    assert a.owned == {("t", p) for p in range(4)}
    assert a.epoch == 1
    types = [rec.decode(k, v).type for k, v in result.records]
    assert types[0] == rec.GROUP_METADATA and rec.CURRENT_ASSIGNMENT in types
    assert group(shard).state is GroupState.STABLE


def test_partition_moves_only_after_its_owner_revoked_it():
    shard = GroupShard(0, CONFIG, {"t": 4})
    a = Client(shard, "g", "a", ["t"], auto_release=False)
    a.heartbeat()
    b = Client(shard, "g", "b", ["t"])
    b.heartbeat()
    assert b.owned == frozenset()                   # a still holds everything
    assert group(shard).members["b"].state is MemberState.UNRELEASED_PARTITIONS
    a.heartbeat()
    assert len(a.to_release) == 2
    assert group(shard).members["a"].state is MemberState.UNREVOKED_PARTITIONS
    b.heartbeat()
    assert b.owned == frozenset()                   # not released yet
    assert_disjoint([a, b])
    a.release()
    a.heartbeat()                                   # reports the revocation
    assert group(shard).members["a"].state is MemberState.STABLE
    b.heartbeat()
    assert len(b.owned) == 2 and not (a.owned & b.owned)
    assert group(shard).state is GroupState.STABLE


def test_members_whose_partitions_do_not_move_keep_them_throughout():
    shard = GroupShard(0, CONFIG, {"t": 6})
    a, b = Client(shard, "g", "a", ["t"]), Client(shard, "g", "b", ["t"])
    converge([a, b])
    before = {"a": a.owned, "b": b.owned}
    c = Client(shard, "g", "c", ["t"])
    history = []
    for _ in range(5):
        for x in (a, b, c):
            x.heartbeat()
            history.append((a.owned, b.owned))
            assert_disjoint([a, b, c])
    assert len(c.owned) == 2
    for owned_a, owned_b in history:                # never lost anything it keeps in the end
        assert a.owned <= owned_a and b.owned <= owned_b
    assert a.owned <= before["a"] and b.owned <= before["b"]


def test_leave_frees_partitions_at_once():
    shard = GroupShard(0, CONFIG, {"t": 4})
    a, b = Client(shard, "g", "a", ["t"]), Client(shard, "g", "b", ["t"])
    converge([a, b])
    a.leave()
    b.heartbeat()
    assert b.owned == {("t", p) for p in range(4)}
    assert list(group(shard).members) == ["b"]


def test_session_expiry_removes_the_member_and_rebalances():
    shard = GroupShard(0, CONFIG, {"t": 4})
    a, b = Client(shard, "g", "a", ["t"]), Client(shard, "g", "b", ["t"])
    converge([a, b])
    b.heartbeat(now=5.0)
    assert shard.expire(9.0).records == []
    result = shard.expire(10.5)                     # a's session (10 s from t=0) ran out
    assert result.records
    assert list(group(shard).members) == ["b"]
    b.heartbeat(now=11)
    assert len(b.owned) == 4
    with pytest.raises(errors.UnknownMemberId):     # what a hears if it comes back
        shard.heartbeat({"group_id": "g", "member_id": "a", "member_epoch": a.epoch,
                         "topic_partitions": rec.partitions_to_list(a.owned)}, "h", 12)


def test_rebalance_timeout_fences_a_member_that_does_not_revoke():
    shard = GroupShard(0, CONFIG, {"t": 4})
    a = Client(shard, "g", "a", ["t"], auto_release=False)
    a.heartbeat(rebalance_timeout_ms=2000)
    b = Client(shard, "g", "b", ["t"])
    b.heartbeat()
    a.heartbeat(now=0.5)                            # told to revoke; never does
    assert shard.expire(2.0).records == []
    assert shard.expire(2.6).records
    assert "a" not in group(shard).members
    b.heartbeat(now=3)
    assert len(b.owned) == 4


def test_fenced_epochs_and_lost_responses():
    shard = GroupShard(0, CONFIG, {"t": 2})
    a = Client(shard, "g", "a", ["t"])
    a.heartbeat()
    with pytest.raises(errors.FencedMemberEpoch):
        shard.heartbeat({"group_id": "g", "member_id": "a", "member_epoch": 7,
                         "topic_partitions": []}, "h", 0)
    # the previous epoch is fine when the member holds a subset of its assignment (the answer
    # that moved it on was lost)
    b = Client(shard, "g", "b", ["t"])
    converge([a, b])
    converge([a, b, Client(shard, "g", "c", ["t"])])
    m = group(shard).members["b"]
    assert m.member_epoch > m.previous_epoch > 0
    ok = shard.heartbeat({"group_id": "g", "member_id": "b", "member_epoch": m.previous_epoch,
                          "topic_partitions": []}, "h", 0)
    assert ok.response["member_epoch"] == m.member_epoch
    with pytest.raises(errors.FencedMemberEpoch):
        shard.heartbeat({"group_id": "g", "member_id": "b",
                         "member_epoch": m.previous_epoch - 1, "topic_partitions": []}, "h", 0)


def test_static_member_restart_takes_its_partitions_back_without_a_rebalance():
    shard = GroupShard(0, CONFIG, {"t": 6})
    a = Client(shard, "g", "a1", ["t"], instance_id="host-a")
    b = Client(shard, "g", "b", ["t"])
    converge([a, b])
    epoch = group(shard).epoch
    owned = a.owned
    a.leave(static=True)
    assert group(shard).members["a1"].member_epoch == -2
    b.heartbeat()
    assert len(b.owned) == 3                        # nothing moved to b
    a2 = Client(shard, "g", "a2", ["t"], instance_id="host-a")   # the restarted process
    a2.heartbeat()
    assert a2.owned == owned
    assert group(shard).epoch == epoch              # no rebalance
    assert "a1" not in group(shard).members
    # the old member id is fenced for good
    with pytest.raises(errors.FencedInstanceId):
        shard.heartbeat({"group_id": "g", "member_id": "a1", "member_epoch": 3,
                         "instance_id": "host-a", "topic_partitions": []}, "h", 0)


def test_static_member_killed_and_restarted_gets_its_partitions_once_the_old_one_is_gone():
    shard = GroupShard(0, CONFIG, {"t": 4})
    a = Client(shard, "g", "a1", ["t"], instance_id="host-a")
    b = Client(shard, "g", "b", ["t"])
    converge([a, b])
    epoch, owned, theirs = group(shard).epoch, a.owned, b.owned
    a2 = Client(shard, "g", "a2", ["t"], instance_id="host-a")   # no leave: it was killed
    a2.heartbeat(now=1.0)
    assert a2.owned == frozenset()           # a1 may still be alive: it keeps them for now
    assert group(shard).members["a1"].replaced and group(shard).static == {"host-a": "a2"}
    b.heartbeat(now=1.0)
    assert b.owned == theirs and group(shard).epoch == epoch    # no rebalance
    with pytest.raises(errors.FencedInstanceId):                 # what a1 hears if alive
        shard.heartbeat({"group_id": "g", "member_id": "a1", "member_epoch": a.epoch,
                         "instance_id": "host-a",
                         "topic_partitions": rec.partitions_to_list(owned)}, "h", 1.5)
    shard.expire(10.5)                        # a1's session (from t=0) ran out
    assert "a1" not in group(shard).members and group(shard).epoch == epoch
    a2.heartbeat(now=11)
    assert a2.owned == owned and b.owned == theirs


def test_a_replaced_static_member_that_hears_of_it_lets_go_at_once():
    shard = GroupShard(0, CONFIG, {"t": 2})
    a = Client(shard, "g", "a1", ["t"], instance_id="host-a")
    a.heartbeat()
    a2 = Client(shard, "g", "a2", ["t"], instance_id="host-a")
    a2.heartbeat()
    assert a2.owned == frozenset()
    a.leave()                                 # after FENCED_INSTANCE_ID, the client leaves
    a2.heartbeat()
    assert a2.owned == {("t", 0), ("t", 1)}


def test_more_members_than_partitions_extra_members_idle_then_take_over():
    shard = GroupShard(0, CONFIG, {"t": 2})
    cs = [Client(shard, "g", f"m{i}", ["t"]) for i in range(4)]
    converge(cs)
    assert sorted(len(c.owned) for c in cs) == [0, 0, 1, 1]
    busy = next(c for c in cs if c.owned)
    busy.leave()
    rest = [c for c in cs if c is not busy]
    converge(rest)
    assert sorted(len(c.owned) for c in rest) == [0, 1, 1]


def test_new_partitions_and_topics_are_assigned():
    shard = GroupShard(0, CONFIG, {"t": 2})
    a, b = Client(shard, "g", "a", ["t", "u"]), Client(shard, "g", "b", ["t", "u"])
    converge([a, b])
    shard.set_topics({"t": 4, "u": 2})
    converge([a, b])
    assert a.owned | b.owned == {("t", p) for p in range(4)} | {("u", 0), ("u", 1)}


def test_join_checks():
    shard = GroupShard(0, CONFIG, {"t": 2})
    base = {"group_id": "g", "member_id": "a", "member_epoch": 0,
            "subscribed_topic_names": ["t"], "topic_partitions": []}
    for bad, err in [({"group_id": ""}, errors.InvalidGroupId),
                     ({"group_id": "x" * 300}, errors.InvalidGroupId),
                     ({"member_id": ""}, errors.InvalidRequest),
                     ({"member_epoch": -5}, errors.InvalidRequest),
                     ({"subscribed_topic_names": None}, errors.InvalidRequest),
                     ({"subscribed_topic_names": ["bad name"]}, errors.InvalidTopic),
                     ({"topic_partitions": [["t", [0]]]}, errors.InvalidRequest),
                     ({"topic_partitions": [["t", ["x"]]]}, errors.InvalidRequest),
                     ({"server_assignor": "sticky"}, errors.UnsupportedAssignor),
                     ({"session_timeout_ms": 10}, errors.InvalidSessionTimeout),
                     ({"session_timeout_ms": 6000, "heartbeat_interval_ms": 5000},
                      errors.InvalidRequest)]:
        with pytest.raises(err):
            shard.heartbeat({**base, **bad}, "h", 0)
    assert shard.groups == {}                       # nothing was created by refused joins
    with pytest.raises(errors.UnknownMemberId):
        shard.heartbeat({**base, "member_epoch": 3}, "h", 0)


def test_group_size_limit():
    shard = GroupShard(0, CONFIG._replace(max_group_size=2), {"t": 2})
    Client(shard, "g", "a", ["t"]).heartbeat()
    Client(shard, "g", "b", ["t"]).heartbeat()
    with pytest.raises(errors.GroupMaxSizeReached):
        Client(shard, "g", "c", ["t"]).heartbeat()


def test_commits_are_fenced_and_checked():
    shard = GroupShard(0, CONFIG, {"t": 2})
    a = Client(shard, "g", "a", ["t"])
    a.heartbeat()
    b = Client(shard, "g", "b", ["t"])
    converge([a, b])
    mine = sorted(a.owned)[0]
    theirs = sorted(b.owned)[0]
    commit = {"group_id": "g", "member_id": "a", "member_epoch": a.epoch,
              "parts": [[mine[0], mine[1], 5, -1, "m"], [theirs[0], theirs[1], 5, -1, None],
                        ["t", 9, 1, -1, None], ["t", mine[1], -1, -1, None],
                        ["t", mine[1], 100, -1, None], ["t", mine[1], 1, -1, "x" * 5000]]}
    result = shard.commit_offsets(commit, 1000, log_end=lambda t, p: 50)
    codes = [e[2] for e in result.response["parts"]]
    assert codes == [0, errors.UnassignedPartition.code, errors.UnknownTopicOrPartition.code,
                     errors.OffsetOutOfRange.code, errors.OffsetOutOfRange.code,
                     errors.OffsetMetadataTooLarge.code]
    assert len(result.records) == 1                 # only the good entry was written
    got = shard.fetch_offsets({"group_id": "g", "parts": [list(mine), list(theirs)]})
    assert [e[2] for e in got.response["parts"]] == [5, -1]
    for epoch, err in ((a.epoch + 1, errors.FencedMemberEpoch),
                       (a.epoch - 1, errors.StaleMemberEpoch)):
        with pytest.raises(err):
            shard.commit_offsets({**commit, "member_epoch": epoch}, 1000)
    with pytest.raises(errors.UnknownMemberId):
        shard.commit_offsets({**commit, "member_id": "nobody"}, 1000)
    with pytest.raises(errors.UnknownMemberId):     # a commit without a member: group busy
        shard.commit_offsets({"group_id": "g", "parts": [["t", 0, 1, -1, None]]}, 1000)
    with pytest.raises(errors.GroupIdNotFound):
        shard.commit_offsets({**commit, "group_id": "other"}, 1000)


def test_a_revoking_member_may_still_commit_what_it_gives_up():
    shard = GroupShard(0, CONFIG, {"t": 2})
    a = Client(shard, "g", "a", ["t"], auto_release=False)
    a.heartbeat()
    Client(shard, "g", "b", ["t"]).heartbeat()
    a.heartbeat()
    (tp,) = a.to_release
    result = shard.commit_offsets({"group_id": "g", "member_id": "a", "member_epoch": a.epoch,
                                   "parts": [[tp[0], tp[1], 3, -1, None]]}, 1000)
    assert result.response["parts"][0][2] == 0
    a.release()
    a.heartbeat()
    result = shard.commit_offsets({"group_id": "g", "member_id": "a", "member_epoch": a.epoch,
                                   "parts": [[tp[0], tp[1], 4, -1, None]]}, 1000)
    assert result.response["parts"][0][2] == errors.UnassignedPartition.code


def test_simple_commits_delete_and_offset_expiry():
    shard = GroupShard(0, CONFIG._replace(offsets_retention_ms=1000), {"t": 2})
    r = shard.commit_offsets({"group_id": "tool", "parts": [["t", 0, 7, -1, None],
                                                            ["t", 1, 3, -1, None]]}, 5000)
    assert [e[2] for e in r.response["parts"]] == [0, 0]
    assert shard.list_groups() == [["tool", "Empty", "consumer"]]
    r = shard.delete_offsets({"group_id": "tool", "parts": [["t", 1]]})
    assert r.response["parts"][0][2] == 0
    assert [e[2] for e in shard.fetch_offsets({"group_id": "tool"}).response["parts"]] == [7]
    assert shard.expire_offsets(5500).records == []
    assert shard.expire_offsets(6100).records
    assert "tool" not in shard.groups


def test_delete_groups_and_offsets_of_active_groups_are_refused():
    shard = GroupShard(0, CONFIG, {"t": 2})
    a = Client(shard, "g", "a", ["t"])
    a.heartbeat()
    r = shard.delete_groups(["g", "nope"])
    assert [e[1] for e in r.response["groups"]] == [errors.NonEmptyGroup.code,
                                                    errors.GroupIdNotFound.code]
    r = shard.delete_offsets({"group_id": "g", "parts": [["t", 0]]})
    assert r.response["parts"][0][2] == errors.GroupSubscribedToTopic.code
    a.leave()
    r = shard.delete_groups(["g"])
    assert r.response["groups"] == [["g", 0, None]]
    assert shard.groups == {}


def test_deleted_topics_lose_their_offsets():
    shard = GroupShard(0, CONFIG, {"t": 1, "u": 1})
    shard.commit_offsets({"group_id": "g", "parts": [["t", 0, 1, -1, None],
                                                     ["u", 0, 1, -1, None]]}, 0)
    shard.set_topics({"t": 1})
    assert list(shard.groups["g"].offsets) == [("t", 0)]


def replayed(shard):
    fresh = GroupShard(shard.partition, shard.config, shard.topics)
    for key, value in shard.log:
        fresh.replay(key, value)
    return fresh


def snapshot(shard):
    out = {}
    for gid, g in shard.groups.items():
        out[gid] = (g.epoch, g.assignment_epoch, g.subscription_metadata,
                    dict(g.members), dict(g.target), dict(g.owners), dict(g.static),
                    {tp: (o.offset, o.metadata) for tp, o in g.offsets.items()})
    return out


class LoggingShard(GroupShard):
    """Keeps every record it emitted, as the partition log would."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.log = []

    def _done(self, response):
        out = super()._done(response)
        self.log += out.records
        return out


@pytest.mark.parametrize("seed", range(30))
def test_random_churn_never_gives_a_partition_to_two_members_and_replays_exactly(seed):
    rnd = random.Random(seed)
    shard = LoggingShard(0, CONFIG, {"a": rnd.randint(1, 12), "b": rnd.randint(1, 12)})
    clients: dict[str, Client] = {}
    now = 0.0
    n = 0
    try:
        for _step in range(300):
            now += rnd.random() * 0.5
            roll = rnd.random()
            live = [c for c in clients.values() if not c.fenced]
            if roll < 0.08 or not live:
                n += 1
                topics = rnd.choice([["a"], ["a", "b"], ["b"]])
                static = f"i{rnd.randint(0, 3)}" if rnd.random() < 0.3 else None
                if static and any(c.instance_id == static for c in live):
                    static = None
                c = Client(shard, "g", f"m{n}", topics, instance_id=static,
                           auto_release=rnd.random() < 0.5)
                clients[c.member_id] = c
                c.heartbeat(now)
            elif roll < 0.12:
                c = rnd.choice(live)
                c.leave(static=c.instance_id is not None and rnd.random() < 0.5)
                del clients[c.member_id]
            elif roll < 0.15:
                c = rnd.choice(live)                 # crashes: its session will run out
                del clients[c.member_id]
                now += 11
                for other in clients.values():
                    if not other.fenced:
                        other.heartbeat(now - 0.5)
                shard.expire(now)
            elif roll < 0.17:
                t = rnd.choice("ab")
                shard.set_topics({**shard.topics, t: shard.topics[t] + rnd.randint(1, 2)})
            else:
                c = rnd.choice(live)
                if c.to_release and rnd.random() < 0.5:
                    c.release()
                c.heartbeat(now)
            assert_disjoint([c for c in clients.values() if not c.fenced])
            for g in shard.groups.values():          # the coordinator's own view agrees
                seen = set()
                for m in g.members.values():
                    assert not (m.owned & seen)
                    seen |= m.owned
        # Everyone still alive converges on a full, balanced-enough assignment.
        survivors = [c for c in clients.values() if not c.fenced]
        for c in survivors:
            c.release()
            c.auto_release = True
        converge(survivors, rounds=6, now=now)
        g = shard.groups.get("g")
        if survivors and g is not None:
            assert g.state is GroupState.STABLE or any(m.member_epoch < 0
                                                       for m in g.members.values())
        assert snapshot(replayed(shard)) == snapshot(shard)
        # A snapshot rebuilds the state from nothing, and changes nothing on top of it.
        fresh = GroupShard(shard.partition, shard.config, shard.topics)
        for key, value in shard.snapshot_records():
            fresh.replay(key, value)
        assert snapshot(fresh) == snapshot(shard)
        again = replayed(shard)
        for key, value in shard.snapshot_records():
            again.replay(key, value)
        assert snapshot(again) == snapshot(shard)
    except AssertionError:
        print(f"seed={seed}")
        raise


def test_offsets_of_a_group_expire_once_it_has_been_empty_for_the_retention():
    day = 24 * 3600 * 1000
    shard = GroupShard(0, CONFIG._replace(offsets_retention_ms=7 * day), {"t": 2})
    a = Client(shard, "g", "a", ["t"])
    a.heartbeat()
    commit = {"group_id": "g", "member_id": "a", "member_epoch": a.epoch}
    shard.commit_offsets({**commit, "parts": [["t", 0, 10, -1, None], ["t", 1, 5, -1, None]]}, 0)
    shard.commit_offsets({**commit, "parts": [["t", 0, 20, -1, None]]}, 8 * day)
    shard.heartbeat({"group_id": "g", "member_id": "a", "member_epoch": -1}, "h", 0.0,
                    now_ms=8 * day)               # the last member leaves on day 8
    assert shard.groups["g"].empty_since_ms == 8 * day
    assert shard.expire_offsets(8 * day + 60000).records == []      # t-1 (day 0) stays
    assert shard.expire_offsets(15 * day - 1).records == []
    assert len(shard.expire_offsets(15 * day + 1).records) > 2      # offsets, then the group
    assert "g" not in shard.groups
    # a member joining again clears it
    a2 = Client(shard, "h", "x", ["t"])
    a2.heartbeat()
    assert shard.groups["h"].empty_since_ms is None


def test_offsets_of_a_topic_deleted_unseen_go_at_the_second_retention_check():
    shard = GroupShard(0, CONFIG, {"t": 1, "u": 1})
    shard.commit_offsets({"group_id": "g", "parts": [["t", 0, 1, -1, None],
                                                     ["u", 0, 1, -1, None]]}, 0)
    reloaded = GroupShard(0, CONFIG, {"t": 1})       # u went while nobody coordinated g
    for key, value in shard.snapshot_records():
        reloaded.replay(key, value)
    reloaded.set_topics({"t": 1})
    assert ("u", 0) in reloaded.groups["g"].offsets       # not yet: maybe just not seen yet
    reloaded.expire_offsets(1000)
    assert ("u", 0) in reloaded.groups["g"].offsets
    reloaded.expire_offsets(2000)
    assert list(reloaded.groups["g"].offsets) == [("t", 0)]



def test_a_group_is_reconciling_while_a_replaced_member_still_holds_partitions():
    shard = GroupShard(0, CONFIG, {"t": 2})
    a = Client(shard, "g", "a1", ["t"], instance_id="host-a")
    a.heartbeat()
    a2 = Client(shard, "g", "a2", ["t"], instance_id="host-a")
    a2.heartbeat()
    assert group(shard).state is GroupState.RECONCILING
    described = shard.describe_group("g")
    assert {m[0]: m[10] for m in described[7]}["a1"] == "replaced"
    with pytest.raises(errors.FencedInstanceId):         # the old id cannot come back
        shard.heartbeat({"group_id": "g", "member_id": "a1", "member_epoch": 0,
                         "instance_id": "host-a", "subscribed_topic_names": ["t"],
                         "topic_partitions": []}, "h", 0.5)
    shard.expire(10.5)
    a2.heartbeat(now=11)
    assert group(shard).state is GroupState.STABLE and len(a2.owned) == 2
