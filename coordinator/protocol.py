"""The coordinator's wire protocol: the one place that spells its frames, operations and limits.

Transport: the coordinator binds a ZeroMQ ROUTER socket; each client holds one DEALER socket.
A message carries one or more frames (the ROUTER also sees the peer's identity frame first);
each frame holds one or more msgpack messages back to back (a msgpack stream), each message one
request, reply or event. Both sides put everything they have for a peer in one frame: under
pipelining that makes the socket's cost per request almost nothing (a frame costs about 6 us of
Python in pyzmq, a message inside one about 0.2 us). A message in a batch is handled exactly as
if it had come alone, in order. A stream that stops decoding gets one INVALID_REQUEST reply for
the rest of its frame.

    request   [msgpack map]  {"api": <op>, "v": VERSION, "id": <int correlation id>,
                              "sid": <session id, 0 for "connect" of a new session>, ...op fields}
    reply     [msgpack map]  {"id": <same id or None>, "err": 0 | <error code>, "msg": <sentence>,
                              ...result fields}
    event     [msgpack map]  {"ev": "watch", "wid": <watch id>, "seq": <1, 2, ... per watch>,
                              "zxid": <transaction id>, "type": "created"|"changed"|"deleted",
                              "path": <path>, "version": <int>, "value": <bytes or None>}
              [msgpack map]  {"ev": "expired", "sid": <session id>}

Replies may come back in any order relative to other requests (pipelining): match them by id.
A reply to a request whose id could not be read carries ``"id": None``.

Operations (fields beyond api/v/id/sid):

    connect   timeout_ms, [secret]       -> sid, secret, timeout_ms, run, zxid
              (sid 0 opens a session; a sid with its secret resumes it on this connection,
              which drops the session's watches: the client registers them again)
    ping                                 -> zxid, run, watches {wid: last seq sent}
              (answered at once, not after the disk)

Only the connection that opened or last resumed a session may use it: a request for the
session from any other connection gets SESSION_MOVED.
    close                                -> (ends the session; its ephemeral keys go)
    create    path, value, ephemeral, sequential -> path, zxid
    get       path                       -> value, stat
    exists    path                       -> stat or None
    set       path, value, version       -> stat
    delete    path, version              -> zxid
    children  path                       -> children (sorted names)
    multi     ops: [[kind, fields...]]   -> results: one per op ("check", "create", "set",
                                            "delete", "fence"); on failure err is the first failing
                                            op's error and "index" names it; nothing is applied
    watch     prefix, since_zxid (-1 = from now) -> wid, zxid, [resync: True when history from
                                            since_zxid is no longer kept]
    unwatch   wid
    quorum                               -> leader, term, high_watermark, voters, members:
                                            [{id, log_end, lag, last_fetch_ms, status}]
                                            (the ensemble as this member sees it)

In an ensemble only the leader serves requests; the others answer NOT_QUORUM_LEADER (nothing
was applied: send it to another member), and a leader that is deposed sends its clients a
``{"ev": "not_leader"}`` event.

A stat is [version, czxid, mzxid, ctime_ms, mtime_ms, ephemeral_owner, num_children].
Multi ops are lists: ["check", path, version], ["create", path, value, ephemeral, sequential],
["set", path, value, version], ["delete", path, version], ["fence", path, epoch]. A fence op passes
when the key at path has version == epoch; an older epoch fails with FENCED_EPOCH.

Every write is in the transaction log on disk before its reply (or any watch event it causes)
leaves the coordinator.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from zbroker import errors

VERSION = 1

# --- limits (unit last) ---------------------------------------------------------------------
PATH_BYTES_MAX = 1024
VALUE_BYTES_MAX = 1024 * 1024
FRAME_BYTES_MAX = 4 * 1024 * 1024       # the socket drops a peer that sends more (ZMQ_MAXMSGSIZE)
REQUESTS_PER_MESSAGE_MAX = 1000        # requests in one message; the rest get an error
MULTI_OPS_MAX = 1000
MULTI_BYTES_MAX = 2 * 1024 * 1024       # sum of values in one multi
SEQUENTIAL_DIGITS = 10                  # create(sequential=True) appends a 10-digit counter
WATCH_HISTORY_MAX = 100_000             # changes kept for watchers that re-register after a gap
WATCH_HISTORY_BYTES_MAX = 64 * 1024 * 1024  # ... and the bytes they may hold
WATCH_REPLAY_MAX = 10_000               # changes replayed to one re-registering watch; beyond
                                        # that it gets a resync (re-read) instead
WATCHES_PER_SESSION_MAX = 1000

STAT_FIELDS = ("version", "czxid", "mzxid", "ctime_ms", "mtime_ms", "ephemeral_owner",
               "num_children")

_INT = (int,)
_BOOL = (bool,)
_STR = (str,)
_BYTES = (bytes,)
_LIST = (list, tuple)

# op -> {field: (allowed types, required)}
_SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "connect": {"timeout_ms": (_INT, True), "secret": (_BYTES, False)},
    "ping": {},
    "close": {},
    "create": {"path": (_STR, True), "value": (_BYTES, False), "ephemeral": (_BOOL, False),
               "sequential": (_BOOL, False)},
    "get": {"path": (_STR, True)},
    "exists": {"path": (_STR, True)},
    "set": {"path": (_STR, True), "value": (_BYTES, True), "version": (_INT, False)},
    "delete": {"path": (_STR, True), "version": (_INT, False)},
    "children": {"path": (_STR, True)},
    "multi": {"ops": (_LIST, True)},
    "watch": {"prefix": (_STR, True), "since_zxid": (_INT, False)},
    "unwatch": {"wid": (_INT, True)},
    "quorum": {},
}
OPS = frozenset(_SCHEMAS)
WRITE_OPS = frozenset({"create", "set", "delete", "multi"})

# multi op kind -> positional field types after the kind
_MULTI_SCHEMAS: dict[str, tuple[tuple[type, ...], ...]] = {
    "check": (_STR, _INT),
    "create": (_STR, _BYTES, _BOOL, _BOOL),
    "set": (_STR, _BYTES, _INT),
    "delete": (_STR, _INT),
    "fence": (_STR, _INT),
}

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    return _packer.pack(obj)


def unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False,
                           max_bin_len=FRAME_BYTES_MAX, max_str_len=FRAME_BYTES_MAX)


def unpack_stream(frame: bytes, limit: int = REQUESTS_PER_MESSAGE_MAX) -> tuple[list, str | None]:
    """The messages of a frame, in order, and a sentence when the frame stopped decoding (or
    held more than ``limit`` messages) before its end."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(frame) + 1,
                                max_bin_len=FRAME_BYTES_MAX, max_str_len=FRAME_BYTES_MAX)
    unpacker.feed(frame)
    out: list = []
    try:
        for obj in unpacker:
            if len(out) >= limit:
                return out, f"A message may carry at most {limit} requests; the rest were dropped."
            out.append(obj)
    except Exception:
        return out, "The request is not a valid msgpack message."
    if unpacker.tell() != len(frame):
        return out, "The message ends with an incomplete msgpack message."
    return out, None


# --- requests ---------------------------------------------------------------------------------

def encode_request(api: str, req_id: int, sid: int, **fields: Any) -> bytes:
    fields.update(api=api, v=VERSION, id=req_id, sid=sid)
    return pack(fields)


def decode_request(frame: bytes) -> dict:
    """Decode and validate one request frame (see ``check_request``)."""
    try:
        req = unpack(frame)
    except Exception:
        raise errors.InvalidRequest("The request is not a valid msgpack message.") from None
    return check_request(req)


def check_request(req: Any) -> dict:
    """Validate a decoded request. Raises a ZbError (with a sentence) for anything a client got
    wrong; the caller replies with it. The returned dict always has an int ``id``."""
    if not isinstance(req, dict):
        raise errors.InvalidRequest("The request must be a msgpack map.")
    req_id = req.get("id")
    if not isinstance(req_id, int) or isinstance(req_id, bool):
        raise errors.InvalidRequest("The request has no integer correlation id.")
    api = req.get("api")
    if not isinstance(api, str) or api not in _SCHEMAS:
        raise errors.InvalidRequest(f"Unknown operation {repr(api)[:80]}; known operations "
                                    f"are {', '.join(sorted(OPS))}.")
    if req.get("v") != VERSION:
        raise errors.UnsupportedVersion(f"This coordinator speaks protocol version {VERSION}, "
                                        f"not {req.get('v')!r}.")
    sid = req.get("sid", 0)
    if not isinstance(sid, int) or isinstance(sid, bool):
        raise errors.BadArguments("The session id must be an integer.")
    for field, (types, required) in _SCHEMAS[api].items():
        if field not in req:
            if required:
                raise errors.BadArguments(f"The {api} operation needs the field {field!r}.")
            continue
        value = req[field]
        if not isinstance(value, types) or (types is _INT and isinstance(value, bool)):
            raise errors.BadArguments(f"The field {field!r} of {api} must be "
                                      f"{_type_word(types)}, not {type(value).__name__}.")
    if api == "multi":
        if len(req["ops"]) > MULTI_OPS_MAX:
            raise errors.BadArguments(f"A multi may hold at most {MULTI_OPS_MAX} operations.")
        req["ops"] = [_check_multi_op(i, op) for i, op in enumerate(req["ops"])]
        if sum(len(op[2]) for op in req["ops"] if op[0] in ("create", "set")) > MULTI_BYTES_MAX:
            raise errors.BadArguments(f"The values of one multi may add up to at most "
                                      f"{MULTI_BYTES_MAX} bytes.")
    if "value" in req and len(req["value"]) > VALUE_BYTES_MAX:
        raise errors.BadArguments(f"A value may be at most {VALUE_BYTES_MAX} bytes, "
                                  f"not {len(req['value'])}.")
    return req


def _check_multi_op(i: int, op: Any) -> list:
    if not isinstance(op, (list, tuple)) or not op or op[0] not in _MULTI_SCHEMAS:
        raise errors.BadArguments(f"Operation {i} of the multi must be a list starting with one "
                                  f"of {', '.join(sorted(_MULTI_SCHEMAS))}.")
    schema = _MULTI_SCHEMAS[op[0]]
    if len(op) != len(schema) + 1:
        raise errors.BadArguments(f"Operation {i} of the multi ({op[0]}) needs "
                                  f"{len(schema)} fields after its kind.")
    for value, types in zip(op[1:], schema):
        if not isinstance(value, types) or (types is _INT and isinstance(value, bool)):
            raise errors.BadArguments(f"Operation {i} of the multi ({op[0]}) has a field of the "
                                      f"wrong type: {type(value).__name__}.")
    if op[0] in ("create", "set") and len(op[2]) > VALUE_BYTES_MAX:
        raise errors.BadArguments(f"A value may be at most {VALUE_BYTES_MAX} bytes.")
    return list(op)


def _type_word(types: tuple[type, ...]) -> str:
    return {_INT: "an integer", _BOOL: "true or false", _STR: "a string", _BYTES: "bytes",
            _LIST: "a list"}.get(types, "of another type")


_BAD_PATH = re.compile(r"//|/\.\.?(/|$)|\x00")


def check_path(path: str, *, allow_root: bool = True) -> None:
    """Raise BadArguments unless ``path`` is an absolute, normalised key path."""
    if path == "/":
        if not allow_root:
            raise errors.BadArguments("The root key cannot be created, changed or deleted.")
        return
    if len(path) > PATH_BYTES_MAX // 4 and len(path.encode("utf-8", "surrogatepass")) > \
            PATH_BYTES_MAX:
        raise errors.BadArguments(f"A path may be at most {PATH_BYTES_MAX} bytes long.")
    if path[:1] != "/" or path[-1] == "/" or _BAD_PATH.search(path):
        raise errors.BadArguments(f"The path {path!r} must start with '/', not end with it, and "
                                  f"have no empty, '.', '..' or NUL parts.")


# --- replies and events -------------------------------------------------------------------------

def encode_reply(req_id: int | None, **fields: Any) -> bytes:
    fields["id"] = req_id
    fields.setdefault("err", 0)
    return pack(fields)


def encode_error(req_id: int | None, err: errors.ZbError, **fields: Any) -> bytes:
    fields.update(id=req_id, err=err.code, msg=str(err))
    return pack(fields)


def reply_error(reply: dict) -> errors.ZbError | None:
    """The exception a reply names, or None when it succeeded."""
    code = reply.get("err", 0)
    if not code:
        return None
    return errors.make_error(code, reply.get("msg"))


def encode_watch_event(wid: int, seq: int, zxid: int, type_: str, path: str, version: int,
                       value: bytes | None) -> bytes:
    return pack({"ev": "watch", "wid": wid, "seq": seq, "zxid": zxid, "type": type_,
                 "path": path, "version": version, "value": value})


def encode_expired_event(sid: int) -> bytes:
    return pack({"ev": "expired", "sid": sid})


def encode_not_leader_event() -> bytes:
    """To a deposed leader's clients: resume the session at the new leader."""
    return pack({"ev": "not_leader"})


def prefix_matches(prefix: str, path: str) -> bool:
    """Whether a watch on ``prefix`` sees a change of ``path`` (the key itself or below it)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")
