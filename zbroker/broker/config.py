"""The broker's settings: Kafka's keys where the meaning is Kafka's (``coordinator.*`` in place
of ``zookeeper.*``). ``zb-server-start --help`` lists them; config/server.properties is a sample.
"""

from __future__ import annotations

from zbroker.config import Config, ConfigDef, ConfigError, Setting
from zbroker.storage import log_config

MiB = 1 << 20
HOUR_MS = 3600 * 1000

BROKER_CONFIG = ConfigDef([
    Setting("broker.id", int, -1, "This broker's id, unique in the cluster (required).",
            min=-1, max=(1 << 31) - 1),
    Setting("listeners", list, ["tcp://0.0.0.0:9092"],
            "Address the broker listens on, tcp://host:port (the first one is used)."),
    Setting("advertised.listeners", list, [],
            "Address published to clients, tcp://host:port; default: listeners (0.0.0.0 "
            "becomes 127.0.0.1)."),
    Setting("log.dirs", list, ["/tmp/zb-logs"],
            "Directories holding partition logs (comma-separated); new partitions go to the "
            "one with fewest partitions."),
    Setting("coordinator.connect", str, "127.0.0.1:2181",
            "Coordinator addresses, host:port[,host:port...]: every member of an ensemble."),
    Setting("coordinator.session.timeout.ms", int, 6000,
            "Coordinator session timeout: how long a dead broker keeps its registration, so "
            "about how long its partitions wait for a new leader after a crash (heartbeats go "
            "every third of it). 6 s suits a LAN; Kafka's ZooKeeper default is 18 s.",
            min=100),
    Setting("metrics.listener", str, "",
            "Serve Prometheus metrics over HTTP here (http://0.0.0.0:9404); empty: off."),
    Setting("security.protocol", str, "PLAINTEXT",
            "PLAINTEXT, or CURVE: only clients whose public key is in curve.authorized.keys.dir "
            "get past the handshake; replication and controller traffic to other brokers use "
            "curve.client.secret.key.file.", choices=("PLAINTEXT", "CURVE")),
    Setting("curve.server.secret.key.file", str, "",
            "CURVE: the cluster's server key pair (NAME.key_secret from zb-keys), the same on "
            "every broker, so clients need one public key."),
    Setting("curve.authorized.keys.dir", str, "",
            "CURVE: the public keys (*.key) allowed to connect; a file's name is its principal "
            "(alice.key is User:alice). Every broker's own key belongs here too."),
    Setting("curve.client.secret.key.file", str, "",
            "CURVE: this broker's own key pair (NAME.key_secret from zb-keys), presented to "
            "the coordinator (and, with security.protocol=CURVE, to other brokers)."),
    Setting("coordinator.curve.server.key.file", str, "",
            "The coordinator's public key (its server NAME.key): set it to talk CURVE to a "
            "coordinator with security.protocol=CURVE."),
    Setting("coordinator.connection.timeout.ms", int, 10000,
            "How long start-up waits for the coordinator.", min=100),
    Setting("num.partitions", int, 1, "Partitions of an auto-created topic (and of CreateTopics "
            "with -1).", min=1),
    Setting("default.replication.factor", int, 1, "Replication factor of an auto-created topic "
            "(and of CreateTopics with -1).", min=1),
    Setting("authorizer.enable", bool, False,
            "Check every request against the cluster's ACLs (zb-acls): Kafka's AclAuthorizer. "
            "Connections without a CURVE key are User:ANONYMOUS."),
    Setting("super.users", str, "",
            "Principals allowed everything, ACLs or not, separated by ';' "
            "(User:broker-1;User:admin). The brokers' own principals belong here."),
    Setting("allow.everyone.if.no.acl.found", bool, False,
            "With the authorizer on: allow a resource that no ACL names at all."),
    Setting("auto.create.topics.enable", bool, True,
            "Create a topic when Metadata asks for an unknown one (and allows it)."),
    Setting("delete.topic.enable", bool, True, "Allow DeleteTopics."),
    Setting("broker.rack", str, "", "Rack of this broker; replica assignment spreads racks."),
    Setting("message.max.bytes", int, 1048588, "The largest record batch accepted.",
            min=61, max=64 * MiB),
    Setting("log.segment.bytes", int, 1 << 30, "Segment size before rolling.", min=1024,
            max=(1 << 31) - 1),
    Setting("log.roll.hours", int, 168, "Roll a segment this old.", min=1),
    Setting("log.roll.ms", int, None, "Roll a segment this old (overrides log.roll.hours)."),
    Setting("log.retention.hours", int, 168, "Delete segments older than this.", min=-1),
    Setting("log.retention.minutes", int, None, "Overrides log.retention.hours."),
    Setting("log.retention.ms", int, None, "Overrides log.retention.minutes/hours; -1 keeps "
            "segments forever."),
    Setting("log.retention.bytes", int, -1, "Delete oldest segments while a partition is larger; "
            "-1 for no limit.", min=-1),
    Setting("log.retention.check.interval.ms", int, 300000,
            "How often retention runs.", min=10),
    Setting("log.index.size.max.bytes", int, 10 * MiB, "Offset index size limit per segment.",
            min=16),
    Setting("log.index.interval.bytes", int, 4096, "Bytes between offset index entries.", min=0),
    Setting("log.flush.interval.messages", int, -1,
            "fsync after this many records; -1 leaves it to the OS.", min=-1),
    Setting("log.flush.interval.ms", int, -1,
            "fsync when unflushed records are this old; -1 leaves it to the OS.", min=-1),
    Setting("replica.high.watermark.checkpoint.interval.ms", int, 5000,
            "How often high watermarks are checkpointed.", min=10),
    Setting("min.insync.replicas", int, 1,
            "acks=all produce is refused (NOT_ENOUGH_REPLICAS) while fewer replicas than this are "
            "in sync (a topic may override it).", min=1),
    Setting("unclean.leader.election.enable", bool, False,
            "Elect a replica outside the ISR when no in-sync replica is alive (may lose "
            "acknowledged records; a topic may override it)."),
    Setting("replica.lag.time.max.ms", int, 30000,
            "A follower that has not caught up with the leader's log end offset for this long "
            "leaves the ISR.", min=10),
    Setting("replica.fetch.wait.max.ms", int, 500,
            "How long a follower's fetch waits at the leader for new data.", min=0,
            max=60000),
    Setting("replica.fetch.max.bytes", int, MiB, "Bytes a follower fetches per partition.",
            min=1024, max=64 * MiB),
    Setting("replica.fetch.response.max.bytes", int, 10 * MiB,
            "Bytes a follower fetches per request.", min=1024, max=64 * MiB),
    Setting("replica.fetch.backoff.ms", int, 200,
            "Pause after a follower's fetch failed (Kafka: 1000; shorter here so a "
            "partition is replicated again soon after a leader change).", min=0),
    Setting("max.incremental.fetch.session.cache.slots", int, 1000,
            "Fetch sessions a leader keeps (one per follower broker; KIP-227); beyond this the "
            "least recently used one is dropped and its follower opens a new one.", min=1),
    Setting("replica.fetch.sessions.enable", bool, True,
            "Followers fetch in incremental fetch sessions, naming only partitions whose "
            "request changed (false: every fetch names every partition)."),
    Setting("replica.socket.timeout.ms", int, 5000,
            "A follower's request unanswered for this long beyond its wait is sent again on a "
            "new connection (a request lost with a connection is only noticed this way).",
            min=100),
    Setting("auto.leader.rebalance.enable", bool, True,
            "The controller moves leadership back to each partition's preferred (first) "
            "replica when it is alive and in sync."),
    Setting("leader.imbalance.check.interval.seconds", int, 300,
            "How often the controller checks for partitions not led by their preferred "
            "replica.", min=1),
    Setting("controlled.shutdown.enable", bool, True,
            "On SIGTERM, have the controller move this broker's leaderships to other in-sync "
            "replicas before exiting."),
    Setting("controlled.shutdown.timeout.ms", int, 15000,
            "The longest a controlled shutdown waits for its leaderships to move.", min=0),
    # --- consumer groups (the group coordinator) ---
    Setting("offsets.topic.num.partitions", int, 50,
            "Partitions of the internal __consumer_offsets topic, created when a group is first "
            "used (fixed from then on: group g lives in partition hash(g) % this).", min=1,
            max=1000),
    Setting("offsets.topic.replication.factor", int, 3,
            "Replication factor of __consumer_offsets (capped at the live brokers when it is "
            "created).", min=1),
    Setting("offsets.topic.segment.bytes", int, 100 * MiB,
            "Segment size of __consumer_offsets.", min=1024, max=(1 << 31) - 1),
    Setting("offsets.topic.snapshot.records", int, 20000,
            "A group coordinator writes a snapshot of its groups into its __consumer_offsets "
            "partition after this many records (or twice the last snapshot), and the partition "
            "then starts there (zbroker's stand-in for Kafka's compaction of the topic).",
            min=10),
    Setting("offsets.commit.timeout.ms", int, 5000,
            "How long a group coordinator's answer may wait for its records to be replicated "
            "before the client is told to retry.", min=1),
    Setting("offsets.retention.minutes", int, 10080,
            "Committed offsets of a group without members are deleted this long after their "
            "commit (7 days); -1 keeps them.", min=-1),
    Setting("offsets.retention.check.interval.ms", int, 600000,
            "How often expired offsets (and empty groups without offsets) are removed.", min=10),
    Setting("offset.metadata.max.bytes", int, 4096,
            "The longest metadata string a committed offset may carry.", min=0, max=1 << 20),
    Setting("group.consumer.session.timeout.ms", int, 45000,
            "A group member's session timeout when it asks for none: a member not heard from "
            "for this long is removed and its partitions go to others.", min=1),
    Setting("group.consumer.min.session.timeout.ms", int, 6000,
            "The shortest session timeout a member may ask for (Kafka: 45000; lower here so LAN "
            "clusters and tests fail over fast).", min=1),
    Setting("group.consumer.max.session.timeout.ms", int, 60000,
            "The longest session timeout a member may ask for.", min=1),
    Setting("group.consumer.heartbeat.interval.ms", int, 5000,
            "How often members heartbeat when they ask for no other interval.", min=1),
    Setting("group.consumer.min.heartbeat.interval.ms", int, 1000,
            "The shortest heartbeat interval a member may ask for (Kafka: 5000).", min=1),
    Setting("group.consumer.max.heartbeat.interval.ms", int, 15000,
            "The longest heartbeat interval a member may ask for.", min=1),
    Setting("group.consumer.max.size", int, 1000,
            "The most members one consumer group may have (Kafka: no limit; assignments are "
            "computed on the broker's loop here).", min=1, max=100000),
    Setting("group.consumer.assignors", list, ["uniform", "range"],
            "Server-side assignors members may choose with group_remote_assignor; the first "
            "is the default.", ),
    Setting("producer.id.expiration.ms", int, 86400000,
            "Forget an idempotent producer that wrote nothing to a partition for this long; "
            "its next batch there gets UNKNOWN_PRODUCER_ID and starts a new epoch.", min=1),
    Setting("producer.id.expiration.check.interval.ms", int, 600000,
            "How often producers are checked for expiry.", min=1),
    Setting("producer.id.max.per.partition", int, 10000,
            "The most idempotent producers a partition remembers; the least recently written "
            "is forgotten first (bounded memory).", min=1),
    Setting("requests.per.poll.max", int, 1000,
            "Messages handled per loop turn before timers run.", min=1),
    Setting("delayed.produces.max", int, 10000,
            "acks=all produces waiting for replication at once; more are refused with "
            "REQUEST_TIMED_OUT (retriable) before anything is written.", min=1),
    Setting("delayed.fetches.max", int, 10000,
            "Fetches waiting for data at once; more are answered at once.", min=1),
    Setting("socket.send.buffer.messages", int, 100000,
            "Outgoing messages queued per peer (ZeroMQ high-water mark).", min=10),
    Setting("socket.receive.buffer.messages", int, 100000,
            "Incoming messages queued per peer (ZeroMQ high-water mark).", min=10),
    Setting("log.level", str, "INFO", "Log level.",
            choices=("DEBUG", "INFO", "WARNING", "ERROR")),
])

# Topic-level settings a CreateTopics request may set (Kafka's topic config names) -> log key.
TOPIC_CONFIG_KEYS = {
    "segment.bytes": "segment.bytes",
    "segment.ms": "segment.ms",
    "segment.index.bytes": "segment.index.bytes",
    "index.interval.bytes": "index.interval.bytes",
    "retention.ms": "retention.ms",
    "retention.bytes": "retention.bytes",
    "flush.messages": "flush.messages",
    "flush.ms": "flush.ms",
    "max.message.bytes": "message.max.bytes",
    "message.max.bytes": "message.max.bytes",
}


# Topic-level settings that are not the log's: replication.
TOPIC_REPLICATION_KEYS = {
    "min.insync.replicas": int,
    "unclean.leader.election.enable": bool,
}


def topic_min_insync_replicas(cfg: Config, topic_config: dict) -> int:
    try:
        return max(1, int(topic_config["min.insync.replicas"]))
    except (KeyError, ValueError, TypeError):
        return cfg["min.insync.replicas"]


def topic_unclean_election(cfg: Config, topic_config: dict) -> bool:
    value = topic_config.get("unclean.leader.election.enable")
    if value is None:
        return cfg["unclean.leader.election.enable"]
    return str(value).lower() == "true"


def load(path: str | None, overrides) -> Config:
    cfg = BROKER_CONFIG.load(path, overrides)
    if cfg["broker.id"] < 0:
        raise ConfigError("The setting broker.id must be set to a whole number of 0 or more.")
    if not cfg["log.dirs"]:
        raise ConfigError("The setting log.dirs must name at least one directory.")
    listener_endpoint(cfg)
    advertised_host_port(cfg)
    check_group_settings(cfg)
    return cfg


def check_group_settings(cfg: Config) -> None:
    """The group coordinator's settings must fit together (checked once, at start-up)."""
    from zbroker.groups.assignors import ASSIGNORS
    for kind in ("session.timeout", "heartbeat.interval"):
        lo, value, hi = (cfg[f"group.consumer.min.{kind}.ms"], cfg[f"group.consumer.{kind}.ms"],
                         cfg[f"group.consumer.max.{kind}.ms"])
        if not lo <= value <= hi:
            raise ConfigError(f"group.consumer.{kind}.ms ({value}) must lie between "
                              f"group.consumer.min.{kind}.ms ({lo}) and "
                              f"group.consumer.max.{kind}.ms ({hi}).")
    if cfg["group.consumer.heartbeat.interval.ms"] * 3 > cfg["group.consumer.session.timeout.ms"]:
        raise ConfigError("group.consumer.heartbeat.interval.ms must be at most a third of "
                          "group.consumer.session.timeout.ms.")
    names = cfg["group.consumer.assignors"]
    unknown = [n for n in names if n not in ASSIGNORS]
    if not names or unknown:
        raise ConfigError(f"group.consumer.assignors must name assignors among "
                          f"{', '.join(sorted(ASSIGNORS))}"
                          f"{f', not {unknown}' if unknown else ''}.")


def _split_endpoint(value: str, key: str) -> tuple[str, int]:
    rest = value.split("://", 1)[1] if "://" in value else value
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"The setting {key} must look like tcp://host:port, not {value!r}.")
    return host, int(port)


def listener_endpoint(cfg: Config) -> str:
    if not cfg["listeners"]:
        raise ConfigError("The setting listeners must name an address.")
    host, port = _split_endpoint(cfg["listeners"][0], "listeners")
    return f"tcp://{host}:{port}"


def advertised_host_port(cfg: Config) -> tuple[str, int]:
    if cfg["advertised.listeners"]:
        return _split_endpoint(cfg["advertised.listeners"][0], "advertised.listeners")
    host, port = _split_endpoint(cfg["listeners"][0], "listeners")
    if host in ("0.0.0.0", "*", "::", "[::]"):
        host = "127.0.0.1"
    return host, port


def default_log_props(cfg: Config) -> dict:
    """The broker-wide defaults of the partition log settings (Kafka's precedence rules)."""
    if cfg["log.retention.ms"] is not None:
        retention_ms = cfg["log.retention.ms"]
    elif cfg["log.retention.minutes"] is not None:
        retention_ms = cfg["log.retention.minutes"] * 60000
    else:
        retention_ms = cfg["log.retention.hours"] * HOUR_MS
    if retention_ms < 0:
        retention_ms = -1
    roll_ms = cfg["log.roll.ms"] if cfg["log.roll.ms"] is not None \
        else cfg["log.roll.hours"] * HOUR_MS
    return {
        "segment.bytes": cfg["log.segment.bytes"],
        "segment.ms": roll_ms,
        "segment.index.bytes": cfg["log.index.size.max.bytes"],
        "index.interval.bytes": cfg["log.index.interval.bytes"],
        "retention.ms": retention_ms,
        "retention.bytes": cfg["log.retention.bytes"],
        "flush.messages": cfg["log.flush.interval.messages"],
        "flush.ms": cfg["log.flush.interval.ms"],
        "message.max.bytes": cfg["message.max.bytes"],
    }


def check_topic_config(config: dict) -> dict:
    """Validate a topic's config map (Kafka's topic keys) -> log settings it overrides. Raises
    ConfigError naming the first bad key."""
    out = {}
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError("Topic config keys and values must be strings.")
        kind = TOPIC_REPLICATION_KEYS.get(key)
        if kind is int:
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"The topic config {key} must be a whole number of 1 or more.")
            continue
        if kind is bool:
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"The topic config {key} must be true or false.")
            continue
        log_key = TOPIC_CONFIG_KEYS.get(key)
        if log_key is None:
            known = sorted([*TOPIC_CONFIG_KEYS, *TOPIC_REPLICATION_KEYS])
            raise ConfigError(f"Unknown topic config {key!r}; known: {', '.join(known)}.")
        out[log_key] = value
    log_config(out)     # raises ConfigError for a bad value
    return out


def topic_log_config(defaults: dict, topic_config: dict) -> Config:
    props = dict(defaults)
    try:
        props.update(check_topic_config(topic_config))
    except ConfigError:
        pass        # validated when the topic was created; fall back to the defaults
    return log_config(props)
