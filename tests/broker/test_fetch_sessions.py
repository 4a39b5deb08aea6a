"""Fetch sessions (zbroker/broker/fetch_sessions.py) without processes: the two ends' bookkeeping,
and the invariant that makes incremental fetches safe: after every exchange the leader holds,
for every partition of the session, exactly the request the follower would make for it now."""

import random

import pytest

from zbroker import errors
from zbroker.broker.fetch_sessions import (FINAL_EPOCH, INITIAL_EPOCH, FollowerSession,
                                           LeaderSessions)
from zbroker.protocol import ReplicaFetchPart

pytestmark = pytest.mark.timeout(60)


def part(p, offset, epoch=1, last=0, topic="t"):
    return ReplicaFetchPart(topic, p, offset, epoch, 1 << 20, last)


def exchange(fs: FollowerSession, ls: LeaderSessions, wanted: dict, replica=2, epoch=7,
             now=0.0):
    """One request from ``fs`` answered by ``ls``; returns (session, parts read)."""
    sid, sepoch, parts, forgotten = fs.build(wanted)
    s, _ = ls.fetch(replica, epoch, sid, sepoch, parts, forgotten, now)
    read = parts + ls.take(s, parts)
    fs.on_response(s.id)
    return s, read


def test_a_full_request_opens_a_session_and_later_ones_name_only_changes():
    fs, ls = FollowerSession(), LeaderSessions(rng=random.Random(1))
    assert fs.needs_full and fs.epoch == INITIAL_EPOCH != FINAL_EPOCH
    everything = {("t", p): part(p, 10) for p in range(100)}
    s, read = exchange(fs, ls, everything)
    assert len(read) == 100 and s.id > 0 and fs.id == s.id and fs.epoch == 1
    assert s.parts == everything
    # nothing changed: the request names nothing and the leader reads nothing
    sid, sepoch, parts, forgotten = fs.build({("t", 3): part(3, 10)})
    assert (sid, sepoch, parts, forgotten) == (s.id, 1, [], [])
    ls.fetch(2, 7, sid, sepoch, parts, forgotten, 1.0)
    fs.on_response(s.id)
    assert ls.take(s, []) == [] and s.last_fetch_s == 1.0
    # one partition moved and one left: only they travel
    sid, sepoch, parts, forgotten = fs.build({("t", 3): part(3, 15), ("t", 4): None})
    assert sepoch == 2 and parts == [part(3, 15)] and forgotten == [["t", 4]]
    ls.fetch(2, 7, sid, sepoch, parts, forgotten, 2.0)
    fs.on_response(s.id)
    assert s.parts[("t", 3)] == part(3, 15) and ("t", 4) not in s.parts
    assert ("t", 4) not in fs.sent and ("t", 4) not in ls.by_part


def test_news_on_a_partition_reach_the_sessions_holding_it_once():
    ls = LeaderSessions()
    a, _ = ls.fetch(2, 7, 0, INITIAL_EPOCH, [part(0, 5), part(1, 5)], [], 0.0)
    b, _ = ls.fetch(3, 9, 0, INITIAL_EPOCH, [part(1, 5)], [], 0.0)
    assert set(ls.mark(("t", 1))) == {a, b} and ls.mark(("t", 0)) == [a]
    assert ls.mark(("t", 99)) == []
    assert sorted(ls.take(a, [])) == [part(0, 5), part(1, 5)]
    assert ls.take(a, []) == []                     # taken once
    assert ls.take(b, [part(1, 6)]) == []           # named anyway: not read twice
    assert not b.dirty


def test_wrong_epochs_unknown_ids_and_other_brokers_sessions_are_refused():
    ls = LeaderSessions()
    s, _ = ls.fetch(2, 7, 0, INITIAL_EPOCH, [part(0, 5)], [], 0.0)
    with pytest.raises(errors.InvalidFetchSessionEpoch):
        ls.fetch(2, 7, s.id, 2, [], [], 0.0)        # expects 1
    with pytest.raises(errors.FetchSessionIdNotFound):
        ls.fetch(2, 7, s.id + 1, 1, [], [], 0.0)
    with pytest.raises(errors.FetchSessionIdNotFound):
        ls.fetch(3, 7, s.id, 1, [], [], 0.0)        # another broker's
    with pytest.raises(errors.FetchSessionIdNotFound):
        ls.fetch(2, 8, s.id, 1, [], [], 0.0)        # another life of the broker
    assert s.next_epoch == 1, "a refused request moved the session on"
    ls.fetch(2, 7, s.id, 1, [], [], 0.0)
    with pytest.raises(errors.InvalidFetchSessionEpoch):
        ls.fetch(2, 7, s.id, 1, [], [], 0.0)        # the same epoch again (a duplicate)


def test_a_new_session_of_a_follower_replaces_its_old_one_and_stale_lives_are_dropped():
    ls = LeaderSessions()
    old, _ = ls.fetch(2, 7, 0, INITIAL_EPOCH, [part(0, 5)], [], 0.0)
    other, _ = ls.fetch(3, 4, 0, INITIAL_EPOCH, [part(0, 5)], [], 0.0)
    new, closed = ls.fetch(2, 7, 0, INITIAL_EPOCH, [part(1, 5)], [], 0.0)
    assert closed == [old] and old.closed and not new.closed and len(ls) == 2
    assert ls.mark(("t", 0)) == [other]
    with pytest.raises(errors.FetchSessionIdNotFound):
        ls.fetch(2, 7, old.id, 1, [], [], 0.0)
    assert ls.retain({2: 7, 3: 5}) == [other]       # broker 3 registered again
    assert other.closed and list(ls.by_id.values()) == [new]
    assert ls.retain({}) == [new] and len(ls) == 0 and not ls.by_part


def test_the_cache_is_bounded_and_drops_the_least_recently_used_session():
    ls = LeaderSessions(max_sessions=2)
    a, _ = ls.fetch(1, 1, 0, INITIAL_EPOCH, [part(0, 0)], [], 0.0)
    b, _ = ls.fetch(2, 1, 0, INITIAL_EPOCH, [part(0, 0)], [], 1.0)
    ls.fetch(1, 1, a.id, 1, [], [], 2.0)            # a used after b
    c, closed = ls.fetch(3, 1, 0, INITIAL_EPOCH, [part(0, 0)], [], 3.0)
    assert closed == [b] and b.closed and set(ls.by_id.values()) == {a, c}


def test_a_leader_that_names_no_session_keeps_the_follower_on_full_requests():
    fs = FollowerSession()
    fs.build({("t", 0): part(0, 1)})
    fs.on_response(None)
    assert fs.needs_full and fs.sent == {}


@pytest.mark.parametrize("seed", range(20))
def test_the_leader_always_holds_what_the_follower_would_ask_now(seed):
    """Random partition moves, leaves, joins, lost answers and closed sessions; after each
    exchange the session's requests equal the follower's (the leader answers from them)."""
    rng = random.Random(seed)
    fs, ls = FollowerSession(), LeaderSessions(rng=rng)
    state: dict = {("t", p): part(p, 0) for p in range(20)}
    dirty = set(state)
    s = None
    for step in range(300):
        for _ in range(rng.randint(0, 3)):
            key = ("t", rng.randrange(30))
            roll = rng.random()
            if roll < 0.6 and key in state:
                old = state[key]
                state[key] = old._replace(fetch_offset=old.fetch_offset + rng.randint(0, 3),
                                          leader_epoch=old.leader_epoch + (rng.random() < 0.1))
            elif roll < 0.8:
                state.pop(key, None)                # truncating or moved away
            else:
                state[key] = part(key[1], rng.randint(0, 50))
            dirty.add(key)
        wanted = dict(state) if fs.needs_full else {k: state.get(k) for k in dirty}
        sid, sepoch, parts, forgotten = fs.build(wanted)
        if rng.random() < 0.05:                     # the request or its answer is lost
            fs.reset()
            continue
        try:
            s, _ = ls.fetch(2, 7, sid, sepoch, parts, forgotten, float(step))
        except (errors.FetchSessionIdNotFound, errors.InvalidFetchSessionEpoch):
            fs.reset()
            continue
        fs.on_response(s.id)
        dirty = set()
        assert s.parts == state, f"seed {seed} step {step}"
        assert fs.sent == state
        if rng.random() < 0.03:
            ls.close_all()                          # the leader restarted


def test_a_partition_whose_batch_did_not_fit_the_answer_is_in_the_next_one(tmp_path):
    """The answer's byte budget ran out before a partition's next batch: the follower does not
    name it again (its request did not change), so the leader must include it next time."""
    import types

    from tests.broker.helpers import batch
    from zbroker.broker import metadata as md
    from zbroker.broker.replicas import Partition
    from zbroker.broker.server import BrokerServer, DelayedFetch
    from zbroker.storage.log import PartitionLog

    def leader_part(p, nbatches):
        part = Partition("t", p, "id", PartitionLog(str(tmp_path / f"t-{p}")), 1)
        part.core.set_broker_epochs({1: 11, 2: 22})
        part.core.on_partition_state(md.PartitionState("t", p, (1, 2), 1, 1, (1,), 1, 0), 0.0)
        for _ in range(nbatches):
            part.log.append(batch([b"x" * 1000] * 10), 1)
        return part
    a, b = leader_part(0, 10), leader_part(1, 1)            # ~10 KB batches; b then idle
    server = types.SimpleNamespace(
        replicas=types.SimpleNamespace(partitions={("t", 0): a, ("t", 1): b}),
        leadership_paused=False, broker_epoch=-1,
        image=types.SimpleNamespace(shutting_down=frozenset()),
        carry_out=lambda part, effects, n=None: None)
    ls, fs = LeaderSessions(), FollowerSession()
    wanted = {("t", 0): part(0, 0, 1, -1), ("t", 1): part(1, 0, 1, -1)}
    sid, sepoch, parts, forgotten = fs.build(wanted)
    s, _ = ls.fetch(2, 22, sid, sepoch, parts, forgotten, 0.0)
    fetch = DelayedFetch(b"", 1, parts + ls.take(s, parts), 1, 90_000, 2, 22, s)
    _, data, _, _ = BrokerServer._read_fetch(server, fetch)
    assert data[0] and data[1] == b"", "the setup: b's batch does not fit what is left"
    fs.on_response(s.id)
    sid, sepoch, parts, forgotten = fs.build({("t", 0): part(0, 90, 1, 1),
                                               ("t", 1): part(1, 0, 1, -1)})
    s, _ = ls.fetch(2, 22, sid, sepoch, parts, forgotten, 1.0)
    assert [p.partition for p in parts] == [0]
    assert ls.take(s, parts) == [part(1, 0, 1, -1)]


def test_a_session_holds_a_bounded_number_of_partitions(monkeypatch):
    from zbroker.broker import fetch_sessions
    monkeypatch.setattr(fetch_sessions, "SESSION_PARTS_MAX", 5)
    ls = LeaderSessions()
    s, _ = ls.fetch(2, 7, 0, INITIAL_EPOCH, [part(p, 0) for p in range(4)], [], 0.0)
    with pytest.raises(errors.InvalidRequest):
        ls.fetch(2, 7, s.id, 1, [part(p, 0) for p in range(4, 8)], [], 0.0)
    assert len(s.parts) == 4 and s.next_epoch == 1
    ls.fetch(2, 7, s.id, 1, [part(4, 0), part(5, 0)], [["t", 0]], 0.0)     # one out, two in
    assert len(s.parts) == 5
