"""Garbage on the coordinator's socket gets named errors; nothing changes; service goes on."""

import subprocess
import sys
import time

import msgpack
import pytest
import zmq

from coordinator import protocol
from coordinator.client import CoordinatorClient
from tests.procs import CoordinatorProc, free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def raw(coordinator):
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(f"tcp://{coordinator.address}")
    yield s
    s.close(0)
    ctx.term()


def replies(sock, n):
    """The next ``n`` replies: a frame may hold several, back to back."""
    out = []
    while len(out) < n:
        found, problem = protocol.unpack_stream(sock.recv(), limit=1 << 20)
        assert problem is None
        out += found
    return out


def ask(sock, *frames):
    sock.send_multipart(list(frames))
    (reply,) = replies(sock, 1)
    return reply


def req(**fields):
    fields.setdefault("v", protocol.VERSION)
    return msgpack.packb(fields, use_bin_type=True)


def test_garbage_gets_error_replies_and_changes_nothing(coordinator, raw):
    good = CoordinatorClient(coordinator.address)
    good.create("/keep", b"v")
    sid = ask(raw, req(api="connect", id=1, sid=0, timeout_ms=5000))["sid"]
    cases = [
        (b"\xc1\xff not msgpack", "INVALID_REQUEST"),
        (msgpack.packb([1, 2, 3]), "INVALID_REQUEST"),
        (req(api="get", path="/keep"), "INVALID_REQUEST"),                     # no id
        (req(api="explode", id=2, sid=sid), "INVALID_REQUEST"),
        (req(api="get", id=3, sid=sid, v=99, path="/keep"), "UNSUPPORTED_VERSION"),
        (req(api="get", id=4, sid=sid, path=17), "BAD_ARGUMENTS"),
        (req(api="set", id=5, sid=sid, path="/keep", value="str-not-bytes"), "BAD_ARGUMENTS"),
        (req(api="set", id=6, sid=sid, path="/keep", value=b"x" * (protocol.VALUE_BYTES_MAX + 1)),
         "BAD_ARGUMENTS"),
        (req(api="create", id=7, sid=sid, path="/" + "p" * 5000), "BAD_ARGUMENTS"),
        (req(api="create", id=8, sid=sid, path="relative"), "BAD_ARGUMENTS"),
        (req(api="delete", id=9, sid=sid, path="/"), "BAD_ARGUMENTS"),
        (req(api="multi", id=10, sid=sid, ops=[["set", "/keep"]]), "BAD_ARGUMENTS"),
        (req(api="multi", id=11, sid=sid, ops="nope"), "BAD_ARGUMENTS"),
        (req(api="get", id=12, sid=12345, path="/keep"), "SESSION_EXPIRED"),
        (req(api="create", id=13, sid=sid, path="/keep", value=True), "BAD_ARGUMENTS"),
        (req(api="get", id=14, sid=True, path="/keep"), "BAD_ARGUMENTS"),
        (req(api=["get"], id=15, sid=sid, path="/keep"), "INVALID_REQUEST"),   # unhashable
        (req(api={"a": 1}, id=16, sid=sid), "INVALID_REQUEST"),
    ]
    for frame, name in cases:
        reply = ask(raw, frame)
        from zbroker.errors import error_for_code
        assert error_for_code(reply["err"]).name == name, (frame[:60], reply)
        assert isinstance(reply.get("msg"), str) and reply["msg"].endswith(".")
    # several requests back to back in one frame, and a second frame: each is answered
    raw.send_multipart([req(api="get", id=50, sid=sid, path="/keep") +
                        req(api="exists", id=51, sid=sid, path="/nothing"),
                        req(api="children", id=52, sid=sid, path="/")])
    got = {r["id"]: r for r in replies(raw, 3)}
    assert got[50]["value"] == b"v" and got[51]["stat"] is None and got[52]["children"] == ["keep"]
    # a stream that breaks off: what came before is served, the rest gets one error
    raw.send(req(api="get", id=53, sid=sid, path="/keep") + b"\xc1 garbage")
    got = replies(raw, 2)
    assert {r["id"] for r in got} == {53, None}
    assert [r for r in got if r["id"] is None][0]["err"] != 0
    good.close()
    # a client's mistakes are answered, never logged as the server's own failure
    assert "Traceback" not in coordinator.proc.log_path.read_text(errors="replace")


def frame_of_size(size):
    """One frame of exactly ``size`` bytes holding one valid connect request (padded with a
    field the coordinator ignores): taken, it opens a session (a transaction) and is answered."""
    def build(pad):
        return req(api="connect", id=7, sid=0, timeout_ms=60000, pad=b"p" * pad)
    overhead = len(build(1 << 16)) - (1 << 16)      # msgpack's bin32 header from here on
    frame = build(size - overhead)
    assert len(frame) == size
    return frame


class MonitoredDealer:
    """A DEALER with a socket monitor, so a test knows when the connection is up (the ZeroMQ
    handshake is done, so what it sends goes out at once) and when the peer dropped it."""

    def __init__(self, address):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(f"tcp://{address}")

    def wait_for(self, event, timeout_s=10.0):
        from zmq.utils.monitor import recv_monitor_message
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            assert left_ms > 0 and self.monitor.poll(left_ms), \
                f"no {event} on the connection within {timeout_s}s"
            if recv_monitor_message(self.monitor)["event"] == event:
                return

    def close(self):
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()


def test_a_frame_over_the_limit_drops_its_sender_and_nobody_else(coordinator, raw):
    good = CoordinatorClient(coordinator.address)
    states = []
    good.add_listener(states.append)
    good.create("/keep", b"v")
    sid = ask(raw, req(api="connect", id=1, sid=0, timeout_ms=60000))["sid"]

    def durable_zxid():
        return ask(raw, req(api="ping", id=2, sid=sid))["zxid"]
    before = durable_zxid()
    # a frame of exactly FRAME_BYTES_MAX is taken: answered on the same connection, which stays
    at_limit = MonitoredDealer(coordinator.address)
    try:
        at_limit.wait_for(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        at_limit.sock.send(frame_of_size(protocol.FRAME_BYTES_MAX))
        assert at_limit.sock.poll(10_000), "no answer to a frame at the limit"
        (reply,) = protocol.unpack_stream(at_limit.sock.recv())[0]
        assert reply["id"] == 7 and reply["err"] == 0, reply
        new_sid = reply["sid"]
        assert new_sid == before + 1          # its session is the next transaction
        at_limit.sock.send(req(api="ping", id=8, sid=new_sid))  # the same connection: its own
        assert at_limit.sock.poll(10_000)
        (pong,) = protocol.unpack_stream(at_limit.sock.recv())[0]
        assert pong["id"] == 8 and pong["err"] == 0, pong
    finally:
        at_limit.close()
    assert durable_zxid() == before + 1
    # one byte more: the socket (ZMQ_MAXMSGSIZE) drops that peer's connection as the frame
    # arrives; the coordinator never sees the request, and nobody else notices
    over = MonitoredDealer(coordinator.address)
    try:
        over.wait_for(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        over.sock.send(frame_of_size(protocol.FRAME_BYTES_MAX + 1))
        over.wait_for(zmq.EVENT_DISCONNECTED)
        assert not over.sock.poll(0), "a frame over the limit was answered"
    finally:
        over.close()
    assert durable_zxid() == before + 1     # no session was opened
    assert good.get("/keep") == (b"v", 0)
    assert good.children("/") == ["keep"]
    assert ask(raw, req(api="get", id=99, sid=sid, path="/keep"))["value"] == b"v"
    assert states == [], states             # the well-behaved client never lost its connection
    good.close()


def run_start(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "coordinator.server", *args],
                          capture_output=True, text=True, timeout=timeout)


def own(tmp_path, name: str) -> list[str]:
    """Overrides giving a refused start a port and a data directory of its own, so that it
    falls back on neither default (2181, /tmp/zb-coordinator: a local cluster's) should the
    refusal ever come later than the check it is about."""
    return ["--override", f"listeners=tcp://127.0.0.1:{free_port()}",
            "--override", f"data.dir={tmp_path / name}"]


def test_startup_errors_are_one_sentence(coordinator, tmp_path):
    taken = run_start("--override", f"listeners=tcp://127.0.0.1:{coordinator.port}",
                      "--override", f"data.dir={tmp_path / 'other'}")
    assert taken.returncode != 0 and "already in use" in taken.stderr
    assert "Traceback" not in taken.stderr
    bad = run_start("--override", "tick.ms=fast", *own(tmp_path, "x"))
    assert bad.returncode != 0 and "tick.ms must be a whole number" in bad.stderr
    (tmp_path / "afile").write_text("")
    unusable = run_start("--override", f"data.dir={tmp_path / 'afile' / 'sub'}",
                         "--override", f"listeners=tcp://127.0.0.1:{free_port()}")
    assert unusable.returncode != 0 and "not usable" in unusable.stderr
    assert "Traceback" not in unusable.stderr
    unknown = run_start("--override", "no.such.key=1", *own(tmp_path, "y"))
    assert unknown.returncode != 0 and "Unknown setting 'no.such.key'" in unknown.stderr
    missing = run_start(str(tmp_path / "nope.properties"), *own(tmp_path, "z"))
    assert missing.returncode != 0 and "Cannot read the config file" in missing.stderr
    same_dir = run_start("--override", f"data.dir={coordinator.data_dir}",
                         "--override", f"listeners=tcp://127.0.0.1:{free_port()}")
    assert same_dir.returncode != 0 and "Another coordinator" in same_dir.stderr
    # a bad setting is refused before the data directory is touched
    assert not any((tmp_path / name).exists() for name in ("x", "y", "z"))


def test_sigterm_is_a_clean_shutdown_and_config_file_works(procs, tmp_path):
    from tests.procs import PORT_ATTEMPTS, wait_for_port
    conf = tmp_path / "c.properties"
    for _ in range(PORT_ATTEMPTS):      # a fresh port while another process took ours first
        port = free_port()
        conf.write_text(f"# test\nlisteners=tcp://127.0.0.1:{port}\ndata.dir={tmp_path / 'd'}\n"
                        f"tick.ms=50\nmin.session.timeout.ms=100\n")
        p = procs.python("coordinator", "coordinator.server", str(conf))
        try:
            wait_for_port(port, proc=p.popen)
            break
        except RuntimeError:
            if not p.exited_address_in_use:
                raise
    else:
        pytest.fail(f"no free port in {PORT_ATTEMPTS} tries:\n{p.log_tail()}")
    c = CoordinatorClient(f"127.0.0.1:{port}")
    c.create("/persist", b"1")
    c.close()
    assert p.terminate() == 0
    assert "stopped" in p.log_tail()
    coord = CoordinatorProc(procs, tmp_path / "d", port=port).start()      # the same address
    c = CoordinatorClient(coord.address)
    assert c.get("/persist") == (b"1", 0)
    c.close()


def test_shell_commands(coordinator):
    def shell(*words):
        return subprocess.run([sys.executable, "-m", "coordinator.shell", "--coordinator",
                               coordinator.address, *words], capture_output=True, text=True,
                              timeout=30)
    assert "Created /app" in shell("create", "/app", "hello").stdout
    assert shell("get", "/app").stdout.strip() == "hello"
    assert "version = 1" in shell("set", "/app", "bye").stdout
    assert "version = 1" in shell("stat", "/app").stdout
    assert shell("ls", "/").stdout.strip() == "[app]"
    r = shell("delete", "/nothing")
    assert r.returncode == 1 and "No key exists at /nothing." in r.stderr
    r = subprocess.run([sys.executable, "-m", "coordinator.shell", "--coordinator",
                        coordinator.address], input="create /b x\nls /\ndeleteall /\nls /\n",
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.splitlines()[-1] == "[]"
    assert "usage" in subprocess.run([sys.executable, "-m", "coordinator.shell", "--help"],
                                     capture_output=True, text=True).stdout


def test_another_connection_cannot_speak_for_a_session(coordinator, raw):
    victim = CoordinatorClient(coordinator.address)
    victim.create("/broker1", b"", ephemeral=True)
    for api, fields in [("ping", {}), ("close", {}),
                        ("create", {"path": "/stolen", "ephemeral": True}),
                        ("delete", {"path": "/broker1"})]:
        reply = ask(raw, req(api=api, id=1, sid=victim.session_id, **fields))
        from zbroker.errors import error_for_code
        assert error_for_code(reply["err"]).name == "SESSION_MOVED", (api, reply)
    wrong_secret = ask(raw, req(api="connect", id=2, sid=victim.session_id, timeout_ms=5000,
                                secret=b"guess"))
    assert wrong_secret["err"] != 0
    assert victim.exists("/broker1") is not None and victim.exists("/stolen") is None
    victim.create("/still-mine")
    victim.close()
