"""The coordinator's replicated state: the key tree and the session table. No I/O, no clocks.

State changes only through ``apply(txn)``. A transaction is the list that the transaction log
stores: ``[zxid, time_ms, kind, *args]``. The server builds one from each write request, calls
``apply``: a rejected transaction raises a ZbError and changes nothing (its zxid is not used); an
accepted one is logged and its reply sent once the log is on disk. Recovery replays the logged
transactions through the same ``apply``, so the state after a restart is exactly the state that
was acknowledged. Time enters only as the transaction's ``time_ms`` field, and session expiry is
a logged ``close`` transaction decided by the server, so replay is deterministic.

Kinds:
    ["session", timeout_ms, secret]           open a session; its id is the zxid
    ["close", sid]                            end a session (closed or expired); ephemerals go
    ["create", sid, path, value, ephemeral, sequential]
    ["set", path, value, version]
    ["delete", path, version]
    ["multi", sid, ops]                       ops as in coordinator.protocol, all or nothing
    ["leader", term]                          an ensemble's new leader starts its term (no change)

In an ensemble (``coordinator.ensemble``) the zxid is the Raft log index, and an entry that is
rejected when it is applied still uses its zxid: ``skip`` moves past it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from coordinator import protocol
from zbroker import errors


class Node:
    __slots__ = ("value", "version", "czxid", "mzxid", "ctime_ms", "mtime_ms", "owner",
                 "children", "cseq")

    def __init__(self, value: bytes, zxid: int, time_ms: int, owner: int):
        self.value = value
        self.version = 0
        self.czxid = self.mzxid = zxid
        self.ctime_ms = self.mtime_ms = time_ms
        self.owner = owner              # session id for an ephemeral key, else 0
        self.children: set[str] = set()
        self.cseq = 0                   # next sequential suffix for children

    def stat(self) -> list:
        return [self.version, self.czxid, self.mzxid, self.ctime_ms, self.mtime_ms, self.owner,
                len(self.children)]


class Session:
    __slots__ = ("sid", "timeout_ms", "secret", "ephemerals")

    def __init__(self, sid: int, timeout_ms: int, secret: bytes):
        self.sid, self.timeout_ms, self.secret = sid, timeout_ms, secret
        self.ephemerals: set[str] = set()


class Change(NamedTuple):
    zxid: int
    type: str           # "created" | "changed" | "deleted"
    path: str
    version: int
    value: bytes | None


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _check_version(path: str, node: Node, version: int) -> None:
    if version != -1 and version != node.version:
        raise errors.BadVersion(f"The key {path} is at version {node.version}, "
                                f"not {version}.")


class CoordinatorState:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": Node(b"", 0, 0, 0)}
        self.sessions: dict[int, Session] = {}
        self.zxid = 0

    # --- the one way in -----------------------------------------------------------------------
    def apply(self, txn: list) -> tuple[object, list[Change]]:
        """Apply one transaction. Returns (result, changes); raises ZbError and changes nothing
        when the transaction is not valid against the current state."""
        zxid, time_ms, kind = txn[0], txn[1], txn[2]
        if zxid != self.zxid + 1:
            raise AssertionError(f"transaction {zxid} applied after {self.zxid}")
        changes: list[Change] = []
        # Only a multi can fail after changing something: its earlier ops are undone. A single
        # operation checks everything before it changes anything, so it needs no undo log.
        undo: list[Callable[[], None]] | None = [] if kind == "multi" else None
        try:
            result = self._dispatch(kind, txn[3:], zxid, time_ms, changes, undo)
        except errors.ZbError:
            for step in reversed(undo or ()):
                step()
            raise
        self.zxid = zxid
        return result, changes

    def _dispatch(self, kind, args, zxid, time_ms, changes, undo):
        if kind == "create":
            sid, path, value, ephemeral, sequential = args
            return self._create(sid, path, value, ephemeral, sequential, zxid, time_ms,
                                changes, undo)
        if kind == "set":
            path, value, version = args
            return self._set(path, value, version, zxid, time_ms, changes, undo)
        if kind == "delete":
            path, version = args
            self._delete(path, version, zxid, changes, undo)
            return None
        if kind == "multi":
            sid, ops = args
            return self._multi(sid, ops, zxid, time_ms, changes, undo)
        if kind == "session":
            timeout_ms, secret = args
            self.sessions[zxid] = Session(zxid, timeout_ms, secret)
            return zxid
        if kind == "close":
            (sid,) = args
            self._close(sid, zxid, changes, undo)
            return None
        if kind == "leader":
            return None
        raise AssertionError(f"unknown transaction kind {kind!r}")

    def skip(self, zxid: int) -> None:
        """Move past a logged transaction that changes nothing (rejected, or a leader's
        marker)."""
        if zxid != self.zxid + 1:
            raise AssertionError(f"transaction {zxid} skipped after {self.zxid}")
        self.zxid = zxid

    # --- reads (no transaction) ---------------------------------------------------------------
    def get(self, path: str) -> Node:
        protocol.check_path(path)
        node = self.nodes.get(path)
        if node is None:
            raise errors.NoNode(f"No key exists at {path}.")
        return node

    def children(self, path: str) -> list[str]:
        return sorted(self.get(path).children)

    # --- writes -------------------------------------------------------------------------------
    def _create(self, sid, path, value, ephemeral, sequential, zxid, time_ms, changes, undo):
        protocol.check_path(path, allow_root=False)
        parent_path = parent_of(path)
        parent = self.nodes.get(parent_path)
        if parent is None:
            raise errors.NoNode(f"The parent key {parent_path} of {path} does not exist.")
        if parent.owner:
            raise errors.NoChildrenForEphemerals(f"The key {parent_path} is ephemeral and "
                                                 f"cannot have children.")
        owner = 0
        if ephemeral:
            if sid not in self.sessions:
                raise errors.SessionExpired("Ephemeral keys need a live session.")
            owner = sid
        if sequential:
            path = f"{path}{parent.cseq:0{protocol.SEQUENTIAL_DIGITS}d}"
            protocol.check_path(path, allow_root=False)
        if path in self.nodes:
            raise errors.NodeExists(f"A key already exists at {path}.")
        name = path[len(parent_path):].lstrip("/")
        node = Node(value, zxid, time_ms, owner)
        old_cseq = parent.cseq
        self.nodes[path] = node
        parent.children.add(name)
        parent.cseq += 1
        if owner:
            self.sessions[owner].ephemerals.add(path)

        if undo is not None:
            def revert():
                del self.nodes[path]
                parent.children.discard(name)
                parent.cseq = old_cseq
                if owner:
                    self.sessions[owner].ephemerals.discard(path)
            undo.append(revert)
        changes.append(Change(zxid, "created", path, 0, value))
        return path

    def _set(self, path, value, version, zxid, time_ms, changes, undo):
        protocol.check_path(path, allow_root=False)
        node = self.nodes.get(path)
        if node is None:
            raise errors.NoNode(f"No key exists at {path}.")
        _check_version(path, node, version)
        if undo is not None:
            saved = (node.value, node.version, node.mzxid, node.mtime_ms)

            def revert():
                node.value, node.version, node.mzxid, node.mtime_ms = saved
            undo.append(revert)
        node.value, node.version, node.mzxid, node.mtime_ms = value, node.version + 1, zxid, time_ms
        changes.append(Change(zxid, "changed", path, node.version, value))
        return node.stat()

    def _delete(self, path, version, zxid, changes, undo):
        protocol.check_path(path, allow_root=False)
        node = self.nodes.get(path)
        if node is None:
            raise errors.NoNode(f"No key exists at {path}.")
        _check_version(path, node, version)
        if node.children:
            raise errors.NotEmpty(f"The key {path} has {len(node.children)} children.")
        self._remove(path, node, undo)
        changes.append(Change(zxid, "deleted", path, node.version, None))

    def _remove(self, path, node, undo):
        parent = self.nodes[parent_of(path)]
        name = path.rsplit("/", 1)[1]
        del self.nodes[path]
        parent.children.discard(name)
        session = self.sessions.get(node.owner) if node.owner else None
        if session is not None:
            session.ephemerals.discard(path)

        if undo is not None:
            def revert():
                self.nodes[path] = node
                parent.children.add(name)
                if session is not None:
                    session.ephemerals.add(path)
            undo.append(revert)

    def _close(self, sid, zxid, changes, undo):
        session = self.sessions.get(sid)
        if session is None:
            raise errors.SessionExpired(f"Session {sid:#x} does not exist.")
        for path in sorted(session.ephemerals, reverse=True):
            node = self.nodes[path]
            self._remove(path, node, undo)
            changes.append(Change(zxid, "deleted", path, node.version, None))
        del self.sessions[sid]

    def _multi(self, sid, ops, zxid, time_ms, changes, undo):
        results = []
        for index, op in enumerate(ops):
            try:
                kind = op[0]
                if kind == "check":
                    protocol.check_path(op[1])
                    node = self.nodes.get(op[1])
                    if node is None:
                        raise errors.NoNode(f"No key exists at {op[1]}.")
                    _check_version(op[1], node, op[2])
                    results.append(None)
                elif kind == "fence":
                    node = self.nodes.get(op[1])
                    if node is None:
                        raise errors.NoNode(f"No epoch key exists at {op[1]}.")
                    if node.version != op[2]:
                        raise errors.FencedEpoch(f"The epoch {op[2]} of {op[1]} is not current "
                                                 f"(it is {node.version}); the write was refused.")
                    results.append(None)
                elif kind == "create":
                    results.append(self._create(sid, op[1], op[2], op[3], op[4], zxid, time_ms,
                                                changes, undo))
                elif kind == "set":
                    results.append(self._set(op[1], op[2], op[3], zxid, time_ms, changes, undo))
                elif kind == "delete":
                    self._delete(op[1], op[2], zxid, changes, undo)
                    results.append(None)
                else:
                    raise AssertionError(f"unknown multi op {kind!r}")
            except errors.ZbError as e:
                e.index = index
                raise
        return results

    # --- snapshots ----------------------------------------------------------------------------
    def to_snapshot(self) -> dict:
        nodes = [[p, n.value, n.version, n.czxid, n.mzxid, n.ctime_ms, n.mtime_ms, n.owner, n.cseq]
                 for p, n in self.nodes.items()]
        sessions = [[s.sid, s.timeout_ms, s.secret] for s in self.sessions.values()]
        return {"zxid": self.zxid, "nodes": nodes, "sessions": sessions}

    @classmethod
    def from_snapshot(cls, snap: dict) -> "CoordinatorState":
        st = cls()
        st.zxid = snap["zxid"]
        st.nodes = {}
        for sid, timeout_ms, secret in snap["sessions"]:
            st.sessions[sid] = Session(sid, timeout_ms, secret)
        for p, value, version, czxid, mzxid, ctime, mtime, owner, cseq in snap["nodes"]:
            n = Node(value, czxid, ctime, owner)
            n.version, n.mzxid, n.mtime_ms, n.cseq = version, mzxid, mtime, cseq
            st.nodes[p] = n
            if owner:
                st.sessions[owner].ephemerals.add(p)
        for p in st.nodes:
            if p != "/":
                st.nodes[parent_of(p)].children.add(p.rsplit("/", 1)[1])
        return st
