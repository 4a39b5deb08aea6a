"""zb-topics against a replicated cluster: --describe shows leader, replicas and ISR;
--under-replicated-partitions lists the partitions whose ISR is short."""

import subprocess
import sys

import pytest

from tests.replication.helpers import FAST, wait_isr

pytestmark = pytest.mark.timeout(60)


def zb_topics(bootstrap: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "clients.cli.topics", "--bootstrap-server",
                          bootstrap, *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def partition_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "Partition:" in line]


def test_describe_shows_the_isr_and_under_replicated_partitions(cluster):
    c = cluster(3, overrides=FAST)
    c.create_topic("tools", 3, 3)
    c.create_topic("single", 1, 1)
    for p in range(3):
        wait_isr(c, "tools", p, {1, 2, 3})
    lines = partition_lines(zb_topics(c.bootstrap, "--describe", "--topic", "tools"))
    assert len(lines) == 3
    for line in lines:
        assert "Leader: " in line and "Replicas: " in line
        assert sorted(line.split("Isr: ")[1].split()[0].split(",")) == ["1", "2", "3"]
    assert partition_lines(zb_topics(c.bootstrap, "--describe",
                                     "--under-replicated-partitions")) == []
    c.broker(3).kill9()
    for p in range(3):
        wait_isr(c, "tools", p, {1, 2})
    under = partition_lines(zb_topics(c.bootstrap, "--describe",
                                      "--under-replicated-partitions"))
    assert len(under) == 3 and all("Topic: tools" in line for line in under), under
    c.broker(3).restart()
    for p in range(3):
        wait_isr(c, "tools", p, {1, 2, 3})
    assert partition_lines(zb_topics(c.bootstrap, "--describe",
                                     "--under-replicated-partitions")) == []
