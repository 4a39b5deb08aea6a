"""The client library and tools against real coordinator and broker processes on loopback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from clients import (AdminClient, Consumer, MessageTooLarge, NoBrokersAvailable, Producer,
                     TopicPartition, UnknownTopicOrPartition)
from tests.procs import free_port


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    out = []
    with Consumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                  max_poll_records=5000, fetch_max_wait_ms=100) as c:
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for recs in c.poll(500).values():
                out.extend(recs)
        # nothing beyond what was produced
        for recs in c.poll(300).values():
            out.extend(recs)
    return out


def check_exactly_once_in_key_order(got: list, threads: int, per_thread: int) -> None:
    seen = set()
    last_by_key: dict[bytes, int] = {}
    for r in got:
        t, i = map(int, r.value.split(b":"))
        assert (t, i) not in seen, f"record {t}:{i} read twice"
        seen.add((t, i))
        assert r.key == b"t%d-k%d" % (t, i % 50)
        assert last_by_key.get(r.key, -1) < i, f"key {r.key!r} out of order"
        last_by_key[r.key] = i
    assert len(seen) == threads * per_thread


@pytest.mark.timeout(120)
def test_keyed_records_exactly_once_in_order_and_after_a_broker_restart(cluster):
    c = cluster(n_brokers=3)
    with AdminClient(c.bootstrap) as admin:
        admin.create_topic("events", 6, 3)
    threads, per_thread = 2, 50_000
    errors: list = []
    with Producer(c.bootstrap, acks="all", linger_ms=5) as producer:
        def work(t: int) -> None:
            futs = []
            for i in range(per_thread):
                futs.append(producer.send("events", b"%d:%d" % (t, i),
                                          key=b"t%d-k%d" % (t, i % 50)))
            for f in futs[-100:]:
                f.result(60)
            errors.extend(f.exception() for f in futs if f.exception() is not None)
        ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        producer.flush(60)
    assert not errors, errors[:3]

    got = consume(c.bootstrap, "events", threads * per_thread)
    assert {r.partition for r in got} == set(range(6))
    check_exactly_once_in_key_order(got, threads, per_thread)

    victim = c.broker(2)
    victim.kill9()
    victim.restart()
    c.wait_ready()
    c.wait_topic("events", 6, timeout_s=30)
    got = consume(c.bootstrap, "events", threads * per_thread)
    check_exactly_once_in_key_order(got, threads, per_thread)


def tool(module: str, *args: str, stdin: bytes | None = None,
         timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"clients.cli.{module}", *args], input=stdin,
                          capture_output=True, timeout=timeout_s)


@pytest.mark.timeout(90)
def test_quick_start_walkthrough_with_the_tools(cluster):
    c = cluster(n_brokers=1)
    b = c.bootstrap
    r = tool("topics", "--create", "--topic", "quickstart", "--partitions", "3",
             "--replication-factor", "1", "--bootstrap-server", b)
    assert r.returncode == 0, r.stderr
    assert b"Created topic quickstart." in r.stdout
    lines = [b"first event", b"second event", b"k:third event"]
    r = tool("console_producer", "--topic", "quickstart", "--bootstrap-server", b,
             stdin=b"\n".join(lines) + b"\n")
    assert r.returncode == 0, r.stderr
    r = tool("console_consumer", "--topic", "quickstart", "--from-beginning",
             "--max-messages", "3", "--bootstrap-server", b, "--timeout-ms", "20000")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(lines)
    assert b"Processed a total of 3 messages" in r.stderr

    r = tool("console_producer", "--topic", "quickstart", "--bootstrap-server", b,
             "--property", "parse.key=true", "--property", "key.separator=:",
             stdin=b"user1:hello\nuser1:world\n")
    assert r.returncode == 0, r.stderr
    part = None
    r = tool("topics", "--describe", "--topic", "quickstart", "--bootstrap-server", b)
    assert r.returncode == 0 and b"PartitionCount: 3" in r.stdout
    from clients.partitioner import partition_for_key
    part = partition_for_key(b"user1", 3)
    r = tool("console_consumer", "--topic", "quickstart", "--partition", str(part),
             "--offset", "earliest", "--max-messages", "100", "--timeout-ms", "1500",
             "--property", "print.key=true", "--property", "print.offset=true",
             "--bootstrap-server", b)
    assert r.returncode == 0, r.stderr
    keyed = [line for line in r.stdout.splitlines() if b"\tuser1\t" in line]
    assert [line.split(b"\t")[2] for line in keyed] == [b"hello", b"world"]

    r = tool("topics", "--list", "--bootstrap-server", b)
    assert r.stdout.splitlines() == [b"quickstart"]
    r = tool("console_consumer", "--topic", "nope", "--bootstrap-server", b,
             "--max-messages", "1")
    assert r.returncode == 1 and b"'nope' does not exist" in r.stderr
    assert b"Traceback" not in r.stderr


@pytest.mark.timeout(60)
def test_admin_create_describe_list_alter_delete(cluster):
    c = cluster(n_brokers=3)
    with AdminClient(c.bootstrap) as admin:
        admin.create_topic("a1", 4, 2)
        admin.create_topic("a2", 1, 3)
        assert {"a1", "a2"} <= set(admin.list_topics())
        d = admin.describe_topic("a1")
        assert [p.partition for p in d.partitions] == [0, 1, 2, 3]
        for p in d.partitions:
            assert len(p.replicas) == 2 and p.leader in p.replicas
            assert set(p.isr) <= set(p.replicas) and p.leader in p.isr
        assert {p.leader for p in d.partitions} > {d.partitions[0].leader}   # spread
        admin.create_partitions("a1", 6)
        assert len(admin.describe_topic("a1").partitions) == 6
        admin.delete_topic("a2")
        assert "a2" not in admin.list_topics()
        with pytest.raises(UnknownTopicOrPartition):
            admin.describe_topic("a2")
    r = tool("topics", "--describe", "--topic", "a1", "--bootstrap-server", c.bootstrap)
    assert r.returncode == 0 and r.stdout.count(b"\tPartition: ") == 6
    r = tool("topics", "--create", "--topic", "a1", "--partitions", "1",
             "--replication-factor", "1", "--bootstrap-server", c.bootstrap)
    assert r.returncode == 1 and r.stderr.strip() == b"zb-topics: The topic 'a1' already exists."
    r = tool("topics", "--create", "--topic", "big", "--partitions", "1",
             "--replication-factor", "5", "--bootstrap-server", c.bootstrap)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.timeout(60)
def test_clear_errors(cluster):
    c = cluster(n_brokers=1)
    with AdminClient(c.bootstrap) as admin:
        admin.create_topic("small", 1, 1)
    with Producer(c.bootstrap, unknown_topic_wait_ms=500,
                  max_request_size=8 * 1024 * 1024) as p:
        with pytest.raises(UnknownTopicOrPartition, match="'unknown-topic' does not exist"):
            p.send("unknown-topic", b"x")
        with pytest.raises(MessageTooLarge):          # over what the broker accepts
            p.send("small", b"x" * 3_000_000).result(30)
        assert p.send("small", b"fits").result(30).offset == 0
    with Producer(c.bootstrap) as p:
        with pytest.raises(MessageTooLarge, match="max_request_size"):
            p.send("small", b"x" * 2_000_000)
    with Consumer(bootstrap_servers=c.bootstrap, unknown_topic_wait_ms=500) as consumer:
        consumer.assign([TopicPartition("unknown-topic", 0)])
        with pytest.raises(UnknownTopicOrPartition):
            for _ in range(50):
                consumer.poll(200)
    port = free_port()
    for make in (lambda: Producer(f"127.0.0.1:{port}", bootstrap_timeout_ms=1000),
                 lambda: Consumer(bootstrap_servers=f"127.0.0.1:{port}",
                                  bootstrap_timeout_ms=1000),
                 lambda: AdminClient(f"127.0.0.1:{port}", bootstrap_timeout_ms=1000)):
        start = time.monotonic()
        with pytest.raises(NoBrokersAvailable, match=f"127.0.0.1:{port} within 1 seconds"):
            make()
        assert time.monotonic() - start < 5
    r = tool("console_producer", "--topic", "small", "--bootstrap-server",
             f"127.0.0.1:{port}", "--producer-property", "bootstrap.timeout.ms=1000",
             stdin=b"x\n")
    assert r.returncode == 1 and f"127.0.0.1:{port}".encode() in r.stderr
    assert b"Traceback" not in r.stderr
