"""The AdminClient: create, delete, list, describe and grow topics; list, describe and delete
consumer groups and change their committed offsets; look up partitions' offsets.

    from clients import AdminClient, TopicPartition
    admin = AdminClient(bootstrap_servers="127.0.0.1:9092")
    admin.create_topic("events", partitions=6, replication_factor=3,
                       config={"retention.ms": "86400000"})
    print(admin.list_topics())
    print(admin.describe_topic("events"))   # partitions with leader, replicas, isr
    admin.create_partitions("events", 12)
    print(admin.list_consumer_groups())                 # [GroupListing(group_id, state, type)]
    print(admin.describe_consumer_groups(["billing"]))  # members, assignments, coordinator
    print(admin.list_consumer_group_offsets("billing"))
    admin.alter_consumer_group_offsets("billing", {TopicPartition("events", 0): 0})
    admin.delete_topic("events")
    admin.close()

Calls are synchronous and the client is thread-safe (one lock around its one connection set).
Admin requests go to the controller named by Metadata; a broker that is no longer the controller
answers NOT_CONTROLLER and the call is retried at the new one (so are lost connections and
timeouts), until the call's ``timeout_ms``. ``create_topic``, ``create_partitions`` and
``delete_topic`` return once Metadata shows the change (every partition with a leader, or the
topic gone), so a producer or consumer made right after sees it.

Group calls go to each group's coordinator, found with FindCoordinator; while it moves (or
``__consumer_offsets`` is still being created) the coordinator answers NOT_COORDINATOR,
COORDINATOR_NOT_AVAILABLE or COORDINATOR_LOAD_IN_PROGRESS, and the call finds it again and
retries, as it does after a lost connection, until its ``timeout_ms``. ``list_consumer_groups``
asks every broker (each knows only the groups it coordinates). ``list_offsets`` asks each
partition's leader and follows leaders that move.
"""

from __future__ import annotations

import threading
import time

from clients._group import COORDINATOR_MOVED
from clients._net import NetworkClient, client_security, topic_error
from clients.errors import (NoBrokersAvailable, NotController, RequestTimedOut,
                            UnknownTopicOrPartition, ZbError)
from clients.structs import (BrokerMetadata, ConsumerGroupDescription, GroupListing,
                             MemberDescription, OffsetAndMetadata, OffsetAndTimestamp,
                             TopicDescription, TopicPartition)
from zbroker import errors, protocol
from zbroker.acl import AclBinding, AclFilter
from zbroker.logs import get_logger

log = get_logger("clients.admin")
_monotonic = time.monotonic
FIND_COORDINATOR_S = 5.0         # the longest one FindCoordinator request may take


class AdminClient:
    """Topic administration. Settings: ``bootstrap_servers`` ("host:port,..."),
    ``request_timeout_ms`` (default timeout of each call), ``retry_backoff_ms``,
    ``bootstrap_timeout_ms`` (the constructor raises NoBrokersAvailable when no bootstrap broker
    answers within it)."""

    def __init__(self, bootstrap_servers: str = "localhost:9092", *, client_id: str | None = None,
                 request_timeout_ms: int = 30000, retry_backoff_ms: int = 100,
                 bootstrap_timeout_ms: int = 10000,
                 security_protocol: str | None = None, curve_secret_key_file: str | None = None,
                 curve_server_key_file: str | None = None):
        self.client_id = client_id
        self.request_timeout_ms = min(request_timeout_ms, protocol.REQUEST_TIMEOUT_MS_MAX)
        self.retry_backoff_s = retry_backoff_ms / 1000
        self._net = NetworkClient(bootstrap_servers, request_timeout_ms=self.request_timeout_ms,
                                  security=client_security(security_protocol,
                                                           curve_secret_key_file,
                                                           curve_server_key_file))
        self.bootstrap_servers = self._net.bootstrap_text
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._metadata([], _monotonic() + bootstrap_timeout_ms / 1000)
        except (RequestTimedOut, ZbError) as e:
            self.close()
            if isinstance(e, RequestTimedOut):
                raise NoBrokersAvailable(f"No broker answered at {self.bootstrap_servers} "
                                         f"within {bootstrap_timeout_ms / 1000:g} seconds.") \
                    from None
            raise

    # --- public API ---------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int, replication_factor: int,
                     config: dict | None = None, timeout_ms: int | None = None,
                     validate_only: bool = False) -> None:
        """Create a topic. Raises TopicAlreadyExists, InvalidPartitions,
        InvalidReplicationFactor (e.g. more replicas than live brokers), InvalidConfig..."""
        protocol.check_topic_name(name)
        if not isinstance(partitions, int) or partitions < 1:
            raise errors.InvalidPartitions(f"A topic needs at least 1 partition, not "
                                           f"{partitions!r}.")
        if not isinstance(replication_factor, int) or replication_factor < 1:
            raise errors.InvalidReplicationFactor(f"The replication factor must be at least 1, "
                                                  f"not {replication_factor!r}.")
        cfg = {str(k): str(v) for k, v in (config or {}).items()}
        deadline = self._deadline(timeout_ms)
        with self._lock:
            self._admin_call("CreateTopics", {
                "topics": [[name, partitions, replication_factor, cfg, None]],
                "timeout_ms": self._left_ms(deadline), "validate_only": validate_only}, deadline)
            if not validate_only:
                self._await(lambda c: self._complete(c, name, partitions), deadline,
                            f"The topic {name!r} was created but not every partition has a "
                            f"leader yet.", [name])

    def delete_topic(self, name: str, timeout_ms: int | None = None) -> None:
        """Delete a topic and its data. Raises UnknownTopicOrPartition if there is none."""
        protocol.check_topic_name(name)
        deadline = self._deadline(timeout_ms)
        with self._lock:
            self._admin_call("DeleteTopics", {"topics": [name],
                                              "timeout_ms": self._left_ms(deadline)}, deadline)
            self._await(lambda c: name not in c.topics, deadline,
                        f"The topic {name!r} was deleted but the metadata still shows it.",
                        [name])

    def create_partitions(self, name: str, total: int, timeout_ms: int | None = None) -> None:
        """Grow a topic to ``total`` partitions (it cannot shrink)."""
        protocol.check_topic_name(name)
        deadline = self._deadline(timeout_ms)
        with self._lock:
            self._admin_call("CreatePartitions", {"topics": [[name, total]],
                                                  "timeout_ms": self._left_ms(deadline)},
                             deadline)
            self._await(lambda c: self._complete(c, name, total), deadline,
                        f"The topic {name!r} was grown but its new partitions have no leader "
                        f"yet.", [name])

    def list_topics(self, timeout_ms: int | None = None) -> list[str]:
        """Names of every topic, sorted."""
        with self._lock:
            cluster = self._metadata(None, self._deadline(timeout_ms))
        return sorted(cluster.topics)

    def describe_topic(self, name: str, timeout_ms: int | None = None) -> TopicDescription:
        """The topic's partitions with leader, leader epoch, replicas, isr and offline replicas.
        Raises UnknownTopicOrPartition if there is no such topic."""
        protocol.check_topic_name(name)
        with self._lock:
            cluster = self._metadata([name], self._deadline(timeout_ms))
        parts = cluster.topics.get(name)
        if parts is None:
            raise topic_error(cluster.topic_errors.get(name, UnknownTopicOrPartition.code),
                              name, self.bootstrap_servers)
        return TopicDescription(name, name.startswith("__"),
                                [parts[p] for p in sorted(parts)])

    def describe_topics(self, names: list[str] | None = None,
                        timeout_ms: int | None = None) -> list[TopicDescription]:
        """Descriptions of ``names`` (all topics when None), sorted by name; unknown names are
        left out."""
        with self._lock:
            cluster = self._metadata(names, self._deadline(timeout_ms))
        return [TopicDescription(n, n.startswith("__"),
                                 [cluster.topics[n][p] for p in sorted(cluster.topics[n])])
                for n in sorted(cluster.topics) if names is None or n in names]

    def describe_cluster(self, timeout_ms: int | None = None) -> dict:
        """{"brokers": [BrokerMetadata], "controller_id": int, "cluster_id": str}."""
        with self._lock:
            cluster = self._metadata([], self._deadline(timeout_ms))
        return {"brokers": [cluster.brokers[b] for b in sorted(cluster.brokers)],
                "controller_id": cluster.controller_id, "cluster_id": cluster.cluster_id}

    # --- ACLs (authorizer.enable on the brokers) -----------------------------------------------
    def create_acls(self, acls: list[AclBinding], timeout_ms: int | None = None) -> dict:
        """Add bindings (kafka-python's shape): {"succeeded": [binding], "failed": [(binding,
        error)]}. Needs Alter on the cluster; ACL changes reach every broker within moments."""
        acls = list(acls)
        with self._lock:
            header = self._admin_call("CreateAcls", {"creations": [list(b) for b in acls]},
                                      self._deadline(timeout_ms))
        out: dict = {"succeeded": [], "failed": []}
        for b, (code, msg) in zip(acls, header["results"]):
            if code:
                out["failed"].append((b, errors.make_error(code, msg or None)))
            else:
                out["succeeded"].append(AclBinding.checked(b))
        return out

    def describe_acls(self, acl_filter: AclFilter | None = None,
                      timeout_ms: int | None = None) -> list[AclBinding]:
        """The bindings that match ``acl_filter`` (all without one), as a broker holds them.
        Needs Describe on the cluster."""
        deadline = self._deadline(timeout_ms)
        with self._lock:
            cluster = self._metadata([], deadline)
            if not cluster.brokers:
                raise errors.BrokerNotAvailable("The cluster has no broker to ask.")
            header = self._retried_call(min(cluster.brokers), "DescribeAcls",
                                        {"filter": (acl_filter or AclFilter()).wire()}, deadline)
        return [AclBinding.checked(b) for b in header["acls"]]

    def delete_acls(self, filters: list[AclFilter], timeout_ms: int | None = None
                    ) -> list[tuple[AclFilter, list[AclBinding], ZbError | None]]:
        """Remove every binding that matches one of ``filters``: per filter, the bindings it
        removed and its error (None). Needs Alter on the cluster."""
        filters = list(filters)
        with self._lock:
            header = self._admin_call("DeleteAcls", {"filters": [f.wire() for f in filters]},
                                      self._deadline(timeout_ms))
        return [(f, [AclBinding.checked(b) for b in matched],
                 errors.make_error(code, msg or None) if code else None)
                for f, (code, msg, matched) in zip(filters, header["results"])]

    # --- consumer groups ----------------------------------------------------------------------
    def list_consumer_groups(self, states=None, timeout_ms: int | None = None
                             ) -> list[GroupListing]:
        """Every consumer group of the cluster, sorted by group id: ListGroups to every broker
        (each answers for the groups it coordinates), merged. ``states`` (e.g. ["Stable",
        "Empty"], any case) keeps only groups in those states. A broker that does not answer
        within the timeout fails the call (RequestTimedOut), rather than leave its groups out
        unsaid."""
        fields = {"states": [str(s) for s in states] if states else None}
        deadline = self._deadline(timeout_ms)
        found: dict[str, GroupListing] = {}
        with self._lock:
            cluster = self._metadata([], deadline)
            for node in sorted(cluster.brokers):
                header = self._retried_call(node, "ListGroups", fields, deadline)
                for e in protocol.decode_entries(protocol.ListedGroupEntry,
                                                 header.get("groups"), "ListGroups"):
                    found[e.group_id] = GroupListing(e.group_id, e.state, e.group_type)
        return [found[g] for g in sorted(found)]

    def describe_consumer_groups(self, group_ids, timeout_ms: int | None = None
                                 ) -> list[ConsumerGroupDescription]:
        """Descriptions of ``group_ids`` (in that order, repeats dropped): state, epochs,
        assignor, members with what they own and what they move to, and the coordinating
        broker. A group that does not exist is described with state "Dead" and no members (as
        Kafka's admin client does)."""
        ids = self._group_ids(group_ids)
        deadline = self._deadline(timeout_ms)
        with self._lock:
            entries = self._groups_call("ConsumerGroupDescribe", ids,
                                        protocol.DescribedGroupEntry, deadline,
                                        ok=(errors.GroupIdNotFound,))
            brokers = self._net.cluster.brokers
            return [_description(entries[g][0], brokers.get(entries[g][1])) for g in ids]

    def list_consumer_group_offsets(self, group_id: str, partitions=None,
                                    timeout_ms: int | None = None) -> dict:
        """The group's committed offsets, {TopicPartition: OffsetAndMetadata}: every committed
        one when ``partitions`` is None (a group that does not exist has none); otherwise each
        partition asked for, with None for those without a commit."""
        protocol.check_group_id(group_id)
        parts = None if partitions is None else \
            [[tp.topic, tp.partition] for tp in map(_tp, partitions)]
        deadline = self._deadline(timeout_ms)
        with self._lock:
            header = self._group_call(group_id, "OffsetFetch",
                                      {"group_id": group_id, "parts": parts}, deadline)
        out = {}
        for e in protocol.decode_entries(protocol.OffsetFetchEntry, header.get("parts"),
                                         "OffsetFetch"):
            tp = TopicPartition(e.topic, e.partition)
            if e.err:
                raise _partition_error(e.err, None, tp)
            out[tp] = OffsetAndMetadata(e.offset, e.metadata, e.leader_epoch) \
                if e.offset >= 0 else None
        return out

    def alter_consumer_group_offsets(self, group_id: str, offsets: dict,
                                     timeout_ms: int | None = None) -> None:
        """Commit ``offsets`` ({TopicPartition: OffsetAndMetadata or int}) for the group, as a
        tool does: a commit without a member, which the coordinator takes only while the group
        has no members (it creates the group when there is none). With active members it
        raises UnknownMemberId (the wire's error) with a sentence saying so. A partition the
        coordinator refuses (unknown, negative or beyond its end, metadata too large) raises
        its error naming the partition; the partitions without an error were committed."""
        protocol.check_group_id(group_id)
        parts = []
        for tp, om in offsets.items():
            tp = _tp(tp)
            if isinstance(om, int) and not isinstance(om, bool):
                om = OffsetAndMetadata(om)
            elif not isinstance(om, OffsetAndMetadata):
                raise TypeError(f"The offset for {tp.topic}-{tp.partition} must be an int or an "
                                f"OffsetAndMetadata, not {type(om).__name__}.")
            parts.append([tp.topic, tp.partition, om.offset, om.leader_epoch, om.metadata])
        if not parts:
            return
        deadline = self._deadline(timeout_ms)
        with self._lock:
            try:
                header = self._group_call(group_id, "OffsetCommit", {
                    "group_id": group_id, "member_id": "",
                    "member_epoch": protocol.NO_MEMBER_EPOCH, "parts": parts}, deadline)
            except errors.UnknownMemberId:
                raise errors.UnknownMemberId(
                    f"The offsets of group {group_id!r} cannot be changed while it has active "
                    f"members; stop its consumers first.") from None
        for e in protocol.decode_entries(protocol.PartitionResultEntry, header.get("parts"),
                                         "OffsetCommit"):
            if e.err:
                raise _partition_error(e.err, e.msg, TopicPartition(e.topic, e.partition))

    def delete_consumer_groups(self, group_ids, timeout_ms: int | None = None) -> dict:
        """Delete groups with their committed offsets: {group_id: None (deleted) or the error}.
        A group with members is not deleted (NonEmptyGroup), nor one that does not exist
        (GroupIdNotFound). (A deletion retried after a lost answer may find the group already
        gone and say GroupIdNotFound.)"""
        ids = self._group_ids(group_ids)
        deadline = self._deadline(timeout_ms)
        with self._lock:
            entries = self._groups_call("DeleteGroups", ids, protocol.GroupResultEntry,
                                        deadline, ok=(errors.GroupIdNotFound,
                                                      errors.NonEmptyGroup))
        out = {}
        for g in ids:
            e = entries[g][0]
            out[g] = errors.make_error(e.err, e.msg) if e.err else None
        return out

    def delete_consumer_group_offsets(self, group_id: str, partitions,
                                      timeout_ms: int | None = None) -> dict:
        """Delete the group's committed offsets of ``partitions``: {TopicPartition: None (gone,
        or there was none) or the error}; GroupSubscribedToTopic for a topic a member of the
        group subscribes to. Raises GroupIdNotFound when the group does not exist."""
        protocol.check_group_id(group_id)
        tps = list(dict.fromkeys(map(_tp, partitions)))
        if not tps:
            return {}
        deadline = self._deadline(timeout_ms)
        with self._lock:
            header = self._group_call(group_id, "OffsetDelete", {
                "group_id": group_id, "parts": [[tp.topic, tp.partition] for tp in tps]},
                deadline)
        out: dict = {tp: None for tp in tps}
        for e in protocol.decode_entries(protocol.PartitionResultEntry, header.get("parts"),
                                         "OffsetDelete"):
            if e.err:
                out[TopicPartition(e.topic, e.partition)] = errors.make_error(e.err, e.msg)
        return out

    # --- offsets ------------------------------------------------------------------------------
    def list_offsets(self, timestamps: dict, timeout_ms: int | None = None) -> dict:
        """{TopicPartition: OffsetAndTimestamp} for {TopicPartition: timestamp}, asked of each
        partition's leader (ListOffsets): timestamp -2 is the earliest offset, -1 the latest
        (the high watermark: the end a consumer sees), otherwise the first offset whose record
        is at or after that time in ms (offset -1 when there is none). ``timestamp`` in the
        answer is that record's, -1 for earliest and latest. Raises UnknownTopicOrPartition
        for a partition the cluster does not have."""
        waiting = {_tp(tp): int(ts) for tp, ts in timestamps.items()}
        if not waiting:
            return {}
        deadline = self._deadline(timeout_ms)
        found: dict = {}
        last: ZbError | None = None
        with self._lock:
            while True:
                cluster = self._metadata(sorted({tp.topic for tp in waiting}), deadline)
                by_node: dict[int, list] = {}
                for tp in waiting:
                    self._check_partition(cluster, tp)
                    leader = cluster.leader(*tp)
                    if leader >= 0:
                        by_node.setdefault(leader, []).append(tp)
                for node, parts in list(_chunks(by_node, waiting)):
                    try:
                        header, _ = self._call(node, "ListOffsets", {"parts": parts}, deadline)
                    except ZbError as e:
                        if not e.retriable:
                            raise
                        last = e
                        continue
                    last = _take_offsets(header, waiting, found) or last
                leaderless = [tp for tp in waiting if cluster.leader(*tp) < 0]
                if leaderless:
                    last = errors.LeaderNotAvailable(
                        f"The partition {leaderless[0].topic}-{leaderless[0].partition} has no "
                        f"leader right now.")
                if not waiting:
                    return found
                self._retry_later(f"The offsets of {len(waiting)} partition(s) were not found",
                                  last, deadline)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._net.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- helpers (under _lock) ----------------------------------------------------------------
    def _deadline(self, timeout_ms: int | None) -> float:
        ms = self.request_timeout_ms if timeout_ms is None else timeout_ms
        return _monotonic() + ms / 1000

    @staticmethod
    def _left_ms(deadline: float) -> int:
        return max(1, min(int((deadline - _monotonic()) * 1000), protocol.REQUEST_TIMEOUT_MS_MAX))

    def _wait(self, box: list, deadline: float) -> None:
        while not box:
            left = deadline - _monotonic()
            if left <= 0:
                return
            self._net.poll(min(left, 0.1))

    def _call(self, node: int, api: str, fields: dict, deadline: float):
        """One request to ``node``; returns (header, blobs) or raises its error."""
        if self._closed:
            raise errors.ZbError("The admin client is closed.")
        box: list = []
        self._net.send(node, api, fields, handler=lambda h, b, e: box.append((h, b, e)),
                       timeout_ms=self._left_ms(deadline) + 1000)
        self._wait(box, deadline + 1.0)
        if not box:
            self._net.reset(node, "the request timed out")
            raise RequestTimedOut(f"{self._net.describe(node).capitalize()} did not answer "
                                  f"the {api} request in time.")
        header, blobs, error = box[0]
        if error is not None:
            raise error
        return header, blobs

    def _metadata(self, topics: list[str] | None, deadline: float):
        """Fresh metadata (retrying other brokers until ``deadline``)."""
        last: ZbError | None = None
        while True:
            box: list = []
            self._net.request_metadata(topics, box.append,
                                       timeout_ms=max(1, min(self._left_ms(deadline), 5000)))
            self._wait(box, deadline)
            if box and box[0] is None:
                return self._net.cluster
            if box:
                last = box[0]
                if isinstance(last, errors.AuthenticationFailed):
                    raise last          # every broker has the same keys: asking again won't do
            if _monotonic() >= deadline:
                if last is not None and not isinstance(last, RequestTimedOut):
                    raise last
                raise RequestTimedOut(f"No broker at {self.bootstrap_servers} answered a "
                                      f"Metadata request in time.")
            time.sleep(self.retry_backoff_s)

    def _admin_call(self, api: str, fields: dict, deadline: float) -> dict:
        """Send an admin request to the controller, retrying NOT_CONTROLLER and other retriable
        errors; raises the topic's error if there is one, else returns the response header."""
        last: ZbError | None = None
        while True:
            cluster = self._metadata([], deadline)
            node = cluster.controller_id
            if node in cluster.brokers:
                try:
                    header, _ = self._call(node, api, fields, deadline)
                except ZbError as e:        # the whole request failed: connection, timeout
                    if not e.retriable:
                        raise
                    last = e
                else:
                    for name, code, msg in header.get("topics") or ():
                        if code:
                            err = errors.make_error(code, msg or None)
                            # only a controller change is worth another try: the topic's own
                            # errors (unknown, exists, invalid) are the answer
                            if not isinstance(err, NotController):
                                raise self._explain(err, name)
                            last = err
                            break
                    else:
                        return header
                log.debug("admin request will be retried", api=api, error=str(last))
            else:
                last = NotController("The cluster has no controller right now.")
            self._retry_later(f"The {api} request did not succeed", last, deadline)

    def _retry_later(self, what: str, last: ZbError | None, deadline: float) -> None:
        """Sleep the retry backoff before another try, or raise RequestTimedOut ("<what> in
        time (last error: ...)") when the deadline comes first."""
        if _monotonic() + self.retry_backoff_s >= deadline:
            raise RequestTimedOut(f"{what} in time{f' (last error: {last})' if last else ''}.")
        time.sleep(self.retry_backoff_s)

    def _retried_call(self, node: int, api: str, fields: dict, deadline: float) -> dict:
        """``_call`` retried while its error is retriable (a lost connection, a timeout)."""
        while True:
            try:
                return self._call(node, api, fields, deadline)[0]
            except ZbError as e:
                if not e.retriable:
                    raise
                self._retry_later(f"{self._net.describe(node).capitalize()} did not answer the "
                                  f"{api} request", e, deadline)

    def _check_partition(self, cluster, tp: TopicPartition) -> None:
        """Raise UnknownTopicOrPartition unless fresh metadata shows ``tp``."""
        parts = cluster.topics.get(tp.topic)
        if parts is None:
            raise topic_error(cluster.topic_errors.get(tp.topic, UnknownTopicOrPartition.code),
                              tp.topic, self.bootstrap_servers)
        if tp.partition not in parts:
            raise UnknownTopicOrPartition(f"The partition {tp.topic}-{tp.partition} does not "
                                          f"exist (the topic has {len(parts)} partitions).")

    # --- group helpers (under _lock) ----------------------------------------------------------
    @staticmethod
    def _group_ids(group_ids) -> list[str]:
        if isinstance(group_ids, str):
            raise TypeError("group_ids must be a list of group ids, not one string.")
        ids = list(dict.fromkeys(group_ids))
        for g in ids:
            protocol.check_group_id(g)
        return ids

    def _coordinators(self, group_ids: list[str], deadline: float) -> dict[str, int]:
        """{group id: broker id of its coordinator} (FindCoordinator), retrying groups whose
        coordinator is not available yet and coordinators missing from our metadata."""
        found: dict[str, int] = {}
        last: ZbError | None = None
        refresh = not self._net.cluster.brokers
        while len(found) < len(group_ids):
            cluster = self._metadata([], deadline) if refresh else self._net.cluster
            refresh = False
            before = len(found)
            pending = [g for g in group_ids if g not in found][:protocol.GROUPS_PER_REQUEST_MAX]
            node = self._net.metadata_nodes()[0]
            try:
                # any broker answers; one that does not within a few seconds is skipped
                header, _ = self._call(node, "FindCoordinator",
                                       {"key_type": "group", "keys": pending},
                                       min(deadline, _monotonic() + FIND_COORDINATOR_S))
            except ZbError as e:
                if not e.retriable:
                    raise
                last, refresh = e, True
            else:
                for e in protocol.decode_entries(protocol.CoordinatorEntry,
                                                 header.get("coordinators"), "FindCoordinator"):
                    if e.key not in pending:
                        continue
                    if e.err:
                        err = errors.make_error(e.err, e.msg)
                        if not err.retriable:
                            raise err
                        last = err
                    elif e.node_id in cluster.brokers:
                        found[e.key] = e.node_id
                    else:                   # a broker our metadata does not have yet
                        refresh = True
            if len(found) - before < len(pending):      # (else: more groups than one
                self._retry_later(                      # request names; go on at once)
                    f"The coordinator of group {pending[0]!r} was not found", last, deadline)
        return found

    def _group_call(self, group_id: str, api: str, fields: dict, deadline: float) -> dict:
        """One request about one group at its coordinator; returns the response header. A
        coordinator that moved or is not ready is found again and the request retried."""
        while True:
            node = self._coordinators([group_id], deadline)[group_id]
            try:
                return self._call(node, api, fields, deadline)[0]
            except COORDINATOR_MOVED as e:
                self._retry_later(f"The {api} request for group {group_id!r} did not succeed",
                                  e, deadline)

    def _groups_call(self, api: str, group_ids: list[str], entry_cls, deadline: float,
                     ok: tuple) -> dict:
        """A request naming many groups (``group_ids`` field, ``groups`` entries with
        group_id, err and msg), one per coordinator: {group id: (entry, coordinator's broker
        id)}. Entries whose error says the coordinator moved are asked again; an error in
        ``ok`` is an answer; any other error raises."""
        out: dict = {}
        last: ZbError | None = None
        while len(out) < len(group_ids):
            pending = [g for g in group_ids if g not in out]
            by_node: dict[int, list[str]] = {}
            for g, node in self._coordinators(pending, deadline).items():
                by_node.setdefault(node, []).append(g)
            step = protocol.GROUPS_PER_REQUEST_MAX
            for node, ids in ((n, gs[i:i + step]) for n, gs in sorted(by_node.items())
                              for i in range(0, len(gs), step)):
                try:
                    header, _ = self._call(node, api, {"group_ids": ids}, deadline)
                except COORDINATOR_MOVED as e:
                    last = e
                    continue
                for e in protocol.decode_entries(entry_cls, header.get("groups"), api):
                    if e.group_id not in ids:
                        continue
                    err = errors.make_error(e.err, e.msg) if e.err else None
                    if err is None or isinstance(err, ok):
                        out[e.group_id] = (e, node)
                    elif isinstance(err, COORDINATOR_MOVED):
                        last = err
                    else:
                        raise err
            if len(out) < len(group_ids):
                self._retry_later(f"The {api} request did not succeed", last, deadline)
        return out

    @staticmethod
    def _explain(err: ZbError, topic: str) -> ZbError:
        if err.detail != err.message:
            return err
        if isinstance(err, errors.TopicAlreadyExists):
            return type(err)(f"The topic {topic!r} already exists.")
        if isinstance(err, errors.UnknownTopicOrPartition):
            return type(err)(f"The topic {topic!r} does not exist.")
        return type(err)(f"{err.message.rstrip('.')} (topic {topic!r}).")

    @staticmethod
    def _complete(cluster, name: str, partitions: int) -> bool:
        parts = cluster.topics.get(name)
        return (parts is not None and len(parts) >= partitions and
                all(p.leader >= 0 for p in parts.values()))

    def _await(self, done, deadline: float, why: str, topics: list[str]) -> None:
        while True:
            cluster = self._metadata(topics, deadline)
            if done(cluster):
                return
            if _monotonic() + 0.05 >= deadline:
                raise RequestTimedOut(why)
            time.sleep(0.05)


def _chunks(by_node: dict, timestamps: dict):
    """(node, ListOffsets parts) for each node's partitions, at most PARTS_PER_REQUEST_MAX a
    request."""
    step = protocol.PARTS_PER_REQUEST_MAX
    for node, tps in sorted(by_node.items()):
        for i in range(0, len(tps), step):
            yield node, [protocol.ListOffsetsPart(tp.topic, tp.partition, timestamps[tp], -1)
                     for tp in tps[i:i + step]]


def _take_offsets(header: dict, waiting: dict, found: dict) -> ZbError | None:
    """Move the partitions a ListOffsets response answered from ``waiting`` to ``found``;
    returns the last retriable error it names, raises any other."""
    last = None
    for r in protocol.decode_entries(protocol.ListOffsetsResult, header.get("parts") or [],
                                     "ListOffsets"):
        tp = TopicPartition(r.topic, r.partition)
        if tp not in waiting:
            continue
        if r.err:
            err = _partition_error(r.err, None, tp)
            if not (err.retriable or err.invalid_metadata):
                raise err
            last = err
            continue
        found[tp] = OffsetAndTimestamp(r.offset, r.timestamp)
        del waiting[tp]
    return last


def _tp(tp) -> TopicPartition:
    """A TopicPartition from one, or from a (topic, partition) pair."""
    topic, partition = tp
    return TopicPartition(topic, partition)


def _partition_error(code: int, msg: str | None, tp: TopicPartition) -> ZbError:
    """The error of one partition's entry, as a sentence that names the partition."""
    cls = errors.error_for_code(code)
    name = f"{tp.topic}-{tp.partition}"
    if msg and name in msg:
        return cls(msg)
    return cls(f"{(msg or cls.message).rstrip('.')} (partition {name}).")


def _description(e, coordinator: BrokerMetadata | None) -> ConsumerGroupDescription:
    """A ConsumerGroupDescription from a DescribedGroupEntry (state "Dead" for a group that
    does not exist)."""
    def parts(assignment) -> set:
        return {TopicPartition(t, p) for t, ps in assignment for p in ps}
    members = []
    for m in protocol.decode_entries(protocol.DescribedMemberEntry, e.members,
                                     "ConsumerGroupDescribe member"):
        members.append(MemberDescription(
            m.member_id, m.instance_id, m.client_id, m.client_host, m.member_epoch,
            list(m.subscribed_topic_names), m.subscribed_topic_regex, parts(m.assignment),
            parts(m.target_assignment), m.rack_id))
    return ConsumerGroupDescription(e.group_id, e.state, e.group_epoch, e.assignment_epoch,
                                    e.assignor, members, coordinator)


__all__ = ["AdminClient"]
