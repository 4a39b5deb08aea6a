"""A linearizability checker for histories of operations on versioned registers (the
coordinator's keys), in the manner of Knossos and Porcupine: Wing and Gong's search with
Lowe's memoization, one key at a time (linearizability is compositional, so a history is
linearizable exactly when each key's part is).

An operation is ``Op(client, key, kind, arg, call, ret, result)``: ``kind`` is "read" (result
(value, version)), "write" (arg value; result the new version), or "cas" (arg (expected version,
value); result the new version, or "bad_version"). ``ret`` is None when the outcome is unknown
(the client saw CONNECTION_LOSS): such an operation may have taken effect at any moment after
its call, or never, and its result is not checked.

The model: a key holds (value, version), starting at ``initial``; a write sets the value and
adds one to the version; a cas does so only when the version is the expected one.
"""

from __future__ import annotations

from typing import NamedTuple


class Op(NamedTuple):
    client: int
    key: str
    kind: str
    arg: object
    call: float
    ret: float | None
    result: object


def _step(state, op: Op):
    """(ok, new state) for ``op`` applied to ``state``; ok is False when the result the client
    saw cannot come from this state."""
    value, version = state
    if op.kind == "read":
        return op.ret is None or tuple(op.result) == state, state
    if op.kind == "write":
        new = (op.arg, version + 1)
        return op.ret is None or op.result == version + 1, new
    expected, new_value = op.arg
    if version == expected:
        return op.ret is None or op.result == version + 1, (new_value, version + 1)
    return op.ret is None or op.result == "bad_version", state


def check_key(ops: list[Op], initial) -> tuple[bool, str]:
    """Whether one key's history is linearizable; on failure, a short reason."""
    ops = sorted(ops, key=lambda o: o.call)
    n = len(ops)
    known = [i for i in range(n) if ops[i].ret is not None]
    need = 0
    for i in known:
        need |= 1 << i
    inf = float("inf")
    rets = [o.ret if o.ret is not None else inf for o in ops]
    seen = set()
    stack = [(0, tuple(initial))]
    deepest = 0
    while stack:
        done, state = stack.pop()
        if done & need == need:
            return True, ""
        if (done, state) in seen:
            continue
        seen.add((done, state))
        deepest = max(deepest, bin(done & need).count("1"))
        # an operation may go next only if it was called before every pending known operation
        # returned
        horizon = min(rets[i] for i in known if not done >> i & 1)
        for i in range(n):
            if done >> i & 1 or ops[i].call > horizon:
                continue
            ok, new_state = _step(state, ops[i])
            if ok:
                stack.append((done | 1 << i, new_state))
    return False, (f"no order of the {n} operations on {ops[0].key if ops else '?'} explains "
                   f"what the clients saw (at most {deepest} of {len(known)} known ones fit)")


def check(history: list[Op], initial) -> tuple[bool, str]:
    """Whether the whole history is linearizable (key by key)."""
    by_key: dict[str, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    for key in sorted(by_key):
        ok, why = check_key(by_key[key], initial)
        if not ok:
            return False, why
    return True, ""
