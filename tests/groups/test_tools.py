"""The console consumer and the consumer perf test as group members, as processes."""

import subprocess
import sys

import pytest

from tests.groups.helpers import GROUP_SETTINGS, call, produce_keys
from zbroker import protocol

pytestmark = pytest.mark.timeout(120)


def start(tool: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"clients.cli.{tool}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_console_consumers_in_one_group_split_the_partitions(cluster):
    c = cluster(1, overrides={**GROUP_SETTINGS, "offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=4)
    common = ("--bootstrap-server", c.bootstrap, "--topic", "t", "--group", "console",
              "--from-beginning", "--timeout-ms", "8000", "--property", "print.partition=true")
    ps = [start("console_consumer", *common) for _ in range(2)]

    def both_reading():
        d = call(c, "console", "ConsumerGroupDescribe", group_ids=["console"])
        g = protocol.DescribedGroupEntry._make(d["groups"][0])
        return g.state == "Stable" and len(g.members) == 2 and \
            all(protocol.DescribedMemberEntry._make(m).assignment for m in g.members)
    c.wait_for(both_reading, 30, "two consoles sharing the group")
    sent = produce_keys(c.bootstrap, "t", 400)
    outs = [p.communicate(timeout=60) for p in ps]
    assert all(p.returncode == 0 for p in ps), [e for _, e in outs]
    lines = [[line.split(b"\t") for line in out.splitlines()] for out, _ in outs]
    values = sorted(v for ls in lines for _, v in ls)
    assert values == sorted(sent)                         # all of them, once
    parts = [{p for p, _ in ls} for ls in lines]
    assert all(parts) and not parts[0] & parts[1]        # each read its own partitions
    # Both committed as they went: the group has nothing left to give.
    p = start("console_consumer", *common[:-2], "--timeout-ms", "3000")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out == b"" and b"Processed a total of 0 messages" in err
    p = start("console_consumer", "--bootstrap-server", c.bootstrap, "--topic", "t",
              "--group", "console", "--partition", "0")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and b"group and partition cannot be specified together" in err


def test_consumer_perf_test_in_a_group(cluster):
    c = cluster(1, overrides={**GROUP_SETTINGS, "offsets.topic.num.partitions": "1"})
    c.create_topic("t", partitions=3)
    produce_keys(c.bootstrap, "t", 3000)
    p = start("consumer_perf", "--bootstrap-server", c.bootstrap, "--topic", "t",
              "--messages", "3000", "--group", "perf", "--timeout", "20000")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    header, row = out.decode().splitlines()[:2]
    fields = dict(zip([h.strip() for h in header.split(",")], [v.strip() for v in row.split(",")]))
    assert fields["data.consumed.in.nMsg"] == "3000"
    assert int(fields["rebalance.time.ms"]) > 0
