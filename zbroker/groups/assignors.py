"""Server-side partition assignors (KIP-848): pure functions from the group's members, their
subscriptions and the subscribed topics' partition counts to a target assignment.

- ``uniform`` (the default): every member gets as many partitions as it can (counts differ by
  at most one among members subscribed to the same topics) and keeps what it had wherever the
  balance allows, so a member joining or leaving moves as few partitions as possible.
- ``range``: per topic, the members subscribed to it (ordered by instance id, else member id)
  get consecutive ranges of its partitions, the first ``partitions % members`` one more, so the
  same partition numbers of co-partitioned topics land on the same member.

Both are deterministic: the same input gives the same output.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

TP = tuple  # (topic, partition)


class MemberSpec(NamedTuple):
    member_id: str
    instance_id: str | None
    topics: frozenset          # subscribed topic names
    current: frozenset         # the member's current target assignment (stickiness)


Assignment = dict  # member_id -> frozenset of (topic, partition)


def uniform(members: list[MemberSpec], topics: dict[str, int]) -> Assignment:
    if not members:
        return {}
    subs = {m.member_id: frozenset(t for t in m.topics if topics.get(t, 0) > 0)
            for m in members}
    if len(set(subs.values())) == 1:
        return _uniform_homogeneous(members, next(iter(subs.values())), topics)
    return _uniform_general(members, subs, topics)


def _uniform_homogeneous(members: list[MemberSpec], subscribed: frozenset,
                         topics: dict[str, int]) -> Assignment:
    """Everyone subscribes to the same topics: quotas are exact (q or q+1 partitions each, r
    members get q+1); members keep what they have up to their quota."""
    ids = sorted(m.member_id for m in members)
    everything = [(t, p) for t in sorted(subscribed) for p in range(topics[t])]
    valid = set(everything)
    n = len(ids)
    q, r = divmod(len(everything), n)
    current = {m.member_id: m.current for m in members}
    kept: dict[str, list] = {}
    taken: set = set()
    for mid in ids:
        mine = [tp for tp in sorted(current[mid]) if tp in valid and tp not in taken]
        mine = mine[:q + 1] if r else mine[:q]
        kept[mid] = mine
        taken.update(mine)
    # At most r members may hold q+1: the ones that hold most keep their extra.
    extras = [mid for mid in ids if len(kept[mid]) > q]
    for mid in extras[r:]:
        taken.discard(kept[mid].pop())
    pool = [tp for tp in everything if tp not in taken]
    pool.reverse()                               # pop() hands out in ascending order
    for mid in ids:                              # everyone up to q first
        while len(kept[mid]) < q:
            kept[mid].append(pool.pop())
    with_extra = sum(1 for mid in ids if len(kept[mid]) > q)
    for mid in ids:                              # then the remainder, one each
        if not pool:
            break
        if len(kept[mid]) == q and with_extra < r:
            kept[mid].append(pool.pop())
            with_extra += 1
    assert not pool, "uniform assignor left partitions unassigned"
    return {mid: frozenset(kept[mid]) for mid in ids}


def _uniform_general(members: list[MemberSpec], subs: dict[str, frozenset],
                     topics: dict[str, int]) -> Assignment:
    """Members subscribe to different topics: keep what is still valid, hand out the rest to
    the least loaded eligible member, then move partitions from members that hold two or more
    than an eligible member until no such move is left."""
    ids = sorted(subs)
    eligible: dict[str, list[str]] = {}
    for mid in ids:
        for t in subs[mid]:
            eligible.setdefault(t, []).append(mid)
    owned: dict[str, set] = {mid: set() for mid in ids}
    owner: dict[TP, str] = {}
    for m in sorted(members, key=lambda m: m.member_id):
        for tp in sorted(m.current):
            t, p = tp
            if t in subs[m.member_id] and p < topics.get(t, 0) and tp not in owner:
                owner[tp] = m.member_id
                owned[m.member_id].add(tp)
    # Partitions with fewer candidates first, so they are not crowded out.
    pending = sorted(((t, p) for t in eligible for p in range(topics[t])
                      if (t, p) not in owner), key=lambda tp: (len(eligible[tp[0]]), tp))
    for tp in pending:
        mid = min(eligible[tp[0]], key=lambda x: (len(owned[x]), x))
        owner[tp] = mid
        owned[mid].add(tp)
    moved = True
    while moved:
        moved = False
        for hi in sorted(ids, key=lambda x: (-len(owned[x]), x)):
            n_hi = len(owned[hi])
            for tp in sorted(owned[hi], reverse=True):
                lo = min(eligible[tp[0]], key=lambda x: (len(owned[x]), x))
                if len(owned[lo]) <= n_hi - 2:
                    owned[hi].discard(tp)
                    owned[lo].add(tp)
                    moved = True
                    break
            if moved:
                break
    return {mid: frozenset(owned[mid]) for mid in ids}


def range_(members: list[MemberSpec], topics: dict[str, int]) -> Assignment:
    out: dict[str, set] = {m.member_id: set() for m in members}
    order = sorted(members, key=lambda m: (m.instance_id is None, m.instance_id or "",
                                           m.member_id))
    for t in sorted({t for m in members for t in m.topics}):
        n = topics.get(t, 0)
        subscribed = [m.member_id for m in order if t in m.topics]
        if not n or not subscribed:
            continue
        q, r = divmod(n, len(subscribed))
        start = 0
        for i, mid in enumerate(subscribed):
            count = q + (1 if i < r else 0)
            out[mid].update((t, p) for p in range(start, start + count))
            start += count
    return {mid: frozenset(v) for mid, v in out.items()}


ASSIGNORS: dict[str, Callable[[list[MemberSpec], dict[str, int]], Assignment]] = {
    "uniform": uniform,
    "range": range_,
}
