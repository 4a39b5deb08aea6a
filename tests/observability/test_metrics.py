"""Prometheus metrics through real processes: a 3-broker cluster and its coordinator serve
metrics.listener; a real HTTP client scrapes them; counters move with produce, the controller
gauge names one broker, a kill -9 of a follower shows in the leader's under-replicated gauge,
and the coordinator reports its sessions and durable writes."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients import AdminClient, Producer
from tests.procs import BrokerProc, Cluster, CoordinatorProc, free_port, wait_until
from tests.replication.helpers import FAST, partition_info

pytestmark = pytest.mark.timeout(120)


def scrape(port: int) -> dict:
    """{(name, labels as a sorted tuple): value} of every sample at http://127.0.0.1:port/."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_the_cluster(procs, tmp_path):
    cport = free_port()
    coord = CoordinatorProc(procs, tmp_path / "c",
                            {"metrics.listener": f"http://127.0.0.1:{cport}"}).start()
    ports = {i: free_port() for i in (1, 2, 3)}
    brokers = [BrokerProc(procs, i, coord.address, tmp_path / f"b{i}",
                          {**FAST, "metrics.listener": f"http://127.0.0.1:{ports[i]}"})
               for i in (1, 2, 3)]
    c = Cluster.of(coord, brokers)
    with AdminClient(c.bootstrap) as admin:
        admin.create_topic("m", 3, 3)
    with Producer(c.bootstrap, acks="all", linger_ms=1) as p:
        for i in range(200):
            p.send("m", b"v%d" % i)
        p.flush(30)
    samples = {i: scrape(ports[i]) for i in (1, 2, 3)}
    assert sum(value(s, "zbroker_messages_in_total", topic="m") for s in samples.values()) == 200
    assert sum(value(s, "zbroker_bytes_in_total", topic="m") for s in samples.values()) > 200
    assert sum(value(s, "zbroker_requests_total", api="Produce") for s in samples.values()) > 0
    assert sum(value(s, "zbroker_active_controller") for s in samples.values()) == 1
    assert sum(value(s, "zbroker_leader_partitions") for s in samples.values()) == 3
    assert any(value(s, "zbroker_request_latency_seconds_count", api="Produce") > 0
               for s in samples.values())
    assert all(value(s, "zbroker_under_replicated_partitions") == 0 for s in samples.values())
    # a follower dies: its leader's gauge shows it once the ISR shrinks
    leader, _, replicas, _ = partition_info(c, "m", 0)
    follower = next(r for r in replicas if r != leader)
    c.broker(follower).kill9()
    wait_until(lambda: value(scrape(ports[leader]), "zbroker_under_replicated_partitions") >= 1,
               30, "the under-replicated gauge on the leader")
    cs = scrape(cport)
    assert value(cs, "zbroker_coordinator_sessions") >= 2
    assert value(cs, "zbroker_coordinator_log_syncs_total") > 0
    assert value(cs, "zbroker_coordinator_log_sync_seconds_count", log="log") > 0


def test_a_bad_metrics_listener_is_one_sentence(procs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "coordinator.server", "--override",
                        f"data.dir={tmp_path / 'c'}", "--override",
                        f"listeners=tcp://127.0.0.1:{free_port()}", "--override",
                        "metrics.listener=https://127.0.0.1:1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "metrics.listener must be http://" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
