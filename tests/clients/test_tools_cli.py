"""The topic tool's --create with --config, --alter and --delete, and a short run of each perf
tool printing its figures, against a real broker (the quick start covers --create, --list and
--describe)."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def tool(module: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"clients.cli.{module}", *args],
                          capture_output=True, text=True, timeout=timeout_s)


def test_topics_config_alter_and_delete(cluster):
    c = cluster(n_brokers=1)
    b = c.bootstrap
    r = tool("topics", "--create", "--topic", "cfg", "--partitions", "2", "--replication-factor",
             "1", "--config", "retention.ms=60000", "--config", "max.message.bytes=2048",
             "--bootstrap-server", b)
    assert r.returncode == 0 and "Created topic cfg." in r.stdout, r.stderr
    from clients import AdminClient
    with AdminClient(b) as admin:
        assert len(admin.describe_topic("cfg").partitions) == 2
    # the config took effect: a batch over max.message.bytes is refused
    from clients import MessageTooLarge, Producer
    with Producer(bootstrap_servers=b, acks=1) as p:
        p.send("cfg", b"small", partition=0).result(10)
        with pytest.raises(MessageTooLarge):
            p.send("cfg", b"x" * 4096, partition=0).result(10)
    r = tool("topics", "--create", "--topic", "bad", "--partitions", "1",
             "--replication-factor", "1", "--config", "no.such.key=1", "--bootstrap-server", b)
    assert r.returncode == 1 and "no.such.key" in r.stderr and "Traceback" not in r.stderr
    r = tool("topics", "--alter", "--topic", "cfg", "--partitions", "5", "--bootstrap-server", b)
    assert r.returncode == 0, r.stderr
    r = tool("topics", "--describe", "--topic", "cfg", "--bootstrap-server", b)
    assert "PartitionCount: 5" in r.stdout
    r = tool("topics", "--alter", "--topic", "cfg", "--partitions", "3", "--bootstrap-server", b)
    assert r.returncode == 1 and "Traceback" not in r.stderr      # it can only grow
    r = tool("topics", "--delete", "--topic", "cfg", "--bootstrap-server", b)
    assert r.returncode == 0, r.stderr
    r = tool("topics", "--list", "--bootstrap-server", b)
    assert "cfg" not in r.stdout.split()
    r = tool("topics", "--delete", "--topic", "cfg", "--bootstrap-server", b)
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = tool("topics", "--delete", "--topic", "cfg", "--if-exists", "--bootstrap-server", b)
    assert r.returncode == 0


def test_perf_tools_print_their_figures(cluster):
    c = cluster(n_brokers=1)
    b = c.bootstrap
    c.create_topic("perf", partitions=2)
    r = tool("producer_perf", "--topic", "perf", "--num-records", "20000", "--record-size",
             "100", "--throughput", "-1", "--producer-props", f"bootstrap.servers={b}",
             "acks=1")
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    m = re.match(r"20000 records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), "
                 r"([\d.]+) ms avg latency, ([\d.]+) ms max latency", last)
    assert m and float(m.group(1)) > 0, last
    r = tool("consumer_perf", "--topic", "perf", "--messages", "20000", "--bootstrap-server", b)
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()[:2]
    fields = dict(zip([h.strip() for h in header.split(",")],
                      [v.strip() for v in row.split(",")]))
    assert fields["data.consumed.in.nMsg"] == "20000"
    assert float(fields["nMsg.sec"]) > 0 and float(fields["data.consumed.in.MB"]) > 1.9


def test_console_producer_takes_kafka_idempotence_settings(cluster):
    c = cluster(1)
    c.create_topic("idem", 1, 1)
    b = c.bootstrap
    r = subprocess.run([sys.executable, "-m", "clients.cli.console_producer", "--topic", "idem",
                        "--bootstrap-server", b, "--acks", "1", "--producer-property",
                        "enable.idempotence=true"], input="x\n", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "enable_idempotence=True needs acks='all'" in r.stderr, r
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "clients.cli.console_producer", "--topic", "idem",
                        "--bootstrap-server", b, "--acks", "1"], input="one\ntwo\n",
                       capture_output=True, text=True, timeout=60)    # idempotence off: fine
    assert r.returncode == 0, r
    r = tool("console_producer", "--topic", "idem", "--bootstrap-server", b,
             "--producer-property", "enable.idempotence=maybe")
    assert r.returncode == 2 and "true or false" in r.stderr, r
