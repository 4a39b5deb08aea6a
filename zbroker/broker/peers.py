"""Requests from this broker to other brokers, on the broker's loop: one DEALER socket per peer,
registered in the loop's poller, answers matched by correlation id, and a timeout after which
the callback hears RequestTimedOut and the socket is replaced (a request lost with a
connection is never answered).

Used by the group coordinator to ask a partition's leader where its log ends. (Replication has
its own fetchers, fetcher.py; the clients' NetworkClient blocks in its own poll, which the
broker's loop cannot.)
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import zmq

from zbroker import errors, protocol
from zbroker.logs import get_logger

log = get_logger("zbroker.broker.peers")

PEER_REQUESTS_MAX = 10_000          # in flight at once, all peers together

Callback = Callable[[dict | None, errors.ZbError | None], None]


class _Peer:
    __slots__ = ("broker_id", "endpoint", "sock")

    def __init__(self, broker_id: int, endpoint: str, sock):
        self.broker_id, self.endpoint, self.sock = broker_id, endpoint, sock


class PeerClient:
    def __init__(self, server, ctx: zmq.Context, poller: zmq.Poller):
        self.server = server
        self.ctx = ctx
        self.poller = poller
        self.peers: dict[int, _Peer] = {}
        self.by_socket: dict[zmq.Socket, _Peer] = {}
        self.pending: dict[int, tuple[int, Callback, float]] = {}   # id -> (peer, cb, deadline)
        self._ids = itertools.count(1)

    def owns(self, sock) -> bool:
        return sock in self.by_socket

    def request(self, broker_id: int, api: str, fields: dict, callback: Callback,
                timeout_s: float) -> None:
        """Send ``api`` to broker ``broker_id``; ``callback(header, None)`` with its answer or
        ``callback(None, error)``, on this loop."""
        info = self.server.image.brokers.get(broker_id)
        if info is None:
            callback(None, errors.BrokerNotAvailable(f"Broker {broker_id} is not registered."))
            return
        if len(self.pending) >= PEER_REQUESTS_MAX:
            callback(None, errors.TooBusy("Too many requests to other brokers in flight."))
            return
        peer = self._peer(broker_id, f"tcp://{info.host}:{info.port}")
        req_id = next(self._ids)
        try:
            peer.sock.send_multipart(protocol.encode_request(api, req_id, **fields), zmq.NOBLOCK)
        except zmq.ZMQError as e:
            callback(None, errors.BrokerNotAvailable(f"Broker {broker_id} cannot be reached: "
                                                     f"{e.strerror}."))
            return
        self.pending[req_id] = (broker_id, callback, time.monotonic() + timeout_s)

    def _peer(self, broker_id: int, endpoint: str) -> _Peer:
        peer = self.peers.get(broker_id)
        if peer is not None and peer.endpoint == endpoint:
            return peer
        if peer is not None:
            self._close(peer)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self.server.peer_security.apply(sock)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.FRAME_BYTES_MAX)
        sock.connect(endpoint)
        self.poller.register(sock, zmq.POLLIN)
        peer = _Peer(broker_id, endpoint, sock)
        self.peers[broker_id] = peer
        self.by_socket[sock] = peer
        return peer

    def _close(self, peer: _Peer) -> None:
        self.peers.pop(peer.broker_id, None)
        self.by_socket.pop(peer.sock, None)
        self.poller.unregister(peer.sock)
        peer.sock.close(0)

    def on_readable(self, sock) -> None:
        peer = self.by_socket.get(sock)
        if peer is None:
            return
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                header, _ = protocol.decode_response(frames)
            except Exception:
                log.warning("an undecodable answer from another broker", broker=peer.broker_id)
                continue
            got = self.pending.pop(header.get("id"), None)
            if got is None:
                continue
            err = protocol.response_error(header)
            self._call(got[1], None if err else header, err)

    def check_timeouts(self) -> None:
        now = time.monotonic()
        late = [i for i, (_, _, deadline) in self.pending.items() if deadline <= now]
        stale = set()
        for i in late:
            broker_id, cb, _ = self.pending.pop(i)
            stale.add(broker_id)
            self._call(cb, None, errors.RequestTimedOut(f"Broker {broker_id} did not answer in "
                                                        f"time."))
        for broker_id in stale:
            peer = self.peers.get(broker_id)
            if peer is not None:
                self._close(peer)

    @staticmethod
    def _call(cb: Callback, header, err) -> None:
        try:
            cb(header, err)
        except Exception:
            log.exception("a callback of a request to another broker failed")

    def close_all(self) -> None:
        for i, (broker_id, cb, _) in list(self.pending.items()):
            self._call(cb, None, errors.BrokerNotAvailable("The broker is stopping."))
        self.pending.clear()
        for peer in list(self.peers.values()):
            self._close(peer)
