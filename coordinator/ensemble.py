"""A coordinator that is one member of an ensemble: 3 or 5 coordinators replicating one log
with Raft (``coordinator.raft`` decides, this module carries its effects out).

Configured as ZooKeeper is: ``coordinator.id=N`` and one ``server.N=host:peer_port`` line per
member, the same lines on every member. Membership is static: changing it is a rolling restart
of every member with the new list.

How it differs from a single coordinator (``coordinator.server``):

- Only the leader serves clients. The others answer every request with NOT_QUORUM_LEADER
  (nothing applied), and the client library moves on to the next address it was given. A new
  leader holds the requests it gets until it has applied everything committed before its term.
- A write is proposed to Raft and applied to the state when it is committed (a majority has it
  on disk), on every member in log order; its reply and watch events leave then. A write that is
  rejected when applied (a version check, a missing key) still takes its zxid. The records that
  the loop turn appended go to disk in one write (group commit), before any Raft message of that
  turn leaves.
- Reads are linearizable (ReadIndex): the requests of a loop turn that read (get, exists,
  children, watch, a session resume, ping) wait until a majority has answered a heartbeat sent
  after them, and until the state has applied every entry the leader held when they came, so a
  client also sees its own earlier writes. A deposed leader never answers them; a ping answered
  only by a confirmed leader is what lets brokers count their session as alive.
- Sessions are replicated state; their deadlines are the leader's alone. A session's expiry is a
  ``close`` entry the leader writes; a new leader gives every session a fresh deadline of its
  whole timeout, as a restarted single coordinator does, and a client resumes its session there
  with its secret. A deposed leader sends its clients a ``not_leader`` event and forgets their
  connections; requests it had proposed get CONNECTION_LOSS (their outcome is unknown).
- Peers talk over a ROUTER on the peer port (receiving) and one DEALER per other member
  (sending), in ``coordinator.peer_protocol``. A member whose DEALER sees its connection to the
  leader close stands for election at once (``RaftCore.peer_lost``): a crashed leader is
  replaced in well under its election timeout.
"""

from __future__ import annotations

import errno
import os
import queue
import time

import zmq
from prometheus_client.core import GaugeMetricFamily

from coordinator import peer_protocol, protocol
from coordinator.raft import (Append, AppendLog, Committed, InstallSnapshot, NotLeader, Persist,
                              RaftBug, RaftCore, ReadFailed, ReadReady, RestoreSnapshot, Role,
                              RoleChanged, Send, SendSnapshot)
from coordinator.raftlog import RaftLog, check_snapshot_bytes
from coordinator.server import CoordinatorServer, StartupError
from coordinator.state import CoordinatorState
from coordinator.txnlog import RecoveryError
from zbroker import errors
from zbroker.logs import get_logger
from zbroker.security import ClientSecurity, SecurityError

log = get_logger("coordinator.ensemble")

PEER_MESSAGES_PER_TURN_MAX = 512
PEER_SEND_QUEUE_MAX = 10_000        # messages queued to one member (ZeroMQ's SNDHWM)
REFUSALS_REMEMBERED_MAX = 1000      # distinct refusal reasons logged once each
READ_REQUESTS = frozenset({"get", "exists", "children", "watch", "ping", "connect"})
WRITE_REQUESTS = frozenset({"create", "set", "delete", "multi", "close"})


class EnsembleServer(CoordinatorServer):
    def __init__(self, cfg, servers: dict[int, str]):
        super().__init__(cfg)
        self.servers = dict(servers)
        self.me = cfg["coordinator.id"]
        self.ensemble = peer_protocol.fingerprint(self.servers)
        self.core: RaftCore | None = None
        self.raftlog: RaftLog | None = None
        self.peer_router: zmq.Socket | None = None
        self.dealers: dict[int, zmq.Socket] = {}
        self.peer_monitors: dict[zmq.Socket, int] = {}
        self.effects: list = []
        self.peer_out: list[tuple[int, bytes]] = []
        self.pending: dict[int, tuple] = {}     # index -> (term, ident, req_id, make reply)
        self.read_batch: list = []              # (ident, request) read this turn
        self.reads: dict[int, tuple] = {}       # token -> (index floor, batch)
        self.ready_reads: list = []             # (index to apply first, batch), confirmed
        self.held: list = []                    # (ident, request, principal) until we serve
        self.next_token = 1
        self.leader_start = 0                   # our term's marker, while we lead
        self.serving = False
        self.last_heard_ms: dict[int, int] = {}
        self.refused: set[str] = set()
        self.compactions: queue.Queue = queue.Queue()
        self.snapshotting = False
        self.proposed = False                   # proposals this turn, not yet replicated

    # --- start-up -------------------------------------------------------------------------------
    def _bind_peers(self) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        self.security.apply(sock)
        sock.setsockopt(zmq.MAXMSGSIZE, peer_protocol.PEER_FRAME_BYTES_MAX)
        sock.setsockopt(zmq.RCVHWM, PEER_SEND_QUEUE_MAX)
        endpoint = f"tcp://{self.servers[self.me]}"
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as e:
            sock.close(0)
            if e.errno == errno.EADDRINUSE:
                raise StartupError(f"The peer address {endpoint} (server.{self.me}) is already "
                                   f"in use; is another coordinator running?")
            raise StartupError(f"Cannot listen on the peer address {endpoint} "
                               f"(server.{self.me}): {e.strerror}.")
        self.peer_router = sock
        own = self.cfg["curve.client.secret.key.file"] or self.cfg["curve.server.secret.key.file"]
        as_client = ClientSecurity(self.security.protocol, own,
                                   self.cfg["curve.server.secret.key.file"])
        for member, address in sorted(self.servers.items()):
            if member == self.me:
                continue
            d = self.ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.setsockopt(zmq.IMMEDIATE, 1)      # nothing queues for a member that is down
            d.setsockopt(zmq.SNDHWM, PEER_SEND_QUEUE_MAX)
            d.setsockopt(zmq.RECONNECT_IVL, 100)
            d.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            d.setsockopt(zmq.RCVHWM, 1)
            d.setsockopt(zmq.IDENTITY, peer_protocol.identity(self.me))
            try:
                as_client.apply(d)
            except SecurityError as e:
                raise StartupError(str(e))
            self.peer_monitors[d.get_monitor_socket(zmq.EVENT_DISCONNECTED)] = member
            d.connect(f"tcp://{address}")
            self.dealers[member] = d

    def _recover(self, data_dir: str) -> None:
        self.txnlog = self.raftlog = RaftLog(data_dir, self.cfg["snap.retain.count"])
        started = time.monotonic()
        try:
            self.state, entries = self.raftlog.recover_entries()
            term, voted_for = self.raftlog.load_vote()
        except RecoveryError as e:
            raise StartupError(str(e))
        self.history_floor = self.durable_zxid = self.pending_zxid = self.state.zxid
        if entries:
            term = max(term, entries[-1][0])
        self.core = RaftCore(self.me, list(self.servers),
                             election_timeout_s=self.cfg["election.timeout.ms"] / 1000,
                             heartbeat_s=self.cfg["heartbeat.interval.ms"] / 1000,
                             term=term, voted_for=voted_for, log=entries,
                             snapshot_index=self.state.zxid,
                             snapshot_term=self.raftlog.snapshot_term, now=time.monotonic())
        if self.raftlog.truncated_bytes:
            log.warning("cut a torn or corrupt tail off the transaction log: a write that was "
                        "in progress when the coordinator stopped was never acknowledged",
                        bytes=self.raftlog.truncated_bytes)
        log.info("recovered", zxid=self.state.zxid, txns_replayed=0,
                 log_entries=len(entries), term=term, member=self.me,
                 members=sorted(self.servers), torn_bytes_cut=self.raftlog.truncated_bytes,
                 sessions=len(self.state.sessions), keys=len(self.state.nodes),
                 seconds=round(time.monotonic() - started, 3))

    # --- the loop ---------------------------------------------------------------------------------
    def serve_forever(self) -> int:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.peer_router, zmq.POLLIN)
        for mon in self.peer_monitors:
            poller.register(mon, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        tick_s = self.cfg["tick.ms"] / 1000
        step_s = self.core.heartbeat_s / 2
        per_poll = self.cfg["requests.per.poll.max"]
        next_tick = time.monotonic() + tick_s
        exit_code = 0
        while not self.stopping:
            now = time.monotonic()
            wake_at = min(next_tick, now + step_s)
            if self._probe_due is not None:
                wake_at = min(wake_at, self._probe_due)
            if self.disconnected:
                wake_at = min(wake_at, min(self.disconnected.values()))
            timeout_ms = max(0, int((wake_at - now) * 1000) + 1)
            ready = dict(poller.poll(0 if self.carry else timeout_ms))
            try:
                now = time.monotonic()
                if self.peer_router in ready:
                    self._drain_peers(now)
                for mon, member in self.peer_monitors.items():
                    if mon in ready and self._peer_closed(mon):
                        self.effects += self.core.peer_lost(member, now)
                if self.router in ready or self.carry:
                    self._drain_requests(per_poll)
                self._issue_reads(now)
                self.effects += self.core.tick(now)
                self._carry_out(now)
                if self._monitor is not None and self._monitor in ready:
                    self._read_monitor(now)
                if self._probe_due is not None and now >= self._probe_due:
                    self._find_closed_connections(now)
                if self.serving and self.disconnected and \
                        min(self.disconnected.values()) <= now < next_tick:
                    self._expire_sessions(now)
                if now >= next_tick:
                    late = now - next_tick
                    if late > tick_s:
                        self._forgive(late)
                    if self.serving:
                        self._expire_sessions(now)
                    self._take_compactions()
                    self._maybe_snapshot()
                    self._maybe_reload_keys(now)
                    next_tick = now + tick_s
                self._carry_out(now)
                self._flush_ready()
                self._flush_peers()
            except OSError as e:
                log.error("the transaction log cannot be written; stopping", error=str(e))
                exit_code = 1
                break
        self._shutdown()
        return exit_code

    def _peer_closed(self, mon: zmq.Socket) -> bool:
        closed = False
        while True:
            try:
                mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return closed
            closed = True

    def _drain_peers(self, now: float) -> None:
        sock = self.peer_router
        for _ in range(PEER_MESSAGES_PER_TURN_MAX):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._refuse(f"a peer message must be one frame, not {len(frames) - 1}")
                continue
            try:
                sender, msg = peer_protocol.decode(frames[1], self.ensemble, self.me,
                                                   self.core.members)
            except peer_protocol.PeerError as e:
                self._refuse(str(e))
                continue
            if frames[0] != peer_protocol.identity(sender):
                self._refuse(f"a message claiming to come from member {sender} arrived on "
                             f"another connection than that member's")
                continue
            if isinstance(msg, InstallSnapshot):
                snap = check_snapshot_bytes(msg.data)
                if snap is None or snap["zxid"] != msg.last_index:
                    self._refuse(f"member {sender} sent a snapshot that does not check out")
                    continue
            self.last_heard_ms[sender] = int(time.time() * 1000)
            try:
                effects = self.core.receive(msg, now)
            except RaftBug as e:
                self._refuse(f"member {sender} sent a message Raft cannot accept ({e})")
                self.effects += e.effects       # (a newer term it took must still be saved)
                continue
            self.effects += effects
            if any(isinstance(e, RestoreSnapshot) for e in effects):
                self._carry_out(now)        # the kept log is the core's as of this message

    def _refuse(self, reason: str) -> None:
        if reason not in self.refused:
            if len(self.refused) < REFUSALS_REMEMBERED_MAX:
                self.refused.add(reason)
            log.warning("refused a message on the peer port", reason=reason)

    def _flush_peers(self) -> None:
        out, self.peer_out = self.peer_out, []
        for member, frame in out:
            try:
                self.dealers[member].send(frame, zmq.NOBLOCK)
            except zmq.Again:
                pass            # not connected, or far behind: Raft sends again

    # --- carrying out Raft's effects ------------------------------------------------------------
    def _carry_out(self, now: float) -> None:
        """Disk first (term and vote, log entries, a received snapshot: one durable write for
        the entries), then what may only happen once they are durable: messages, applying
        committed entries, answering confirmed reads."""
        if self.proposed:
            self.proposed = False
            self.effects += self.core.replicate(now)
        while self.effects:
            effects, self.effects = self.effects, []
            rl = self.raftlog
            early = self._send_appends_early(effects)
            for e in effects:
                if isinstance(e, AppendLog):
                    rl.truncate_from(e.first_index)
                    for i, (term, body) in enumerate(e.entries):
                        rl.stage(e.first_index + i, term, body)
                elif isinstance(e, Persist):
                    rl.flush()
                    rl.save_vote(e.term, e.voted_for)
                elif isinstance(e, RestoreSnapshot):
                    self._restore(e)
            started = time.monotonic()
            written = rl.flush()
            if written:
                self.log_writes += 1
                self.log_records += written
                self.sync_times.request_done("log", time.monotonic() - started, False)
            for e in effects:
                if isinstance(e, Send):
                    if id(e) not in early:
                        self.peer_out.append((e.to, peer_protocol.encode(
                            self.ensemble, self.me, e.message)))
                elif isinstance(e, Committed):
                    self._apply_to(e.index, now)
                elif isinstance(e, ReadReady):
                    floor, batch = self.reads.pop(e.token, (0, []))
                    self.ready_reads.append((max(floor, e.index), batch))
                elif isinstance(e, ReadFailed):
                    _, batch = self.reads.pop(e.token, (0, []))
                    self._refuse_batch(batch)
                elif isinstance(e, RoleChanged):
                    self._role_changed(e, now)
                elif isinstance(e, SendSnapshot):
                    self._send_snapshot(e.to)
            self._serve_reads()

    def _send_appends_early(self, effects: list) -> set:
        """Send the leader's Append messages before its own log write, so the followers write
        theirs at the same time (Raft section 10.2.1): a leader counts itself toward a commit
        only once the entries are on its own disk, and here that is so before any answer to
        these messages is read, since the write below finishes within this loop turn. Votes and
        answers still leave only after the disk (they promise what is on it)."""
        early = set()
        for e in effects:
            if isinstance(e, Persist):
                break
            if isinstance(e, Send) and isinstance(e.message, Append):
                try:
                    self.dealers[e.to].send(peer_protocol.encode(self.ensemble, self.me,
                                                                 e.message), zmq.NOBLOCK)
                except zmq.Again:
                    pass
                early.add(id(e))
        return early

    def _send_snapshot(self, member: int) -> None:
        core = self.core
        data = self.raftlog.snapshot_bytes(core.snapshot_index)
        if data is None:
            return
        log.info("sending a snapshot to a member that is behind", member=member,
                 index=core.snapshot_index, bytes=len(data))
        msg = InstallSnapshot(core.term, self.me, core.snapshot_index, core.snapshot_term, data)
        self.peer_out.append((member, peer_protocol.encode(self.ensemble, self.me, msg)))

    def _restore(self, e: RestoreSnapshot) -> None:
        snap = check_snapshot_bytes(e.data)
        self.raftlog.flush()
        self.raftlog.restore(e.data, e.last_index, list(self.core.log))
        self.state = CoordinatorState.from_snapshot(snap)
        self.durable_zxid = self.state.zxid
        self.history.clear()
        self.history_bytes = 0
        self.history_floor = self.state.zxid
        self.txns_since_snapshot = 0
        log.info("installed a snapshot from the leader", zxid=e.last_index)

    def _apply_to(self, index: int, now: float) -> None:
        st, core = self.state, self.core
        while st.zxid < index:
            i = st.zxid + 1
            term, body = core.log[i - core.snapshot_index - 1]
            result = err = None
            changes: list = []
            if body is None:
                st.skip(i)
            else:
                try:
                    result, changes = st.apply([i, *body])
                except errors.ZbError as e:
                    st.skip(i)
                    err = e
                except Exception as e:     # a malformed entry: every member refuses it alike
                    st.skip(i)
                    err = errors.UnknownServerError()
                    self._refuse(f"entry {i} cannot be applied ({type(e).__name__})")
            self.txns_since_snapshot += 1
            for change in changes:
                self._remember(change)
                self._notify(change)
            if err is None and body is not None:
                self._applied_session_change(i, body, now)
            pending = self.pending.pop(i, None)
            if pending is not None:
                p_term, ident, req_id, make = pending
                if ident is None:
                    pass
                elif p_term != term:
                    self._send(ident, protocol.encode_error(req_id, errors.ConnectionLoss()))
                elif err is not None:
                    if req_id is not None:
                        fields = {"index": err.index} if hasattr(err, "index") else {}
                        self._send(ident, protocol.encode_error(req_id, err, **fields))
                else:
                    frame = make(result, i)
                    if frame is not None:
                        self._send(ident, frame)
        self.durable_zxid = st.zxid
        if core.role is Role.LEADER and not self.serving and st.zxid >= self.leader_start:
            self._start_serving(now)

    def _expire_sessions(self, now: float) -> None:
        """The leader writes an expiry to the log; the client hears of it, and its watches go,
        only once that is committed (a close a new leader never got did not happen)."""
        expired = [sid for sid, deadline in self.deadlines.items() if deadline < now]
        for sid in expired:
            self.deadlines.pop(sid, None)
            self.disconnected.pop(sid, None)
            index = self._write(["close", sid])
            ident = self.idents.get(sid)
            log.info("session expiring", sid=sid)

            def tell(result, zxid, sid=sid, ident=ident):
                if ident is not None and self.idents.get(sid) == ident:
                    self.idents.pop(sid, None)
                    return protocol.encode_expired_event(sid)
                return None
            self.pending[index] = (self.core.term, ident, None, tell)

    def _applied_session_change(self, index: int, body: list, now: float) -> None:
        kind = body[1]
        if kind == "session" and self.serving:
            self.deadlines.setdefault(index, now + body[2] / 1000)
        elif kind == "close":
            sid = body[2]
            self.deadlines.pop(sid, None)
            self.disconnected.pop(sid, None)
            for wid in list(self.session_watches.get(sid, ())):
                self._drop_watch(wid, sid)

    # --- leadership -------------------------------------------------------------------------------
    def _role_changed(self, e: RoleChanged, now: float) -> None:
        if e.role is Role.LEADER:
            self.leader_start = self.core.last_index
            log.info("elected leader", term=e.term, member=self.me)
            return
        if self.serving or self.held or self.pending or self.ready_reads or self.idents:
            self._deposed()
        log.info("following", term=e.term, leader=e.leader, role=e.role.value)

    def _start_serving(self, now: float) -> None:
        self.serving = True
        for sid, session in self.state.sessions.items():
            self.deadlines[sid] = now + session.timeout_ms / 1000
        log.info("serving as leader", term=self.core.term, zxid=self.state.zxid,
                 sessions=len(self.state.sessions))
        held, self.held = self.held, []
        principal = self.principal
        for ident, req, self.principal in held:     # each checked again as its sender
            self._handle(ident, req)
        self.principal = principal

    def _deposed(self) -> None:
        self.serving = False
        for _, ident, req_id, _ in self.pending.values():
            if ident is None or req_id is None:
                continue            # (an expiry: nobody asked)
            self._send(ident, protocol.encode_error(req_id, errors.ConnectionLoss(
                "The coordinator lost its leadership while the request was in flight; its "
                "outcome is unknown.")))
        self.pending.clear()
        for _, batch in self.ready_reads:
            self._refuse_batch(batch)
        self.ready_reads = []
        self._refuse_batch(self.held)
        self.held = []
        event = protocol.encode_not_leader_event()
        for ident in set(self.idents.values()):
            self._send(ident, event)
        for sid in list(self.session_watches):
            for wid in list(self.session_watches.get(sid, ())):
                self._drop_watch(wid, sid)
        self.idents.clear()
        self.deadlines.clear()
        self.disconnected.clear()
        log.warning("no longer the leader; clients were told to move", term=self.core.term)

    def _refuse_batch(self, batch) -> None:
        for ident, req, *_ in batch:
            self._send(ident, protocol.encode_error(req.get("id"), self._not_leader()))

    def _not_leader(self) -> errors.NotQuorumLeader:
        leader = self.core.leader
        where = (f"member {leader} (server.{leader}={self.servers[leader]}) leads"
                 if leader is not None and leader != self.me else "no leader is known yet")
        return errors.NotQuorumLeader(f"Coordinator {self.me} is not the ensemble's leader "
                                      f"({where}); nothing was applied.")

    # --- requests ---------------------------------------------------------------------------------
    def _send(self, ident: bytes, frame: bytes, watch=None, seq: int = 0,
              now: bool = False) -> None:
        """Everything the state holds is committed, so on a majority's disks (ours among
        them): it goes out with this loop turn."""
        self._send_now(ident, frame, watch, seq)

    def _dispatch(self, ident: bytes, req: dict):
        api = req["api"]
        if not self.serving:
            if self.core.role is Role.LEADER and len(self.held) < self.cfg["request.queue.max"]:
                self.held.append((ident, req, self.principal))
                return None
            raise self._not_leader()
        if len(self.pending) >= self.cfg["request.queue.max"] and \
                api not in ("ping", "connect", "close"):
            raise errors.TooBusy()
        if api == "quorum":
            return protocol.encode_reply(req["id"], **self.quorum_status())
        if api == "connect" and not req.get("sid"):
            return self._open_session(ident, req)
        if api in READ_REQUESTS:
            self.read_batch.append((ident, req))
            return None
        if api not in WRITE_REQUESTS:
            return super()._dispatch(ident, req)        # unwatch: this member's own state
        req_id, sid = req["id"], req.get("sid", 0)
        self._session_for(ident, sid)
        if api == "create":
            index = self._write(["create", sid, req["path"], req.get("value", b""),
                                 req.get("ephemeral", False), req.get("sequential", False)])
            self._reply_at(index, ident, req_id,
                           lambda r, z: protocol.encode_reply(req_id, path=r, zxid=z))
        elif api == "set":
            index = self._write(["set", req["path"], req["value"], req.get("version", -1)])
            self._reply_at(index, ident, req_id,
                           lambda r, z: protocol.encode_reply(req_id, stat=r))
        elif api == "delete":
            index = self._write(["delete", req["path"], req.get("version", -1)])
            self._reply_at(index, ident, req_id,
                           lambda r, z: protocol.encode_reply(req_id, zxid=z))
        elif api == "multi":
            index = self._write(["multi", sid, req["ops"]])
            self._reply_at(index, ident, req_id,
                           lambda r, z: protocol.encode_reply(req_id, results=r, zxid=z))
        else:   # close
            index = self._close_session(sid, "closed")
            self._reply_at(index, ident, req_id, lambda r, z: protocol.encode_reply(req_id))
        return None

    def _reply_at(self, index: int, ident: bytes, req_id, make) -> None:
        self.pending[index] = (self.core.term, ident, req_id, make)

    def _write(self, body: list) -> int:
        """Propose a write; it is applied (and answered) once committed. Returns its index."""
        try:
            proposal, effects = self.core.propose([int(time.time() * 1000), *body],
                                                  time.monotonic(), replicate=False)
        except NotLeader:
            raise self._not_leader() from None
        self.effects += effects
        self.proposed = True        # replicated once for the whole turn, in _carry_out
        return proposal.index

    def _open_session(self, ident: bytes, req: dict) -> None:
        if len(self.state.sessions) >= self.cfg["max.sessions"]:
            raise errors.TooBusy(f"The coordinator holds max.sessions "
                                 f"({self.cfg['max.sessions']}) sessions already.")
        timeout_ms = min(max(req["timeout_ms"], self.cfg["min.session.timeout.ms"]),
                         self.cfg["max.session.timeout.ms"])
        secret = os.urandom(8)
        index = self._write(["session", timeout_ms, secret])
        req_id = req["id"]

        def make(result, sid):
            self.idents[sid] = ident
            self.deadlines[sid] = time.monotonic() + timeout_ms / 1000
            log.info("session opened", sid=sid, timeout_ms=timeout_ms)
            return protocol.encode_reply(
                req_id, sid=sid, secret=secret, timeout_ms=timeout_ms, run=self.run_id,
                zxid=sid, disconnect_grace_ms=self.cfg["session.disconnect.grace.ms"])
        self._reply_at(index, ident, req_id, make)
        return None

    def _issue_reads(self, now: float) -> None:
        if not self.read_batch:
            return
        batch, self.read_batch = self.read_batch, []
        token = self.next_token
        self.next_token += 1
        self.reads[token] = (self.core.last_index, batch)
        self.effects += self.core.read(token, now)

    def _serve_reads(self) -> None:
        if not self.ready_reads:
            return
        applied = self.state.zxid
        keep = []
        for index, batch in self.ready_reads:
            if index > applied:
                keep.append((index, batch))
                continue
            for ident, req in batch:
                try:
                    reply = CoordinatorServer._dispatch(self, ident, req)
                except errors.ZbError as e:
                    fields = {"index": e.index} if hasattr(e, "index") else {}
                    reply = protocol.encode_error(req.get("id"), e, **fields)
                except Exception:
                    log.exception("request handler failed", request_id=req.get("id"))
                    reply = protocol.encode_error(req.get("id"), errors.UnknownServerError())
                if reply is not None:
                    self._send(ident, reply)
        self.ready_reads = keep

    def _collect_quorum_metrics(self):
        from zbroker.metrics import gauge
        core = self.core
        yield gauge("zbroker_coordinator_raft_leader", "1 while this member leads.",
                    1 if core.role is Role.LEADER else 0)
        yield gauge("zbroker_coordinator_raft_term", "The member's Raft term.", core.term)
        yield gauge("zbroker_coordinator_raft_commit_index", "The commit index.",
                    core.commit_index)
        yield gauge("zbroker_coordinator_raft_log_end", "The last index in this member's log.",
                    core.last_index)
        if core.role is Role.LEADER:
            lag = GaugeMetricFamily("zbroker_coordinator_raft_follower_lag",
                                    "Entries each follower lacks (on the leader).",
                                    labels=["member"])
            for m, match in sorted(dict(core.match_index).items()):
                lag.add_metric([str(m)], core.last_index - match)
            yield lag

    def quorum_status(self) -> dict:
        core = self.core
        now_ms = int(time.time() * 1000)
        leading = core.role is Role.LEADER
        members = []
        for m in core.members:
            if m == self.me:
                log_end, last = core.last_index, now_ms
            else:
                log_end = core.match_index.get(m, 0) if leading else -1
                last = self.last_heard_ms.get(m, -1)
            members.append({"id": m, "log_end": log_end,
                            "lag": core.last_index - log_end if log_end >= 0 else -1,
                            "last_fetch_ms": last,
                            "status": "Leader" if m == core.leader else "Follower"})
        return {"leader": core.leader if core.leader is not None else -1, "term": core.term,
                "high_watermark": core.commit_index, "voters": list(core.members),
                "members": members}

    # --- snapshots --------------------------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        if self.snapshotting or self.txns_since_snapshot < self.cfg["snap.count"]:
            return
        index = self.state.zxid
        if index <= self.core.snapshot_index:
            return
        rl = self.raftlog
        rl.flush()
        rl.roll(rl.last_index + 1)
        snap = self.state.to_snapshot()
        snap["term"] = self.core.term_at(index)
        self.snapshotting = True
        self.snapshot_jobs.put((index, snap))
        self.txns_since_snapshot = 0

    def _snapshot_done(self, zxid: int, snapshot: dict, ok: bool) -> None:
        self.compactions.put((zxid, snapshot["term"], ok))

    def _take_compactions(self) -> None:
        while True:
            try:
                index, term, ok = self.compactions.get_nowait()
            except queue.Empty:
                return
            self.snapshotting = False
            if ok and index > self.core.snapshot_index:
                self.core.compacted(index, term)
                self.raftlog.compact(index)

    # --- shutdown ---------------------------------------------------------------------------------
    def _sync_log(self) -> None:
        self.raftlog.flush()

    def _shutdown(self) -> None:
        self._flush_peers()
        for mon in self.peer_monitors:
            mon.close(0)
        for d in self.dealers.values():
            try:
                d.disable_monitor()
            except zmq.ZMQError:
                pass
            d.close(0)
        self.peer_router.close(0)
        super()._shutdown()
