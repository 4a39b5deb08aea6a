"""A new ensemble leader holds the requests that arrive before it serves (until its term's marker
commits) and handles them afterwards: each as the principal that sent it, whoever sent the
message being handled when serving starts. No processes: the server object with a stand-in core."""

import types

import msgpack
import pytest

from coordinator import protocol
from coordinator.ensemble import EnsembleServer
from coordinator.raft import Role
from coordinator.server import load_config
from zbroker import errors

pytestmark = pytest.mark.timeout(10)


def test_held_writes_are_checked_again_as_their_own_senders(tmp_path):
    cfg, servers = load_config(None, [
        "authorizer.enable=true", "super.users=User:admin", "coordinator.id=1",
        "server.1=127.0.0.1:1", "server.2=127.0.0.1:2", "server.3=127.0.0.1:3",
        f"data.dir={tmp_path}"])
    s = EnsembleServer(cfg, servers)
    try:
        s.core = types.SimpleNamespace(role=Role.LEADER, term=2)
        s.state = types.SimpleNamespace(sessions={}, zxid=0)
        dispatched = []

        def write(i):
            return {"v": protocol.VERSION, "id": i, "api": "create", "path": f"/n{i}"}

        s.principal = "User:admin"
        s._handle(b"admin", write(1))
        s.principal = "User:mallory"
        s._handle(b"mallory", write(2))       # refused at once: not a super user
        assert [ident for ident, *_ in s.held] == [b"admin"]
        s.ready.clear()
        s.principal = "User:admin"
        s._handle(b"admin", write(3))          # held too
        s.principal = "User:mallory"            # who sent the last message, when serving starts
        s._dispatch = lambda ident, req: dispatched.append((ident, req["id"], s.principal))
        s._start_serving(0.0)
        assert dispatched == [(b"admin", 1, "User:admin"), (b"admin", 3, "User:admin")]
        assert not s.ready                      # no refusal went out for the admin's writes
        assert s.principal == "User:mallory"

        # and the other way round: a held write does not pass as whoever is handled last
        s.held = [(b"mallory", write(4), "User:mallory")]
        s.principal = "User:admin"
        dispatched.clear()
        s._start_serving(0.0)
        assert dispatched == []
        [frame] = s.ready[b"mallory"]
        reply = msgpack.unpackb(frame)
        assert reply["id"] == 4 and isinstance(protocol.reply_error(reply), errors.NoAuth)
    finally:
        s.ctx.term()
