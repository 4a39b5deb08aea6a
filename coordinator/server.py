"""The coordinator server: one process, one event loop, one ROUTER socket.

Loop shape (STYLE 3): poll with a timeout of the time until the next tick, handle a bounded number
of ready requests, write their transaction records to the log in one durable write, release the
replies and watch events that were waiting for it, then run the tick (session expiry, snapshots).
Writes are applied to the in-memory state at once (so pipelined requests see each other), and
every reply and watch event waits in the outbox until the log is on disk up to the state it
observed. Group commit falls out of this: the records of every request handled in one loop turn
go out in one O_DSYNC write, and requests that arrive meanwhile queue in the socket for the next.

The log write is done on the loop thread on purpose. A writer thread was measured first: handing
each batch over and taking the "durable" notice back cost more than the write itself (two GIL
hand-offs and two wake-ups per batch), and writes per second at 32 in flight were about a third
lower. A write of one batch takes a few hundred microseconds, well inside every timer's slack.
Snapshots, which take longer, are written by a background thread.

Sessions across a restart: sessions are part of the logged state, so they survive a restart of
the coordinator, with their ephemeral keys. Each recovered session gets a fresh deadline of its
full timeout from the moment the coordinator is serving again; a client that reconnects within
that time keeps its session, one that does not is expired then (a logged close).

Closed connections: a socket monitor tells the loop when a client's connection closes (the
process died, the kernel reset it). The loop then finds which sessions lost their connection
by sending each bound identity an empty frame with ROUTER_MANDATORY on (an identity that is no
longer connected is refused at once; clients ignore empty frames), and expires those sessions
``session.disconnect.grace.ms`` later unless they resume on a new connection first. A client
that is silent with its connection still open (a hung process, a network partition) still
waits for its session timeout. (libzmq's ROUTER_NOTIFY would name the identity directly, but is
a draft option the released libraries do not build.)
"""

from __future__ import annotations

import argparse
import collections
import errno
import fcntl
import os
import queue
import re
import signal
import sys
import threading
import time

import zmq

from coordinator import protocol
from coordinator.state import Change, CoordinatorState
from coordinator.txnlog import RecoveryError, TxnLog, encode_record
from zbroker import acl, errors
from zbroker.config import (ConfigDef, ConfigError, Setting, load_properties, parse_overrides,
                            server_arg_parser)
from zbroker.logs import configure_logging, get_logger
from zbroker import metrics
from zbroker.metrics import Counts
from zbroker.security import SecurityError, ServerSecurity

log = get_logger("coordinator")

PROBE_DELAY_S = 0.01
KEYS_RELOAD_S = 2.0         # how often curve.authorized.keys.dir is looked at for changes        # after a connection closed, how soon its sessions are looked for

CONFIG = ConfigDef([
    Setting("listeners", list, ["tcp://0.0.0.0:2181"],
            "Addresses to listen on, as tcp://host:port (comma-separated)."),
    Setting("data.dir", str, "/tmp/zb-coordinator",
            "Directory for the transaction log and snapshots."),
    Setting("tick.ms", int, 200, "Granularity of session expiry checks.", min=10, max=60000),
    Setting("min.session.timeout.ms", int, 400,
            "Smallest session timeout granted; requests below are raised to it.", min=20),
    Setting("max.session.timeout.ms", int, 60000,
            "Largest session timeout granted; requests above are lowered to it.", min=20),
    Setting("session.disconnect.grace.ms", int, 500,
            "After a client's connection closes, expire its session this much later unless it "
            "resumes it on a new connection first; -1 waits for the session timeout.", min=-1),
    Setting("snap.count", int, 100000,
            "Transactions between snapshots (the log rolls at each snapshot).", min=10),
    Setting("snap.retain.count", int, 3, "Snapshots (and the logs they need) to keep.", min=1),
    Setting("max.sessions", int, 10000,
            "Open sessions at most; a new session beyond it is refused with TOO_BUSY.", min=1),
    Setting("request.queue.max", int, 100000,
            "Replies waiting for the disk before new requests get TOO_BUSY.", min=100),
    Setting("requests.per.poll.max", int, 16,
            "Requests handled per loop turn; their log records go out in one write and their "
            "replies right after it.", min=1),
    Setting("metrics.listener", str, "",
            "Serve Prometheus metrics over HTTP here (http://0.0.0.0:9405); empty: off."),
    Setting("security.protocol", str, "PLAINTEXT",
            "PLAINTEXT, or CURVE: only clients whose public key is in curve.authorized.keys.dir "
            "get past the handshake (on the client port and, in an ensemble, the peer port).",
            choices=("PLAINTEXT", "CURVE")),
    Setting("curve.server.secret.key.file", str, "",
            "CURVE: the server key pair (NAME.key_secret from zb-keys); clients check its "
            "public key."),
    Setting("curve.authorized.keys.dir", str, "",
            "CURVE: the public keys (*.key) allowed to connect; a file's name is its principal."),
    Setting("curve.client.secret.key.file", str, "",
            "CURVE in an ensemble: this member's own key pair toward the other members (default: "
            "the server key pair); its public key must be authorized."),
    Setting("authorizer.enable", bool, False,
            "Let only super.users write (create, set, delete, multi); everyone else may read. "
            "Connections without a CURVE key are User:ANONYMOUS."),
    Setting("super.users", str, "",
            "With authorizer.enable: the principals that may write, separated by ';' "
            "(User:broker-1;User:admin): the brokers and the administrators."),
    Setting("coordinator.id", int, 1,
            "This member's id in the ensemble: N of its server.N line.", min=0, max=255),
    Setting("election.timeout.ms", int, 500,
            "Ensemble: a follower that hears nothing from the leader for a random time between "
            "this and twice this stands for election.", min=30, max=60000),
    Setting("heartbeat.interval.ms", int, 50,
            "Ensemble: how often the leader tells the followers it is alive; at most a third of "
            "election.timeout.ms.", min=5, max=20000),
    Setting("log.level", str, "INFO", "Log level.",
            choices=("DEBUG", "INFO", "WARNING", "ERROR")),
])


class StartupError(Exception):
    """The coordinator cannot start; the text is one sentence for the operator."""


class Watch:
    __slots__ = ("wid", "sid", "prefix", "seq", "sent_seq")

    def __init__(self, wid: int, sid: int, prefix: str):
        self.wid, self.sid, self.prefix = wid, sid, prefix
        self.seq = 0            # events queued for this watch
        self.sent_seq = 0       # events handed to the socket (what a ping reply reports)


class CoordinatorServer:
    def __init__(self, cfg):
        self.cfg = cfg
        if cfg["min.session.timeout.ms"] > cfg["max.session.timeout.ms"]:
            raise StartupError("min.session.timeout.ms must not exceed max.session.timeout.ms.")
        if cfg["min.session.timeout.ms"] < 2 * cfg["tick.ms"]:
            raise StartupError("min.session.timeout.ms must be at least twice tick.ms.")
        self.run_id = int.from_bytes(os.urandom(6), "big")
        self.ctx = zmq.Context()
        self.router: zmq.Socket | None = None
        self.state: CoordinatorState | None = None
        self.txnlog: TxnLog | None = None
        self.history: collections.deque[Change] = collections.deque()
        self.history_bytes = 0
        self.history_floor = 0          # changes with zxid > floor are all in history
        self.deadlines: dict[int, float] = {}       # sid -> monotonic expiry deadline
        self.idents: dict[int, bytes] = {}          # sid -> ROUTER identity it last spoke from
        self.disconnected: dict[int, float] = {}    # sid -> grace deadline: its connection closed
        self._monitor: zmq.Socket | None = None
        self._probe_due: float | None = None        # when to look for closed connections
        self.watches: dict[int, Watch] = {}
        self.session_watches: dict[int, dict[int, Watch]] = {}     # sid -> wid -> watch
        self.watches_by_prefix: dict[str, list[Watch]] = collections.defaultdict(list)
        self.next_wid = 1
        self.outbox: collections.deque = collections.deque()   # (zxid needed, ident, frame)
        self.ready: dict[bytes, list[bytes]] = {}   # ident -> messages to send now, one frame
        self.carry: tuple | None = None     # (ident, requests, next index, principal): a
        # part-handled message
        # authorizer.enable: the principals that may write (None: everyone), and the principal
        # of the message being handled
        self.writers = acl.parse_super_users(cfg["super.users"]) \
            if cfg["authorizer.enable"] else None
        self.principal = acl.ANONYMOUS
        self.durable_zxid = 0
        self.pending_records: list[bytes] = []
        self.pending_zxid = 0
        self.txns_since_snapshot = 0
        self.snapshot_jobs: queue.Queue = queue.Queue()
        self.log_writes = 0             # durable log writes, and the records they carried
        self.log_records = 0
        self.stopping = False
        self._lock_fd: int | None = None
        self.security: ServerSecurity | None = None
        self.sync_times = Counts()          # "log" -> durable-write latency buckets
        self.metrics_server = None
        self._keys_checked_at = 0.0
        self.authorizer = None

    # --- start-up -------------------------------------------------------------------------------
    def open(self) -> None:
        data_dir = self.cfg["data.dir"]
        try:
            os.makedirs(data_dir, exist_ok=True)
            self._lock_fd = os.open(os.path.join(data_dir, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StartupError(f"The data directory {data_dir} is not usable: {e.strerror}.")
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StartupError(f"Another coordinator is already using the data directory "
                               f"{data_dir}.")
        if not os.access(data_dir, os.W_OK):
            raise StartupError(f"The data directory {data_dir} is not writable.")
        try:
            self.security = ServerSecurity.from_config(self.cfg)
        except SecurityError as e:
            raise StartupError(str(e))
        self.authorizer = self.security.start(self.ctx)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.security.apply(self.router)
        self.router.setsockopt(zmq.MAXMSGSIZE, protocol.FRAME_BYTES_MAX)
        self.router.setsockopt(zmq.SNDHWM, 100_000)
        self.router.setsockopt(zmq.RCVHWM, 100_000)
        for listener in self.cfg["listeners"]:
            endpoint = listener if "://" in listener else f"tcp://{listener}"
            try:
                self.router.bind(endpoint)
            except zmq.ZMQError as e:
                if e.errno == errno.EADDRINUSE:
                    raise StartupError(f"The address {endpoint} is already in use; is another "
                                       f"coordinator running?")
                raise StartupError(f"Cannot listen on {endpoint}: {e.strerror}.")
        if self.cfg["session.disconnect.grace.ms"] >= 0:
            self._monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._bind_peers()
        self._recover(data_dir)
        try:
            self.metrics_server = metrics.serve(self.cfg["metrics.listener"],
                                                self._collect_metrics)
        except metrics.MetricsError as e:
            raise StartupError(str(e))
        self.snapshotter = threading.Thread(target=self._snapshot_main, name="snapshotter",
                                            daemon=True)
        self.snapshotter.start()
        log.info("listening", listeners=self.cfg["listeners"], data_dir=data_dir)

    def _bind_peers(self) -> None:
        """An ensemble member listens on its peer port here (a single coordinator has none)."""

    def _recover(self, data_dir: str) -> None:
        self.txnlog = TxnLog(data_dir, self.cfg["snap.retain.count"])
        started = time.monotonic()
        try:
            self.history_floor = 0
            self.state = self.txnlog.recover(on_change=self._remember)
        except RecoveryError as e:
            raise StartupError(str(e))
        if self.txnlog.snapshot_zxid > self.history_floor:
            self.history_floor = self.txnlog.snapshot_zxid
        # count the replayed records, so a coordinator restarted often still snapshots
        self.txns_since_snapshot = self.txnlog.recovered_txns
        self.durable_zxid = self.pending_zxid = self.state.zxid
        now = time.monotonic()
        for sid, session in self.state.sessions.items():
            self.deadlines[sid] = now + session.timeout_ms / 1000
        if self.txnlog.truncated_bytes:
            log.warning("cut a torn or corrupt tail off the transaction log: a write that was "
                        "in progress when the coordinator stopped was never acknowledged",
                        bytes=self.txnlog.truncated_bytes)
        log.info("recovered", zxid=self.state.zxid, txns_replayed=self.txnlog.recovered_txns,
                 torn_bytes_cut=self.txnlog.truncated_bytes, sessions=len(self.state.sessions),
                 keys=len(self.state.nodes), seconds=round(time.monotonic() - started, 3))

    # --- the log ----------------------------------------------------------------------------------
    def _sync_log(self) -> None:
        """Make every queued record durable, then release what was waiting for it."""
        if self.pending_records:
            data = b"".join(self.pending_records)
            self.log_writes += 1
            self.log_records += len(self.pending_records)
            self.pending_records = []
            started = time.monotonic()
            self.txnlog.append_and_sync(data)
            self.sync_times.request_done("log", time.monotonic() - started, False)
            self.durable_zxid = self.pending_zxid
            self._release_outbox()

    def _snapshot_main(self) -> None:
        while True:
            job = self.snapshot_jobs.get()
            if job is None:
                return
            zxid, snapshot = job
            try:
                self.txnlog.write_snapshot(zxid, snapshot)
                log.info("snapshot written", zxid=zxid)
            except OSError as e:
                log.error("snapshot failed; the log still holds everything", error=str(e))
                self._snapshot_done(zxid, snapshot, False)
            else:
                self._snapshot_done(zxid, snapshot, True)

    def _snapshot_done(self, zxid: int, snapshot: dict, ok: bool) -> None:
        """Called on the snapshot thread once a snapshot is written (or failed)."""

    # --- the loop ---------------------------------------------------------------------------------
    def serve_forever(self) -> int:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        tick_s = self.cfg["tick.ms"] / 1000
        per_poll = self.cfg["requests.per.poll.max"]
        next_tick = time.monotonic() + tick_s
        exit_code = 0
        while not self.stopping:
            wake_at = next_tick
            if self._probe_due is not None:
                wake_at = min(wake_at, self._probe_due)
            if self.disconnected:
                wake_at = min(wake_at, min(self.disconnected.values()))
            timeout_ms = max(0, int((wake_at - time.monotonic()) * 1000) + 1)
            ready = dict(poller.poll(0 if self.carry else timeout_ms))
            try:
                if self.router in ready or self.carry:
                    self._drain_requests(per_poll)
                    self._sync_log()
                now = time.monotonic()
                if self._monitor is not None and self._monitor in ready:
                    self._read_monitor(now)
                if self._probe_due is not None and now >= self._probe_due:
                    self._find_closed_connections(now)
                if self.disconnected and min(self.disconnected.values()) <= now < next_tick:
                    self._expire_sessions(now)
                    self._sync_log()
                    self._flush_ready()
                if now >= next_tick:
                    late = now - next_tick
                    if late > tick_s:
                        self._forgive(late)
                    self._expire_sessions(now)
                    self._sync_log()
                    self._flush_ready()
                    self._maybe_snapshot()
                    self._maybe_reload_keys(now)
                    next_tick = now + tick_s
            except OSError as e:
                # Without a working log nothing more can be acknowledged: stop, loudly. What was
                # acknowledged is on disk; what was not is answered by nobody.
                log.error("the transaction log cannot be written; stopping", error=str(e))
                exit_code = 1
                break
        self._shutdown()
        return exit_code

    def _drain_requests(self, limit: int) -> None:
        """Handle up to ``limit`` request frames. A message holding more frames than that is
        finished in the next turns (``self.carry``), so the log is synced and replies go out
        every ``limit`` requests: the client works on those replies while this loop works on
        the next requests, instead of each side waiting for the other's whole batch."""
        router = self.router
        handled = 0
        while handled < limit:
            if self.carry is None:
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK, copy=self.writers is None)
                except zmq.Again:
                    break
                if self.writers is not None:
                    principal = acl.principal_of(frames[-1])
                    frames = [f.bytes for f in frames]
                ident = frames[0]
                if len(frames) < 2:
                    self._send(ident, protocol.encode_error(None, errors.InvalidRequest(
                        "A message must carry at least one request.")))
                    continue
                requests: list = []
                for frame in frames[1:]:
                    room = protocol.REQUESTS_PER_MESSAGE_MAX - len(requests)
                    found, problem = protocol.unpack_stream(frame, room)
                    requests += found
                    if problem is not None:
                        self._send(ident, protocol.encode_error(
                            None, errors.InvalidRequest(problem)))
                        if len(requests) >= protocol.REQUESTS_PER_MESSAGE_MAX:
                            break
                if not requests:
                    continue
                self.carry = (ident, requests, 0,
                              principal if self.writers is not None else acl.ANONYMOUS)
            ident, requests, start, self.principal = self.carry
            end = min(len(requests), start + limit - handled)
            handle = self._handle
            for i in range(start, end):
                handle(ident, requests[i])
            handled += end - start
            self.carry = None if end >= len(requests) else \
                (ident, requests, end, self.principal)
        self._flush_ready()

    def _release_outbox(self) -> None:
        outbox, durable, ready = self.outbox, self.durable_zxid, self.ready
        while outbox and outbox[0][0] <= durable:
            _, ident, frame, watch, seq = outbox.popleft()
            if watch is not None:
                watch.sent_seq = seq
            frames = ready.get(ident)
            if frames is None:
                ready[ident] = [frame]
            else:
                frames.append(frame)
        self._flush_ready()

    def _flush_ready(self) -> None:
        """Send what is ready: one message per peer, carrying all its reply and event frames."""
        if not self.ready:
            return
        send = self.router.send_multipart
        for ident, frames in self.ready.items():
            send([ident, frames[0] if len(frames) == 1 else b"".join(frames)])
        self.ready = {}

    def _send(self, ident: bytes, frame: bytes, watch: Watch | None = None, seq: int = 0,
              now: bool = False) -> None:
        """Queue a frame for ``ident``; it goes once the log is durable up to everything the
        current state holds (at once when it already is, or when ``now``: pings)."""
        needed = self.state.zxid
        if now or (needed <= self.durable_zxid and not self.outbox):
            self._send_now(ident, frame, watch, seq)
        else:
            self.outbox.append((needed, ident, frame, watch, seq))

    def _send_now(self, ident: bytes, frame: bytes, watch: Watch | None, seq: int) -> None:
        if watch is not None:
            watch.sent_seq = seq
        frames = self.ready.get(ident)
        if frames is None:
            self.ready[ident] = [frame]
        else:
            frames.append(frame)

    # --- requests ---------------------------------------------------------------------------------
    def _handle(self, ident: bytes, request) -> None:
        req_id = None
        try:
            req = protocol.check_request(request)
            req_id = req["id"]
            if len(self.outbox) >= self.cfg["request.queue.max"] and \
                    req["api"] not in ("ping", "connect", "close"):
                raise errors.TooBusy()
            if self.writers is not None and req["api"] in protocol.WRITE_OPS and \
                    self.principal not in self.writers:
                raise errors.NoAuth(f"{self.principal} may not write to this coordinator: only "
                                    f"super.users may (authorizer.enable); nothing was applied.")
            reply = self._dispatch(ident, req)
        except errors.ZbError as e:
            fields = {"index": e.index} if hasattr(e, "index") else {}
            self._send(ident, protocol.encode_error(req_id, e, **fields))
            return
        except Exception:
            log.exception("request handler failed", request_id=req_id)
            self._send(ident, protocol.encode_error(req_id, errors.UnknownServerError()))
            return
        if reply is not None:
            self._send(ident, reply)

    def _dispatch(self, ident: bytes, req: dict) -> bytes | None:
        api, req_id, sid = req["api"], req["id"], req.get("sid", 0)
        if api == "connect":
            return self._connect(ident, req)
        self._session_for(ident, sid)
        st = self.state
        if api == "ping":
            # answered at once (an overloaded coordinator must not starve heartbeats); it reports
            # the watch events already handed to the socket, so a gap in them is a real one
            watches = self.session_watches.get(sid, {})
            self._send(ident, protocol.encode_reply(
                req_id, zxid=self.durable_zxid, run=self.run_id,
                watches={wid: w.sent_seq for wid, w in watches.items()}), now=True)
            return None
        if api == "get":
            node = st.get(req["path"])
            return protocol.encode_reply(req_id, value=node.value, stat=node.stat())
        if api == "exists":
            protocol.check_path(req["path"])
            node = st.nodes.get(req["path"])
            return protocol.encode_reply(req_id, stat=node.stat() if node else None)
        if api == "children":
            return protocol.encode_reply(req_id, children=st.children(req["path"]))
        if api == "create":
            txn = ["create", sid, req["path"], req.get("value", b""),
                   req.get("ephemeral", False), req.get("sequential", False)]
            path = self._write(txn)
            return protocol.encode_reply(req_id, path=path, zxid=st.zxid)
        if api == "set":
            stat = self._write(["set", req["path"], req["value"], req.get("version", -1)])
            return protocol.encode_reply(req_id, stat=stat)
        if api == "delete":
            self._write(["delete", req["path"], req.get("version", -1)])
            return protocol.encode_reply(req_id, zxid=st.zxid)
        if api == "multi":
            results = self._write(["multi", sid, req["ops"]])
            return protocol.encode_reply(req_id, results=results, zxid=st.zxid)
        if api == "watch":
            return self._add_watch(ident, sid, req)
        if api == "unwatch":
            self._drop_watch(req["wid"], sid)
            return protocol.encode_reply(req_id)
        if api == "close":
            self._close_session(sid, "closed")
            return protocol.encode_reply(req_id)
        if api == "quorum":
            return protocol.encode_reply(req_id, **self.quorum_status())
        raise AssertionError(api)

    def _session_for(self, ident: bytes, sid: int):
        """The session a request speaks for, its deadline moved on; raises when the session is
        gone or bound to another connection."""
        session = self.state.sessions.get(sid)
        if session is None:
            raise errors.SessionExpired(f"Session {sid:#x} has expired or never existed.")
        if self.idents.get(sid) != ident:
            # Only the connection that opened or resumed the session (with its secret) speaks
            # for it; anyone else must resume first.
            raise errors.SessionMoved()
        if sid not in self.disconnected:    # (a request left in the pipe of a closed connection
            # does not bring its session back)
            self.deadlines[sid] = time.monotonic() + session.timeout_ms / 1000
        return session

    def _collect_metrics(self):
        """For prometheus_client's HTTP thread: counters and sizes the loop keeps."""
        from zbroker.metrics import gauge, histogram
        from prometheus_client.core import CounterMetricFamily
        yield gauge("zbroker_coordinator_sessions", "Open sessions.", len(self.state.sessions))
        yield gauge("zbroker_coordinator_watches", "Registered watches.", len(self.watches))
        yield gauge("zbroker_coordinator_keys", "Keys in the tree.", len(self.state.nodes))
        yield gauge("zbroker_coordinator_zxid", "The last applied transaction.", self.state.zxid)
        yield CounterMetricFamily("zbroker_coordinator_log_records",
                                  "Records written to the transaction log.",
                                  value=self.log_records)
        yield CounterMetricFamily("zbroker_coordinator_log_syncs",
                                  "Durable writes of the transaction log (group commits).",
                                  value=self.log_writes)
        yield histogram("zbroker_coordinator_log_sync_seconds",
                        "Time of one durable write of the transaction log.", "log",
                        self.sync_times)
        yield gauge("zbroker_coordinator_log_size_bytes", "Bytes in the current log file.",
                    getattr(self.txnlog, "_pos", 0))
        yield from self._collect_quorum_metrics()

    def _collect_quorum_metrics(self):
        return ()

    def quorum_status(self) -> dict:
        """The answer to ``quorum``: a single coordinator is its own leader."""
        me = self.cfg["coordinator.id"]
        return {"leader": me, "term": 0, "high_watermark": self.durable_zxid, "voters": [me],
                "members": [{"id": me, "log_end": self.state.zxid, "lag": 0,
                             "last_fetch_ms": int(time.time() * 1000), "status": "Leader"}]}

    def _connect(self, ident: bytes, req: dict) -> bytes:
        sid = req.get("sid", 0)
        if sid:
            session = self.state.sessions.get(sid)
            if session is None or session.secret != req.get("secret"):
                raise errors.SessionExpired(f"Session {sid:#x} has expired.")
            self.idents[sid] = ident
            self.disconnected.pop(sid, None)
            self.deadlines[sid] = time.monotonic() + session.timeout_ms / 1000
            for wid in list(self.session_watches.get(sid, ())):
                self._drop_watch(wid, sid)          # the client registers them again
            log.info("session resumed", sid=sid)
        else:
            if len(self.state.sessions) >= self.cfg["max.sessions"]:
                raise errors.TooBusy(f"The coordinator holds max.sessions "
                                     f"({self.cfg['max.sessions']}) sessions already.")
            timeout_ms = min(max(req["timeout_ms"], self.cfg["min.session.timeout.ms"]),
                             self.cfg["max.session.timeout.ms"])
            sid = self._write(["session", timeout_ms, os.urandom(8)])
            session = self.state.sessions[sid]
            self.idents[sid] = ident
            self.deadlines[sid] = time.monotonic() + timeout_ms / 1000
            log.info("session opened", sid=sid, timeout_ms=timeout_ms)
        return protocol.encode_reply(req["id"], sid=sid, secret=session.secret,
                                     timeout_ms=session.timeout_ms, run=self.run_id,
                                     zxid=self.state.zxid,
                                     disconnect_grace_ms=self.cfg["session.disconnect.grace.ms"])

    def _write(self, body: list):
        """Apply a write to the state and queue its record; raises ZbError when rejected."""
        st = self.state
        txn = [st.zxid + 1, int(time.time() * 1000), *body]
        result, changes = st.apply(txn)
        self.pending_records.append(encode_record(txn))
        self.pending_zxid = txn[0]
        self.txns_since_snapshot += 1
        for change in changes:
            self._remember(change)
            self._notify(change)
        return result

    def _remember(self, change: Change) -> None:
        """Keep a change for watchers that re-register after a gap, within both limits."""
        history = self.history
        history.append(change)
        self.history_bytes += len(change.path) + len(change.value or b"") + 64
        while len(history) > protocol.WATCH_HISTORY_MAX or \
                self.history_bytes > protocol.WATCH_HISTORY_BYTES_MAX:
            old = history.popleft()
            self.history_bytes -= len(old.path) + len(old.value or b"") + 64
            self.history_floor = old.zxid

    # --- watches ----------------------------------------------------------------------------------
    def _notify(self, change: Change) -> None:
        path = change.path
        prefixes = ["/"]
        idx = path.find("/", 1)
        while idx != -1:
            prefixes.append(path[:idx])
            idx = path.find("/", idx + 1)
        prefixes.append(path)
        for prefix in prefixes:
            for w in self.watches_by_prefix.get(prefix, ()):
                self._send_event(w, change)

    def _send_event(self, w: Watch, change: Change) -> None:
        ident = self.idents.get(w.sid)
        if ident is None:
            return
        w.seq += 1
        self._send(ident, protocol.encode_watch_event(
            w.wid, w.seq, change.zxid, change.type, change.path, change.version, change.value),
            watch=w, seq=w.seq)

    def _add_watch(self, ident: bytes, sid: int, req: dict) -> bytes:
        prefix = req["prefix"]
        protocol.check_path(prefix)
        mine = self.session_watches.setdefault(sid, {})
        if len(mine) >= protocol.WATCHES_PER_SESSION_MAX:
            raise errors.BadArguments(f"A session may hold at most "
                                      f"{protocol.WATCHES_PER_SESSION_MAX} watches.")
        since = req.get("since_zxid", -1)
        resync = 0 <= since < self.history_floor
        missed: list[Change] = []
        if since >= 0 and not resync and since < self.state.zxid:
            for change in self.history:
                if change.zxid > since and protocol.prefix_matches(prefix, change.path):
                    missed.append(change)
                    if len(missed) > protocol.WATCH_REPLAY_MAX:
                        resync, missed = True, []       # cheaper for the client to re-read
                        break
        w = Watch(self.next_wid, sid, prefix)
        self.next_wid += 1
        self.watches[w.wid] = w
        mine[w.wid] = w
        self.watches_by_prefix[prefix].append(w)
        self._send(ident, protocol.encode_reply(req["id"], wid=w.wid, zxid=self.state.zxid,
                                                resync=resync))
        for change in missed:
            self._send_event(w, change)
        return None

    def _drop_watch(self, wid: int, sid: int) -> None:
        w = self.watches.get(wid)
        if w is None or w.sid != sid:
            return
        del self.watches[wid]
        mine = self.session_watches.get(sid)
        if mine is not None:
            mine.pop(wid, None)
            if not mine:
                del self.session_watches[sid]
        lst = self.watches_by_prefix[w.prefix]
        lst.remove(w)
        if not lst:
            del self.watches_by_prefix[w.prefix]

    # --- sessions ---------------------------------------------------------------------------------
    def _read_monitor(self, now: float) -> None:
        """A connection closed: look for the sessions it carried soon (several closing at
        once are looked for together)."""
        while True:
            try:
                self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        if self._probe_due is None:
            self._probe_due = now + PROBE_DELAY_S

    def _find_closed_connections(self, now: float) -> None:
        self._probe_due = None
        grace = self.cfg["session.disconnect.grace.ms"] / 1000
        router = self.router
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            for sid, ident in self.idents.items():
                if sid in self.disconnected:
                    continue
                try:
                    router.send_multipart([ident, b""], zmq.NOBLOCK)
                except zmq.ZMQError as e:
                    if e.errno != zmq.EHOSTUNREACH:
                        continue                # (a full pipe: connected)
                    deadline = now + grace
                    self.disconnected[sid] = deadline
                    if deadline < self.deadlines.get(sid, deadline + 1):
                        self.deadlines[sid] = deadline
                    log.info("session's connection closed", sid=sid,
                             expires_in_ms=round(grace * 1000))
        finally:
            router.setsockopt(zmq.ROUTER_MANDATORY, 0)

    def _close_session(self, sid: int, reason: str):
        written = self._write(["close", sid])
        self.deadlines.pop(sid, None)
        self.disconnected.pop(sid, None)
        for wid in list(self.session_watches.get(sid, ())):
            self._drop_watch(wid, sid)
        if reason != "expired":
            self.idents.pop(sid, None)
        log.info("session ended", sid=sid, reason=reason)
        return written

    def _forgive(self, late_s: float) -> None:
        """The loop fell behind (a stall, a flood): nobody's session expires for our delay."""
        for sid in self.deadlines:
            self.deadlines[sid] += late_s
        for sid in self.disconnected:
            self.disconnected[sid] += late_s
        log.warning("the loop fell behind; session deadlines moved out", seconds=round(late_s, 3))

    def _expire_sessions(self, now: float) -> None:
        expired = [sid for sid, deadline in self.deadlines.items() if deadline < now]
        for sid in expired:
            ident = self.idents.get(sid)
            self._close_session(sid, "expired")
            if ident is not None:
                self._send(ident, protocol.encode_expired_event(sid))
            self.idents.pop(sid, None)

    def _maybe_reload_keys(self, now: float) -> None:
        """Every KEYS_RELOAD_S: pick up key files added to or removed from
        curve.authorized.keys.dir (new connections see the change; open ones keep theirs)."""
        if self.authorizer is None or now < self._keys_checked_at + KEYS_RELOAD_S:
            return
        self._keys_checked_at = now
        if self.authorizer.reload_if_changed():
            log.info("authorized keys changed", keys=len(self.authorizer.principals))

    def _maybe_snapshot(self) -> None:
        if self.txns_since_snapshot < self.cfg["snap.count"]:
            return
        self._sync_log()            # the snapshot covers only what is durable
        zxid = self.state.zxid
        self.txnlog.roll(zxid + 1)
        self.snapshot_jobs.put((zxid, self.state.to_snapshot()))
        self.txns_since_snapshot = 0

    # --- shutdown ---------------------------------------------------------------------------------
    def stop(self, *_args) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        try:
            self._sync_log()
        except OSError:
            pass
        self._flush_ready()
        self.snapshot_jobs.put(None)
        self.snapshotter.join(30)
        self.txnlog.close()
        if self._monitor is not None:
            try:
                self.router.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(0)
        self.router.close(0)
        if self.authorizer is not None:
            self.authorizer.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.ctx.term()
        log.info("stopped", zxid=self.state.zxid, log_writes=self.log_writes,
                 log_records=self.log_records)


_SERVER_KEY = re.compile(r"server\.(\d{1,3})$")


def load_config(path: str | None, overrides) -> tuple:
    """(settings, {member id: "host:peer_port"}) from a properties file and overrides. The
    ``server.N`` lines, as in ZooKeeper's zoo.cfg, list the ensemble; none means a single
    coordinator."""
    props = load_properties(path) if path else {}
    props.update(parse_overrides(overrides))
    servers: dict[int, str] = {}
    for key in [k for k in props if k.startswith("server.")]:
        m = _SERVER_KEY.match(key)
        if not m:
            raise ConfigError(f"Unknown setting {key!r}; an ensemble member is given as "
                              f"server.N=host:peer_port.")
        value = props.pop(key).strip()
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"The setting {key} must be host:peer_port, not {value!r}.")
        servers[int(m.group(1))] = f"{host}:{int(port)}"
    cfg = CONFIG.parse(props)
    if servers and cfg["coordinator.id"] not in servers:
        raise ConfigError(f"coordinator.id={cfg['coordinator.id']} has no server."
                          f"{cfg['coordinator.id']} line; the members are "
                          f"{', '.join(map(str, sorted(servers)))}.")
    if servers and cfg["heartbeat.interval.ms"] * 3 > cfg["election.timeout.ms"]:
        raise ConfigError("heartbeat.interval.ms must be at most a third of "
                          "election.timeout.ms.")
    return cfg, servers


def build_arg_parser() -> argparse.ArgumentParser:
    p = server_arg_parser("zb-coordinator-start",
                          "Start a zbroker coordinator (the cluster's metadata service).",
                          CONFIG)
    p.epilog += ("\n  server.N=host:peer_port (one per member, the same on every member): run "
                 "as one member of an ensemble\n    replicating one log with Raft; this member "
                 "is coordinator.id. Without them the coordinator runs alone.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        cfg, servers = load_config(args.config, args.override)
        try:
            acl.parse_super_users(cfg["super.users"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
    except ConfigError as e:
        print(f"zb-coordinator-start: {e}", file=sys.stderr)
        return 2
    configure_logging(cfg["log.level"], process="coordinator")
    try:
        if servers:
            from coordinator.ensemble import EnsembleServer
            server = EnsembleServer(cfg, servers)
        else:
            server = CoordinatorServer(cfg)
        server.open()
    except StartupError as e:
        print(f"zb-coordinator-start: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    return server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
