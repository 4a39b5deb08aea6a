"""Client-side transport: one DEALER socket per broker, correlation ids, request timeouts,
connection tracking and the cluster metadata snapshot. Speaks ``zbroker.protocol`` only.

A ``NetworkClient`` belongs to one thread (ZeroMQ sockets are not thread-safe): the producer's
and the consumer's I/O threads each own one; the admin client uses one under a lock. Nodes are
broker ids from Metadata, or ``-1, -2, ...`` for the bootstrap addresses before any Metadata has
been seen (as Kafka's clients do).

A socket monitor tells when a connection is up (``ready``) and when it drops: then every request
in flight on it fails with ``BrokerConnectionError`` (retriable, refresh metadata) and the socket
is replaced by a fresh one, so no stale queued request reaches a broker later. A request that
outlives its timeout fails with ``RequestTimedOut`` and also resets the connection.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from clients.errors import BrokerConnectionError, RequestTimedOut, ZbError
from clients.structs import BrokerMetadata, PartitionMetadata
from zbroker import errors, protocol
from zbroker.logs import get_logger
from zbroker.security import (HANDSHAKE_FAILED_EVENTS, ClientSecurity, SecurityError,
                              handshake_failure)

log = get_logger("clients.net")

RECV_PER_TURN_MAX = 10_000       # messages read from one socket per poll turn
SOCKET_HWM = 10_000              # messages queued per socket either way

# handler(header, blobs, error): exactly one of (header, error) is not None
Handler = Callable[[dict | None, list | None, ZbError | None], None]


def client_security(protocol, secret_key_file, server_key_file) -> ClientSecurity:
    """The ``security_protocol``, ``curve_secret_key_file`` and ``curve_server_key_file``
    arguments of Producer, Consumer and AdminClient; a bad one is a ValueError sentence."""
    try:
        return ClientSecurity.from_settings(protocol, secret_key_file, server_key_file)
    except SecurityError as e:
        raise ValueError(str(e)) from None


def parse_bootstrap(servers) -> list[str]:
    """``"h1:p1,h2:p2"`` (or a list of ``"h:p"``) -> ``["h1:p1", "h2:p2"]``, checked."""
    if isinstance(servers, str):
        servers = servers.split(",")
    out = []
    for s in servers:
        s = s.strip()
        if not s:
            continue
        if "://" in s:
            s = s.split("://", 1)[1]
        host, sep, port = s.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"The bootstrap address {s!r} is not host:port.")
        out.append(f"{host}:{int(port)}")
    if not out:
        raise ValueError("No bootstrap address given; expected host:port[,host:port...].")
    return out


HANDSHAKE_FAILURES_FATAL = 3      # handshakes failing in a row (not by a refused key) = refused


class Cluster:
    """An immutable snapshot of what Metadata said: brokers, controller and topics."""

    __slots__ = ("brokers", "controller_id", "cluster_id", "topics", "topic_errors")

    def __init__(self, brokers: dict[int, BrokerMetadata], controller_id: int,
                 cluster_id, topics: dict[str, dict[int, PartitionMetadata]],
                 topic_errors: dict[str, int]):
        self.brokers = brokers
        self.controller_id = controller_id
        self.cluster_id = cluster_id
        self.topics = topics                # name -> {partition: PartitionMetadata}
        self.topic_errors = topic_errors    # name -> error code, for topics Metadata refused

    @staticmethod
    def empty() -> "Cluster":
        return Cluster({}, -1, None, {}, {})

    def merged(self, header: dict, requested: list[str] | None) -> "Cluster":
        """A new snapshot: brokers and controller from ``header``; topics replaced wholesale when
        all were asked for, else only those the response names."""
        brokers = {}
        for b in protocol.decode_entries(protocol.BrokerEntry, header.get("brokers") or [],
                                         "Metadata broker"):
            brokers[b.node_id] = BrokerMetadata(b.node_id, b.host, b.port, b.rack)
        if requested is None:
            topics, topic_errors = {}, {}
        else:
            topics, topic_errors = dict(self.topics), dict(self.topic_errors)
        for t in protocol.decode_entries(protocol.TopicMetadataEntry, header.get("topics") or [],
                                         "Metadata topic"):
            if t.err:
                topics.pop(t.name, None)
                topic_errors[t.name] = t.err
                continue
            topic_errors.pop(t.name, None)
            topics[t.name] = {
                p.partition: PartitionMetadata(t.name, p.partition, p.leader, p.leader_epoch,
                                               list(p.replicas), list(p.isr),
                                               list(p.offline_replicas or ()), p.err)
                for p in protocol.decode_entries(protocol.PartitionMetadataEntry, t.partitions,
                                                 "Metadata partition")}
        return Cluster(brokers, header.get("controller_id", -1), header.get("cluster_id"),
                       topics, topic_errors)

    def leader(self, topic: str, partition: int) -> int:
        """The leader's broker id, or -1 when unknown or not among the live brokers."""
        parts = self.topics.get(topic)
        if parts is None:
            return -1
        p = parts.get(partition)
        if p is None or p.leader not in self.brokers:
            return -1
        return p.leader

    def leader_epoch(self, topic: str, partition: int) -> int:
        parts = self.topics.get(topic)
        p = parts.get(partition) if parts else None
        return p.leader_epoch if p is not None else -1


class _Pending:
    __slots__ = ("api", "handler", "deadline")

    def __init__(self, api, handler, deadline):
        self.api, self.handler, self.deadline = api, handler, deadline


class _Conn:
    __slots__ = ("node_id", "address", "sock", "monitor", "pending", "connected")

    def __init__(self, node_id, address, sock, monitor):
        self.node_id, self.address, self.sock, self.monitor = node_id, address, sock, monitor
        self.pending: dict[int, _Pending] = {}
        self.connected = False


class NetworkClient:
    def __init__(self, bootstrap_servers, *, request_timeout_ms: int = 30000,
                 security: ClientSecurity | None = None):
        self.bootstrap = parse_bootstrap(bootstrap_servers)
        self.security = security or ClientSecurity()
        self._refused: set[str] = set()         # addresses whose refusal was logged
        self._handshake_failures: dict[str, int] = {}   # address -> failures in a row
        self._handshook: set[str] = set()       # addresses a handshake ever succeeded with
        self.bootstrap_text = ",".join(self.bootstrap)
        self.request_timeout_ms = request_timeout_ms
        self.cluster = Cluster.empty()
        self._ctx = zmq.Context()
        self._conns: dict[int, _Conn] = {}
        self._by_socket: dict[zmq.Socket, _Conn] = {}
        self._by_monitor: dict[zmq.Socket, _Conn] = {}
        self._ids = itertools.count(1)
        self._extra_fds: list[int] = []
        self._poller: zmq.Poller | None = None

    # --- nodes --------------------------------------------------------------------------------
    def bootstrap_nodes(self) -> list[int]:
        return [-1 - i for i in range(len(self.bootstrap))]

    def address_of(self, node_id: int) -> str | None:
        if node_id < 0:
            i = -1 - node_id
            return self.bootstrap[i] if i < len(self.bootstrap) else None
        b = self.cluster.brokers.get(node_id)
        return f"{b.host}:{b.port}" if b is not None else None

    def describe(self, node_id: int) -> str:
        addr = self.address_of(node_id) or "?"
        return f"broker {node_id} at {addr}" if node_id >= 0 else f"{addr}"

    def add_wake_fd(self, fd: int) -> None:
        self._extra_fds.append(fd)
        self._poller = None

    def ready(self, node_id: int) -> bool:
        """True when the connection to ``node_id`` is up; starts connecting when there is none."""
        conn = self._conns.get(node_id)
        if conn is None:
            conn = self._open(node_id)
            if conn is None:
                return False
        return conn.connected

    def in_flight(self, node_id: int) -> int:
        conn = self._conns.get(node_id)
        return len(conn.pending) if conn is not None else 0

    def total_in_flight(self) -> int:
        return sum(len(c.pending) for c in self._conns.values())

    def _open(self, node_id: int) -> _Conn | None:
        address = self.address_of(node_id)
        if address is None:
            return None
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, SOCKET_HWM)
        sock.setsockopt(zmq.RCVHWM, SOCKET_HWM)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.security.apply(sock)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED |
                                          zmq.EVENT_HANDSHAKE_SUCCEEDED |
                                          HANDSHAKE_FAILED_EVENTS)
        sock.connect("tcp://" + address)
        conn = _Conn(node_id, address, sock, monitor)
        self._conns[node_id] = conn
        self._by_socket[sock] = conn
        self._by_monitor[monitor] = conn
        self._poller = None
        return conn

    def _close_conn(self, conn: _Conn, error: ZbError | None) -> None:
        self._conns.pop(conn.node_id, None)
        self._by_socket.pop(conn.sock, None)
        self._by_monitor.pop(conn.monitor, None)
        self._poller = None
        try:
            conn.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        conn.monitor.close(0)
        conn.sock.close(0)
        pending, conn.pending = conn.pending, {}
        for p in pending.values():
            self._call(p.handler, None, None, error or BrokerConnectionError())

    def reset(self, node_id: int, why: str) -> None:
        """Drop the connection to ``node_id`` (its requests in flight fail) and reconnect."""
        conn = self._conns.get(node_id)
        if conn is not None:
            log.info("dropping broker connection", node=node_id, address=conn.address,
                     reason=why)
            self._close_conn(conn, BrokerConnectionError(
                f"The connection to {self.describe(node_id)} was reset: {why}."))

    def sync_nodes(self) -> None:
        """After a metadata change: close connections to brokers that left or moved."""
        for node_id, conn in list(self._conns.items()):
            if node_id >= 0 and self.address_of(node_id) != conn.address:
                self.reset(node_id, "the broker left or moved")

    # --- requests -----------------------------------------------------------------------------
    def send(self, node_id: int, api: str, fields: dict, blobs: list | None = None,
             handler: Handler | None = None, timeout_ms: int | None = None) -> int:
        """Send a request; ``handler`` is called on this thread with the response (or the
        error). With ``handler=None`` no response is expected (Produce with acks=0).
        Raises BrokerConnectionError when the node is unknown or its queue is full."""
        conn = self._conns.get(node_id) or self._open(node_id)
        if conn is None:
            raise BrokerConnectionError(f"Broker {node_id} is not in the metadata.")
        req_id = next(self._ids)
        frames = protocol.encode_request(api, req_id, blobs, **fields)
        try:
            conn.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            raise BrokerConnectionError(f"The send queue to {self.describe(node_id)} is "
                                        f"full.") from None
        if handler is not None:
            timeout_ms = self.request_timeout_ms if timeout_ms is None else timeout_ms
            conn.pending[req_id] = _Pending(api, handler, time.monotonic() + timeout_ms / 1000)
        return req_id

    def poll(self, timeout_s: float) -> list[int]:
        """Wait up to ``timeout_s`` for responses and connection events, handle them, expire
        late requests. Returns the wake fds that were readable."""
        if self._poller is None:
            poller = zmq.Poller()
            for conn in self._conns.values():
                poller.register(conn.sock, zmq.POLLIN)
                poller.register(conn.monitor, zmq.POLLIN)
            for fd in self._extra_fds:
                poller.register(fd, zmq.POLLIN)
            self._poller = poller
        events = self._poller.poll(max(0, int(timeout_s * 1000 + 0.999)))
        woken = []
        for sock, _ in events:
            conn = self._by_socket.get(sock)
            if conn is not None:
                self._read(conn)
                continue
            conn = self._by_monitor.get(sock)
            if conn is not None:
                self._read_monitor(conn)
                continue
            if isinstance(sock, int):
                woken.append(sock)
        self.expire(time.monotonic())
        return woken

    def _read(self, conn: _Conn) -> None:
        sock, conns = conn.sock, self._conns
        for _ in range(RECV_PER_TURN_MAX):
            if conns.get(conn.node_id) is not conn:     # a handler reset the connection
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                header, blobs = protocol.decode_response(frames)
            except Exception:
                log.warning("undecodable response", node=conn.node_id)
                continue
            pending = conn.pending.pop(header.get("id"), None)
            if pending is None:
                continue                    # timed out earlier, or not ours
            err = protocol.response_error(header)
            if err is not None:
                self._call(pending.handler, None, None, err)
            else:
                self._call(pending.handler, header, blobs, None)

    def _read_monitor(self, conn: _Conn) -> None:
        while conn.node_id in self._conns and self._conns[conn.node_id] is conn:
            try:
                msg = recv_monitor_message(conn.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg["event"] == zmq.EVENT_CONNECTED:
                conn.connected = True
            elif msg["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_failures.pop(conn.address, None)
                self._handshook.add(conn.address)
            elif msg["event"] & HANDSHAKE_FAILED_EVENTS:
                # refused during the handshake: no request of ours was read; retrying with
                # the same keys cannot help, so the requests fail with the reason. A refused
                # key (AUTH) says so for sure; at an address that took our keys before, the
                # other failures also come from a server that died during the handshake
                # (kill -9 under load): that is a lost connection, unless it goes on
                failures = self._handshake_failures.get(conn.address, 0) + 1
                self._handshake_failures[conn.address] = failures
                if msg["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH and \
                        conn.address in self._handshook and failures < HANDSHAKE_FAILURES_FATAL:
                    log.info("broker handshake failed; taken as a lost connection",
                             node=conn.node_id, address=conn.address)
                    self._close_conn(conn, BrokerConnectionError(
                        f"The connection to {self.describe(conn.node_id)} was lost during "
                        f"its handshake."))
                    return
                why = handshake_failure(msg["event"], conn.address, self.security.curve)
                if conn.address not in self._refused:
                    self._refused.add(conn.address)
                    log.warning("broker refused the handshake", node=conn.node_id, reason=why)
                self._close_conn(conn, errors.AuthenticationFailed(why))
                return
            elif msg["event"] == zmq.EVENT_DISCONNECTED:
                log.info("broker connection lost", node=conn.node_id, address=conn.address)
                self._close_conn(conn, BrokerConnectionError(
                    f"The connection to {self.describe(conn.node_id)} was lost."))
                return

    def expire(self, now: float) -> None:
        for conn in list(self._conns.values()):
            late = [i for i, p in conn.pending.items() if p.deadline < now]
            if not late:
                continue
            for i in late:
                p = conn.pending.pop(i)
                self._call(p.handler, None, None, RequestTimedOut(
                    f"{self.describe(conn.node_id).capitalize()} did not answer a {p.api} "
                    f"request within {self.request_timeout_ms} ms."))
            if self._conns.get(conn.node_id) is conn:
                self._close_conn(conn, BrokerConnectionError(
                    f"The connection to {self.describe(conn.node_id)} was reset after a "
                    f"request timed out."))

    def next_deadline(self) -> float | None:
        d = None
        for conn in self._conns.values():
            for p in conn.pending.values():
                if d is None or p.deadline < d:
                    d = p.deadline
        return d

    @staticmethod
    def _call(handler, header, blobs, error) -> None:
        try:
            handler(header, blobs, error)
        except Exception:
            log.exception("a response handler raised")

    # --- metadata -----------------------------------------------------------------------------
    def metadata_nodes(self) -> list[int]:
        """Where to ask for metadata: known brokers that are connected (least busy first), else
        every known broker, else the bootstrap addresses."""
        brokers = list(self.cluster.brokers)
        ready = [n for n in brokers if n in self._conns and self._conns[n].connected]
        if ready:
            return sorted(ready, key=self.in_flight)
        return brokers or self.bootstrap_nodes()

    def request_metadata(self, topics: list[str] | None, on_done: Callable[[ZbError | None],
                         None] | None = None, allow_auto_create: bool = False,
                         timeout_ms: int | None = None) -> None:
        """Ask for metadata; the answer updates ``self.cluster``, then ``on_done(error)`` runs.
        When no connection is up, the request goes to every candidate node at once and the
        first answer wins."""
        nodes = self.metadata_nodes()
        ready = [n for n in nodes if n in self._conns and self._conns[n].connected]
        targets = ready[:1] or nodes
        state = {"open": len(targets), "done": False}
        req_topics = list(topics) if topics is not None else None

        def handler(header, blobs, error):
            state["open"] -= 1
            if state["done"]:
                return
            if error is None:
                try:
                    cluster = self.cluster.merged(header, req_topics)
                except ZbError as e:        # a response that does not fit the protocol
                    error = e
                else:
                    state["done"] = True
                    self.cluster = cluster
                    self.sync_nodes()
            if error is None:
                pass
            elif state["open"] > 0 and not isinstance(error, errors.AuthenticationFailed):
                return                      # another node may still answer (not when one
                # refused our keys: every broker of a cluster has the same)
            else:
                state["done"] = True
            if on_done is not None:
                on_done(error)

        for node in targets:
            try:
                self.send(node, "Metadata", {"topics": req_topics,
                                             "allow_auto_create": allow_auto_create},
                          handler=handler, timeout_ms=timeout_ms)
            except ZbError as e:
                handler(None, None, e)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._close_conn(conn, BrokerConnectionError("The client is closed."))
        self._ctx.term()


def topic_error(code: int, topic: str, where: str) -> ZbError:
    """The exception for a topic Metadata refused, with a sentence naming it."""
    cls = errors.error_for_code(code)
    if cls is errors.UnknownTopicOrPartition:
        return cls(f"The topic {topic!r} does not exist on the cluster at {where}.")
    return cls(f"Metadata for the topic {topic!r} failed: {cls.message}")
