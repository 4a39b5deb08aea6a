"""Followers: the replica fetchers of one broker, run on its loop (no threads of their own).

One ``ReplicaFetcher`` per leader broker this broker follows partitions of: a DEALER socket to
the leader's listener and the partitions fetched from it. What to ask and what to do with the
answer is each partition's state machine's (``ReplicaCore`` in zbroker/replication.py: truncate
to the log the leader shares, then fetch, KIP-279/320); this module only gathers the partitions'
questions into one request per leader, sends it and hands each answer back. Every replica request
carries this broker's id and broker epoch, which the leader checks against the registration.

Fetches go in an incremental fetch session with the leader (KIP-227, fetch_sessions.py): the
first names every partition, later ones only those whose request changed since (``dirty``: the
partitions this fetcher touched since its last request, the only ones whose request can have
changed), so an idle follower's fetch is a few bytes whatever the number of partitions. Any
request-level error or a lost reply opens a new session with a full request; a partition whose
answer could not be used is named again in the next request so the leader sends it again.

One request per fetcher is in flight at a time (a long poll of ``replica.fetch.wait.max.ms`` at
the leader); a request unanswered for ``replica.socket.timeout.ms`` beyond that is sent again on a
new socket (ZeroMQ reconnects by itself but a request lost with a connection is never answered).
Errors (the leader moved, an epoch not known there yet) back off ``replica.fetch.backoff.ms``;
the metadata image moves the partition to its new leader's fetcher.
"""

from __future__ import annotations

import itertools
import time

import zmq

from zbroker import errors, protocol
from zbroker.broker.fetch_sessions import FollowerSession
from zbroker.logs import get_logger
from zbroker.replication import Diverging, EpochQuery, FetchQuery, ReplicationBug

log = get_logger("zbroker.broker.fetcher")

class ReplicaFetcher:
    def __init__(self, manager: "FetcherManager", leader_id: int, endpoint: str):
        self.manager = manager
        self.leader_id = leader_id
        self.endpoint = endpoint
        self.parts: dict[tuple[str, int], object] = {}      # key -> Partition
        self.sock: zmq.Socket | None = None
        self.in_flight: tuple | None = None                 # (req_id, api, sent_at, keys)
        self.backoff_until = 0.0
        self.session = FollowerSession()
        self.dirty: set[tuple[str, int]] = set()            # keys whose request may have changed
        self._open()

    def _open(self) -> None:
        s = self.manager.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        self.manager.server.peer_security.apply(s)
        s.setsockopt(zmq.MAXMSGSIZE, protocol.FRAME_BYTES_MAX)
        s.connect(self.endpoint)
        self.sock = s
        self.manager.poller.register(s, zmq.POLLIN)

    def close(self) -> None:
        if self.sock is not None:
            self.manager.poller.unregister(self.sock)
            self.sock.close(0)
            self.sock = None

    def reset(self) -> None:
        self.close()
        self.in_flight = None
        self.session.reset()
        self._open()

    def again(self, key) -> None:
        """Name ``key`` in the next request even if its request did not change (its answer was
        not used, so the leader must send it again)."""
        self.dirty.add(key)
        self.session.sent.pop(key, None)


class FetcherManager:
    def __init__(self, server, ctx: zmq.Context, poller: zmq.Poller):
        self.server = server
        self.cfg = server.cfg
        self.broker_id = server.broker_id
        self.ctx = ctx
        self.poller = poller
        self.fetchers: dict[int, ReplicaFetcher] = {}
        self.by_socket: dict[zmq.Socket, ReplicaFetcher] = {}
        self.where: dict[tuple[str, int], int] = {}        # partition -> leader id it fetches from
        self.waiting: dict[tuple[str, int], object] = {}   # followers whose leader is unknown
        self._touched: set = set()      # fetchers given partitions since the last on_image
        self.wait_s = self.cfg["replica.fetch.wait.max.ms"] / 1000
        self.timeout_s = self.wait_s + self.cfg["replica.socket.timeout.ms"] / 1000
        self.backoff_s = self.cfg["replica.fetch.backoff.ms"] / 1000
        self.use_sessions = self.cfg["replica.fetch.sessions.enable"]
        self._ids = itertools.count(1)

    # --- membership -------------------------------------------------------------------------------
    def follow(self, part) -> None:
        """``part`` follows ``part.leader_id`` in ``part.leader_epoch`` (a new epoch). Its
        fetcher asks once the whole image is applied (``on_image``): a request per partition
        of an image that moves thousands would be thousands of requests."""
        key = (part.topic, part.partition)
        self.remove(key)
        info = self.server.image.brokers.get(part.leader_id)
        if info is None or part.leader_id == self.broker_id:
            self.waiting[key] = part
            return
        endpoint = f"tcp://{info.host}:{info.port}"
        f = self.fetchers.get(part.leader_id)
        if f is not None and f.endpoint != endpoint:
            self._drop_fetcher(f)
            f = None
        if f is None:
            f = ReplicaFetcher(self, part.leader_id, endpoint)
            self.fetchers[part.leader_id] = f
            self.by_socket[f.sock] = f
        f.parts[key] = part
        f.dirty.add(key)
        self.where[key] = part.leader_id
        self._touched.add(f)

    def remove(self, key) -> None:
        self.waiting.pop(key, None)
        leader = self.where.pop(key, None)
        if leader is None:
            return
        f = self.fetchers.get(leader)
        if f is None:
            return
        f.parts.pop(key, None)
        f.dirty.add(key)            # (forgotten by the session)
        if not f.parts:
            self._drop_fetcher(f)

    def on_image(self) -> None:
        """After an image is applied: place followers that were waiting for their leader
        (brokers may have appeared), and send what the partitions that moved ask."""
        for key, part in list(self.waiting.items()):
            if part.leader_id in self.server.image.brokers:
                self.follow(part)
        now = time.monotonic()
        touched, self._touched = self._touched, set()
        for f in touched:
            if self.fetchers.get(f.leader_id) is not f:
                continue            # dropped meanwhile
            if f.in_flight is not None and now - f.in_flight[2] > self.wait_s + 1.0:
                self._reset(f)      # a leader that came back: the old request may be lost
            self.kick(f)

    def _drop_fetcher(self, f: ReplicaFetcher) -> None:
        self.by_socket.pop(f.sock, None)
        f.close()
        if self.fetchers.get(f.leader_id) is f:
            del self.fetchers[f.leader_id]
        for key in f.parts:
            self.where.pop(key, None)

    def _reset(self, f: ReplicaFetcher) -> None:
        self.by_socket.pop(f.sock, None)
        f.reset()
        self.by_socket[f.sock] = f

    def close_all(self) -> None:
        for f in list(self.fetchers.values()):
            self._drop_fetcher(f)

    # --- requests ---------------------------------------------------------------------------------
    def kick(self, f: ReplicaFetcher) -> None:
        if f.in_flight is not None or not f.parts or f.sock is None:
            return
        now = time.monotonic()
        if now < f.backoff_until:
            return
        sessions = self.use_sessions
        full = not sessions or f.session.needs_full
        asks = {}
        for key in (f.parts if full else f.dirty):
            part = f.parts.get(key)
            asks[key] = part.core.next_request() if part is not None else None
        truncating = [k for k, q in asks.items() if isinstance(q, EpochQuery)]
        req_id = next(self._ids)    # increasing over this process: a leader drops older
        epoch = self.server.broker_epoch
        if truncating:
            parts = [protocol.EpochQueryPart(k[0], k[1], asks[k].current_leader_epoch,
                                             asks[k].epoch) for k in truncating]
            frames = protocol.encode_request("OffsetForLeaderEpoch", req_id,
                                             replica_id=self.broker_id, replica_epoch=epoch,
                                             parts=parts)
            f.in_flight = (req_id, "OffsetForLeaderEpoch", now, truncating)
        else:
            part_max = self.cfg["replica.fetch.max.bytes"]
            wanted = {k: protocol.ReplicaFetchPart(k[0], k[1], q.fetch_offset,
                                                   q.current_leader_epoch, part_max,
                                                   q.last_fetched_epoch)
                      if isinstance(q, FetchQuery) else None for k, q in asks.items()}
            f.dirty.clear()
            fields = {}
            if sessions:
                session_id, session_epoch, parts, forgotten = f.session.build(wanted)
                fields = {"session_id": session_id, "session_epoch": session_epoch}
                if forgotten:
                    fields["forgotten"] = forgotten
            else:
                parts = [p for p in wanted.values() if p is not None]
            if full and not parts:
                f.session.reset()
                return
            frames = protocol.encode_request(
                "Fetch", req_id, replica_id=self.broker_id, replica_epoch=epoch,
                max_wait_ms=self.cfg["replica.fetch.wait.max.ms"], min_bytes=1,
                max_bytes=self.cfg["replica.fetch.response.max.bytes"], parts=parts, **fields)
            f.in_flight = (req_id, "Fetch", now, [(p.topic, p.partition) for p in parts])
        try:
            f.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.warning("replica fetch not sent", leader=f.leader_id, error=str(e))
            f.in_flight = None
            f.session.reset()
            f.backoff_until = now + self.backoff_s

    def check_timeouts(self) -> None:
        """Periodic: resend lost requests, and send after a backoff ended."""
        now = time.monotonic()
        for f in list(self.fetchers.values()):
            if f.in_flight is not None and now - f.in_flight[2] > self.timeout_s:
                log.warning("replica fetch unanswered; reconnecting", leader=f.leader_id)
                self._reset(f)
            self.kick(f)

    def on_readable(self, sock) -> None:
        f = self.by_socket.get(sock)
        if f is None:
            return
        for _ in range(100):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                header, blobs = protocol.decode_response(frames)
            except Exception:
                log.warning("unreadable reply from a leader", leader=f.leader_id)
                continue
            if f.in_flight is None or header.get("id") != f.in_flight[0]:
                continue        # a reply to a request we gave up on
            _, api, _, keys = f.in_flight
            f.in_flight = None
            err = protocol.response_error(header)
            try:
                if err is not None:
                    if isinstance(err, (errors.FetchSessionIdNotFound,
                                        errors.InvalidFetchSessionEpoch)):
                        log.info("opening a new fetch session", leader=f.leader_id,
                                 reason=str(err))
                    else:
                        log.warning("replica request refused", leader=f.leader_id,
                                    error=str(err))
                    f.session.reset()
                    f.dirty.update(keys)
                    f.backoff_until = time.monotonic() + self.backoff_s
                elif api == "Fetch":
                    f.session.on_response(header.get("session_id"))
                    self._on_fetch(f, header, blobs)
                else:
                    f.dirty.update(keys)
                    self._on_offset_for_epoch(f, header)
            except ReplicationBug:
                raise
            except errors.CorruptMessage as e:      # a reply that does not fit the protocol
                log.warning("malformed reply from a leader", leader=f.leader_id, error=str(e))
                f.session.reset()
                f.backoff_until = time.monotonic() + max(self.backoff_s, 1.0)
            except Exception:       # our bug or a disk error: keep the loop, retry later
                log.exception("handling a leader's reply failed", leader=f.leader_id, api=api)
                f.session.reset()
                f.backoff_until = time.monotonic() + max(self.backoff_s, 1.0)
            if f.sock is None:
                return      # dropped while handling (no partitions left)
        self.kick(f)

    def _on_offset_for_epoch(self, f: ReplicaFetcher, header: dict) -> None:
        failed = False
        for r in protocol.decode_entries(protocol.EpochEndResult, header.get("parts", ()),
                                         "OffsetForLeaderEpoch"):
            part = f.parts.get((r.topic, r.partition))
            if part is None:
                continue
            if r.err:
                failed = True
                continue
            self.server.carry_out(part, part.core.on_epoch_end(r.leader_epoch, r.end_offset))
        if failed:
            f.backoff_until = time.monotonic() + self.backoff_s

    def _on_fetch(self, f: ReplicaFetcher, header: dict, blobs: list) -> None:
        failed = False
        diverging = {(d.topic, d.partition): Diverging(d.epoch, d.end_offset)
                     for d in protocol.decode_entries(protocol.DivergingEpoch,
                                                      header.get("diverging", ()), "diverging")}
        results = protocol.decode_entries(protocol.FetchResult, header.get("parts", ()), "Fetch")
        for r, blob in zip(results, blobs):
            key = topic, p = r.topic, r.partition
            part = f.parts.get(key)
            if part is None:
                continue
            f.dirty.add(key)
            core = part.core
            if r.err == errors.OffsetOutOfRange.code:
                self.server.carry_out(part, core.on_out_of_range(r.log_start_offset,
                                                                 r.log_end_offset))
                f.again(key)
                failed = True
                continue
            if r.err:
                f.again(key)
                failed = True
                continue
            try:
                effects = core.on_fetch_data(r.high_watermark, r.log_start_offset, blob,
                                             diverging.get(key))
            except (errors.KafkaStorageError, OSError) as e:
                self.server.storage_failed(part, e)
                f.again(key)
                failed = True
                continue
            except errors.ZbError as e:
                log.warning("could not append what the leader sent; checking epochs again",
                            topic=topic, partition=p, error=str(e))
                f.again(key)
                failed = True
                continue
            self.server.carry_out(part, effects)
        if failed:
            f.backoff_until = time.monotonic() + self.backoff_s
