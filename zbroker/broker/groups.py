"""The group coordinator inside a broker: the transport around ``zbroker.groups.shard``.

For every partition of ``__consumer_offsets`` this broker leads, a ``GroupShard`` holds the
groups that hash to it. Becoming leader loads the shard by replaying the partition from its
start; losing leadership drops it (what is waiting gets NOT_COORDINATOR, and the new leader has
the same state from the same log). The broker's loop owns all of it.

Writes and answers. A shard operation returns records and a response. The records are
appended to the partition as the leader's own batch (as an acks=all produce would be), and the
response, like the response of every operation, records or not, is held until the partition's
high watermark reaches the log end offset as it was then: no member or tool is ever told of a
state that a coordinator failover could take back. A response not released within
``offsets.commit.timeout.ms`` gets COORDINATOR_NOT_AVAILABLE (the client retries; the state in
memory still holds what was appended, as the log does).

Held heartbeats. A heartbeat with ``max_wait_ms`` that finds nothing new for its member (no
record written, the assignment it reports is the one it has) is held, up to ``max_wait_ms`` or
the member's heartbeat interval. Whenever an operation changes a group, the held heartbeats of
its members are checked: one whose member's assignment would now move (a partition to revoke, a
partition released by its old owner, or the member gone) is handled again at once. So a
rebalance runs at the speed of the members' revocations, not of their heartbeat intervals. A
member's next heartbeat answers the one held before it (with what that one found then; the
client only acts on the answer to its latest heartbeat).

Snapshots. __consumer_offsets is not compacted; instead, once
``offsets.topic.snapshot.records`` records (or twice the last snapshot, when that is more) were
appended since the last snapshot, a shard appends records that rebuild its whole state, and once
they are replicated the partition's log starts at them (followers follow the leader's log start
offset). So a load replays about as many records as the state holds, not the whole history.
"""

from __future__ import annotations

import collections
import time
from typing import NamedTuple

from zbroker import acl, errors, protocol, records
from zbroker.groups.shard import GroupShard, Result, ShardConfig
from zbroker.logs import get_logger

log = get_logger("zbroker.broker.groups")

BATCH_BYTES_MAX = 512 * 1024          # records per appended batch are split to stay below this
PROBE_TIMEOUT_S = 1.0                  # how long a commit waits to learn a remote log end
LOAD_READ_BYTES = 4 * 1024 * 1024
CREATE_RETRY_S = 1.0



def shard_config(cfg) -> ShardConfig:
    return ShardConfig(
        session_timeout_ms=cfg["group.consumer.session.timeout.ms"],
        min_session_timeout_ms=cfg["group.consumer.min.session.timeout.ms"],
        max_session_timeout_ms=cfg["group.consumer.max.session.timeout.ms"],
        heartbeat_interval_ms=cfg["group.consumer.heartbeat.interval.ms"],
        min_heartbeat_interval_ms=cfg["group.consumer.min.heartbeat.interval.ms"],
        max_heartbeat_interval_ms=cfg["group.consumer.max.heartbeat.interval.ms"],
        max_group_size=cfg["group.consumer.max.size"],
        assignors=tuple(cfg["group.consumer.assignors"]),
        offset_metadata_max_bytes=cfg["offset.metadata.max.bytes"],
        offsets_retention_ms=cfg["offsets.retention.minutes"] * 60000)


class Waiting:
    """A response held until the high watermark of each shard it depends on passes."""
    __slots__ = ("ident", "req_id", "frames", "waits", "deadline", "done")

    def __init__(self, ident, req_id, frames, waits: dict, deadline: float):
        self.ident, self.req_id, self.frames = ident, req_id, frames
        self.waits, self.deadline = waits, deadline
        self.done = False


class Deferred:
    """An OffsetCommit waiting to learn where the logs of partitions led by other brokers end
    (``probing``); commits of a shard run in the order they came."""
    __slots__ = ("ident", "header", "probing", "unknown", "done")

    def __init__(self, ident, header):
        self.ident, self.header = ident, header
        self.probing: set = set()
        self.unknown: set = set()        # probes that failed: the end stays unknown
        self.done = False


class Parked(NamedTuple):
    ident: bytes
    header: dict
    client_host: str
    arrived: float
    deadline: float
    owned: frozenset
    frames: list            # the answer it found when it was held


class Host:
    """One loaded shard and what waits on it."""

    def __init__(self, part, shard: GroupShard, records_in_log: int):
        self.part = part                     # the broker's Partition of __consumer_offsets
        self.shard = shard
        self.leader_epoch = part.leader_epoch
        self.waiting: collections.deque[Waiting] = collections.deque()
        self.parked: dict[tuple[str, str], Parked] = {}
        self.deferred: collections.deque[Deferred] = collections.deque()
        self.records_since_snapshot = records_in_log
        self.snapshot_records = 0
        self.trim: tuple[int, int] | None = None   # (new log start, when the HW reaches this)


class GroupCoordinator:
    def __init__(self, server):
        self.server = server
        self.cfg = server.cfg
        self.config = shard_config(server.cfg)
        self.hosts: dict[int, Host] = {}
        self.topics: dict[str, int] = {}
        self._create_asked = -1e9
        self._next_offsets_expiry = time.monotonic() + \
            self.cfg["offsets.retention.check.interval.ms"] / 1000
        self.commit_timeout_s = self.cfg["offsets.commit.timeout.ms"] / 1000
        self.snapshot_records_min = self.cfg["offsets.topic.snapshot.records"]
        self._paused_since: float | None = None
        # the largest log end offset seen at the leaders of partitions other brokers lead
        self.known_end: dict[tuple[str, int], int] = {}

    # --- following the metadata -----------------------------------------------------------------
    def on_image(self, image) -> None:
        """Load the shards of partitions we now lead, drop the others, and tell every shard
        about topics that changed."""
        topics = {name: len(t.partitions) for name, t in image.topics.items()
                  if name not in protocol.INTERNAL_TOPICS}
        topics_changed = topics != self.topics
        self.topics = topics
        if topics_changed:
            self.known_end = {tp: e for tp, e in self.known_end.items()
                              if tp[0] in topics and tp[1] < topics[tp[0]]}
        led = {}
        for (topic, p), part in self.server.replicas.partitions.items():
            if topic == protocol.OFFSETS_TOPIC and self._leads(part):
                led[p] = part
        for p, host in list(self.hosts.items()):
            part = led.get(p)
            if part is not host.part or part.leader_epoch != host.leader_epoch:
                self.unload(p, "leadership moved")
        for p, part in led.items():
            if p not in self.hosts:
                self._load(p, part)
            elif topics_changed:
                host = self.hosts[p]
                self._run(host, host.shard.set_topics(topics), None, None)

    def _leads(self, part) -> bool:
        """Leader of this ``__consumer_offsets`` partition in this life of the broker: a
        leadership from before its registration may rest on a log a power loss shortened, and
        the controller elects anew (ReplicaCore.leads_in_this_life), so no groups load on it."""
        return part.is_leader and not self.server._earlier_life(part)

    def _load(self, p: int, part) -> None:
        started = time.monotonic()
        shard = GroupShard(p, self.config, self.topics)
        plog = part.log
        offset, end, count = plog.log_start_offset, plog.log_end_offset, 0
        try:
            while offset < end:
                blob = plog.read(offset, LOAD_READ_BYTES)
                if not blob:
                    break
                for h, view in records.iter_batches(blob):
                    for r in records.decode_records(view):
                        shard.replay(r.key, r.value)
                        count += 1
                    offset = h.base_offset + h.last_offset_delta + 1
        except errors.ZbError as e:
            log.error("cannot read __consumer_offsets to load its groups", partition=p,
                      error=str(e))
            return
        now = time.monotonic()
        shard.loaded(now)
        shard.touched.clear()
        self.hosts[p] = Host(part, shard, count)
        log.info("group coordinator loaded", partition=p, groups=len(shard.groups),
                 records=count, ms=round((now - started) * 1000, 1))
        self._run(self.hosts[p], shard.set_topics(self.topics), None, None)

    def unload(self, p: int, why: str) -> None:
        host = self.hosts.pop(p, None)
        if host is None:
            return
        err = errors.NotCoordinator(f"Broker {self.server.broker_id} is no longer the group "
                                    f"coordinator of these groups ({why}); find it again.")
        for w in list(host.waiting):
            self._fail(w, err)
        for parked in host.parked.values():
            self.server._send(parked.ident, protocol.encode_error(parked.header["id"], err))
        for d in host.deferred:
            d.done = True
            self.server._send(d.ident, protocol.encode_error(d.header["id"], err))
        log.info("group coordinator unloaded", partition=p, reason=why)

    def close(self) -> None:
        for p in list(self.hosts):
            self.unload(p, "the broker is stopping")

    # --- requests -------------------------------------------------------------------------------
    def handle(self, ident: bytes, header: dict, client_host: str):
        """A group API request (protocol.GROUP_APIS); the response frames, or None when it is
        held."""
        api = header["api"]
        if api == "ConsumerGroupDescribe":
            return self._describe(ident, header)
        if api == "DeleteGroups":
            return self._delete_groups(ident, header)
        gid = header["group_id"]
        protocol.check_group_id(gid)
        host = self._host_of(gid)
        shard = host.shard
        now = time.monotonic()
        try:
            if api == "ConsumerGroupHeartbeat":
                return self._heartbeat(host, ident, header, client_host, now, now)
            if api == "OffsetCommit":
                return self._commit(host, ident, header)
            if api == "OffsetFetch":
                op = lambda: self._describable(shard.fetch_offsets(header), header)  # noqa: E731
            elif api == "OffsetDelete":
                op = lambda: shard.delete_offsets(header)  # noqa: E731
            else:
                raise errors.InvalidRequest(f"{api} is not a group API.")
            return self._run(host, self._call(host, op), ident, header["id"])
        except errors.ZbError as e:
            return self._answer_error(host, ident, header["id"], e)

    def _answer_error(self, host: Host, ident, req_id, err: errors.ZbError):
        """A refusal waits for the high watermark too: it may rest on state not yet
        replicated (a member removed a moment ago)."""
        if self.hosts.get(host.shard.partition) is not host:
            return protocol.encode_error(req_id, err)
        return self._answer(ident, req_id, protocol.encode_error(req_id, err),
                            {host: host.part.log.log_end_offset})

    def _describable(self, result: Result, header: dict) -> Result:
        """An OffsetFetch of all the group's offsets shows only the topics the principal may
        Describe (Kafka's filter); one naming its partitions was checked before."""
        if header.get("parts") is not None:
            return result
        allowed = self.server.allowed
        parts = [p for p in result.response["parts"] if allowed(acl.DESCRIBE, acl.TOPIC, p[0])]
        return result._replace(response={**result.response, "parts": parts})

    def _call(self, host: Host, op) -> Result:
        """Run a shard operation. Our own bug in it may have left records applied in memory
        that are not in the log: reload the shard from the log then, and let the caller
        answer the failure."""
        try:
            return op()
        except errors.ZbError:
            raise
        except Exception:
            log.exception("a group coordinator operation failed; reloading the shard",
                          partition=host.shard.partition)
            self._reload(host, "an operation failed")
            raise

    def _heartbeat(self, host: Host, ident, header, client_host: str, now: float,
                   arrived: float):
        shard = host.shard
        key = (header["group_id"], header["member_id"])
        before = host.parked.pop(key, None)
        if before is not None:          # its newer heartbeat answers the held one
            frames = self._answer(before.ident, before.header["id"], before.frames,
                                  {host: host.part.log.log_end_offset})
            if frames is not None:
                self.server._send(before.ident, frames)
        result = self._call(host, lambda: shard.heartbeat(header, client_host, now, arrived,
                                                          _wall_ms()))
        resp = result.response
        wait_ms = min(max(header.get("max_wait_ms", 0), 0), protocol.HEARTBEAT_WAIT_MS_MAX,
                      resp["heartbeat_interval_ms"])
        owned = header.get("topic_partitions")
        if wait_ms > 0 and not result.records and owned is not None and \
                resp["member_epoch"] == header["member_epoch"] and \
                sorted(map(tuple, resp["assignment"])) == \
                sorted((t, sorted(ps)) for t, ps in owned):
            frames = protocol.encode_response(header["id"], **resp)
            deadline = arrived + wait_ms / 1000
            host.parked[key] = Parked(ident, header, client_host, arrived, deadline,
                                      shard._partition_list(owned, "topic_partitions"), frames)
            return None
        return self._run(host, result, ident, header["id"])

    def _host_of(self, gid: str) -> Host:
        image = self.server.image
        t = image.topics.get(protocol.OFFSETS_TOPIC)
        if t is None or not t.partitions:
            raise errors.NotCoordinator(f"Broker {self.server.broker_id} is not the coordinator "
                                        f"of group {gid!r}; __consumer_offsets does not exist "
                                        f"yet.")
        if self.server.leadership_paused:
            raise errors.NotCoordinator(f"Broker {self.server.broker_id} has lost contact with "
                                        f"the coordinator service and does not act as group "
                                        f"coordinator until it is back.")
        p = protocol.group_partition(gid, len(t.partitions))
        host = self.hosts.get(p)
        if host is None:
            st = t.partitions[p]
            leader = st.leader if st is not None else -1
            raise errors.NotCoordinator(f"Broker {self.server.broker_id} is not the coordinator "
                                        f"of group {gid!r}; broker {leader} is.")
        part = host.part
        if len(part.isr) < part.min_insync_replicas:
            raise errors.CoordinatorNotAvailable(
                f"The group coordinator's partition {protocol.OFFSETS_TOPIC}-{p} has "
                f"{len(part.isr)} in-sync replicas; min.insync.replicas is "
                f"{part.min_insync_replicas}.")
        return host

    # --- commits and where logs end ------------------------------------------------------------
    def _commit(self, host: Host, ident, header):
        """OffsetCommit. An offset beyond a partition's log end offset is refused; for a
        partition another broker leads, whose end we have not seen reach that far, the commit
        first asks that leader (a Fetch of nothing, which names the log end offset). Commits of
        one shard are handled in the order they came."""
        parts = header["parts"]
        protocol.check_entries("OffsetCommit", "parts", parts, protocol.OFFSET_COMMIT_PART)
        d = Deferred(ident, header)
        for t, p, offset, *_ in parts:
            if (t, p) in d.probing or self._local_end(t, p) is not None or \
                    p < 0 or p >= self.topics.get(t, 0):
                continue
            if offset > self.known_end.get((t, p), -1):
                d.probing.add((t, p))
        if not d.probing and not host.deferred:
            return self._run_commit(host, d)
        host.deferred.append(d)
        self._probe(host, d)
        self._drain_deferred(host)
        return None

    def _run_commit(self, host: Host, d: Deferred):
        d.done = True

        def log_end(t, p):
            local = self._local_end(t, p)
            if local is not None:
                return local
            return None if (t, p) in d.unknown else self.known_end.get((t, p))
        shard = host.shard
        result = self._call(host, lambda: shard.commit_offsets(d.header, int(time.time() * 1000),
                                                               log_end))
        return self._run(host, result, d.ident, d.header["id"])

    def _drain_deferred(self, host: Host) -> None:
        while host.deferred and not host.deferred[0].probing:
            d = host.deferred.popleft()
            if d.done or self.hosts.get(host.shard.partition) is not host:
                continue
            try:
                frames = self._run_commit(host, d)
            except errors.ZbError as e:
                frames = self._answer_error(host, d.ident, d.header["id"], e)
            if frames is not None:
                self.server._send(d.ident, frames)

    def _probe(self, host: Host, d: Deferred) -> None:
        image = self.server.image
        by_leader: dict[int, list] = {}
        for tp in sorted(d.probing):
            st = image.partition(*tp)
            if st is None or st.leader < 0 or st.leader == self.server.broker_id:
                d.probing.discard(tp)
                d.unknown.add(tp)
                continue
            by_leader.setdefault(st.leader, []).append(tp)
        for leader, tps in by_leader.items():
            def done(header, err, tps=tps):
                found = {}
                if header is not None:
                    for e in header.get("parts") or ():
                        if isinstance(e, list) and len(e) == 6 and isinstance(e[5], int) and \
                                e[5] >= 0:
                            found[(e[0], e[1])] = e[5]
                for tp in tps:
                    d.probing.discard(tp)
                    if tp in found:
                        self.known_end[tp] = max(self.known_end.get(tp, -1), found[tp])
                    else:
                        d.unknown.add(tp)
                self._drain_deferred(host)
            self.server.peers.request(leader, "Fetch", {
                "replica_id": protocol.CONSUMER_REPLICA_ID, "max_wait_ms": 0, "min_bytes": 0,
                "max_bytes": 0, "parts": [[t, p, 0, -1, 0] for t, p in tps]}, done,
                PROBE_TIMEOUT_S)

    def _local_end(self, topic: str, partition: int) -> int | None:
        """The log end offset of a partition this broker leads (None elsewhere): no consumer
        can have read beyond it. (Not the high watermark: a leader elected a moment ago may
        not know the high watermark its predecessor reached yet.)"""
        part = self.server.replicas.partitions.get((topic, partition))
        if part is not None and part.is_leader:
            return part.log.log_end_offset
        return None

    def _describe(self, ident, header):
        ids = header["group_ids"]
        self._check_ids(ids)
        out, waits = [], {}
        for gid in ids:
            try:
                protocol.check_group_id(gid)
                host = self._host_of(gid)
            except errors.ZbError as e:
                out.append([gid, e.code, str(e), "Dead", -1, -1, "", []])
                continue
            out.append(host.shard.describe_group(gid))
            waits[host] = host.part.log.log_end_offset
        return self._answer(ident, header["id"],
                            protocol.encode_response(header["id"], groups=out), waits)

    def _delete_groups(self, ident, header):
        ids = header["group_ids"]
        self._check_ids(ids)
        out, waits = [], {}
        for gid in dict.fromkeys(ids):
            try:
                protocol.check_group_id(gid)
                host = self._host_of(gid)
            except errors.ZbError as e:
                out.append([gid, e.code, str(e)])
                continue
            result = self._call(host, lambda: host.shard.delete_groups([gid]))
            self._append(host, result.records)
            out += result.response["groups"]
            waits[host] = host.part.log.log_end_offset
            self._check_parked(host)
        return self._answer(ident, header["id"],
                            protocol.encode_response(header["id"], groups=out), waits)

    @staticmethod
    def _check_ids(ids) -> None:
        if len(ids) > protocol.GROUPS_PER_REQUEST_MAX:
            raise errors.InvalidRequest(f"A request may name at most "
                                        f"{protocol.GROUPS_PER_REQUEST_MAX} groups.")
        if not all(isinstance(g, str) for g in ids):
            raise errors.InvalidRequest("Group ids must be strings.")

    def list_groups(self, header) -> list:
        states = header.get("states")
        if states is not None and not all(isinstance(s, str) for s in states):
            raise errors.InvalidRequest("ListGroups states must be strings.")
        out = []
        for host in self.hosts.values():
            out += host.shard.list_groups(states)
        return sorted(out)

    def find_coordinator(self, header) -> list:
        if header.get("key_type", "group") != "group":
            raise errors.InvalidRequest("FindCoordinator only knows key_type 'group'.")
        keys = header["keys"]
        self._check_ids(keys)
        image = self.server.image
        t = image.topics.get(protocol.OFFSETS_TOPIC)
        out = []
        for gid in keys:
            try:
                protocol.check_group_id(gid)
            except errors.ZbError as e:
                out.append([gid, -1, "", -1, e.code, str(e)])
                continue
            if t is None:
                self._create_offsets_topic()
                e = errors.CoordinatorNotAvailable(f"{protocol.OFFSETS_TOPIC} is being "
                                                   f"created; retry shortly.")
                out.append([gid, -1, "", -1, e.code, str(e)])
                continue
            p = protocol.group_partition(gid, len(t.partitions))
            st = t.partitions[p]
            b = image.brokers.get(st.leader) if st is not None else None
            if b is None:
                e = errors.CoordinatorNotAvailable(f"{protocol.OFFSETS_TOPIC}-{p}, which holds "
                                                   f"group {gid!r}, has no leader right now.")
                out.append([gid, -1, "", -1, e.code, str(e)])
                continue
            out.append([gid, b.id, b.host, b.port, 0, None])
        return out

    def _create_offsets_topic(self) -> None:
        now = time.monotonic()
        if now - self._create_asked < CREATE_RETRY_S:
            return
        self._create_asked = now
        self.server.request_topic_creation(protocol.OFFSETS_TOPIC, {
            "partitions": self.cfg["offsets.topic.num.partitions"],
            "replication_factor": self.cfg["offsets.topic.replication.factor"],
            "config": {"segment.bytes": str(self.cfg["offsets.topic.segment.bytes"]),
                       "retention.ms": "-1", "retention.bytes": "-1"}})

    # --- writing and answering ------------------------------------------------------------------
    def _run(self, host: Host, result: Result, ident, req_id) -> list | None:
        """Append ``result``'s records, then answer (now, or once they are replicated)."""
        self._append(host, result.records)
        frames = None
        if ident is not None:
            frames = protocol.encode_response(req_id, **(result.response or {}))
            frames = self._answer(ident, req_id, frames, {host: host.part.log.log_end_offset})
        self._check_parked(host)
        return frames

    def _append(self, host: Host, recs: list) -> None:
        if not recs:
            return
        part = host.part
        try:
            for blob in _batches(recs):
                self.server.append_internal(part, blob)
        except Exception as e:
            log.error("writing group records failed; reloading the shard", error=str(e),
                      partition=host.shard.partition)
            self._reload(host, "a write failed")
            raise errors.CoordinatorNotAvailable("The group coordinator could not write its "
                                                 "records; retry.") from None
        host.records_since_snapshot += len(recs)
        if host.trim is None and host.records_since_snapshot > \
                max(self.snapshot_records_min, 2 * host.snapshot_records):
            self._snapshot(host)

    def _snapshot(self, host: Host) -> None:
        """Append a snapshot of the shard's state; once it is replicated, the partition's log
        starts at it (followers follow the leader's log start offset)."""
        recs = host.shard.snapshot_records()
        part = host.part
        start = part.log.log_end_offset
        host.snapshot_records = len(recs)
        host.trim = (start, -1)             # not before the whole snapshot is in the log
        if recs:
            self._append(host, recs)
        host.trim = (start, part.log.log_end_offset)
        host.records_since_snapshot = 0
        log.info("group coordinator snapshot written", partition=host.shard.partition,
                 records=len(recs), log_start_after=start)
        self._maybe_trim(host)

    def _maybe_trim(self, host: Host) -> None:
        if host.trim is None or host.trim[1] < 0 or host.part.high_watermark < host.trim[1]:
            return
        start, _ = host.trim
        host.trim = None
        try:
            host.part.log.delete_records_before(start)
            self.server.log_start_moved(host.part)
        except errors.ZbError as e:
            log.warning("could not move the log start of __consumer_offsets", error=str(e),
                        partition=host.shard.partition)

    def _reload(self, host: Host, why: str) -> None:
        p = host.shard.partition
        self.unload(p, why)
        part = self.server.replicas.partitions.get((protocol.OFFSETS_TOPIC, p))
        if part is not None and self._leads(part):
            self._load(p, part)

    def _answer(self, ident, req_id, frames, waits: dict) -> list | None:
        if all(h.part.high_watermark >= end for h, end in waits.items()):
            return frames
        w = Waiting(ident, req_id, frames, dict(waits),
                    time.monotonic() + self.commit_timeout_s)
        for h in waits:
            h.waiting.append(w)
        return None

    def on_high_watermark(self, part) -> None:
        """The high watermark of a partition we lead moved."""
        if part.topic != protocol.OFFSETS_TOPIC:
            return
        host = self.hosts.get(part.partition)
        if host is None or host.part is not part:
            return
        hw = part.high_watermark
        if host.trim is not None:
            self._maybe_trim(host)
        q = host.waiting
        while q:
            w = q[0]
            if w.done:
                q.popleft()
                continue
            if w.waits[host] > hw:
                break
            q.popleft()
            del w.waits[host]
            if not w.waits:
                w.done = True
                self.server._send(w.ident, w.frames)

    def _fail(self, w: Waiting, err: errors.ZbError) -> None:
        if w.done:
            return
        w.done = True
        self.server._send(w.ident, protocol.encode_error(w.req_id, err))

    # --- held heartbeats ------------------------------------------------------------------------
    def _check_parked(self, host: Host) -> None:
        """Answer the held heartbeats of members whose assignment would now move."""
        shard = host.shard
        for _ in range(10):             # a re-handled heartbeat may move others in turn
            touched = shard.touched
            if not touched:
                return
            shard.touched = set()
            due = [k for k in host.parked if k[0] in touched and
                   shard.would_move(k[0], k[1], host.parked[k].owned)]
            for k in due:
                self._rehandle(host, k)

    def _rehandle(self, host: Host, key) -> None:
        parked = host.parked.pop(key, None)
        if parked is None:
            return
        hdr = dict(parked.header, max_wait_ms=0)
        try:
            frames = self._heartbeat(host, parked.ident, hdr, parked.client_host,
                                     time.monotonic(), parked.arrived)
        except errors.ZbError as e:
            frames = self._answer_error(host, parked.ident, parked.header["id"], e)
        if frames is not None:
            self.server._send(parked.ident, frames)

    # --- timers ---------------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        paused = self.server.leadership_paused
        if paused and self._paused_since is None:
            self._paused_since = now
        elif not paused and self._paused_since is not None:
            # Members could not heartbeat while we refused to coordinate: fresh sessions for
            # all, as after a load, rather than expire everyone at once.
            self._paused_since = None
            for host in self.hosts.values():
                host.shard.loaded(now)
        expiry_due = now >= self._next_offsets_expiry
        if expiry_due:
            self._next_offsets_expiry = now + \
                self.cfg["offsets.retention.check.interval.ms"] / 1000
        for host in list(self.hosts.values()):
            if self.hosts.get(host.shard.partition) is not host:
                continue
            try:
                self._tick_host(host, now, paused, expiry_due)
            except errors.ZbError as e:
                log.warning("a group coordinator timer failed; it runs again shortly",
                            partition=host.shard.partition, error=str(e))
            except Exception:           # our bug (the shard was reloaded): the others go on
                log.exception("a group coordinator timer failed",
                              partition=host.shard.partition)

    def _tick_host(self, host: Host, now: float, paused: bool, expiry_due: bool) -> None:
        shard = host.shard
        if not paused:
            d = shard.next_deadline()
            if d is not None and d <= now:
                self._run(host, self._call(host, lambda: shard.expire(now, _wall_ms())),
                          None, None)
            if expiry_due:
                self._run(host, self._call(host, lambda: shard.expire_offsets(_wall_ms())),
                          None, None)
        for key in [k for k, v in host.parked.items() if v.deadline <= now]:
            self._rehandle(host, key)
        while host.waiting and (host.waiting[0].done or host.waiting[0].deadline <= now):
            w = host.waiting.popleft()
            self._fail(w, errors.CoordinatorNotAvailable(
                "The group coordinator's write was not replicated within "
                "offsets.commit.timeout.ms; retry."))


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _batches(recs: list):
    """Record batches (bytes) holding ``recs`` in order, each below BATCH_BYTES_MAX."""
    builder = records.BatchBuilder()
    for key, value in recs:
        if len(builder) and builder.size_in_bytes + len(key) + len(value or b"") > \
                BATCH_BYTES_MAX:
            yield builder.build()
            builder = records.BatchBuilder()
        builder.append(value, key=key)
    if len(builder):
        yield builder.build()
