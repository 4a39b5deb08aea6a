"""Followers: the replica fetchers of one broker, run on its loop (no threads of their own).

One ``ReplicaFetcher`` per leader broker this broker follows partitions of: a DEALER socket to
the leader's listener and the partitions fetched from it. Each partition starts TRUNCATING: the
fetcher asks the leader where the follower's latest leader epoch ends there (OffsetForLeaderEpoch)
and truncates its log to that point (Kafka's KIP-101/279), so no record the leader never had
survives a failover; then the partition is FETCHING: Fetch(replica_id = this broker, offset = our
log end offset, leader_epoch = the epoch we follow in) and append what comes back
(``append_as_follower``). The follower's high watermark is the leader's, capped at its own log end
offset.

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
from zbroker.logs import get_logger
from zbroker.storage import UNDEFINED_EPOCH

log = get_logger("zbroker.broker.fetcher")

TRUNCATING, FETCHING = "truncating", "fetching"


class ReplicaFetcher:
    def __init__(self, manager: "FetcherManager", leader_id: int, endpoint: str):
        self.manager = manager
        self.leader_id = leader_id
        self.endpoint = endpoint
        self.parts: dict[tuple[str, int], object] = {}      # key -> Partition
        self.state: dict[tuple[str, int], str] = {}
        self.sock: zmq.Socket | None = None
        self.in_flight: tuple | None = None                 # (req_id, api, sent_at, keys)
        self.backoff_until = 0.0
        self._ids = itertools.count(1)
        self._open()

    def _open(self) -> None:
        s = self.manager.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
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
        self._open()


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
        self.wait_s = self.cfg["replica.fetch.wait.max.ms"] / 1000
        self.timeout_s = self.wait_s + self.cfg["replica.socket.timeout.ms"] / 1000
        self.backoff_s = self.cfg["replica.fetch.backoff.ms"] / 1000

    # --- membership -------------------------------------------------------------------------------
    def follow(self, part) -> None:
        """``part`` follows ``part.leader_id`` in ``part.leader_epoch`` (a new epoch): truncate
        first, then fetch."""
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
        elif f.in_flight is not None and \
                time.monotonic() - f.in_flight[2] > self.wait_s + 1.0:
            self._reset(f)      # a leader that came back: the old request may be lost
        f.parts[key] = part
        f.state[key] = TRUNCATING
        self.where[key] = part.leader_id
        self.kick(f)

    def remove(self, key) -> None:
        self.waiting.pop(key, None)
        leader = self.where.pop(key, None)
        if leader is None:
            return
        f = self.fetchers.get(leader)
        if f is None:
            return
        f.parts.pop(key, None)
        f.state.pop(key, None)
        if not f.parts:
            self._drop_fetcher(f)

    def on_image(self) -> None:
        """Brokers may have (re)appeared: place followers that were waiting for their leader."""
        for key, part in list(self.waiting.items()):
            if part.leader_id in self.server.image.brokers:
                self.follow(part)

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
        truncating = [k for k, s in f.state.items() if s == TRUNCATING]
        for key in list(truncating):
            part = f.parts[key]
            if part.log.leader_epoch_cache.latest_epoch == UNDEFINED_EPOCH:
                f.state[key] = FETCHING        # nothing of ours to check: fetch from our end
                truncating.remove(key)
        req_id = next(f._ids)
        if truncating:
            parts = [[k[0], k[1], f.parts[k].leader_epoch,
                      f.parts[k].log.leader_epoch_cache.latest_epoch] for k in truncating]
            frames = protocol.encode_request("OffsetForLeaderEpoch", req_id,
                                             replica_id=self.broker_id, parts=parts)
            f.in_flight = (req_id, "OffsetForLeaderEpoch", now, truncating)
        else:
            keys = list(f.parts)
            part_max = self.cfg["replica.fetch.max.bytes"]
            parts = [[k[0], k[1], f.parts[k].log.log_end_offset, f.parts[k].leader_epoch,
                      part_max] for k in keys]
            frames = protocol.encode_request(
                "Fetch", req_id, replica_id=self.broker_id,
                max_wait_ms=self.cfg["replica.fetch.wait.max.ms"], min_bytes=1,
                max_bytes=self.cfg["replica.fetch.response.max.bytes"], parts=parts)
            f.in_flight = (req_id, "Fetch", now, keys)
        try:
            f.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.warning("replica fetch not sent", leader=f.leader_id, error=str(e))
            f.in_flight = None
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
                    log.warning("replica request refused", leader=f.leader_id, error=str(err))
                    f.backoff_until = time.monotonic() + self.backoff_s
                elif api == "Fetch":
                    self._on_fetch(f, header, blobs)
                else:
                    self._on_offset_for_epoch(f, header)
            except Exception:       # our bug or a disk error: keep the loop, retry later
                log.exception("handling a leader's reply failed", leader=f.leader_id, api=api)
                f.backoff_until = time.monotonic() + max(self.backoff_s, 1.0)
            if f.sock is None:
                return      # dropped while handling (no partitions left)
        self.kick(f)

    def _on_offset_for_epoch(self, f: ReplicaFetcher, header: dict) -> None:
        failed = False
        for topic, p, err, epoch, end_offset in header.get("parts", ()):
            key = (topic, p)
            part = f.parts.get(key)
            if part is None or f.state.get(key) != TRUNCATING:
                continue
            if err:
                failed = True
                continue
            plog = part.log
            leo = plog.log_end_offset
            if epoch == UNDEFINED_EPOCH or end_offset < 0:
                # The leader knows no epoch as old as ours: keep what is committed.
                target = min(part.high_watermark, leo)
            else:
                mine_epoch, mine_end = plog.leader_epoch_cache.end_offset_for_epoch(epoch, leo)
                target = min(end_offset, leo)
                if mine_epoch == epoch and mine_end >= 0:
                    target = min(target, mine_end)
            target = max(target, plog.log_start_offset)
            if target < leo:
                log.info("truncating to the leader's epoch end", topic=topic, partition=p,
                         leader=f.leader_id, epoch=epoch, from_offset=leo, to_offset=target)
                plog.truncate_to(target)
                part.high_watermark = min(part.high_watermark, plog.log_end_offset)
            else:
                # Nothing to cut, but an epoch we started as leader without writing anything
                # (its entry sits at our log end) never happened on the leader: forget it, or
                # the leader's older-epoch batches that follow would be refused for ever.
                plog.leader_epoch_cache.truncate_from_end(target)
            f.state[key] = FETCHING
        if failed:
            f.backoff_until = time.monotonic() + self.backoff_s

    def _on_fetch(self, f: ReplicaFetcher, header: dict, blobs: list) -> None:
        failed = False
        for (topic, p, err, hw, log_start, leader_leo), blob in zip(header.get("parts", ()),
                                                                    blobs):
            key = (topic, p)
            part = f.parts.get(key)
            if part is None or f.state.get(key) != FETCHING:
                continue
            plog = part.log
            if err == errors.OffsetOutOfRange.code:
                if log_start > plog.log_end_offset:
                    log.info("the leader's log starts after ours; starting over there",
                             topic=topic, partition=p, offset=log_start)
                    plog.truncate_fully_and_start_at(log_start)
                    part.high_watermark = log_start
                else:
                    f.state[key] = TRUNCATING
                failed = True
                continue
            if err:
                failed = True
                continue
            if blob:
                try:
                    plog.append_as_follower(blob)
                except errors.ZbError as e:
                    log.warning("could not append what the leader sent; checking epochs again",
                                topic=topic, partition=p, error=str(e))
                    f.state[key] = TRUNCATING
                    continue
            new_hw = min(hw, plog.log_end_offset)
            if new_hw > part.high_watermark:
                part.high_watermark = new_hw
            # The leader's log start offset moved (DeleteRecords, or a group coordinator's
            # snapshot): follow it, as far as what is known to be committed here.
            if log_start > plog.log_start_offset and part.high_watermark > plog.log_start_offset:
                plog.delete_records_before(min(log_start, part.high_watermark))
        if failed:
            f.backoff_until = time.monotonic() + self.backoff_s
