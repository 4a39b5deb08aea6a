"""Python client of the coordinator, used by brokers and by users' tooling.

    from coordinator.client import CoordinatorClient
    c = CoordinatorClient("127.0.0.1:2181", session_timeout_ms=6000)
    c.create("/brokers/ids/1", b"...", ephemeral=True)
    value, version = c.get("/brokers/ids/1")
    c.watch("/brokers", lambda event: print(event))
    c.close()

One background thread owns the DEALER socket (ZeroMQ sockets are not thread-safe): it opens or
resumes the session, sends pings every third of the session timeout, matches replies to requests
by correlation id (many requests may be in flight), notices a lost connection (the socket's
disconnect event, or silence for two thirds of the timeout) and reconnects to the next address
with capped exponential backoff. Every public method is safe to call from any thread; the
``*_async`` variants return a future (``zbroker.futures.Future``: ``result``, ``exception``,
``done``, ``add_done_callback``, as in ``concurrent.futures``).

Requests in flight when the connection drops fail with ConnectionLoss (their outcome is unknown,
as in ZooKeeper); requests made while reconnecting wait for the connection up to
``request_timeout_ms``. When the coordinator says the session expired, every call raises
SessionExpired from then on: its ephemeral keys are gone and a new client must be made.

Watch callbacks and session-state listeners run on a separate callback thread, in order, so a
callback may call the client. A future's done-callbacks run on the I/O thread: they may submit
more ``*_async`` requests (that is how a caller pipelines) but must not block on a result. A watch sees every change of its prefix in transaction order. If a
change went missing (a gap in the watch's sequence numbers, or a reconnect), the client
re-registers the watch from the last transaction it saw and the coordinator replays what was
missed; when the coordinator no longer holds that history, the callback gets a ``resync`` event
and should re-read what it watches.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import threading
import time
from zbroker.futures import Future
from dataclasses import dataclass
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from coordinator import protocol
from zbroker import errors
from zbroker.errors import (BadArguments, BadVersion, ConnectionLoss, FencedEpoch, NoNode,
                            NodeExists, NotEmpty, SessionExpired, SessionMoved, ZbError)
from zbroker.logs import get_logger
from zbroker.security import (HANDSHAKE_FAILED_EVENTS, ClientSecurity, SecurityError,
                              handshake_failure)

__all__ = ["CoordinatorClient", "Stat", "WatchEvent", "Op", "ZbError", "NoNode", "NodeExists",
           "BadVersion", "NotEmpty", "SessionExpired", "ConnectionLoss", "FencedEpoch",
           "BadArguments", "CONNECTED", "SUSPENDED", "LOST", "CLOSED"]

log = get_logger("coordinator.client")

MOVE_PAUSE_S = 0.02         # before trying the next ensemble member after one that does not lead

CONNECTING, CONNECTED, SUSPENDED, LOST, CLOSED = "CONNECTING", "CONNECTED", "SUSPENDED", \
    "LOST", "CLOSED"


@dataclass(frozen=True)
class Stat:
    version: int
    czxid: int
    mzxid: int
    ctime_ms: int
    mtime_ms: int
    ephemeral_owner: int
    num_children: int


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by a watch. ``type`` is created, changed, deleted, or resync (history was
    lost: re-read the prefix; ``path`` is then the prefix)."""
    type: str
    path: str
    zxid: int
    version: int = -1
    value: bytes | None = None


class Op:
    """Operations for ``multi``: all of them are applied, or none."""

    @staticmethod
    def check(path: str, version: int = -1) -> list:
        return ["check", path, version]

    @staticmethod
    def create(path: str, value: bytes = b"", ephemeral: bool = False,
               sequential: bool = False) -> list:
        return ["create", path, bytes(value), ephemeral, sequential]

    @staticmethod
    def set(path: str, value: bytes, version: int = -1) -> list:
        return ["set", path, bytes(value), version]

    @staticmethod
    def delete(path: str, version: int = -1) -> list:
        return ["delete", path, version]

    @staticmethod
    def fence(path: str, epoch: int) -> list:
        """Passes only while the epoch key at ``path`` is still at ``epoch``."""
        return ["fence", path, epoch]


def _stat(raw) -> Stat | None:
    return Stat(*raw) if raw is not None else None


def parse_hosts(hosts: str) -> list[str]:
    out = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "tcp://" + part
        out.append(part)
    if not out:
        raise ValueError("No coordinator address given; expected host:port[,host:port...].")
    return out


class _Request:
    __slots__ = ("api", "fields", "future", "parse", "deadline")

    def __init__(self, api, fields, future, parse, deadline):
        self.api, self.fields, self.future, self.parse, self.deadline = \
            api, fields, future, parse, deadline


class _Watch:
    __slots__ = ("prefix", "callback", "wid", "last_zxid", "last_seq", "seen_at_last_zxid",
                 "skip_at_last_zxid", "active", "pending")

    def __init__(self, prefix, callback):
        self.prefix, self.callback = prefix, callback
        self.wid = 0
        self.last_zxid = -1
        self.last_seq = 0
        self.seen_at_last_zxid = 0
        self.skip_at_last_zxid = 0
        self.active = True
        self.pending = False        # a registration is in flight


class CoordinatorClient:
    def __init__(self, hosts: str, session_timeout_ms: int = 10000,
                 request_timeout_ms: int | None = None, connect_timeout_ms: int | None = None,
                 security_protocol: str | None = None, curve_secret_key_file: str | None = None,
                 curve_server_key_file: str | None = None):
        """``security_protocol="CURVE"`` with ``curve_secret_key_file`` (our key pair) and
        ``curve_server_key_file`` (the coordinator's public key) talks CurveZMQ; a coordinator
        that refuses the handshake is an AuthenticationFailed naming the address and why."""
        self.hosts = parse_hosts(hosts)
        try:
            self._security = ClientSecurity.from_settings(
                security_protocol, curve_secret_key_file, curve_server_key_file)
        except SecurityError as e:
            raise BadArguments(str(e)) from None
        self._handshake_failed: dict[str, str] = {}     # host -> why, until we connect
        self.requested_timeout_ms = session_timeout_ms
        self.session_timeout_ms = session_timeout_ms
        self.request_timeout_ms = request_timeout_ms or session_timeout_ms
        self.session_id = 0
        self._secret = b""
        self._run_id = None
        self.state = CONNECTING
        # when the coordinator was last heard from while connected (monotonic): the session
        # cannot expire before this plus the session timeout, less a round trip
        self.last_contact_s = time.monotonic()
        # how soon after our connection closes the coordinator may expire the session (None:
        # only after the session timeout); from the connect reply
        self.disconnect_grace_ms: int | None = None
        self._ids = itertools.count(1)
        self._outq: collections.deque[_Request] = collections.deque()
        self._waiting: collections.deque[_Request] = collections.deque()  # not sent yet
        self._inflight: dict[int, _Request] = {}
        self._watches: dict[int, _Watch] = {}       # by server wid
        self._all_watches: list[_Watch] = []
        self._listeners: list[Callable[[str], None]] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._io_ident = None
        self._closing = False
        self._connected = threading.Event()
        self._callbacks: queue.Queue = queue.Queue()
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = None
        self._out_frames: list[bytes] = []
        self._monitor: zmq.Socket | None = None
        self._host_index = 0
        self._connect_id = 0
        self._ever_connected = False
        self._reconnect_reason: str | None = None   # set while reading; acted on by the loop
        self._moved = False         # the reason is that the member does not lead the ensemble
        self._startup_error: ZbError | None = None
        self._cb_thread = threading.Thread(target=self._callback_main, daemon=True,
                                           name="coordinator-callbacks")
        self._cb_thread.start()
        self._io_thread = threading.Thread(target=self._io_main, daemon=True,
                                           name="coordinator-io")
        self._io_thread.start()
        wait_s = (connect_timeout_ms or max(session_timeout_ms, 5000)) / 1000
        if not self._connected.wait(wait_s) or self._startup_error:
            err = self._startup_error or ConnectionLoss(
                f"Could not reach a coordinator at {hosts} within {wait_s:g} seconds.")
            self.close()
            raise err

    # --- public API -------------------------------------------------------------------------------
    def create(self, path: str, value: bytes = b"", ephemeral: bool = False,
               sequential: bool = False) -> str:
        return self._wait(self.create_async(path, value, ephemeral, sequential))

    def create_async(self, path, value=b"", ephemeral=False, sequential=False) -> Future:
        return self._submit("create", lambda r: r["path"], path=path, value=bytes(value),
                            ephemeral=bool(ephemeral), sequential=bool(sequential))

    def get(self, path: str) -> tuple[bytes, int]:
        return self._wait(self.get_async(path))

    def get_async(self, path: str) -> Future:
        return self._submit("get", lambda r: (r["value"], r["stat"][0]), path=path)

    def get_with_stat(self, path: str) -> tuple[bytes, Stat]:
        return self._wait(self.get_with_stat_async(path))

    def get_with_stat_async(self, path: str) -> Future:
        return self._submit("get", lambda r: (r["value"], _stat(r["stat"])), path=path)

    def set(self, path: str, value: bytes, version: int = -1) -> int:
        return self._wait(self.set_async(path, value, version))

    def set_async(self, path, value, version=-1) -> Future:
        return self._submit("set", lambda r: r["stat"][0], path=path, value=bytes(value),
                            version=version)

    def delete(self, path: str, version: int = -1) -> None:
        self._wait(self.delete_async(path, version))

    def delete_async(self, path, version=-1) -> Future:
        return self._submit("delete", lambda r: None, path=path, version=version)

    def exists(self, path: str) -> Stat | None:
        return self._wait(self._submit("exists", lambda r: _stat(r["stat"]), path=path))

    def children(self, path: str) -> list[str]:
        return self._wait(self._submit("children", lambda r: r["children"], path=path))

    def multi(self, ops: list[list]) -> list:
        """Apply ``ops`` (built with ``Op``) all or nothing. On failure the exception is the
        first failing operation's, with ``.index`` naming it."""
        return self._wait(self.multi_async(ops))

    def multi_async(self, ops: list[list]) -> Future:
        return self._submit("multi", lambda r: r["results"], ops=list(ops))

    def describe_quorum(self) -> dict:
        """The ensemble as its leader sees it: leader, term, high_watermark (the commit index),
        voters, and per member id, log_end, lag, last_fetch_ms and status."""
        return self._wait(self._submit("quorum", lambda r: {k: v for k, v in r.items()
                                                             if k not in ("id", "err")}))

    def ensure_path(self, path: str) -> None:
        """Create ``path`` and its missing parents as persistent keys (like kazoo's)."""
        protocol.check_path(path)
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            try:
                self.create("/" + "/".join(parts[:i]))
            except NodeExists:
                pass

    def watch(self, prefix: str, callback: Callable[[WatchEvent], None]) -> int:
        """Call ``callback(WatchEvent)`` for every later change of ``prefix`` or any key below
        it, in order. Returns a handle for ``unwatch``."""
        protocol.check_path(prefix)
        w = _Watch(prefix, callback)
        fut = Future()
        self._enqueue(_Request("__watch__", {"watch": w}, fut, None, self._deadline()))
        self._wait(fut)
        return id(w)

    def unwatch(self, handle: int) -> None:
        fut = Future()
        self._enqueue(_Request("__unwatch__", {"handle": handle}, fut, None, self._deadline()))
        self._wait(fut)

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """``callback(state)`` on every session state change: CONNECTED, SUSPENDED (connection
        lost, session may still live), LOST (session expired), CLOSED."""
        self._listeners.append(callback)

    def close(self) -> None:
        """End the session (its ephemeral keys go at once) and stop the threads."""
        if self._closing:
            return
        if self.state == CONNECTED:
            try:
                self._wait(self._submit("close", lambda r: None), timeout_s=2)
            except ZbError:
                pass
        self._closing = True
        self._wake()
        if threading.current_thread() is not self._io_thread:
            self._io_thread.join(5)
        if self.state != LOST:
            self._set_state(CLOSED)
        self._callbacks.put(None)
        if threading.current_thread() is not self._cb_thread:
            self._cb_thread.join(5)
        try:
            os.close(self._wake_r)
            os.close(self._wake_w)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- submission ---------------------------------------------------------------------------------
    def _deadline(self) -> float:
        return time.monotonic() + self.request_timeout_ms / 1000

    def _submit(self, api: str, parse, **fields) -> Future:
        fut = Future()
        self._enqueue(_Request(api, fields, fut, parse, self._deadline()))
        return fut

    def _enqueue(self, req: _Request) -> None:
        if self.state == LOST:
            req.future.set_exception(SessionExpired())
            return
        if self._closing:
            req.future.set_exception(ConnectionLoss("The client is closed."))
            return
        self._outq.append(req)
        self._wake()

    def _wake(self) -> None:
        if threading.get_ident() == self._io_ident:
            return          # the I/O thread takes the queue before it next sleeps
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    def _wait(self, fut: Future, timeout_s: float | None = None):
        try:
            return fut.result(timeout_s if timeout_s is not None
                              else self.request_timeout_ms / 1000 + 1)
        except TimeoutError:
            raise ConnectionLoss("The coordinator did not answer in time.") from None

    # --- I/O thread ---------------------------------------------------------------------------------
    def _io_main(self) -> None:
        self._io_ident = threading.get_ident()
        try:
            self._io_loop()
        except Exception:
            log.exception("coordinator client I/O thread failed")
            self._set_state(CLOSED)
        finally:
            self._fail_all(ConnectionLoss("The client is closed."))
            self._close_socket()
            self._ctx.term()

    def _io_loop(self) -> None:
        backoff_s = 0.05
        attempt_deadline = 0.0
        next_ping = 0.0
        last_recv = time.monotonic()
        while not self._closing and self.state != LOST:
            now = time.monotonic()
            if self._sock is None:
                self._open_socket()
                attempt_deadline = now + min(2.0, max(0.5, self.session_timeout_ms / 3000))
                last_recv = now
            poller = self._poller
            interval_s = self.session_timeout_ms / 3000
            if self.state == CONNECTED:
                timeout_s = max(0.0, min(next_ping, last_recv + 2 * interval_s) - now)
            else:
                timeout_s = max(0.0, attempt_deadline - now)
            timeout_s = min(timeout_s, 0.1)      # request deadlines are checked at least this often
            ready = dict(poller.poll(int(timeout_s * 1000) + 1))
            if self._wake_r in ready or self._outq:
                self._take_submissions()
            if self._sock in ready:
                last_recv = time.monotonic()
                if self.state == CONNECTED:
                    self.last_contact_s = last_recv
                self._read_replies()
                if self._outq:              # callbacks that chained new requests
                    self._take_submissions()
            lost = self._monitor in ready and self._monitor_says_disconnected()
            now = time.monotonic()
            failed, self._reconnect_reason = self._reconnect_reason, None
            if self.state == CONNECTED:
                if failed or lost or now - last_recv > 2 * interval_s:
                    self._connection_lost(failed or ("the connection dropped" if lost
                                                     else "the coordinator went silent"))
                    continue
                if now >= next_ping:
                    self._send_raw("ping", next(self._ids), {})
                    next_ping = now + interval_s
                    for w in self._all_watches:     # registrations that failed: try again
                        if w.active and not w.wid and not w.pending:
                            self._register_watch(w, None)
                backoff_s = 0.05
            elif self.state in (CONNECTING, SUSPENDED) and \
                    (failed or lost or now > attempt_deadline):
                self._close_socket()
                self._host_index = (self._host_index + 1) % len(self.hosts)
                if self._moved:         # a member that does not lead: try the next at once
                    self._moved = False
                    time.sleep(MOVE_PAUSE_S)
                else:
                    time.sleep(min(backoff_s, 1.0))
                    backoff_s = min(backoff_s * 2, 1.0)
            self._expire_requests(now)
            if self.state == CONNECTED and self._waiting:
                pending, self._waiting = self._waiting, collections.deque()
                for req in pending:
                    self._dispatch(req)
            if self._out_frames and self._sock is not None:
                self._flush_out()

    def _open_socket(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        events = zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED_EVENTS
        if len(self.hosts) > 1:     # an ensemble: a member that refuses us is down, move on
            events |= zmq.EVENT_CONNECT_RETRIED
        self._monitor = sock.get_monitor_socket(events)
        self._security.apply(sock)
        sock.connect(self.hosts[self._host_index])
        self._sock = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._connect_id = next(self._ids)
        fields = {"timeout_ms": self.requested_timeout_ms}
        if self.session_id:
            fields["secret"] = self._secret
        self._send_raw("connect", self._connect_id, fields)

    def _close_socket(self) -> None:
        self._out_frames = []
        if self._sock is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(0)
            self._sock.close(0)
            self._sock = self._monitor = None

    def _monitor_says_disconnected(self) -> bool:
        said = False
        while True:
            try:
                msg = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return said
            if msg["event"] & HANDSHAKE_FAILED_EVENTS:
                self._on_handshake_failed(msg["event"])
                said = True
            elif msg["event"] == zmq.EVENT_DISCONNECTED or (
                    msg["event"] == zmq.EVENT_CONNECT_RETRIED and self.state != CONNECTED):
                said = True

    def _on_handshake_failed(self, event: int) -> None:
        host = self.hosts[self._host_index]
        why = handshake_failure(event, host.replace("tcp://", ""), self._security.curve)
        if self._ever_connected:
            if host not in self._handshake_failed:
                log.warning("the coordinator refused the handshake", reason=why)
            self._handshake_failed[host] = why
            return
        self._handshake_failed[host] = why
        if len(self._handshake_failed) >= len(self.hosts):     # every member says no
            self._startup_error = errors.AuthenticationFailed(why)
            self._closing = True
            self._connected.set()

    def _send_raw(self, api: str, req_id: int, fields: dict) -> None:
        self._out_frames.append(protocol.encode_request(api, req_id, self.session_id, **fields))

    def _flush_out(self) -> None:
        """Send the frames queued this loop turn, many requests per message (a msgpack stream
        in one frame), each frame within the coordinator's request and byte limits."""
        frames, self._out_frames = self._out_frames, []
        step, cap = protocol.REQUESTS_PER_MESSAGE_MAX, protocol.FRAME_BYTES_MAX
        start, size = 0, 0
        for i, f in enumerate(frames):
            if i > start and (i - start >= step or size + len(f) > cap):
                self._send_frame(b"".join(frames[start:i]))
                start, size = i, 0
            size += len(f)
        if start < len(frames):
            self._send_frame(b"".join(frames[start:]))

    def _send_frame(self, frame: bytes) -> None:
        try:
            self._sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            pass            # the queue to the coordinator is full: these requests time out

    def _take_submissions(self) -> None:
        self._wake_pending = False
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        outq = self._outq
        while outq:
            req = outq.popleft()
            if self.state == CONNECTED:
                self._dispatch(req)
            else:
                self._waiting.append(req)

    def _dispatch(self, req: _Request) -> None:
        if req.api == "__watch__":
            w = req.fields["watch"]
            self._all_watches.append(w)

            def forget_on_failure(f, w=w):
                if f.exception() is not None and w in self._all_watches:
                    w.active = False
                    self._all_watches.remove(w)
            req.future.add_done_callback(forget_on_failure)
            self._register_watch(w, req.future)
            return
        if req.api == "__unwatch__":
            for w in list(self._all_watches):
                if id(w) == req.fields["handle"]:
                    w.active = False
                    self._all_watches.remove(w)
                    if w.wid:
                        self._watches.pop(w.wid, None)
                        self._send_raw("unwatch", next(self._ids), {"wid": w.wid})
            req.future.set_result(None)
            return
        req_id = next(self._ids)
        frame = protocol.encode_request(req.api, req_id, self.session_id, **req.fields)
        if len(frame) > protocol.FRAME_BYTES_MAX:
            # the coordinator drops a connection that sends a frame this large: refuse it here
            req.future.set_exception(errors.BadArguments(
                f"The {req.api} request is {len(frame)} bytes; the coordinator takes at most "
                f"{protocol.FRAME_BYTES_MAX} bytes in one request."))
            return
        self._inflight[req_id] = req
        self._out_frames.append(frame)

    def _register_watch(self, w: _Watch, future: Future | None) -> None:
        if w.wid:
            self._watches.pop(w.wid, None)
            self._send_raw("unwatch", next(self._ids), {"wid": w.wid})
            w.wid = 0
        since = w.last_zxid
        if since >= 0 and w.seen_at_last_zxid:
            since -= 1          # a gap may fall inside one multi's changes: replay all of it
            w.skip_at_last_zxid = w.seen_at_last_zxid
        w.last_seq = 0
        w.pending = True

        def parse(reply, w=w):
            w.pending = False
            if not w.active:
                if reply.get("wid"):
                    self._send_raw("unwatch", next(self._ids), {"wid": reply["wid"]})
                return None
            w.wid = reply["wid"]
            self._watches[w.wid] = w
            if w.last_zxid < 0:
                w.last_zxid = reply["zxid"]
            if reply.get("resync"):
                w.last_zxid, w.seen_at_last_zxid, w.skip_at_last_zxid = reply["zxid"], 0, 0
                self._callbacks.put((w.callback, WatchEvent("resync", w.prefix, reply["zxid"])))
            return None
        if future is None:          # a re-registration: on failure, the next ping retries it
            future = Future()

            def on_done(f, w=w):
                if f.exception() is not None:
                    w.pending = False
            future.add_done_callback(on_done)
        req_id = next(self._ids)
        self._inflight[req_id] = _Request("watch", {"w": w}, future, parse, self._deadline())
        self._send_raw("watch", req_id, {"prefix": w.prefix, "since_zxid": since})

    def _read_replies(self) -> None:
        sock = self._sock
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            for frame in frames:
                messages, problem = protocol.unpack_stream(frame, limit=1 << 30)
                if problem is not None:
                    log.warning("undecodable frame from the coordinator", problem=problem)
                for msg in messages:
                    self._read_reply(msg)

    def _read_reply(self, msg) -> None:
        if not isinstance(msg, dict):
            return
        if "ev" in msg:
            self._on_event(msg)
            return
        req_id = msg.get("id")
        if req_id == self._connect_id:
            self._on_connect_reply(msg)
            return
        err = protocol.reply_error(msg)
        if isinstance(err, SessionExpired):
            self._session_expired()         # pings too: a dead session is never CONNECTED
        elif isinstance(err, SessionMoved) or (
                "run" in msg and self._run_id is not None and msg["run"] != self._run_id):
            # this connection no longer speaks for the session (a coordinator restart, or the
            # session was resumed elsewhere): resume it on a new connection
            self._reconnect_reason = "the coordinator asked the session to be resumed"
        watches = msg.get("watches")
        if watches:
            for wid, seq in watches.items():
                w = self._watches.get(wid)
                if w is not None and seq > w.last_seq:
                    self._register_watch(w, None)       # missed the tail: catch up
        req = self._inflight.pop(req_id, None)
        if isinstance(err, errors.NotQuorumLeader):
            # an ensemble member that does not lead applied nothing: resume the session at
            # another member and send the request again there
            self._reconnect_reason = "the coordinator is not the ensemble's leader"
            self._moved = True
            if req is not None and req.api != "watch":
                self._waiting.append(req)
            elif req is not None:       # a watch registration: made again at the leader
                w = req.fields["w"]
                w.pending = False
                if w in self._all_watches:
                    self._all_watches.remove(w)
                self._waiting.append(_Request("__watch__", {"watch": w}, req.future, None,
                                              req.deadline))
            return
        if req is None:
            return
        if err is not None:
            if "index" in msg:
                err.index = msg["index"]
            if isinstance(err, SessionMoved):
                err = ConnectionLoss("The session moved while the request was in flight; its "
                                     "outcome is unknown.")
            if not req.future.done():
                req.future.set_exception(err)
            return
        try:
            result = req.parse(msg)
        except Exception as e:      # a reply missing fields: a server bug, surfaced
            req.future.set_exception(errors.UnknownServerError(f"Bad reply: {e!r}"))
            return
        if not req.future.done():
            req.future.set_result(result)

    def _on_connect_reply(self, msg: dict) -> None:
        err = protocol.reply_error(msg)
        if err is not None:
            if isinstance(err, SessionExpired):
                self._session_expired()
            elif isinstance(err, errors.NotQuorumLeader):
                self._reconnect_reason = "the coordinator is not the ensemble's leader"
                self._moved = True
            elif err.retriable or self._ever_connected:
                self._reconnect_reason = f"the coordinator refused the connection ({err})"
            else:                   # a first connect the coordinator will never accept
                self._startup_error = err
                self._connected.set()
                self._closing = True
            return
        self._ever_connected = True
        resumed = self.session_id == msg["sid"]
        self.session_id, self._secret = msg["sid"], msg["secret"]
        self.session_timeout_ms = msg["timeout_ms"]
        grace = msg.get("disconnect_grace_ms")
        self.disconnect_grace_ms = grace if isinstance(grace, int) and grace >= 0 else None
        restarted = self._run_id is not None and msg["run"] != self._run_id
        self._run_id = msg["run"]
        log.debug("coordinator session", sid=self.session_id, resumed=resumed)
        self._set_state(CONNECTED)
        self._connected.set()
        if resumed or restarted:
            for w in self._all_watches:
                self._register_watch(w, None)

    def _on_event(self, msg: dict) -> None:
        if msg["ev"] == "expired":
            self._session_expired()
            return
        if msg["ev"] == "not_leader":       # the ensemble's leader was deposed: move on
            self._reconnect_reason = "the coordinator is no longer the ensemble's leader"
            self._moved = True
            return
        if msg["ev"] != "watch":
            return
        w = self._watches.get(msg["wid"])
        if w is None or not w.active:
            return
        if msg["seq"] != w.last_seq + 1:
            self._register_watch(w, None)
            return
        w.last_seq = msg["seq"]
        zxid = msg["zxid"]
        if zxid == w.last_zxid and w.skip_at_last_zxid:
            w.skip_at_last_zxid -= 1         # already delivered before the gap
            return
        if zxid == w.last_zxid:
            w.seen_at_last_zxid += 1
        else:
            w.last_zxid, w.seen_at_last_zxid, w.skip_at_last_zxid = zxid, 1, 0
        self._callbacks.put((w.callback, WatchEvent(msg["type"], msg["path"], zxid,
                                                    msg["version"], msg["value"])))

    def _connection_lost(self, why: str) -> None:
        log.info("coordinator connection lost; reconnecting", reason=why)
        self._close_socket()
        self._host_index = (self._host_index + 1) % len(self.hosts)
        self._fail_inflight(ConnectionLoss(f"The connection to the coordinator was lost "
                                           f"({why}); the request's outcome is unknown."))
        for w in self._all_watches:
            if w.wid:
                self._watches.pop(w.wid, None)
                w.wid = 0
        self._set_state(SUSPENDED)

    def _session_expired(self) -> None:
        if self.state == LOST:
            return
        self._set_state(LOST)
        self._fail_all(SessionExpired())

    def _expire_requests(self, now: float) -> None:
        if self._waiting and self._waiting[0].deadline < now:
            keep = collections.deque()
            for req in self._waiting:
                if req.deadline < now:
                    req.future.set_exception(ConnectionLoss(
                        "No coordinator connection within the request timeout."))
                else:
                    keep.append(req)
            self._waiting = keep
        late = [i for i, r in self._inflight.items() if r.deadline < now]
        for i in late:
            req = self._inflight.pop(i)
            if not req.future.done():
                req.future.set_exception(ConnectionLoss("The coordinator did not answer "
                                                        "within the request timeout."))

    def _fail_inflight(self, err: ZbError) -> None:
        inflight, self._inflight = self._inflight, {}
        for req in inflight.values():
            if not req.future.done():
                req.future.set_exception(err)

    def _fail_all(self, err: ZbError) -> None:
        self._fail_inflight(err)
        for q in (self._waiting, self._outq):
            while q:
                req = q.popleft()
                if not req.future.done():
                    req.future.set_exception(err)

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        for listener in self._listeners:
            self._callbacks.put((listener, state))

    # --- callback thread -----------------------------------------------------------------------------
    def _callback_main(self) -> None:
        while True:
            item = self._callbacks.get()
            if item is None:
                return
            fn, arg = item
            try:
                fn(arg)
            except Exception:
                log.exception("a coordinator watch or listener callback raised")
