"""The server-side assignors, without processes: balance, stickiness, subscriptions."""

import random

import pytest

from zbroker.groups.assignors import ASSIGNORS, MemberSpec, range_, uniform


def spec(mid, topics, current=(), instance_id=None):
    return MemberSpec(mid, instance_id, frozenset(topics), frozenset(current))


def all_assigned(result):
    seen = []
    for parts in result.values():
        seen += list(parts)
    return seen


def counts(result):
    return sorted(len(v) for v in result.values())


def test_uniform_balances_one_topic():
    members = [spec(f"m{i}", ["t"]) for i in range(4)]
    out = uniform(members, {"t": 10})
    assert sorted(all_assigned(out)) == [("t", p) for p in range(10)]
    assert counts(out) == [2, 2, 3, 3]


def test_uniform_more_members_than_partitions_leaves_some_idle():
    members = [spec(f"m{i}", ["t"]) for i in range(5)]
    out = uniform(members, {"t": 3})
    assert counts(out) == [0, 0, 1, 1, 1]
    assert len(set(all_assigned(out))) == 3


def test_uniform_new_member_moves_only_what_balance_needs():
    topics = {"a": 6, "b": 6}
    first = uniform([spec("m1", ["a", "b"]), spec("m2", ["a", "b"])], topics)
    members = [spec("m1", ["a", "b"], first["m1"]), spec("m2", ["a", "b"], first["m2"]),
               spec("m3", ["a", "b"])]
    second = uniform(members, topics)
    assert counts(second) == [4, 4, 4]
    moved = sum(len(first[m] - second[m]) for m in ("m1", "m2"))
    assert moved == 4                 # exactly what m3 needs, nothing shuffled between m1, m2
    assert second["m1"] <= first["m1"] and second["m2"] <= first["m2"]


def test_uniform_member_leaving_keeps_the_others_partitions():
    topics = {"t": 12}
    first = uniform([spec(f"m{i}", ["t"]) for i in range(4)], topics)
    rest = [spec(f"m{i}", ["t"], first[f"m{i}"]) for i in range(3)]
    second = uniform(rest, topics)
    for i in range(3):
        assert first[f"m{i}"] <= second[f"m{i}"]
    assert counts(second) == [4, 4, 4]


def test_uniform_heterogeneous_subscriptions():
    members = [spec("m1", ["a"]), spec("m2", ["a", "b"]), spec("m3", ["b"])]
    out = uniform(members, {"a": 4, "b": 4})
    assert sorted(all_assigned(out)) == sorted([("a", p) for p in range(4)] +
                                               [("b", p) for p in range(4)])
    for mid, topics in (("m1", {"a"}), ("m3", {"b"})):
        assert {t for t, _ in out[mid]} <= topics
    assert max(counts(out)) - min(counts(out)) <= 1


def test_uniform_drops_partitions_of_unsubscribed_or_missing_topics():
    members = [spec("m1", ["a"], [("a", 0), ("gone", 0), ("a", 7)])]
    out = uniform(members, {"a": 2})
    assert out["m1"] == {("a", 0), ("a", 1)}


@pytest.mark.parametrize("seed", range(20))
def test_uniform_random_churn_stays_valid_and_balanced(seed):
    rnd = random.Random(seed)
    topics = {"a": rnd.randint(1, 20), "b": rnd.randint(1, 20)}
    current = {}
    for step in range(30):
        ids = sorted(current)
        if ids and rnd.random() < 0.3:
            del current[rnd.choice(ids)]
        else:
            current[f"m{step}"] = frozenset()
        if rnd.random() < 0.2:
            topics[rnd.choice("ab")] += rnd.randint(1, 3)
        homogeneous = rnd.random() < 0.5
        members = [spec(mid, ["a", "b"] if homogeneous or i % 3 else ["a"], parts)
                   for i, (mid, parts) in enumerate(sorted(current.items()))]
        out = uniform(members, topics)
        got = all_assigned(out)
        assert len(got) == len(set(got))                    # nobody shares a partition
        wanted = {t for m in members for t in m.topics}
        assert set(got) == {(t, p) for t in wanted for p in range(topics[t])}
        if homogeneous and out:
            assert max(counts(out)) - min(counts(out)) <= 1
        for m in members:
            assert {t for t, _ in out[m.member_id]} <= m.topics
        current = dict(out)


def test_range_gives_consecutive_ranges_per_topic():
    members = [spec("b", ["t", "u"]), spec("a", ["t", "u"]), spec("c", ["t"])]
    out = range_(members, {"t": 7, "u": 4})
    assert out["a"] == {("t", 0), ("t", 1), ("t", 2), ("u", 0), ("u", 1)}
    assert out["b"] == {("t", 3), ("t", 4), ("u", 2), ("u", 3)}
    assert out["c"] == {("t", 5), ("t", 6)}


def test_range_orders_static_members_by_instance_id():
    members = [spec("zzz", ["t"], instance_id="i1"), spec("aaa", ["t"], instance_id="i2")]
    out = range_(members, {"t": 2})
    assert out["zzz"] == {("t", 0)} and out["aaa"] == {("t", 1)}


def test_assignors_are_deterministic():
    members = [spec(f"m{i}", ["a", "b"] if i % 2 else ["a"]) for i in range(7)]
    topics = {"a": 13, "b": 5}
    for fn in ASSIGNORS.values():
        assert fn(members, topics) == fn(list(reversed(members)), topics)
