"""The AdminClient: create, delete, list, describe and grow topics.

    from clients import AdminClient
    admin = AdminClient(bootstrap_servers="127.0.0.1:9092")
    admin.create_topic("events", partitions=6, replication_factor=3,
                       config={"retention.ms": "86400000"})
    print(admin.list_topics())
    print(admin.describe_topic("events"))   # partitions with leader, replicas, isr
    admin.create_partitions("events", 12)
    admin.delete_topic("events")
    admin.close()

Calls are synchronous and the client is thread-safe (one lock around its one connection set).
Admin requests go to the controller named by Metadata; a broker that is no longer the controller
answers NOT_CONTROLLER and the call is retried at the new one (so are lost connections and
timeouts), until the call's ``timeout_ms``. ``create_topic``, ``create_partitions`` and
``delete_topic`` return once Metadata shows the change (every partition with a leader, or the
topic gone), so a producer or consumer made right after sees it.
"""

from __future__ import annotations

import threading
import time

from clients._net import NetworkClient, topic_error
from clients.errors import (NoBrokersAvailable, NotController, RequestTimedOut,
                            UnknownTopicOrPartition, ZbError)
from clients.structs import TopicDescription
from zbroker import errors, protocol
from zbroker.logs import get_logger

log = get_logger("clients.admin")
_monotonic = time.monotonic


class AdminClient:
    """Topic administration. Settings: ``bootstrap_servers`` ("host:port,..."),
    ``request_timeout_ms`` (default timeout of each call), ``retry_backoff_ms``,
    ``bootstrap_timeout_ms`` (the constructor raises NoBrokersAvailable when no bootstrap broker
    answers within it)."""

    def __init__(self, bootstrap_servers: str = "localhost:9092", *, client_id: str | None = None,
                 request_timeout_ms: int = 30000, retry_backoff_ms: int = 100,
                 bootstrap_timeout_ms: int = 10000):
        self.client_id = client_id
        self.request_timeout_ms = min(request_timeout_ms, protocol.REQUEST_TIMEOUT_MS_MAX)
        self.retry_backoff_s = retry_backoff_ms / 1000
        self._net = NetworkClient(bootstrap_servers, request_timeout_ms=self.request_timeout_ms)
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
            if _monotonic() >= deadline:
                if last is not None and not isinstance(last, RequestTimedOut):
                    raise last
                raise RequestTimedOut(f"No broker at {self.bootstrap_servers} answered a "
                                      f"Metadata request in time.")
            time.sleep(self.retry_backoff_s)

    def _admin_call(self, api: str, fields: dict, deadline: float) -> None:
        """Send an admin request to the controller, retrying NOT_CONTROLLER and other retriable
        errors; raises the topic's error if there is one."""
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
                        return
                log.debug("admin request will be retried", api=api, error=str(last))
            else:
                last = NotController("The cluster has no controller right now.")
            if _monotonic() + self.retry_backoff_s >= deadline:
                raise RequestTimedOut(f"The {api} request did not succeed in time"
                                      f"{f' (last error: {last})' if last else ''}.")
            time.sleep(self.retry_backoff_s)

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


__all__ = ["AdminClient"]
