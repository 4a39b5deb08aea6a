"""ACLs through real processes: a 3-broker CURVE cluster with authorizer.enable on the brokers
and the coordinator. The brokers (super users) replicate and fail over; alice may produce to
`orders` once zb-acls gives her Write, without a restart; bob without Write gets
TopicAuthorizationFailed, and his consumer group needs Read on the group as well as the topic;
a principal that poses as a follower is refused; only super users write to the coordinator."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from clients import AclBinding, AclFilter, AdminClient, Consumer, Producer, TopicPartition
from tests.procs import CoordinatorProc, broker_request
from tests.replication.helpers import wait_isr
from tests.security.test_curve_brokers import curve_brokers
from tests.security.test_curve_coordinator import authorize, client, curve_settings, keys
from zbroker import errors
from zbroker.security import ClientSecurity

pytestmark = pytest.mark.timeout(120)

SUPER = "User:admin;User:broker-1;User:broker-2;User:broker-3"
BIN = __import__("pathlib").Path(sys.executable).parent


def who(d, name) -> dict:
    return dict(security_protocol="CURVE", curve_secret_key_file=str(d / f"{name}.key_secret"),
                curve_server_key_file=str(d / "server.key"))


def acls_tool(d, *args) -> subprocess.CompletedProcess:
    cfg = d / "admin.properties"
    cfg.write_text(f"security.protocol=CURVE\ncurve.secret.key.file={d / 'admin.key_secret'}\n"
                   f"curve.server.key.file={d / 'server.key'}\n")
    return subprocess.run([str(BIN / "zb-acls"), "--command-config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60)


def allow(admin, principal, op, rtype, name, pattern="literal"):
    got = admin.create_acls([AclBinding(rtype, name, pattern, principal, "*", op, "Allow")])
    assert not got["failed"], got


def eventually(fn, timeout_s=15.0):
    """fn() once the ACL change has reached the broker asked (brokers learn it by a watch)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (errors.TopicAuthorizationFailed, errors.GroupAuthorizationFailed,
                errors.ClusterAuthorizationFailed):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def consume(d, name, group, want, timeout_s=20.0) -> list:
    seen = []
    with Consumer("orders", bootstrap_servers=CLUSTER[0].bootstrap, group_id=group,
                  auto_offset_reset="earliest", **who(d, name)) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(seen) < want and time.monotonic() < deadline:
            for batch in consumer.poll(500).values():
                seen += [r.value for r in batch]
    return seen


CLUSTER: list = []


@pytest.fixture
def acl_cluster(procs, tmp_path):
    d = keys(tmp_path, "server", "admin", "alice", "bob", "broker-1", "broker-2", "broker-3")
    auth = authorize(d, "admin", "alice", "bob", "broker-1", "broker-2", "broker-3")
    authz = {"authorizer.enable": "true", "super.users": SUPER}
    coord = CoordinatorProc(procs, tmp_path / "c", {**curve_settings(d, auth), **authz}).start()
    c = curve_brokers(procs, tmp_path, d, auth, coord, authz, harness="admin")
    CLUSTER[:] = [c]
    yield c, d
    CLUSTER.clear()


def test_acls_decide_who_produces_and_consumes_and_the_brokers_replicate(acl_cluster):
    c, d = acl_cluster
    with AdminClient(c.bootstrap, **who(d, "admin")) as admin:
        admin.create_topic("orders", 3, 3, config={"min.insync.replicas": "2"})
        admin.create_topic("bob-only", 1, 3)
        for p in range(3):
            wait_isr(c, "orders", p, {1, 2, 3}, 30)     # replication is ClusterAction
        # bob may write to his own topic (so he gets a producer id) but not to orders
        allow(admin, "User:bob", "Write", "Topic", "bob-only")
        allow(admin, "User:bob", "Read", "Topic", "orders")

    # alice has no ACL yet: refused at once, not retried forever
    with Producer(c.bootstrap, acks=1, **who(d, "alice")) as producer:
        started = time.monotonic()
        with pytest.raises(errors.TopicAuthorizationFailed, match="authorized"):
            producer.send("orders", b"x").result(20)
        assert time.monotonic() - started < 10

    r = acls_tool(d, "--bootstrap-server", c.bootstrap, "--add", "--allow-principal",
                  "User:alice", "--operation", "Write", "--topic", "orders")
    assert r.returncode == 0, r.stderr
    assert "principal=User:alice, host=*, operation=WRITE, permissionType=ALLOW" in r.stdout

    # alice writes without any restart, through a kill -9 of a leader (acks=all)
    acked = []

    def produce_all():
        with Producer(c.bootstrap, acks="all", linger_ms=1, delivery_timeout_ms=60000,
                      **who(d, "alice")) as producer:
            producer.send("orders", b"first").result(20)
            acked.append(b"first")
            for i in range(120):
                if i == 60:
                    leader = c.metadata(["orders"])["topics"][0][3][0][2]
                    c.broker(leader).kill9()
                producer.send("orders", b"v%03d" % i).add_callback(
                    lambda md, i=i: acked.append(b"v%03d" % i))
            producer.flush(60)
    eventually(produce_all)
    assert len(acked) == 121

    # bob: no Write on orders
    with Producer(c.bootstrap, **who(d, "bob")) as producer:
        producer.send("bob-only", b"mine").result(20)
        with pytest.raises(errors.TopicAuthorizationFailed, match="User:bob"):
            producer.send("orders", b"forged").result(20)

    # bob's group needs Read on the group too
    with pytest.raises(errors.GroupAuthorizationFailed, match="g1"):
        consume(d, "bob", "g1", 1, timeout_s=10)
    r = acls_tool(d, "--bootstrap-server", c.bootstrap, "--add", "--allow-principal",
                  "User:bob", "--consumer", "--topic", "orders", "--group", "g", "--group",
                  "g1", "--resource-pattern-type", "prefixed")
    assert r.returncode == 0, r.stderr
    seen = eventually(lambda: consume(d, "bob", "g1", len(acked)))
    assert set(seen) == set(acked)

    # the list, Kafka's layout; a removal takes effect too
    r = acls_tool(d, "--bootstrap-server", c.bootstrap, "--list", "--topic", "orders")
    assert r.returncode == 0, r.stderr
    assert "ResourcePattern(resourceType=TOPIC, name=orders, patternType=LITERAL)" in r.stdout
    assert "principal=User:bob, host=*, operation=READ" in r.stdout
    r = acls_tool(d, "--bootstrap-server", c.bootstrap, "--remove", "--allow-principal",
                  "User:alice", "--operation", "Write", "--topic", "orders")
    assert r.returncode == 0 and "Removed 1 ACL(s)" in r.stdout, (r.stdout, r.stderr)
    with AdminClient(c.bootstrap, **who(d, "admin")) as admin:
        left = admin.describe_acls(AclFilter(principal="User:alice"))
        assert left == []

    # only the cluster's principals may change ACLs or act as a follower
    with AdminClient(c.bootstrap, **who(d, "alice")) as admin:
        with pytest.raises(errors.ClusterAuthorizationFailed):
            admin.create_acls([AclBinding("Topic", "*", "literal", "User:alice", "*", "All",
                                          "Allow")])
    alice = ClientSecurity("CURVE", str(d / "alice.key_secret"), str(d / "server.key"))
    info = c.metadata(["orders"])
    leader = info["topics"][0][3][0][2]
    epoch = info["topics"][0][3][0][3]
    header, _ = broker_request(c.broker(leader).port, "Fetch", security=alice, replica_id=2,
                               replica_epoch=1, parts=[["orders", 0, 0, epoch, 1 << 20, -1]])
    assert header["err"] == errors.ClusterAuthorizationFailed.code, header
    header, _ = broker_request(c.broker(leader).port, "OffsetForLeaderEpoch", security=alice,
                               replica_id=2, replica_epoch=1, parts=[["orders", 0, epoch, 0]])
    assert header["err"] == errors.ClusterAuthorizationFailed.code, header

    # the coordinator: anyone authorized reads, only super users write
    with client(c.coordinator.address, d, "alice") as cc:
        assert cc.exists("/brokers") is not None
        for write in (lambda: cc.create("/brokers/ids/9", b"x"),
                      lambda: cc.set("/acls", b"garbage"),
                      lambda: cc.delete("/controller")):
            with pytest.raises(errors.NoAuth, match="User:alice"):
                write()
    with client(c.coordinator.address, d, "admin") as cc:
        cc.create("/admin-was-here", b"1")


def test_group_apis_show_no_topic_the_principal_may_not_describe(acl_cluster):
    c, d = acl_cluster
    with AdminClient(c.bootstrap, **who(d, "admin")) as admin:
        admin.create_topic("seen", 1, 3)
        admin.create_topic("hidden", 1, 3)
        admin.alter_consumer_group_offsets("g2", {TopicPartition("seen", 0): 0,
                                                  TopicPartition("hidden", 0): 0})
        allow(admin, "User:alice", "Read", "Group", "g2")
        allow(admin, "User:alice", "Read", "Topic", "seen")      # (Read implies Describe)
        assert set(admin.list_consumer_group_offsets("g2")) == \
            {TopicPartition("seen", 0), TopicPartition("hidden", 0)}

    # every committed offset, as alice sees them: the topic she may not Describe is left out
    with AdminClient(c.bootstrap, **who(d, "alice")) as admin:
        got = eventually(lambda: admin.list_consumer_group_offsets("g2"))
        assert set(got) == {TopicPartition("seen", 0)}

    # a subscription to it is refused, naming it
    with Consumer("seen", "hidden", bootstrap_servers=c.bootstrap, group_id="g2",
                  **who(d, "alice")) as consumer:
        with pytest.raises(errors.TopicAuthorizationFailed, match="'hidden'"):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                consumer.poll(200)
    with Consumer("seen", bootstrap_servers=c.bootstrap, group_id="g2",
                  **who(d, "alice")) as consumer:
        deadline = time.monotonic() + 20
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(200)
        assert consumer.assignment() == {TopicPartition("seen", 0)}
