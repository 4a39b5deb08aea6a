"""The ensemble's peer protocol: Raft messages between coordinators, on the peer port.

One message is one ZeroMQ frame, msgpack ``[MAGIC, ensemble, sender, kind, *fields]``, sent from
a DEALER whose identity is ``identity(sender)`` (a ROUTER gives a second connection with an
identity in use a random one, so a stranger cannot speak as a member that is connected):
``ensemble`` is a fingerprint of the member list (``server.N`` lines), so a member started with
another list, or a stranger, is told apart from a member; ``sender`` is the sending member's
``coordinator.id``; ``kind`` and the fields are one of ``coordinator.raft``'s messages, fields in
their order. Entries are ``[term, body]`` with ``body`` a transaction without its zxid
(``[time_ms, kind, *args]``) or None (a new leader's marker). An InstallSnapshot's data is a
snapshot file's bytes, checked before it is believed.

``decode`` checks everything a member relies on (the shape, every field's type, that the message
names its sender where it names a member) and raises ``PeerError`` with a sentence otherwise.
"""

from __future__ import annotations

import hashlib

import msgpack

from coordinator import raft

MAGIC = "zbraft1"
PEER_FRAME_BYTES_MAX = 1024 * 1024 * 1024   # a snapshot travels in one frame
ENTRIES_PER_MESSAGE_MAX = raft.APPEND_ENTRIES_MAX
FIELD_INT_MAX = 2 ** 53         # terms, indexes and rounds: far beyond any real one, and a term
# one past it still encodes (a forged huge term must not make a member's next term unwritable)

_KINDS = {raft.VoteRequest: 1, raft.VoteResponse: 2, raft.Append: 3, raft.AppendResponse: 4,
          raft.InstallSnapshot: 5, raft.SnapshotResponse: 6}
_BY_CODE = {code: cls for cls, code in _KINDS.items()}
_I, _B = "int", "bool"
# field types per message, in order; "member" fields must equal the sender
_FIELDS = {
    raft.VoteRequest: (("term", _I), ("candidate", "member"), ("last_index", _I),
                       ("last_term", _I), ("pre_vote", _B)),
    raft.VoteResponse: (("term", _I), ("voter", "member"), ("granted", _B), ("pre_vote", _B)),
    raft.Append: (("term", _I), ("leader", "member"), ("prev_index", _I), ("prev_term", _I),
                  ("entries", "entries"), ("commit", _I), ("probe", _I)),
    raft.AppendResponse: (("term", _I), ("follower", "member"), ("success", _B),
                          ("match_index", _I), ("hint_index", _I), ("probe", _I)),
    raft.InstallSnapshot: (("term", _I), ("leader", "member"), ("last_index", _I),
                           ("last_term", _I), ("data", "bytes")),
    raft.SnapshotResponse: (("term", _I), ("follower", "member"), ("last_index", _I)),
}


class PeerError(Exception):
    """A peer message that is not believed; the text says why, for the log."""


def identity(member: int) -> bytes:
    return f"member-{member}".encode()


def fingerprint(servers: dict[int, str]) -> str:
    text = ",".join(f"{n}={servers[n]}" for n in sorted(servers))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode(ensemble: str, sender: int, msg) -> bytes:
    fields = list(msg)
    if isinstance(msg, raft.Append):
        fields[4] = [list(e) for e in msg.entries]
    return msgpack.packb([MAGIC, ensemble, sender, _KINDS[type(msg)], *fields], use_bin_type=True)


def decode(frame: bytes, ensemble: str, me: int, members: tuple) -> tuple[int, object]:
    """(sender, message) from a peer frame; raises PeerError."""
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False,
                              max_bin_len=PEER_FRAME_BYTES_MAX, max_array_len=1_000_000,
                              max_map_len=1000, max_str_len=16 * 1024 * 1024)
    except Exception as e:
        raise PeerError(f"the message does not decode ({type(e).__name__})") from None
    if not isinstance(obj, list) or len(obj) < 4 or obj[0] != MAGIC:
        raise PeerError("the message is not a zbroker peer message")
    _, their_ensemble, sender, code = obj[:4]
    if their_ensemble != ensemble:
        raise PeerError("the sender was started with another member list (server.N lines)")
    if not _is_int(sender) or sender not in members:
        raise PeerError(f"the sender claims to be {sender!r}, which is not a member")
    if sender == me:
        raise PeerError(f"the sender claims this member's own id {me}")
    cls = _BY_CODE.get(code) if _is_int(code) else None
    if cls is None:
        raise PeerError(f"unknown message kind {code!r}")
    spec = _FIELDS[cls]
    values = obj[4:]
    if len(values) != len(spec):
        raise PeerError(f"a {cls.__name__} needs {len(spec)} fields, not {len(values)}")
    out = []
    for (name, kind), v in zip(spec, values):
        if kind == _I:
            ok = _is_int(v) and 0 <= v <= FIELD_INT_MAX
        elif kind == _B:
            ok = isinstance(v, bool)
        elif kind == "member":
            ok = _is_int(v) and v == sender
        elif kind == "bytes":
            ok = isinstance(v, bytes)
        else:
            v = _entries(v)
            ok = v is not None
        if not ok:
            raise PeerError(f"the field {name} of a {cls.__name__} is not valid")
        out.append(v)
    return sender, cls(*out)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entries(v):
    if not isinstance(v, list) or len(v) > ENTRIES_PER_MESSAGE_MAX:
        return None
    out = []
    for e in v:
        if not (isinstance(e, list) and len(e) == 2 and _is_int(e[0])
                and 0 <= e[0] <= FIELD_INT_MAX):
            return None
        body = e[1]
        if body is not None and not (isinstance(body, list) and len(body) >= 2
                                     and _is_int(body[0]) and isinstance(body[1], str)):
            return None
        out.append((e[0], body))
    return tuple(out)
