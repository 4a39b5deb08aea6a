"""CurveZMQ on the brokers through real processes: a 3-broker cluster with every port under
CURVE (clients, replication, controller, coordinator) creates a topic, replicates it, fails over
after a kill -9 and loses no acknowledged write; a client without CURVE or with a key that is
not authorized is refused on every broker, with a sentence, and never retries it forever."""

from __future__ import annotations

import time

import pytest

from clients import AdminClient, Consumer, Producer
from tests.procs import BrokerProc, Cluster, CoordinatorProc
from tests.replication.helpers import FAST, wait_isr
from tests.security.test_curve_coordinator import authorize, curve_settings, keys
from zbroker import errors
from zbroker.security import ClientSecurity

pytestmark = pytest.mark.timeout(120)


def curve_brokers(procs, tmp_path, d, auth, coord, extra=None, harness="alice") -> Cluster:
    """Brokers 1-3 with CURVE on every port, each presenting broker-N's key; the test harness's
    own requests (metadata, ISR waits) go as ``harness``."""
    brokers = []
    for i in (1, 2, 3):
        b = BrokerProc(procs, i, coord.address, tmp_path / f"b{i}", {
            **FAST, **curve_settings(d, auth), **(extra or {}),
            "curve.client.secret.key.file": str(d / f"broker-{i}.key_secret"),
            "coordinator.curve.server.key.file": str(d / "server.key")})
        b.security = ClientSecurity("CURVE", str(d / f"{harness}.key_secret"),
                                    str(d / "server.key"))
        brokers.append(b)
    return Cluster.of(coord, brokers)


@pytest.fixture
def curve_cluster(procs, tmp_path):
    d = keys(tmp_path, "server", "alice", "bob", "broker-1", "broker-2", "broker-3")
    auth = authorize(d, "alice", "broker-1", "broker-2", "broker-3")
    coord = CoordinatorProc(procs, tmp_path / "c", curve_settings(d, auth)).start()
    return curve_brokers(procs, tmp_path, d, auth, coord), d


def alice(d) -> dict:
    return dict(security_protocol="CURVE", curve_secret_key_file=str(d / "alice.key_secret"),
                curve_server_key_file=str(d / "server.key"))


def test_a_curve_cluster_replicates_fails_over_loses_nothing_and_refuses_strangers(
        curve_cluster):
    c, d = curve_cluster
    with AdminClient(c.bootstrap, **alice(d)) as admin:
        admin.create_topic("orders", 3, 3, config={"min.insync.replicas": "2"})
    for p in range(3):
        wait_isr(c, "orders", p, {1, 2, 3}, 30)
    acked = []
    with Producer(c.bootstrap, acks="all", linger_ms=1, delivery_timeout_ms=60000,
                  **alice(d)) as producer:
        for i in range(300):
            if i == 150:
                leader = c.metadata(["orders"])["topics"][0][3][0][2]
                c.broker(leader).kill9()
            f = producer.send("orders", b"v%04d" % i)
            f.add_callback(lambda md, i=i: acked.append(b"v%04d" % i))
        producer.flush(60)
    assert len(acked) == 300
    seen = set()
    with Consumer("orders", bootstrap_servers=c.bootstrap, auto_offset_reset="earliest",
                  **alice(d)) as consumer:
        deadline = time.monotonic() + 30
        while len(seen) < 300 and time.monotonic() < deadline:
            for batch in consumer.poll(1000).values():
                seen.update(r.value for r in batch)
    assert seen == set(acked)
    # (the same cluster) a client without an authorized key is refused on every broker
    for b in c.live_brokers():
        for what, kw in [("plaintext", {}),
                         ("bob", dict(security_protocol="CURVE",
                                      curve_secret_key_file=str(d / "bob.key_secret"),
                                      curve_server_key_file=str(d / "server.key")))]:
            started = time.monotonic()
            with pytest.raises(errors.ZbError) as e:
                with AdminClient(b.address, bootstrap_timeout_ms=5000, **kw) as admin:
                    admin.list_topics()
            said = str(e.value)
            assert b.address in said, said
            assert ("wants CURVE" in said) if what == "plaintext" else \
                ("refused our CURVE key" in said), said
            assert time.monotonic() - started < 5, f"{what}: only after a timeout"
    for client in (lambda: Producer(c.bootstrap),
                   lambda: Consumer("orders", bootstrap_servers=c.bootstrap)):
        started = time.monotonic()
        with pytest.raises(errors.AuthenticationFailed, match="wants CURVE"):
            client()
        assert time.monotonic() - started < 5
    for b in c.brokers:
        assert "Traceback" not in b.proc.log_text()
