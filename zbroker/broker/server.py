"""The broker process: ``zb-server-start CONFIG [--override key=value ...]``.

Start-up (each problem is one sentence on stderr and a non-zero exit): read the settings, lock
and probe the log directories, bind the ROUTER socket, open a coordinator session, make sure the
cluster's base keys exist, and register ``/brokers/ids/<id>`` (ephemeral). When that key is held
by a broker advertising another address, that broker is alive elsewhere: refuse. When it
advertises our own address, its holder must be dead (we just bound that port): an earlier life
of this broker killed before its session expired, so delete that registration at once and
register (waiting for the expiry only if the takeover fails).

Threads: the loop (below) owns the socket, the partition logs and every request; the metadata
watcher re-reads the coordinator on change and posts a new immutable ``ClusterImage``; the
controller thread contends for /controller and, while it holds it, serves the admin APIs the loop
hands it. Threads talk to the loop only through ``_post`` (a deque plus a wake-up pipe the loop
polls).

The loop (STYLE 3): ``poll(timeout = time to the next timer)``; take what other threads posted;
handle at most ``requests.per.poll.max`` messages; run due timers (delayed fetch expiry, admin
replies waiting for metadata, retention, flush, high watermark checkpoints).

Hot paths. Produce: the blob frames are received without a copy (``copy=False``) and handed as
buffers to ``PartitionLog.append``, which validates headers and checksums and writes them with
one ``pwritev`` (records are never decoded). Fetch: ``PartitionLog.read`` returns whole batches
(one ``pread``) that go out as their own frames; ZeroMQ sends large frames without copying them.

Fetch long polls: a fetch that finds fewer than ``min_bytes`` waits (``max_wait_ms`` at most) on
the partitions it asked for; an append to one of them adds its size to the fetch's count and
answers it once ``min_bytes`` is reached; a timer answers it at its deadline either way.

Coordinator session: while the session's connection is down for more than 2/3 of its timeout
the broker stops acting as leader (Produce/Fetch/ListOffsets get NOT_LEADER_OR_FOLLOWER), since
its session may have expired elsewhere; when the coordinator says it did expire, the broker opens
a new session and registers again (new broker epoch), and the controller makes it leader of its
partitions again with bumped leader epochs.

Replication (Kafka's pull model). Every broker holds a log for each partition it is a replica
of. Followers fetch from their leaders (fetcher.py, on this loop); the leader counts a follower's
fetch offset as its log end offset, moves the high watermark to the lowest log end offset in the
ISR, and wakes what waits for it: consumer long polls (they only see records below it) and
acks=all produces (a delayed operation answered when the high watermark passes the batch, or
REQUEST_TIMED_OUT after the request's timeout_ms; refused with NOT_ENOUGH_REPLICAS up front when
the ISR is smaller than min.insync.replicas). The leader adds a follower to the ISR once it has
caught up and removes it after replica.lag.time.max.ms without catching up, writing the new ISR
to the partition state key with a check of its version (so a concurrent write by the controller,
or a newer leader epoch, makes ours fail and we take the state from the metadata instead).

Controlled shutdown: SIGTERM writes /brokers/shutdown/<id> (ephemeral); the controller moves this
broker's leaderships to other in-sync replicas and takes it out of every ISR; the loop keeps
serving until the metadata shows that done (or controlled.shutdown.timeout.ms), then stops. A
second SIGTERM stops at once.
"""

from __future__ import annotations

import argparse
import collections
import errno
import heapq
import itertools
import os
import signal
import sys
import threading
import time
import uuid

import zmq
from prometheus_client.core import GaugeMetricFamily

from coordinator.client import (CONNECTED, LOST, SUSPENDED, BadVersion, CoordinatorClient,
                                NodeExists, NoNode)
from zbroker import acl, errors, protocol, records
from zbroker.acl import AclCache
from zbroker.broker.acls import AclWatcher, read_acls
from zbroker.broker import config as broker_config
from zbroker.broker import metadata as md
from zbroker.broker.controller import Controller
from zbroker.broker.fetch_sessions import FINAL_EPOCH, LeaderSessions
from zbroker.broker.fetcher import FetcherManager
from zbroker.broker.groups import GroupCoordinator
from zbroker.broker.peers import PeerClient
from zbroker.broker.producer_ids import ProducerIdService
from zbroker.broker.replicas import ReplicaManager, StartupError
from zbroker.protocol import FetchResult, ProduceResult
from zbroker.replication import (HighWatermarkMoved, ProduceDone, ReplicationBug, Truncated,
                                 WriteIsr)
from zbroker.config import ConfigError, server_arg_parser
from zbroker import metrics
from zbroker.logs import configure_logging, get_logger
from zbroker.metrics import Counts
from zbroker.security import ClientSecurity, SecurityError, ServerSecurity

log = get_logger("zbroker.broker")

FETCH_MAX_BYTES_DEFAULT = 50 * 1024 * 1024
FETCH_RESPONSE_BYTES_MAX = protocol.FRAME_BYTES_MAX
FETCH_WAIT_MS_DEFAULT = 500
AUTO_CREATE_RETRY_S = 1.0
REGISTRATION_GRACE_S = 5.0
PERIODIC_FLUSH_MS = 1000
KEYS_RELOAD_S = 2.0         # how often curve.authorized.keys.dir is looked at for changes

TIMERS_COMPACT_MIN = 4096      # timers held before answered fetches' are dropped from the heap
ADMIN_TOPIC_OPERATIONS = {"CreateTopics": acl.CREATE, "DeleteTopics": acl.DELETE,
                          "CreatePartitions": acl.ALTER}
AUTHORIZATION_ERRORS = {acl.TOPIC: errors.TopicAuthorizationFailed,
                        acl.GROUP: errors.GroupAuthorizationFailed,
                        acl.CLUSTER: errors.ClusterAuthorizationFailed}
GROUP_API_OPERATIONS = {"ConsumerGroupHeartbeat": (acl.READ, None),
                        "OffsetCommit": (acl.READ, acl.READ),
                        "OffsetFetch": (acl.DESCRIBE, acl.DESCRIBE),
                        "OffsetDelete": (acl.DELETE, acl.READ)}
API_VERSIONS = {api: [protocol.VERSION, protocol.VERSION] for api in protocol.SCHEMAS}
ADMIN_APIS = ("CreateTopics", "DeleteTopics", "CreatePartitions")


class DelayedFetch:
    """A Fetch being answered, or parked until data comes or its wait ends. A follower's fetch in
    a session (zbroker/broker/fetch_sessions.py) parks on the session, not on partitions, and
    ``parts`` grows by the session's partitions with news until it is answered."""
    __slots__ = ("ident", "req_id", "parts", "min_bytes", "max_bytes", "bytes_ready", "done",
                 "partitions", "replica_id", "replica_epoch", "diverging", "session")

    def __init__(self, ident, req_id, parts, min_bytes, max_bytes, replica_id=-1,
                 replica_epoch=-1, session=None):
        self.ident, self.req_id, self.parts = ident, req_id, parts
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        self.replica_id = replica_id
        self.replica_epoch = replica_epoch
        self.diverging: list = []       # [[topic, partition, epoch, end_offset]]
        self.bytes_ready = 0
        self.done = False
        self.partitions: set = set()    # Partition objects whose waiters list holds this
        self.session = session          # LeaderSession, for a follower's fetch in one


class DelayedProduce:
    """An acks=all produce waiting for the high watermark of its partitions to pass its
    batches. ``out`` is the response's parts list; ``waiting`` maps an index of it to the
    partition whose state machine holds the wait (token ``(dp, index)``)."""
    __slots__ = ("ident", "req_id", "out", "waiting", "done", "extra", "deadline")

    def __init__(self, ident, req_id, out, waiting, extra=None):
        self.ident, self.req_id, self.out, self.waiting = ident, req_id, out, waiting
        self.extra = extra or {}        # more response fields (batch_offsets)
        self.done = False
        self.deadline = 0.0


class PendingAdminReply:
    __slots__ = ("ident", "frames", "api", "topics", "done")

    def __init__(self, ident, frames, api, topics):
        self.ident, self.frames, self.api, self.topics = ident, frames, api, topics
        self.done = False


class BrokerServer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.broker_id = cfg["broker.id"]
        self.endpoint = broker_config.listener_endpoint(cfg)
        self.host, self.port = broker_config.advertised_host_port(cfg)
        self.replicas = ReplicaManager(self.broker_id, cfg["log.dirs"],
                                       broker_config.default_log_props(cfg), cfg)
        self.image = md.ClusterImage.empty()
        self._image_watcher = None      # the watcher whose image was applied last
        self.ctx = zmq.Context()
        self.router: zmq.Socket | None = None
        self.counts = Counts()
        self.metrics_server = None
        self.authorizer = None
        self.peer_security = ClientSecurity()
        self.poller = zmq.Poller()
        self.fetchers = FetcherManager(self, self.ctx, self.poller)
        self.peers = PeerClient(self, self.ctx, self.poller)
        self._shutdown_deadline: float | None = None
        self.client: CoordinatorClient | None = None
        self.watcher: md.MetadataWatcher | None = None
        self.controller: Controller | None = None
        self._inbox: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._timers: list = []
        self._timers_compact_at = TIMERS_COMPACT_MIN
        self._timer_seq = itertools.count()
        self._delayed_fetches = 0
        # acks=all produces not answered yet (answered ones leave at once, so an answered
        # produce holds no memory until its deadline); swept by _expire_produces
        self._delayed_produces: dict[int, DelayedProduce] = {}
        self.sessions = LeaderSessions(cfg["max.incremental.fetch.session.cache.slots"])
        self._pending_admin: list[PendingAdminReply] = []
        self._auto_create_asked: dict[str, float] = {}
        self.stopping = False
        self.exit_code = 0
        # Set while the coordinator session may have expired without our knowing: the broker
        # then refuses to act as a leader (DESIGN: a leader that lost its session stops first).
        self.leadership_paused = False
        self._suspended_at: float | None = None
        # After a session expiry: the watcher of the session we left. Leadership stays paused
        # until an image of the new session is applied (never resume from stale metadata).
        self._stale_image_watcher = None
        self._renewing = False          # a new session is being opened on a thread
        # authorizer.enable: the ACLs as last read from the coordinator (AclWatcher), and the
        # principal of the request being handled
        self.authorize = cfg["authorizer.enable"]
        self.acl_cache = AclCache((), cfg["allow.everyone.if.no.acl.found"],
                                  acl.parse_super_users(cfg["super.users"]), loaded=False)
        self.acl_watcher: AclWatcher | None = None
        self.principal = acl.ANONYMOUS
        self.broker_epoch = -1          # the creation zxid of our registration
        self._handlers = {
            "ApiVersions": self._api_versions, "Metadata": self._metadata,
            "Produce": self._produce, "Fetch": self._fetch, "ListOffsets": self._list_offsets,
            "OffsetForLeaderEpoch": self._offset_for_leader_epoch,
            "CreateTopics": self._admin, "DeleteTopics": self._admin,
            "CreatePartitions": self._admin,
            "DescribeAcls": self._describe_acls, "CreateAcls": self._acl_admin,
            "DeleteAcls": self._acl_admin,
            "InitProducerId": self._init_producer_id,
            "FindCoordinator": self._find_coordinator, "ListGroups": self._list_groups,
            **{api: self._group_api for api in protocol.GROUP_APIS},
        }
        self.groups = GroupCoordinator(self)
        self.producer_ids = ProducerIdService(self)
        self._request_frame = None      # the header frame of the request being handled
        assert set(self._handlers) == set(protocol.SCHEMAS)

    # --- start-up -------------------------------------------------------------------------------
    def open(self) -> None:
        self.replicas.lock_dirs()
        self.replicas.start_preload()       # while we register (and maybe wait to)
        try:
            self.security = ServerSecurity.from_config(self.cfg)
            self.peer_security = ClientSecurity.from_settings(
                self.cfg["security.protocol"], self.cfg["curve.client.secret.key.file"],
                self.cfg["curve.server.secret.key.file"])
        except SecurityError as e:
            raise StartupError(str(e))
        self.authorizer = self.security.start(self.ctx)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.security.apply(self.router)
        self.router.setsockopt(zmq.MAXMSGSIZE, protocol.FRAME_BYTES_MAX)
        self.router.setsockopt(zmq.SNDHWM, self.cfg["socket.send.buffer.messages"])
        self.router.setsockopt(zmq.RCVHWM, self.cfg["socket.receive.buffer.messages"])
        try:
            self.router.bind(self.endpoint)
        except zmq.ZMQError as e:
            if e.errno == errno.EADDRINUSE:
                raise StartupError(f"The address {self.endpoint} is already in use; is another "
                                   f"broker running?")
            raise StartupError(f"Cannot listen on {self.endpoint}: {e.strerror}.")
        try:
            self.metrics_server = metrics.serve(self.cfg["metrics.listener"],
                                                self._collect_metrics)
        except metrics.MetricsError as e:
            raise StartupError(str(e))
        self._open_session()
        log.info("broker started", broker_id=self.broker_id, listener=self.endpoint,
                 advertised=f"{self.host}:{self.port}", log_dirs=self.replicas.log_dirs)

    def _open_session(self) -> None:
        """At start-up: a coordinator session, our registration in it, and the threads that
        use it. With authorizer.enable the ACLs are read before the first request is handled,
        as Kafka's authorizer starts before the listeners (until then only super users pass)."""
        client, broker_epoch = self._new_session()
        if self.authorize:
            try:
                self._acls_read(read_acls(client)[0])
            except errors.ZbError as e:
                log.warning("reading the ACLs failed; only super users pass until they are read",
                            error=str(e))
        self._install_session(client, broker_epoch)

    def _acls_read(self, bindings) -> None:
        old = self.acl_cache
        self.acl_cache = AclCache(bindings, old.allow_if_no_acl, old.super_users)

    def _new_session(self) -> tuple[CoordinatorClient, int]:
        """A new session with our registration in it: (client, broker epoch). Blocks (it may
        wait for an earlier life's registration to expire) and touches no loop state, so a
        renewal runs it on a thread of its own."""
        connect = self.cfg["coordinator.connect"]
        try:
            curve = bool(self.cfg["coordinator.curve.server.key.file"])
            client = CoordinatorClient(
                connect, session_timeout_ms=self.cfg["coordinator.session.timeout.ms"],
                connect_timeout_ms=self.cfg["coordinator.connection.timeout.ms"],
                security_protocol="CURVE" if curve else "PLAINTEXT",
                curve_secret_key_file=self.cfg["curve.client.secret.key.file"],
                curve_server_key_file=self.cfg["coordinator.curve.server.key.file"])
        except errors.ZbError as e:
            raise StartupError(f"Could not open a session with the coordinator at {connect}: "
                               f"{str(e).rstrip('.')}.")
        except ValueError as e:
            raise StartupError(str(e))
        try:
            for path in (md.BROKER_IDS, md.TOPICS, md.CREATE_TOPIC_REQUESTS, md.SHUTDOWN,
                         "/cluster"):
                client.ensure_path(path)
            try:
                client.create(md.CLUSTER_ID_PATH, uuid.uuid4().hex[:22].encode())
            except NodeExists:
                pass
            return client, self._register(client)
        except (errors.ZbError, StartupError) as e:
            client.close()
            if isinstance(e, StartupError):
                raise
            raise StartupError(f"The coordinator refused the registration: "
                               f"{str(e).rstrip('.')}.")

    def _install_session(self, client: CoordinatorClient, broker_epoch: int) -> None:
        self.producer_ids.session_lost()
        self.client = client
        self.broker_epoch = broker_epoch
        client.add_listener(lambda state: self._post(("session", state, client)))
        watcher = md.MetadataWatcher(client, lambda image: self._post(("image", image, watcher)))
        self.watcher = watcher
        watcher.start()
        self.controller = Controller(client, self.broker_id, self.cfg,
                                     lambda ident, frames, wait:
                                     self._post(("admin_reply", ident, frames, wait)))
        self.controller.start()
        if self.authorize:
            if self.acl_watcher is not None:
                self.acl_watcher.stop()
            self.acl_watcher = AclWatcher(client, lambda bindings: self._post(("acls", bindings)))
            self.acl_watcher.start()

    @staticmethod
    def _close_session_parts(client, *closers) -> None:
        """Stop the threads that use a session (controller, watchers), then close it."""
        for closer in closers:
            if closer is not None:
                try:
                    closer.stop()
                except Exception:
                    log.exception("stopping a coordinator thread failed")
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def _close_session(self) -> None:
        parts = (self.client, self.controller, self.watcher, self.acl_watcher)
        self.controller = self.watcher = self.client = self.acl_watcher = None
        self._close_session_parts(*parts)

    def _renew_session(self) -> None:
        """Our session expired (our registration, and /controller if we held it, are gone):
        stop leading, and open a new session and register again on a thread (it may take a
        session timeout), so the loop goes on serving. The controller then sees a broker with a
        new broker epoch and makes it leader again with a bumped leader epoch."""
        if self._renewing:
            return
        log.warning("the coordinator session expired; registering again")
        self.leadership_paused = True
        self._stale_image_watcher = self.watcher
        self._renewing = True
        # (the ACLs read last go on deciding until the new session's are read)
        old = (self.client, self.controller, self.watcher, self.acl_watcher)
        self.controller = self.watcher = self.client = self.acl_watcher = None
        threading.Thread(target=self._renew_in_background, args=(old,), name="session-renewal",
                         daemon=True).start()

    def _renew_in_background(self, old) -> None:       # on the renewal thread
        self._close_session_parts(*old)
        try:
            got = self._new_session()
        except StartupError as e:
            self._post(("session_renewed", None, e))
        except Exception as e:          # our bug: still a reason to stop, with a sentence
            log.exception("registering again failed")
            self._post(("session_renewed", None, StartupError(
                f"Registering again failed: {type(e).__name__}.")))
        else:
            self._post(("session_renewed", got, None))

    def _on_session_renewed(self, got, err) -> None:
        self._renewing = False
        if err is not None:
            log.error("could not register again; stopping", error=str(err))
            self.exit_code = 3
            self.stopping = True
            return
        if self.stopping:
            self._close_session_parts(got[0])
            return
        self._install_session(*got)
        # Still paused: our metadata is from before the expiry (the controller has moved our
        # leaderships meanwhile). The new session's watcher lifts the pause with its first image.
        self._suspended_at = None
        log.info("registered again; waiting for fresh metadata", broker_id=self.broker_id)

    def _on_session_event(self, state: str, client) -> None:
        if client is not self.client:
            return              # a listener of a session we already left
        if state == SUSPENDED:
            if self._suspended_at is None:
                # Counted from the last time the coordinator was heard from, not from when the
                # client noticed the silence (which is itself up to 2/3 of the timeout later):
                # the session may expire a session timeout after that contact.
                self._suspended_at = time.monotonic()
                limit_at = client.last_contact_s + client.session_timeout_ms * 2 / 3000
                if client.disconnect_grace_ms is not None:
                    # the coordinator may expire a session whose connection closed this soon
                    # after it saw the close (about when we did); leading stops within half
                    limit_at = min(limit_at,
                                   self._suspended_at + client.disconnect_grace_ms / 2000)
                self._add_timer(max(0.0, limit_at - time.monotonic()), self._check_suspended,
                                self._suspended_at)
        elif state == CONNECTED:
            if self.leadership_paused and self._stale_image_watcher is None:
                log.info("coordinator session back; leading again")
                self.leadership_paused = False
            self._suspended_at = None
        elif state == LOST:
            self._renew_session()

    def _check_suspended(self, since: float) -> None:
        if self._suspended_at == since and not self.leadership_paused:
            log.warning("no coordinator contact for 2/3 of the session timeout; not acting as "
                        "leader until it is back")
            self.leadership_paused = True

    def _register(self, client: CoordinatorClient) -> int:
        """Register /brokers/ids/<id> in ``client``'s session; returns the broker epoch."""
        path = md.broker_path(self.broker_id)
        value = md.encode_registration(self.host, self.port, self.cfg["broker.rack"])
        deadline = None
        tried_takeover = False
        while True:
            try:
                client.create(path, value, ephemeral=True)
            except NodeExists:
                pass
            try:
                raw, stat = client.get_with_stat(path)
            except NoNode:
                continue
            if stat.ephemeral_owner == client.session_id:
                return stat.czxid
            try:
                holder = md.decode_registration(self.broker_id, raw)
            except Exception:
                holder = None
            if holder is None or (holder.host, holder.port) != (self.host, self.port):
                where = f" at {holder.host}:{holder.port}" if holder else ""
                raise StartupError(f"The broker id {self.broker_id} is already registered by a "
                                   f"live broker{where}.")
            if not tried_takeover:
                # Our own address, and we are listening on it: the process that registered it
                # is gone (it would still hold the port). Take the registration over now
                # instead of waiting for that session to expire.
                tried_takeover = True
                try:
                    client.delete(path, version=stat.version)
                    log.info("took over the registration of this broker's earlier life",
                             broker_id=self.broker_id, earlier_session=stat.ephemeral_owner)
                    continue
                except (NoNode, BadVersion):
                    continue
            if deadline is None:
                deadline = time.monotonic() + client.session_timeout_ms / 1000 + \
                    REGISTRATION_GRACE_S
                log.info("waiting for the registration of this broker's earlier life to expire",
                         broker_id=self.broker_id)
            if time.monotonic() > deadline:
                raise StartupError(f"The broker id {self.broker_id} is still registered by an "
                                   f"earlier process that has not expired.")
            time.sleep(0.1)

    # --- cross-thread hand-off -------------------------------------------------------------------
    def _post(self, item) -> None:
        """Called from other threads (and the signal handler): queue ``item`` for the loop."""
        self._inbox.append(item)
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass        # the pipe is full: the loop will wake anyway

    def _take_inbox(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass
        inbox = self._inbox
        while inbox:
            item = inbox.popleft()
            kind = item[0]
            try:
                if kind == "image":
                    self._apply_image(item[1], item[2])
                elif kind == "acls":
                    self._acls_read(item[1])
                elif kind == "admin_reply":
                    self._on_admin_reply(*item[1:])
                elif kind == "session":
                    self._on_session_event(item[1], item[2])
                elif kind == "isr_done":
                    self._on_isr_done(*item[1:])
                elif kind == "session_renewed":
                    self._on_session_renewed(*item[1:])
                elif kind == "producer_ids":
                    item[1](*item[2:])
                elif kind == "stop":
                    self._on_stop()
                elif kind == "stop_now":
                    self.stopping = True
            except ReplicationBug:
                raise           # an impossible state: stop loudly (STYLE 5)
            except Exception:   # our bug: log it, keep the loop and the rest of the inbox
                log.exception("handling an event failed", kind=kind)

    def _apply_image(self, image: md.ClusterImage, watcher) -> None:
        # Keep only the newest image when several are queued (the partitions each changed,
        # together, when all of them changed only partition states).
        changed = image.changed
        while self._inbox and self._inbox[0][0] == "image":
            _, image, watcher = self._inbox.popleft()
            changed = None if changed is None or image.changed is None else \
                changed | image.changed
        if self._image_watcher is not watcher:
            changed = None      # the first image of a watcher (a new session): all of it
        self._image_watcher = watcher
        previous, self.image = self.image, image
        if self._stale_image_watcher is not None:
            if watcher is self._stale_image_watcher:
                return      # read in a session we already left
            # the first image of the new session: leading again is safe from here on
            self._stale_image_watcher = None
            self.leadership_paused = False
            log.info("fresh metadata after registering again; leading again")
        if changed is None or previous is None or previous.brokers is not image.brokers:
            changed = None
            for s in self.sessions.retain({b: info.epoch for b, info in image.brokers.items()}):
                self._session_closed(s)     # (first: a follower's earlier life is not caught up)
        leaders, followers, closed, effects = self.replicas.apply_image(image, time.monotonic(),
                                                                        changed)
        for part in closed:
            self.fetchers.remove((part.topic, part.partition))
            self._lost_leadership(part)
        for part in followers:
            self._lost_leadership(part)
            self.fetchers.follow(part)
        for part in leaders:
            self.fetchers.remove((part.topic, part.partition))
            self._hw_advanced(part)
        for part, effect in effects:
            self._carry_out_one(part, effect)
        self.fetchers.on_image()
        self.groups.on_image(image)
        if self._pending_admin:
            self._check_pending_admin()

    # --- timers ---------------------------------------------------------------------------------
    def _add_timer(self, delay_s: float, fn, *args) -> None:
        timers = self._timers
        heapq.heappush(timers, (time.monotonic() + delay_s, next(self._timer_seq), fn, args))
        if len(timers) > self._timers_compact_at:
            self._compact_timers()

    def _compact_timers(self) -> None:
        """Drop the timers of fetches answered before their wait ended (each stayed in the heap
        until its deadline): the heap stays within twice what is live, whatever a client's
        fetches ask for."""
        complete = self._complete_fetch
        live = [t for t in self._timers if not (t[2] == complete and t[3][0].done)]
        heapq.heapify(live)
        self._timers = live
        self._timers_compact_at = max(TIMERS_COMPACT_MIN, 2 * len(live))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:     # (a callback may compact them)
            _, _, fn, args = heapq.heappop(self._timers)
            try:
                fn(*args)
            except Exception:
                log.exception("a timer failed")

    def _periodic(self, interval_s: float, fn) -> None:
        def run():
            try:
                fn()
            finally:            # one failure must not stop the timer for good
                self._add_timer(interval_s, run)
        self._add_timer(interval_s, run)

    # --- the loop -------------------------------------------------------------------------------
    def serve_forever(self) -> int:
        poller = self.poller
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        lag_s = self.cfg["replica.lag.time.max.ms"] / 1000
        self._periodic(max(lag_s / 4, 0.02), self._shrink_isrs)    # (Kafka: lag / 2)
        self._periodic(0.05, self.fetchers.check_timeouts)
        self._periodic(0.05, self.groups.tick)
        self._periodic(0.05, self._expire_produces)
        self._periodic(0.05, self.peers.check_timeouts)
        self._periodic(self.cfg["log.retention.check.interval.ms"] / 1000, self._retention)
        self._periodic(self.cfg["producer.id.expiration.check.interval.ms"] / 1000,
                       self._expire_producers)
        self._periodic(PERIODIC_FLUSH_MS / 1000, self._flush_logs)
        if self.authorizer is not None:
            self._periodic(KEYS_RELOAD_S, self._reload_keys)
        self._periodic(self.cfg["replica.high.watermark.checkpoint.interval.ms"] / 1000,
                       self.replicas.checkpoint_high_watermarks)
        per_poll = self.cfg["requests.per.poll.max"]
        router = self.router
        while not self.stopping:
            timeout_ms = 1000
            if self._timers:
                timeout_ms = max(0, min(timeout_ms,
                                        int((self._timers[0][0] - time.monotonic()) * 1000) + 1))
            try:
                ready = dict(poller.poll(timeout_ms))
            except zmq.ZMQError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if self._wake_r in ready or self._inbox:
                self._take_inbox()
            if router in ready:
                self._drain_requests(per_poll)
            for sock in ready:
                if sock is not router and sock != self._wake_r:
                    if self.peers.owns(sock):
                        self.peers.on_readable(sock)
                    else:
                        self.fetchers.on_readable(sock)
            if self._timers and self._timers[0][0] <= time.monotonic():
                self._run_timers()
        self._shutdown()
        return self.exit_code

    def _reload_keys(self) -> None:
        if self.authorizer.reload_if_changed():
            log.info("authorized keys changed", keys=len(self.authorizer.principals))

    def _retention(self) -> None:
        for part in self.replicas.run_retention():
            self.log_start_moved(part)

    def log_start_moved(self, part) -> None:
        """Followers fetching ``part`` in a session learn its new log start offset next."""
        self.sessions.mark((part.topic, part.partition))

    def _flush_logs(self) -> None:
        try:
            self.replicas.maybe_flush()
        except (OSError, errors.KafkaStorageError) as e:
            self.storage_failed(None, e)

    def _drain_requests(self, limit: int) -> None:
        recv = self.router.recv_multipart
        for _ in range(limit):
            try:
                frames = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident = frames[0].bytes
            try:
                reply = self._handle(ident, frames)
            except Exception as e:      # our bug: answer, log, keep serving
                log.exception("request handling failed")
                reply = protocol.encode_error(None, errors.UnknownServerError(
                    f"The broker failed on this request: {type(e).__name__}."))
            if reply is not None:
                self._send(ident, reply)

    def _send(self, ident: bytes, frames: list) -> None:
        try:
            self.router.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.warning("reply dropped", error=str(e))

    def _handle(self, ident: bytes, frames: list) -> list | None:
        if len(frames) < 2:
            return protocol.encode_error(None, errors.InvalidRequest(
                "A message must carry a request header."))
        total = 0
        for f in frames:
            total += len(f)
        if total > protocol.REQUEST_BYTES_MAX:
            return protocol.encode_error(None, errors.MessageTooLarge(
                f"A request may be at most {protocol.REQUEST_BYTES_MAX} bytes."))
        try:
            header, blobs = protocol.decode_request([frames[1].bytes, *frames[2:]])
        except errors.ZbError as e:
            return protocol.encode_error(getattr(e, "request_id", None), e)
        req_id = header["id"]
        self._request_frame = frames[1]
        if self.authorize:
            self.principal = acl.principal_of(frames[1])
        api = header["api"]
        started = time.monotonic()
        failed = True
        try:
            reply = self._handlers[api](ident, header, blobs)
            failed = False
            return reply
        except errors.ZbError as e:
            if header["api"] == "Produce" and header["acks"] == 0:
                # acks=0 promises no response at all: the caller is not listening for one
                log.warning("acks=0 produce refused", error=str(e))
                return None
            return protocol.encode_error(req_id, e)
        except Exception as e:
            log.exception("request handling failed", api=header["api"])
            return protocol.encode_error(req_id, errors.UnknownServerError(
                f"The broker failed on this {header['api']} request: {type(e).__name__}."))
        finally:
            self.counts.request_done(api, time.monotonic() - started, failed)

    # --- metrics (read on the HTTP thread of prometheus_client: snapshots only) -----------------
    def _collect_metrics(self):
        from zbroker.metrics import counter, gauge, request_metrics
        c = self.counts
        yield from request_metrics("zbroker", c)
        yield counter("zbroker_messages_in", "Records appended as leader, per topic.", "topic",
                      c.messages_in)
        yield counter("zbroker_bytes_in", "Record batch bytes appended as leader, per topic.",
                      "topic", c.bytes_in)
        parts = list(self.replicas.partitions.values())
        leaders = [p for p in parts if p.is_leader]
        yield gauge("zbroker_leader_partitions", "Partitions this broker leads.", len(leaders))
        yield gauge("zbroker_under_replicated_partitions",
                    "Partitions this broker leads whose ISR is smaller than their replica set.",
                    sum(1 for p in leaders if len(p.isr) < len(p.replicas)))
        yield gauge("zbroker_under_min_isr_partitions",
                    "Partitions this broker leads whose ISR is below min.insync.replicas.",
                    sum(1 for p in leaders if len(p.isr) < p.min_insync_replicas))
        controller = self.controller
        yield gauge("zbroker_active_controller", "1 when this broker is the controller.",
                    1 if controller is not None and controller.active else 0)
        yield gauge("zbroker_pending_produces", "acks=all produces waiting for replication.",
                    len(self._delayed_produces))
        yield gauge("zbroker_parked_fetches", "Fetches waiting for data (long polls).",
                    self._delayed_fetches)
        size = GaugeMetricFamily("zbroker_log_size_bytes", "Bytes of each partition's log.",
                                 labels=["topic", "partition"])
        for p in parts:
            size.add_metric([p.topic, str(p.partition)], p.log.size_in_bytes())
        yield size

    # --- partition lookup -----------------------------------------------------------------------
    def _partition(self, topic: str, partition: int, leader_epoch: int):
        """The Partition this broker leads, or raise the error the client should see."""
        part = self.replicas.partitions.get((topic, partition))
        if self.leadership_paused:
            raise errors.NotLeaderOrFollower(
                f"Broker {self.broker_id} has lost contact with the coordinator and does not "
                f"act as leader until it is back.")
        if part is not None and part.is_leader and self._earlier_life(part):
            raise errors.NotLeaderOrFollower(
                f"Broker {self.broker_id} was made leader of {topic}-{partition} before it last "
                f"registered; it waits for the controller to elect a leader anew.")
        if part is None or not part.is_leader:
            st = self.image.partition(topic, partition)
            if st is None:
                raise errors.UnknownTopicOrPartition(
                    f"This broker does not know the partition {topic}-{partition}.")
            if st.leader == md.NO_LEADER:
                raise errors.LeaderNotAvailable(
                    f"The partition {topic}-{partition} has no leader right now.")
            raise errors.NotLeaderOrFollower(
                f"Broker {self.broker_id} does not lead {topic}-{partition}; broker "
                f"{st.leader} does.")
        if leader_epoch != -1 and leader_epoch != part.leader_epoch:
            if leader_epoch < part.leader_epoch:
                raise errors.FencedLeaderEpoch(
                    f"The leader epoch {leader_epoch} of {topic}-{partition} is older than the "
                    f"leader's {part.leader_epoch}.")
            raise errors.UnknownLeaderEpoch(
                f"The leader epoch {leader_epoch} of {topic}-{partition} is newer than the "
                f"leader's {part.leader_epoch}.")
        return part

    def _earlier_life(self, part) -> bool:
        """Leader by a state from before our registration (ReplicaCore.leads_in_this_life)."""
        return not part.core.leads_in_this_life(self.broker_epoch)

    # --- APIs -----------------------------------------------------------------------------------
    def _api_versions(self, ident, header, blobs):
        return protocol.encode_response(header["id"], apis=API_VERSIONS)

    def _metadata(self, ident, header, blobs):
        image = self.image
        names = header.get("topics")
        if names is None:
            entries = [image.topic_metadata(n) for n in sorted(image.topics)
                       if self.allowed(acl.DESCRIBE, acl.TOPIC, n)]
        else:
            if len(names) > protocol.TOPICS_PER_REQUEST_MAX:
                raise errors.InvalidRequest(f"A Metadata request may name at most "
                                            f"{protocol.TOPICS_PER_REQUEST_MAX} topics.")
            allow = header.get("allow_auto_create", True) and \
                self.cfg["auto.create.topics.enable"]
            entries = []
            for name in names:
                if not isinstance(name, str):
                    raise errors.InvalidRequest("Metadata topics must be strings.")
                if not self.allowed(acl.DESCRIBE, acl.TOPIC, name):
                    entries.append(protocol.TopicMetadataEntry(
                        name, errors.TopicAuthorizationFailed.code, False, []))
                    continue
                if name in image.topics:
                    entries.append(image.topic_metadata(name))
                    continue
                try:
                    protocol.check_topic_name(name)
                except errors.InvalidTopic as e:
                    entries.append(protocol.TopicMetadataEntry(name, e.code, False, []))
                    continue
                if allow and (self.allowed(acl.CREATE, acl.CLUSTER, acl.CLUSTER_NAME) or
                              self.allowed(acl.CREATE, acl.TOPIC, name)):
                    self._request_auto_create(name)
                    entries.append(protocol.TopicMetadataEntry(name, errors.LeaderNotAvailable.code, False,
                                                                    []))
                else:
                    entries.append(protocol.TopicMetadataEntry(
                        name, errors.UnknownTopicOrPartition.code, False, []))
        return protocol.encode_response(header["id"], brokers=image.broker_list(),
                                        controller_id=image.controller_id,
                                        cluster_id=image.cluster_id, topics=entries)

    def _request_auto_create(self, name: str) -> None:
        """Ask the controller to create ``name``, at most once a second per name."""
        now = time.monotonic()
        if now - self._auto_create_asked.get(name, -1e9) < AUTO_CREATE_RETRY_S:
            return
        if len(self._auto_create_asked) > 10000:
            self._auto_create_asked = {n: t for n, t in self._auto_create_asked.items()
                                       if now - t < AUTO_CREATE_RETRY_S}
        self._auto_create_asked[name] = now
        self.request_topic_creation(name, {
            "partitions": self.cfg["num.partitions"],
            "replication_factor": self.cfg["default.replication.factor"]})

    def request_topic_creation(self, name: str, request: dict) -> None:
        """Ask the controller to create ``name`` ({partitions, replication_factor, config}, a
        key under /admin/create_topics it watches); asynchronous, so the loop never waits on
        the coordinator."""
        client = self.client
        if client is None:
            return
        fut = client.create_async(f"{md.CREATE_TOPIC_REQUESTS}/{name}", md.pack(request))
        fut.add_done_callback(lambda f: f.exception())     # NodeExists etc.: already asked

    def append_internal(self, part, blob: bytes) -> None:
        """Append a batch this broker wrote itself (the group coordinator's records) to a
        partition it leads, and wake what waits on it, as a produce does."""
        if not part.is_leader or self.leadership_paused or self._earlier_life(part):
            raise errors.NotLeaderOrFollower(
                f"Broker {self.broker_id} does not lead {part.topic}-{part.partition} in this "
                f"life (or has lost the coordinator); the group records are not written.")
        try:
            part.log.append(blob, part.leader_epoch)
        except (OSError, errors.KafkaStorageError) as e:
            self.storage_failed(part, e)
            raise
        self._on_append(part, len(blob))
        self.carry_out(part, part.core.on_leader_append(), len(blob))

    # --- consumer groups ------------------------------------------------------------------------
    def _find_coordinator(self, ident, header, blobs):
        found = self.groups.find_coordinator(header)
        if self.authorize:
            for i, entry in enumerate(found):
                gid = entry[0]
                if isinstance(gid, str) and not self.allowed(acl.DESCRIBE, acl.GROUP, gid):
                    found[i] = [gid, -1, "", -1, errors.GroupAuthorizationFailed.code,
                                f"{self.principal} is not allowed Describe on the group "
                                f"{gid!r} (no ACL allows it)."]
        return protocol.encode_response(header["id"], coordinators=found)

    def _list_groups(self, ident, header, blobs):
        groups = self.groups.list_groups(header)
        if self.authorize and not self.allowed(acl.DESCRIBE, acl.CLUSTER, acl.CLUSTER_NAME):
            groups = [g for g in groups if self.allowed(acl.DESCRIBE, acl.GROUP, g[0])]
        return protocol.encode_response(header["id"], groups=groups)

    def _authorize_group_api(self, header: dict) -> None:
        """Kafka's checks for the group APIs: Read on the group to be a member or commit,
        Describe to look, Delete to delete; Read on the topics whose offsets are committed or
        deleted, Describe on those fetched. A refusal answers the whole request."""
        api = header["api"]
        if api in ("ConsumerGroupDescribe", "DeleteGroups"):
            op = acl.DESCRIBE if api == "ConsumerGroupDescribe" else acl.DELETE
            for gid in header["group_ids"]:
                if isinstance(gid, str):
                    self.require(op, acl.GROUP, gid)
            return
        op, topic_op = GROUP_API_OPERATIONS[api]
        self.require(op, acl.GROUP, header["group_id"])
        names = header.get("subscribed_topic_names") if api == "ConsumerGroupHeartbeat" else None
        if isinstance(names, list):
            # Kafka's rule: no subscription to a topic the member may not Describe (it would
            # learn the topic's partitions from its assignment)
            hidden = sorted({t for t in names if isinstance(t, str) and
                             not self.allowed(acl.DESCRIBE, acl.TOPIC, t)})
            if hidden:
                shown = ", ".join(repr(t[:80]) for t in hidden[:5])
                raise errors.TopicAuthorizationFailed(
                    f"{self.principal} is not allowed Describe on the subscribed topic"
                    f"{'s' if len(hidden) > 1 else ''} {shown}"
                    f"{' and others' if len(hidden) > 5 else ''} (no ACL allows it).")
        parts = header.get("parts") if topic_op is not None else None
        if isinstance(parts, list):
            for topic in {p[0] for p in parts if isinstance(p, list) and p and
                          isinstance(p[0], str)}:
                self.require(topic_op, acl.TOPIC, topic)

    def _group_api(self, ident, header, blobs):
        if self.authorize:
            self._authorize_group_api(header)
        host = ""
        if header["api"] == "ConsumerGroupHeartbeat":
            try:
                host = self._request_frame.get("Peer-Address") or ""
            except (zmq.ZMQError, AttributeError):
                pass
        return self.groups.handle(ident, header, host)

    def _produce(self, ident, header, blobs):
        acks = header["acks"]
        if acks not in (0, 1, -1):
            raise errors.InvalidRequiredAcks(f"acks must be 0, 1 or -1 (all), not {acks}.")
        if acks == -1 and len(self._delayed_produces) >= self.cfg["delayed.produces.max"]:
            raise errors.RequestTimedOut(
                f"Broker {self.broker_id} holds delayed.produces.max "
                f"({self.cfg['delayed.produces.max']}) acks=all produces waiting for "
                f"replication; nothing of this one was written, retry.")
        parts = header["parts"]
        protocol.check_entries("Produce", "parts", parts, protocol.PRODUCE_PART)
        if len(blobs) != len(parts):
            raise errors.InvalidRequest(f"A Produce request carries one blob per part: "
                                        f"{len(parts)} parts, {len(blobs)} blobs.")
        out = []
        waiting = {}
        batch_offsets = None
        get = self.replicas.partitions.get
        for (topic, p, epoch), blob in zip(parts, blobs):
            part = get((topic, p))
            try:
                if topic in protocol.INTERNAL_TOPICS:
                    raise errors.InvalidTopic(f"The topic {topic} is internal; only its "
                                              f"coordinator writes to it.")
                if self.authorize:
                    self.require(acl.WRITE, acl.TOPIC, topic)
                if part is None or not part.is_leader or \
                        (epoch != -1 and epoch != part.leader_epoch) or self.leadership_paused \
                        or part.core.state_zxid < self.broker_epoch:
                    part = self._partition(topic, p, epoch)
                part.core.check_produce(acks)
                result = part.log.append(blob.buffer, part.leader_epoch)
            except errors.KafkaStorageError as e:
                out.append(ProduceResult(topic, p, e.code, -1, -1, -1, str(e)))
                self.storage_failed(part, e)
                continue
            except OSError as e:        # creating a segment or an index, say
                err = errors.KafkaStorageError(f"Broker {self.broker_id} cannot write the log of "
                                               f"{topic}-{p}: {e.strerror}.")
                out.append(ProduceResult(topic, p, err.code, -1, -1, -1, str(err)))
                self.storage_failed(part, err)
                continue
            except errors.ZbError as e:
                out.append(ProduceResult(topic, p, e.code, -1, -1, -1, str(e)))
                continue
            except ValueError as e:     # the log holds a newer epoch than the metadata's
                out.append(ProduceResult(topic, p, errors.KafkaStorageError.code, -1, -1, -1,
                                         str(e)))
                continue
            out.append(ProduceResult(topic, p, 0, result.base_offset, -1, part.log.log_start_offset,
                                     None))
            if result.batch_offsets is not None:
                if batch_offsets is None:
                    batch_offsets = []
                batch_offsets.append([len(out) - 1, result.batch_offsets])
            if acks == -1:      # (a duplicate waits for its original batches to commit)
                waiting[len(out) - 1] = (part, result.last_offset + 1)
            if result.written:
                counts = self.counts
                counts.bytes_in[topic] += len(blob)
                counts.messages_in[topic] += result.last_offset - result.base_offset + 1
                self._on_append(part, len(blob))
                self.carry_out(part, part.core.on_leader_append(), len(blob))  # alone in ISR
        if acks == 0:
            return None
        extra = {"batch_offsets": batch_offsets} if batch_offsets else {}
        if waiting:
            dp = DelayedProduce(ident, header["id"], out, {i: w[0] for i, w in waiting.items()},
                                extra)
            for i, (part, offset) in waiting.items():
                self.carry_out(part, part.core.wait_for_high_watermark((dp, i), offset))
            if not dp.done:
                timeout_ms = min(max(header.get("timeout_ms", 30000), 0),
                                 protocol.REQUEST_TIMEOUT_MS_MAX)
                dp.deadline = time.monotonic() + timeout_ms / 1000
                self._delayed_produces[id(dp)] = dp
            return None
        return protocol.encode_response(header["id"], parts=out, **extra)

    def _init_producer_id(self, ident, header, blobs):
        if self.authorize and not self.allowed(acl.IDEMPOTENT_WRITE, acl.CLUSTER,
                                               acl.CLUSTER_NAME) and \
                not self.acl_cache.allowed_on_any(self.principal, acl.WRITE, acl.TOPIC):
            raise errors.ClusterAuthorizationFailed(
                f"{self.principal} may write to no topic (and has no IdempotentWrite on the "
                f"cluster), so it gets no producer id.")
        return self.producer_ids.handle(ident, header)

    def _expire_producers(self) -> None:
        n = self.replicas.expire_producers(time.time_ns() // 1_000_000,
                                           self.cfg["producer.id.expiration.ms"])
        if n:
            log.info("forgot expired producers", count=n)

    # --- a failed log directory -------------------------------------------------------------------
    def storage_failed(self, part, err: Exception) -> None:
        """A write to a partition's log failed (disk full, I/O error). The broker cannot be
        trusted to lead or to follow: it hands its leaderships to other in-sync replicas
        (a controlled shutdown) and exits with code 4, saying why, instead of going on
        answering KAFKA_STORAGE_ERROR for partitions another replica could lead. (Kafka takes
        only the failed directory offline when a broker has several; here the broker goes.)"""
        if self.exit_code == 4:
            return
        where = part.log.dir if part is not None else "a log directory"
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        log.error("a log directory failed; handing leaderships over and stopping", dir=where,
                  error=reason)
        print(f"Broker {self.broker_id} cannot write its log at {where} ({reason.rstrip('.')}); "
              f"it hands its leaderships over and stops.", file=sys.stderr, flush=True)
        self.exit_code = 4
        self._on_stop()

    # --- effects of the replication state machine ------------------------------------------------
    def carry_out(self, part, effects: list, nbytes: int | None = None) -> None:
        """Carry out what ``part``'s state machine decided (zbroker/replication.py)."""
        for effect in effects:
            self._carry_out_one(part, effect, nbytes)

    def _carry_out_one(self, part, effect, nbytes: int | None = None) -> None:
        if isinstance(effect, ProduceDone):
            dp, i = effect.token
            self._produce_entry_done(dp, i, effect.error)
        elif isinstance(effect, HighWatermarkMoved):
            self._hw_advanced(part, nbytes)
        elif isinstance(effect, WriteIsr):
            self._write_isr(part, effect)
        elif isinstance(effect, Truncated):
            self.replicas.hw_changed = True
            log.info("truncated the log", topic=part.topic, partition=part.partition,
                     leader=part.leader_id, why=effect.why, from_offset=effect.from_offset,
                     to_offset=effect.to_offset)
        else:
            raise AssertionError(f"unknown effect {effect!r}")

    # --- acks=all ---------------------------------------------------------------------------------
    def _produce_entry_done(self, dp: DelayedProduce, i: int, err: errors.ZbError | None) -> None:
        part = dp.waiting.pop(i, None)
        if part is None or dp.done:
            return
        if err is not None:
            dp.out[i] = ProduceResult(part.topic, part.partition, err.code, -1, -1, -1, str(err))
        if not dp.waiting:
            dp.done = True
            self._delayed_produces.pop(id(dp), None)
            self._send(dp.ident, protocol.encode_response(dp.req_id, parts=dp.out,
                                                          **dp.extra))

    def _expire_produces(self) -> None:
        now = time.monotonic()
        for dp in [dp for dp in self._delayed_produces.values() if dp.deadline <= now]:
            self._expire_produce(dp)

    def _expire_produce(self, dp: DelayedProduce) -> None:
        self._delayed_produces.pop(id(dp), None)
        if dp.done:
            return
        err = errors.RequestTimedOut(
            "The batch was written by the leader but not replicated to the in-sync replicas "
            "within the request's timeout_ms.")
        for i, part in list(dp.waiting.items()):
            part.core.cancel_wait((dp, i))
            self._produce_entry_done(dp, i, err)

    def _hw_advanced(self, part, nbytes: int | None = None) -> None:
        """The high watermark of a partition may have moved: wake what waits on it."""
        if part.topic == protocol.OFFSETS_TOPIC and part.is_leader:
            self.groups.on_high_watermark(part)
        self.sessions.mark((part.topic, part.partition))        # followers learn it next
        self.replicas.hw_changed = True
        for fetch in list(part.hw_waiters):
            if nbytes is None:
                self._complete_fetch(fetch)
                continue
            fetch.bytes_ready += nbytes
            if fetch.bytes_ready >= fetch.min_bytes:
                self._complete_fetch(fetch)

    def _lost_leadership(self, part) -> None:
        """``part`` is no longer led here (or gone): answer the fetches parked on it (its state
        machine already failed the produces waiting on it)."""
        for s in self.sessions.mark((part.topic, part.partition)):
            if s.parked is not None:
                self._complete_fetch(s.parked)
        for f in list(part.waiters) + list(part.hw_waiters):
            self._complete_fetch(f)

    # --- ISR changes (the leader's) ---------------------------------------------------------------
    def _shrink_isrs(self) -> None:
        if self.leadership_paused:
            return
        now = time.monotonic()
        lag_s = self.cfg["replica.lag.time.max.ms"] / 1000
        for part in self.replicas.partitions.values():
            if part.is_leader and not self._earlier_life(part):
                self.carry_out(part, part.core.tick(now, lag_s))

    def _write_isr(self, part, w: WriteIsr) -> None:
        client = self.client
        if client is None or self.leadership_paused or self._earlier_life(part):
            part.core.on_isr_write_failed(w.isr, w.leader_epoch)
            return
        value = md.encode_state(self.broker_id, w.leader_epoch, list(w.isr), w.controller_epoch)
        log.info("changing the ISR", topic=part.topic, partition=part.partition,
                 isr=list(part.isr), new_isr=list(w.isr), reason=w.reason,
                 replicas=list(w.replicas))
        try:
            fut = client.set_async(md.partition_path(part.topic, part.partition), value,
                                   w.version)
        except Exception as e:
            part.core.on_isr_write_failed(w.isr, w.leader_epoch)
            log.warning("ISR write not sent", error=str(e))
            return
        fut.add_done_callback(lambda f: self._post(("isr_done", part, w, f)))

    def _on_isr_done(self, part, w: WriteIsr, fut) -> None:
        key = (part.topic, part.partition)
        if self.replicas.partitions.get(key) is not part:
            return
        exc = fut.exception()
        if exc is not None:
            part.core.on_isr_write_failed(w.isr, w.leader_epoch)
            log.warning("ISR write refused; taking the state from the metadata",
                        topic=part.topic, partition=part.partition, error=str(exc))
            if self.watcher is not None:
                self.watcher.poke()
            return
        self.carry_out(part, part.core.on_isr_written(w.isr, fut.result(), w.leader_epoch,
                                                         time.monotonic()))

    # --- controlled shutdown ----------------------------------------------------------------------
    def _on_stop(self) -> None:
        if self._shutdown_deadline is not None or not self.cfg["controlled.shutdown.enable"] or \
                self.client is None or not any(len(p.replicas) > 1
                                               for p in self.replicas.partitions.values()):
            self.stopping = True
            return
        log.info("controlled shutdown: asking the controller to move leaderships away")
        self._shutdown_deadline = time.monotonic() + \
            self.cfg["controlled.shutdown.timeout.ms"] / 1000
        try:
            fut = self.client.create_async(md.shutdown_path(self.broker_id), b"",
                                           ephemeral=True)
            fut.add_done_callback(self._on_shutdown_key)
        except Exception as e:
            log.warning("controlled shutdown request failed", error=str(e))
            self.stopping = True
            return
        self._add_timer(0.02, self._check_controlled_shutdown)

    def _on_shutdown_key(self, fut) -> None:       # on the coordinator client's thread
        exc = fut.exception()
        if exc is not None and not isinstance(exc, NodeExists):
            log.warning("controlled shutdown request failed; stopping", error=str(exc))
            self._post(("stop_now",))

    def _controlled_shutdown_done(self) -> bool:
        image = self.image
        me = self.broker_id
        if me not in image.shutting_down:
            return False
        for t in image.topics.values():
            for st in t.partitions:
                if st is None or me not in st.replicas:
                    continue
                if st.leader == me:
                    if any(r != me and r in image.brokers and r not in image.shutting_down
                           for r in st.isr):
                        return False
                elif st.leader != md.NO_LEADER and me in st.isr:
                    return False
        return True

    def _check_controlled_shutdown(self) -> None:
        if self.stopping:
            return
        if self._controlled_shutdown_done():
            log.info("controlled shutdown: leaderships moved")
            self.stopping = True
        elif time.monotonic() > self._shutdown_deadline:
            log.warning("controlled shutdown timed out; stopping anyway")
            self.stopping = True
        else:
            self._add_timer(0.02, self._check_controlled_shutdown)

    def _fetch(self, ident, header, blobs):
        parts = header["parts"]
        replica_id = header.get("replica_id", protocol.CONSUMER_REPLICA_ID)
        if replica_id >= 0:
            protocol.check_entries("Fetch", "parts", parts, protocol.REPLICA_FETCH_PART)
            if self.authorize:
                self.require(acl.CLUSTER_ACTION, acl.CLUSTER, acl.CLUSTER_NAME)
            if header.get("replica_epoch") is None:
                raise errors.InvalidRequest("A replica's Fetch needs its broker epoch "
                                            "(replica_epoch).")
        else:
            protocol.check_entries("Fetch", "parts", parts, protocol.FETCH_PART)
            if self.authorize:
                for topic in {p[0] for p in parts}:
                    self.require(acl.READ, acl.TOPIC, topic)
        max_wait_ms = min(max(header.get("max_wait_ms", FETCH_WAIT_MS_DEFAULT), 0),
                          protocol.FETCH_WAIT_MS_MAX)
        min_bytes = max(header.get("min_bytes", 1), 0)
        max_bytes = min(max(header.get("max_bytes", FETCH_MAX_BYTES_DEFAULT), 0),
                        FETCH_RESPONSE_BYTES_MAX)
        session = None
        session_epoch = header.get("session_epoch", FINAL_EPOCH)
        if session_epoch != FINAL_EPOCH:
            session, parts = self._fetch_session(header, parts, session_epoch)
        fetch = DelayedFetch(ident, header["id"], parts, min_bytes, max_bytes, replica_id,
                             header.get("replica_epoch", -1), session)
        if max_wait_ms > 0 and min_bytes > 0 and \
                self._delayed_fetches < self.cfg["delayed.fetches.max"]:
            meta, data, nbytes, failed = self._read_fetch(fetch)
            if nbytes < min_bytes and not failed:
                self._park(fetch, nbytes, max_wait_ms)
                return None
        else:
            meta, data, _, _ = self._read_fetch(fetch)
        return self._fetch_response(fetch, meta, data)

    def _fetch_session(self, header: dict, parts: list, session_epoch: int):
        """Check a replica's Fetch against its session (opened by it when ``session_epoch`` is
        0). Returns (session, the partitions to read: those named and those with news)."""
        replica_id = header.get("replica_id", protocol.CONSUMER_REPLICA_ID)
        if replica_id < 0:
            raise errors.InvalidRequest("Only replicas fetch in fetch sessions here.")
        if session_epoch < 0:
            raise errors.InvalidFetchSessionEpoch(
                f"A fetch session epoch is -1 (none), 0 (open one) or positive, not "
                f"{session_epoch}.")
        forgotten = header.get("forgotten", ())
        protocol.check_entries("Fetch", "forgotten", forgotten, protocol.FORGOTTEN_PART)
        info = self.image.brokers.get(replica_id)
        if info is None or info.epoch != header["replica_epoch"]:
            raise errors.StaleBrokerEpoch(
                f"Broker {replica_id} with broker epoch {header['replica_epoch']} is not "
                f"registered; its fetch session is refused.")
        named = [protocol.ReplicaFetchPart._make(p) for p in parts]
        session, closed = self.sessions.fetch(
            replica_id, header["replica_epoch"], header.get("session_id", 0), session_epoch,
            named, forgotten, time.monotonic())
        for s in closed:
            self._session_closed(s)
        get = self.replicas.partitions.get
        for topic, p in forgotten:
            part = get((topic, p))
            if part is not None:
                part.core.follower_left_session(replica_id)
        return session, named + self.sessions.take(session, named)

    def _session_closed(self, s) -> None:
        if s.parked is not None:
            self._complete_fetch(s.parked)

    def _fetch_response(self, fetch, meta: list, data: list) -> list:
        extra = {}
        if fetch.diverging:
            extra["diverging"] = fetch.diverging
        if fetch.session is not None:
            extra["session_id"] = fetch.session.id
        return protocol.encode_response(fetch.req_id, data, parts=meta, **extra)

    def _read_fetch(self, fetch: DelayedFetch):
        meta, data = [], []
        remaining = fetch.max_bytes
        total = 0
        failed = False
        get = self.replicas.partitions.get
        replica_id = fetch.replica_id
        session = fetch.session
        fetch.diverging = []
        now = time.monotonic()
        for topic, p, offset, epoch, part_max, *rest in fetch.parts:
            part = get((topic, p))
            try:
                if part is None or not part.is_leader or \
                        (epoch != -1 and epoch != part.leader_epoch) or self.leadership_paused \
                        or part.core.state_zxid < self.broker_epoch:
                    part = self._partition(topic, p, epoch)
                bound = part.high_watermark
                if replica_id >= 0:
                    if epoch != part.leader_epoch:      # a replica always names its epoch
                        raise errors.FencedLeaderEpoch(
                            f"A replica's fetch of {topic}-{p} must name the leader epoch "
                            f"{part.leader_epoch} it follows in, not {epoch}.")
                    diverging, effects = part.core.on_follower_fetch(
                        replica_id, fetch.replica_epoch, offset, rest[0], now,
                        self.image.shutting_down, fetch.req_id, session)
                    self.carry_out(part, effects)
                    if diverging is not None:
                        fetch.diverging.append(protocol.DivergingEpoch(topic, p, diverging.epoch,
                                                                       diverging.end_offset))
                        meta.append(FetchResult(topic, p, 0, part.high_watermark,
                                                part.log.log_start_offset,
                                                part.log.log_end_offset))
                        data.append(b"")
                        failed = True       # answer at once: the follower must truncate
                        continue
                    bound = None
                hw = part.high_watermark
                if remaining > 0 and part_max > 0:
                    chunk = part.log.read(offset, min(part_max, remaining), max_offset=bound,
                                          min_one_batch=total == 0)
                else:
                    if not part.log.log_start_offset <= offset <= part.log.log_end_offset:
                        raise errors.OffsetOutOfRange(
                            f"The offset {offset} is outside [{part.log.log_start_offset}, "
                            f"{part.log.log_end_offset}].")
                    chunk = b""
                if not chunk and session is not None and offset < part.log.log_end_offset:
                    # no room left in this answer (or its next batch did not fit what was
                    # left): the follower does not ask again, so the next answer has it
                    session.dirty.add((topic, p))
            except errors.ZbError as e:
                if isinstance(e, errors.OffsetOutOfRange) and part is not None:
                    meta.append(FetchResult(topic, p, e.code, part.high_watermark,
                                            part.log.log_start_offset, part.log.log_end_offset))
                else:
                    meta.append(FetchResult(topic, p, e.code, -1, -1, -1))
                data.append(b"")
                failed = True
                continue
            meta.append(FetchResult(topic, p, 0, hw, part.log.log_start_offset,
                                    part.log.log_end_offset))
            data.append(chunk)
            total += len(chunk)
            remaining -= len(chunk)
        return meta, data, total, failed

    def _park(self, fetch: DelayedFetch, nbytes: int, max_wait_ms: int) -> None:
        fetch.bytes_ready = nbytes
        if fetch.session is not None:
            fetch.session.parked = fetch
            self._delayed_fetches += 1
            self._add_timer(max_wait_ms / 1000, self._complete_fetch, fetch)
            return
        get = self.replicas.partitions.get
        for topic, p, *_ in fetch.parts:
            part = get((topic, p))
            if part is not None and part not in fetch.partitions:     # (a set: a replica's
                (part.waiters if fetch.replica_id >= 0 else part.hw_waiters).append(fetch)
                fetch.partitions.add(part)                          # fetch names thousands)
        self._delayed_fetches += 1
        self._add_timer(max_wait_ms / 1000, self._complete_fetch, fetch)

    def _on_append(self, part, nbytes: int) -> None:
        """Records were appended to ``part``, which we lead: wake the followers' fetches."""
        for s in self.sessions.mark((part.topic, part.partition)):
            fetch = s.parked
            if fetch is not None:
                fetch.bytes_ready += nbytes
                if fetch.bytes_ready >= fetch.min_bytes:
                    self._complete_fetch(fetch)
        for fetch in list(part.waiters):
            fetch.bytes_ready += nbytes
            if fetch.bytes_ready >= fetch.min_bytes:
                self._complete_fetch(fetch)

    def _complete_fetch(self, fetch: DelayedFetch) -> None:
        if fetch.done:
            return
        fetch.done = True
        self._delayed_fetches -= 1
        s = fetch.session
        if s is not None:
            if s.parked is fetch:
                s.parked = None
            if not s.closed:
                fetch.parts = fetch.parts + self.sessions.take(s, fetch.parts)
        for part in fetch.partitions:
            try:
                (part.waiters if fetch.replica_id >= 0 else part.hw_waiters).remove(fetch)
            except ValueError:
                pass
        fetch.partitions = set()
        meta, data, _, _ = self._read_fetch(fetch)
        self._send(fetch.ident, self._fetch_response(fetch, meta, data))
        fetch.parts = ()                # (its timer may hold it until the wait's end)

    def _offset_for_leader_epoch(self, ident, header, blobs):
        """A follower asks where its latest epoch ends in our log (we must lead in the epoch it
        names as current)."""
        parts = header["parts"]
        protocol.check_entries("OffsetForLeaderEpoch", "parts", parts,
                               protocol.OFFSET_FOR_EPOCH_PART)
        replica_id = header["replica_id"]
        if self.authorize:
            self.require(acl.CLUSTER_ACTION, acl.CLUSTER, acl.CLUSTER_NAME)
        registered = self.image.brokers.get(replica_id)
        if replica_id >= 0 and (registered is None or
                                header.get("replica_epoch") != registered.epoch):
            raise errors.StaleBrokerEpoch(
                f"Broker {replica_id} with broker epoch {header.get('replica_epoch')} is not "
                f"the registered one.")
        out = []
        for topic, p, current_epoch, epoch in parts:
            try:
                part = self._partition(topic, p, current_epoch)
                found_epoch, end_offset = part.log.leader_epoch_cache.end_offset_for_epoch(
                    epoch, part.log.log_end_offset)
            except errors.ZbError as e:
                out.append(protocol.EpochEndResult(topic, p, e.code, -1, -1))
                continue
            out.append(protocol.EpochEndResult(topic, p, 0, found_epoch, end_offset))
        return protocol.encode_response(header["id"], parts=out)

    def _list_offsets(self, ident, header, blobs):
        parts = header["parts"]
        protocol.check_entries("ListOffsets", "parts", parts, protocol.LIST_OFFSETS_PART)
        out = []
        for topic, p, timestamp, epoch in parts:
            try:
                if self.authorize:
                    self.require(acl.DESCRIBE, acl.TOPIC, topic)
                part = self._partition(topic, p, epoch)
                plog = part.log
                found_ts = -1
                if timestamp == protocol.EARLIEST_TIMESTAMP:
                    offset = plog.log_start_offset
                elif timestamp == protocol.LATEST_TIMESTAMP:
                    offset = part.high_watermark
                elif timestamp < 0:
                    raise errors.InvalidRequest(f"The timestamp {timestamp} is neither -2 "
                                                f"(earliest), -1 (latest) nor a time.")
                else:
                    found = plog.offset_for_timestamp(timestamp)
                    offset = -1 if found is None or found >= part.high_watermark else found
                    if offset >= 0:
                        found_ts = self._timestamp_at(plog, offset)
            except errors.ZbError as e:
                out.append(protocol.ListOffsetsResult(topic, p, e.code, -1, -1, -1))
                continue
            out.append(protocol.ListOffsetsResult(topic, p, 0, offset, found_ts,
                                                  part.leader_epoch))
        return protocol.encode_response(header["id"], parts=out)

    @staticmethod
    def _timestamp_at(plog, offset: int) -> int:
        batch = plog.read(offset, 1)
        for _, view in records.iter_batches(batch):
            for rec in records.decode_records(view, check_crc=False):
                if rec.offset == offset:
                    return rec.timestamp
        return -1

    # --- admin APIs (the controller's) ------------------------------------------------------------
    def _admin(self, ident, header, blobs):
        header.pop("_refused", None)
        if self.authorize and header["api"] in ADMIN_TOPIC_OPERATIONS:
            self._refuse_topics(header)
        controller = self.controller
        if controller is None or not controller.active:
            raise errors.NotController(
                f"Broker {self.broker_id} is not the controller; broker "
                f"{self.image.controller_id} is.")
        if not controller.submit(ident, header):
            raise errors.TooBusy("The controller's queue is full; retry shortly.")
        return None

    def _refuse_topics(self, header: dict) -> None:
        """Name the topics of a CreateTopics, DeleteTopics or CreatePartitions the principal may
        not touch: the controller answers them TOPIC_AUTHORIZATION_FAILED, the rest it does."""
        api = header["api"]
        operation = ADMIN_TOPIC_OPERATIONS[api]
        entries = header.get("topics")
        if not isinstance(entries, list):
            return      # the controller's checks say what is wrong
        cluster_create = api == "CreateTopics" and \
            self.allowed(acl.CREATE, acl.CLUSTER, acl.CLUSTER_NAME)
        refused = {}
        for e in entries:
            name = e if api == "DeleteTopics" else (e[0] if isinstance(e, list) and e else None)
            if isinstance(name, str) and not cluster_create and \
                    not self.allowed(operation, acl.TOPIC, name):
                refused[name] = [errors.TopicAuthorizationFailed.code,
                                 f"{self.principal} may not {operation.lower()} the topic "
                                 f"{name!r} (no ACL allows it)."]
        if refused:
            header["_refused"] = refused

    # --- ACLs (zbroker/acl.py) --------------------------------------------------------------------
    def allowed(self, operation: str, rtype: str, name: str) -> bool:
        """May the principal of the request being handled do this? (Always, without
        authorizer.enable.)"""
        return not self.authorize or \
            self.acl_cache.authorize(self.principal, operation, rtype, name)

    def require(self, operation: str, rtype: str, name: str) -> None:
        if not self.allowed(operation, rtype, name):
            cls = AUTHORIZATION_ERRORS[rtype]
            what = "the cluster" if rtype == acl.CLUSTER else f"the {rtype.lower()} {name!r}"
            raise cls(f"{self.principal} is not allowed {operation} on {what} (no ACL allows "
                      f"it).")

    def _describe_acls(self, ident, header, blobs):
        if not self.authorize:
            raise errors.SecurityDisabled()
        self.require(acl.DESCRIBE, acl.CLUSTER, acl.CLUSTER_NAME)
        f = acl.AclFilter.checked(header.get("filter") or {})
        return protocol.encode_response(header["id"], acls=[
            list(b) for b in self.acl_cache.bindings if f.matches(b)])

    def _acl_admin(self, ident, header, blobs):
        if not self.authorize:
            raise errors.SecurityDisabled()
        self.require(acl.ALTER, acl.CLUSTER, acl.CLUSTER_NAME)
        return self._admin(ident, header, blobs)

    def _on_admin_reply(self, ident: bytes, frames: list, wait) -> None:
        """A response from the controller. ``wait`` = (api, topics, timeout_ms): hold it until
        this broker's metadata shows the change (so the caller's next Metadata request here sees
        it), at most timeout_ms."""
        if wait is None or not wait[1]:
            self._send(ident, frames)
            return
        api, topics, timeout_ms = wait
        pending = PendingAdminReply(ident, frames, api, topics)
        self._pending_admin.append(pending)
        self._add_timer(min(max(timeout_ms, 0), protocol.REQUEST_TIMEOUT_MS_MAX) / 1000,
                        self._release_admin, pending)
        self._check_pending_admin()

    def _check_pending_admin(self) -> None:
        image = self.image
        for pending in list(self._pending_admin):
            if all(self._admin_visible(image, pending.api, t) for t in pending.topics):
                self._release_admin(pending)

    @staticmethod
    def _admin_visible(image: md.ClusterImage, api: str, topic) -> bool:
        name, count = topic
        t = image.topics.get(name)
        if api == "DeleteTopics":
            return t is None
        return t is not None and len(t.partitions) >= count and \
            all(st is not None for st in t.partitions)

    def _release_admin(self, pending: PendingAdminReply) -> None:
        if pending.done:
            return
        pending.done = True
        self._pending_admin.remove(pending)
        self._send(pending.ident, pending.frames)

    # --- shutdown ---------------------------------------------------------------------------------
    def _shutdown_quietly(self) -> None:
        """After a failed start: let go of everything without a word."""
        for closer in (lambda: self.client and self.client.close(),
                       lambda: self.router and self.router.close(0),
                       self.ctx.term, self.replicas.close_all):
            try:
                closer()
            except Exception:
                pass

    def stop(self, *_args) -> None:
        self._post(("stop",))

    def _shutdown(self) -> None:
        log.info("stopping", broker_id=self.broker_id)
        for closer in (self.controller, self.watcher, self.acl_watcher):
            if closer is not None:
                closer.stop()
        self.groups.close()
        for part in list(self.replicas.partitions.values()):
            self.carry_out(part, part.core.stop())  # answer acks=all waits
            self._lost_leadership(part)             # and long polls
        for s in self.sessions.close_all():
            self._session_closed(s)
        self.fetchers.close_all()
        self.peers.close_all()
        self.replicas.checkpoint_high_watermarks(wait=True)
        self.replicas.close_all()
        if self.client is not None:
            self.client.close()          # the registration goes at once
        if self.router is not None:
            self.router.close(0)
        if self.authorizer is not None:
            self.authorizer.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.ctx.term()
        log.info("stopped", broker_id=self.broker_id)


def build_arg_parser() -> argparse.ArgumentParser:
    return server_arg_parser("zb-server-start", "Start a zbroker broker.",
                             broker_config.BROKER_CONFIG)


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        cfg = broker_config.load(args.config, args.override)
        try:
            acl.parse_super_users(cfg["super.users"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
    except ConfigError as e:
        print(f"zb-server-start: {e}", file=sys.stderr)
        return 2
    configure_logging(cfg["log.level"], process="broker", broker_id=cfg["broker.id"])
    server = BrokerServer(cfg)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    # A signal may land on another thread; the C-level handler then writes to the wake pipe so
    # the loop's poll returns at once and the Python handler runs on the main thread.
    signal.set_wakeup_fd(server._wake_w, warn_on_full_buffer=False)
    try:
        server.open()
    except StartupError as e:
        print(f"zb-server-start: {e}", file=sys.stderr)
        server.stopping = True
        server._shutdown_quietly()
        return 1
    return server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
