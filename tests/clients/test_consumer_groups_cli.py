"""zb-consumer-groups and the AdminClient's group calls against real brokers: listing,
describing (lag, members, state), resetting offsets (every scenario, clamped, dry runs, refused
while members are active), deleting groups and offsets, bad usage and groups that do not exist.
The tool runs as a subprocess (``python -m clients.cli.consumer_groups``, and once as the
installed script)."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from clients import (AdminClient, Consumer, GroupIdNotFound, GroupListing,
                     GroupSubscribedToTopic, NonEmptyGroup, OffsetAndMetadata,
                     OffsetAndTimestamp, OffsetOutOfRange, TopicPartition,
                     UnknownMemberId, UnknownTopicOrPartition)
from clients.cli._common import UsageError
from clients.cli.consumer_groups import parse_datetime_ms, parse_duration_ms
from tests.groups.helpers import GROUP_SETTINGS, produce_keys
from tests.procs import free_port
from zbroker import protocol

pytestmark = pytest.mark.timeout(120)

SETTINGS = {**GROUP_SETTINGS, "offsets.topic.num.partitions": "1"}
TOOL = [sys.executable, "-m", "clients.cli.consumer_groups"]
OFFSETS_COLUMNS = ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                   "CONSUMER-ID", "HOST", "CLIENT-ID"]


# --- helpers --------------------------------------------------------------------------------------

def tool(bootstrap: str | None, *args: str, exe: list | None = None) -> subprocess.CompletedProcess:
    argv = [*(exe or TOOL), *(["--bootstrap-server", bootstrap] if bootstrap else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def ok(bootstrap: str, *args: str) -> str:
    """Run the tool, expect exit status 0 and no traceback; its stdout."""
    out = tool(bootstrap, *args)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    return out.stdout


def parse_table(text: str, columns: list[str]) -> list[dict]:
    """The rows of a table the tool printed, cut at the positions of its header's columns (so a
    misaligned column shows as a wrong value). Asserts the header holds exactly ``columns``."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [header.index(c) for c in columns]
    assert starts == sorted(starts) and starts[0] == 0, header
    rebuilt = " ".join(header[a:b].strip() for a, b in zip(starts, starts[1:] + [None]))
    assert rebuilt == " ".join(columns), header
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() if b is not None else line[a:].strip()
                 for a, b in zip(starts, starts[1:] + [None])]
        for a in starts[1:]:
            assert line[a - 1:a] in (" ", ""), f"a cell runs into the next column: {line!r}"
        rows.append(dict(zip(columns, cells)))
    return rows


def start(cluster, n: int = 1, **extra):
    return cluster(n, overrides={**SETTINGS, **extra})


def consumer(c, group: str, *topics: str, **kw) -> Consumer:
    kw.setdefault("auto_offset_reset", "earliest")
    kw.setdefault("session_timeout_ms", 6000)
    kw.setdefault("heartbeat_interval_ms", 500)
    kw.setdefault("fetch_max_wait_ms", 100)
    kw.setdefault("enable_auto_commit", False)
    return Consumer(*topics, bootstrap_servers=c.bootstrap, group_id=group, **kw)


def read(cons: Consumer, n: int, timeout_s: float = 30.0) -> list:
    """Poll until ``n`` records came, then a little longer to see that no more do."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} records came"
        for recs in cons.poll(100).values():
            got += recs
    for recs in cons.poll(300).values():
        got += recs
    return got


def consume_and_commit(c, group: str, topic: str, n: int) -> list:
    """A member of ``group`` reads ``n`` records of ``topic``, commits and leaves."""
    with consumer(c, group, topic) as cons:
        got = read(cons, n)
        cons.commit()
    return got


def ends(admin: AdminClient, topic: str, partitions: int) -> dict:
    found = admin.list_offsets({TopicPartition(topic, p): -1 for p in range(partitions)})
    return {tp: o.offset for tp, o in found.items()}


def committed(admin: AdminClient, group: str) -> dict:
    return {tp: om.offset for tp, om in admin.list_consumer_group_offsets(group).items()}


def wait_stable(admin: AdminClient, group: str, members: list, timeout_s: float = 20.0):
    """Poll the members until the group is Stable with every one of them owning something."""
    deadline = time.monotonic() + timeout_s
    while True:
        for m in members:
            m.poll(50)
        (d,) = admin.describe_consumer_groups([group])
        if d.state == "Stable" and len(d.members) == len(members) and \
                all(m.assignment() for m in members):
            return d
        assert time.monotonic() < deadline, f"the group did not settle: {d}"


def member_id(cons: Consumer) -> str:
    return cons._membership.member_id


# --- the AdminClient's group calls ----------------------------------------------------------------

def test_admin_client_group_calls(cluster):
    c = start(cluster)
    c.create_topic("t", partitions=3)
    produce_keys(c.bootstrap, "t", 30)
    consume_and_commit(c, "g", "t", 30)
    with AdminClient(c.bootstrap, request_timeout_ms=15000) as admin:
        end = ends(admin, "t", 3)
        assert sum(end.values()) == 30
        tps = sorted(end)
        assert admin.list_consumer_groups() == [GroupListing("g", "Empty", "consumer")]
        assert admin.list_consumer_groups(states=["empty"]) == \
            [GroupListing("g", "Empty", "consumer")]
        assert admin.list_consumer_groups(states=["Stable"]) == []
        assert admin.list_consumer_group_offsets("g") == \
            {tp: OffsetAndMetadata(end[tp], None, -1) for tp in tps}
        assert admin.list_consumer_group_offsets("g", [tps[0], TopicPartition("t", 9)]) == \
            {tps[0]: OffsetAndMetadata(end[tps[0]], None, -1), TopicPartition("t", 9): None}
        broker = admin.describe_cluster()["brokers"][0]
        g, nope = admin.describe_consumer_groups(["g", "nope", "g"])
        assert (g.group_id, g.state, g.members, g.coordinator) == ("g", "Empty", [], broker)
        assert g.partition_assignor == "uniform" and g.group_epoch > 0
        assert (nope.group_id, nope.state, nope.members, nope.coordinator) == \
            ("nope", "Dead", [], broker)

        # commits without a member: ints and OffsetAndMetadata; per-partition errors
        admin.alter_consumer_group_offsets("g", {tps[0]: 1, tps[1]: OffsetAndMetadata(2, "m")})
        assert admin.list_consumer_group_offsets("g", tps[:2]) == {
            tps[0]: OffsetAndMetadata(1, None, -1), tps[1]: OffsetAndMetadata(2, "m", -1)}
        with pytest.raises(UnknownTopicOrPartition, match="t-7"):
            admin.alter_consumer_group_offsets("g", {TopicPartition("t", 7): 0})
        with pytest.raises(OffsetOutOfRange, match=f"t-{tps[2].partition}"):
            admin.alter_consumer_group_offsets("g", {tps[2]: end[tps[2]] + 5})
        admin.alter_consumer_group_offsets("fresh", {tps[0]: 0})     # makes the group
        assert [gl.group_id for gl in admin.list_consumer_groups()] == ["fresh", "g"]

        # with an active member: no commits, no deletion, offsets of its topics stay
        with consumer(c, "g", "t") as m:
            d = wait_stable(admin, "g", [m])
            (desc,) = d.members
            assert desc.member_id == member_id(m)
            assert desc.client_id == m.client_id
            assert desc.host == "127.0.0.1"
            assert desc.assignment == desc.target_assignment == set(tps)
            assert desc.subscribed_topics == ["t"] and desc.member_epoch == d.group_epoch
            with pytest.raises(UnknownMemberId, match="'g' cannot be changed while it has "
                                                      "active members"):
                admin.alter_consumer_group_offsets("g", {tps[0]: 0})
            assert committed(admin, "g")[tps[0]] == 1
            assert isinstance(admin.delete_consumer_groups(["g"])["g"], NonEmptyGroup)
            result = admin.delete_consumer_group_offsets("g", [tps[0]])
            assert isinstance(result[tps[0]], GroupSubscribedToTopic)
            assert admin.list_consumer_groups(states=["stable"]) == \
                [GroupListing("g", "Stable", "consumer")]

        assert admin.delete_consumer_group_offsets("g", [tps[0]]) == {tps[0]: None}
        assert tps[0] not in committed(admin, "g") and len(committed(admin, "g")) == 2
        with pytest.raises(GroupIdNotFound):
            admin.delete_consumer_group_offsets("nope", [tps[0]])
        result = admin.delete_consumer_groups(["g", "nope"])
        assert result["g"] is None and isinstance(result["nope"], GroupIdNotFound)
        assert admin.list_consumer_group_offsets("g") == {}
        assert [gl.group_id for gl in admin.list_consumer_groups()] == ["fresh"]

        # ListOffsets: earliest, latest, by time, and partitions that do not exist
        found = admin.list_offsets({tps[0]: -2, tps[1]: -1, tps[2]: 0})
        assert found[tps[0]] == OffsetAndTimestamp(0, -1)
        assert found[tps[1]] == OffsetAndTimestamp(end[tps[1]], -1)
        assert found[tps[2]].offset == (0 if end[tps[2]] else -1)
        assert admin.list_offsets({tps[0]: int(time.time() * 1000) + 60000}) == \
            {tps[0]: OffsetAndTimestamp(-1, -1)}
        with pytest.raises(UnknownTopicOrPartition, match="t-5"):
            admin.list_offsets({TopicPartition("t", 5): -1})
        with pytest.raises(UnknownTopicOrPartition, match="'missing'"):
            admin.list_offsets({TopicPartition("missing", 0): -1})


def test_list_merges_the_groups_of_every_broker(cluster):
    c = cluster(3, overrides={**GROUP_SETTINGS, "offsets.topic.num.partitions": "3"})
    c.create_topic("t", partitions=1, replication_factor=3)
    # one group in each __consumer_offsets partition
    names, seen = [], set()
    for i in range(100):
        name = f"group-{i}"
        p = protocol.group_partition(name, 3)
        if p not in seen:
            seen.add(p)
            names.append(name)
    assert len(names) == 3
    with AdminClient(c.bootstrap, request_timeout_ms=15000) as admin:
        for name in names:
            admin.alter_consumer_group_offsets(name, {TopicPartition("t", 0): 0})
        coordinators = {d.coordinator.node_id for d in admin.describe_consumer_groups(names)}
        leaders = {p.leader for p in admin.describe_topic("__consumer_offsets").partitions}
        assert coordinators == leaders
        assert admin.list_consumer_groups() == [GroupListing(n, "Empty", "consumer")
                                                for n in sorted(names)]
    assert ok(c.bootstrap, "--list").splitlines() == sorted(names)


# --- --list, --describe ---------------------------------------------------------------------------

def test_list_and_describe_lag_of_a_group_without_members(cluster):
    c = start(cluster)
    c.create_topic("t", partitions=2)
    group = "a-rather-long-group-name"          # wider than Kafka's 15 columns
    produce_keys(c.bootstrap, "t", 20)
    consume_and_commit(c, group, "t", 20)
    with AdminClient(c.bootstrap) as admin:
        admin.alter_consumer_group_offsets("h", {TopicPartition("t", 0): 0})
        before = ends(admin, "t", 2)

        assert ok(c.bootstrap, "--list") == f"{group}\nh\n"
        script = Path(sys.executable).parent / "zb-consumer-groups"
        out = tool(c.bootstrap, "--list", exe=[str(script)])
        assert (out.returncode, out.stdout) == (0, f"{group}\nh\n"), out.stderr
        out = ok(c.bootstrap, "--list", "--state")
        width = len(group) + 10
        assert out.splitlines() == [f"{'GROUP':<{width}} STATE",
                                    f"{group:<{width}} Empty", f"{'h':<{width}} Empty"]
        assert parse_table(ok(c.bootstrap, "--list", "--state", "Stable,Dead"),
                           ["GROUP", "STATE"]) == []
        rows = parse_table(ok(c.bootstrap, "--list", "--type", "--state", "empty"),
                           ["GROUP", "TYPE", "STATE"])
        assert rows == [{"GROUP": group, "TYPE": "consumer", "STATE": "Empty"},
                        {"GROUP": "h", "TYPE": "consumer", "STATE": "Empty"}]

        out = tool(c.bootstrap, "--describe", "--group", group)
        assert out.returncode == 0, out.stderr
        assert out.stderr.strip() == f"Consumer group '{group}' has no active members."
        lines = out.stdout.splitlines()
        assert lines[0] == ""                   # Kafka's blank line before the table
        assert lines[1] == (f"{'GROUP':<{len(group)}} {'TOPIC':<15} {'PARTITION':<10} "
                            f"{'CURRENT-OFFSET':<15} {'LOG-END-OFFSET':<15} {'LAG':<15} "
                            f"{'CONSUMER-ID':<15} {'HOST':<15} CLIENT-ID")
        assert parse_table(out.stdout, OFFSETS_COLUMNS) == [
            {"GROUP": group, "TOPIC": "t", "PARTITION": str(p), "CURRENT-OFFSET": str(e),
             "LOG-END-OFFSET": str(e), "LAG": "0", "CONSUMER-ID": "-", "HOST": "-",
             "CLIENT-ID": "-"} for p, e in ((tp.partition, before[tp]) for tp in sorted(before))]

        produce_keys(c.bootstrap, "t", 15, start=20)
        after = ends(admin, "t", 2)
        assert sum(after.values()) == 35
        rows = parse_table(ok(c.bootstrap, "--describe", "--group", group), OFFSETS_COLUMNS)
        assert [(r["PARTITION"], r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"])
                for r in rows] == \
            [(str(tp.partition), str(before[tp]), str(after[tp]), str(after[tp] - before[tp]))
             for tp in sorted(after)]

        # several groups, and --all-groups: one table each, in group order
        for args in (["--group", group, "--group", "h"], ["--all-groups"]):
            out = ok(c.bootstrap, "--describe", *args)
            tables = out.split("\n\n")
            assert [parse_table(t, OFFSETS_COLUMNS)[0]["GROUP"] for t in tables] == [
                group, "h"]
        rows = parse_table(ok(c.bootstrap, "--describe", "--group", "h", "--offsets"),
                           OFFSETS_COLUMNS)
        assert [(r["TOPIC"], r["PARTITION"], r["CURRENT-OFFSET"], r["LAG"]) for r in rows] == \
            [("t", "0", "0", str(after[TopicPartition("t", 0)]))]


def test_describe_members_state_and_owned_partitions(cluster):
    c = start(cluster)
    c.create_topic("t", partitions=2)
    produce_keys(c.bootstrap, "t", 10)
    with AdminClient(c.bootstrap) as admin:
        end = ends(admin, "t", 2)
        broker = admin.describe_cluster()["brokers"][0]
        # (a static member stays in the group for its session after it leaves: a short one)
        a = consumer(c, "g", "t", client_id="client-a", group_instance_id="instance-a",
                     session_timeout_ms=1500, heartbeat_interval_ms=500)
        b = consumer(c, "g", "t", client_id="client-b")
        try:
            wait_stable(admin, "g", [a, b])
            owner = {tp: m for m in (a, b) for tp in m.assignment()}
            assert sorted(owner) == sorted(end)

            # owned partitions without a commit: no CURRENT-OFFSET, no LAG
            out = tool(c.bootstrap, "--describe", "--group", "g")
            assert (out.returncode, out.stderr) == (0, "")
            rows = parse_table(out.stdout, OFFSETS_COLUMNS)
            assert sorted((r["PARTITION"], r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"],
                           r["CONSUMER-ID"], r["HOST"], r["CLIENT-ID"]) for r in rows) == \
                [(str(tp.partition), "-", str(end[tp]), "-", member_id(owner[tp]),
                  "127.0.0.1", owner[tp].client_id) for tp in sorted(end)]

            # a commit by the owner shows with its lag
            tp0 = TopicPartition("t", 0)
            owner[tp0].commit({tp0: OffsetAndMetadata(1)})
            rows = parse_table(ok(c.bootstrap, "--describe", "--group", "g"), OFFSETS_COLUMNS)
            row = next(r for r in rows if r["PARTITION"] == "0")
            assert (row["CURRENT-OFFSET"], row["LAG"]) == ("1", str(end[tp0] - 1))

            columns = ["GROUP", "CONSUMER-ID", "GROUP-INSTANCE-ID", "HOST", "CLIENT-ID",
                       "#PARTITIONS"]
            rows = parse_table(ok(c.bootstrap, "--describe", "--group", "g", "--members"),
                               columns)
            assert sorted(rows, key=lambda r: r["CLIENT-ID"]) == [
                {"GROUP": "g", "CONSUMER-ID": member_id(a), "GROUP-INSTANCE-ID": "instance-a",
                 "HOST": "127.0.0.1", "CLIENT-ID": "client-a", "#PARTITIONS": "1"},
                {"GROUP": "g", "CONSUMER-ID": member_id(b), "GROUP-INSTANCE-ID": "",
                 "HOST": "127.0.0.1", "CLIENT-ID": "client-b", "#PARTITIONS": "1"}]
            rows = parse_table(ok(c.bootstrap, "--describe", "--group", "g", "--members",
                                  "--verbose"), columns + ["ASSIGNMENT"])
            assert {r["CLIENT-ID"]: r["ASSIGNMENT"] for r in rows} == {
                m.client_id: f"t({next(iter(m.assignment())).partition})" for m in (a, b)}

            out = ok(c.bootstrap, "--describe", "--group", "g", "--state")
            coordinator = f"{broker.host}:{broker.port} ({broker.node_id})"
            assert out.splitlines() == [
                "",
                f"{'GROUP':<25} {'COORDINATOR (ID)':<25} {'ASSIGNMENT-STRATEGY':<20} "
                f"{'STATE':<15} #MEMBERS",
                f"{'g':<25} {coordinator:<25} {'uniform':<20} {'Stable':<15} 2"]
        finally:
            a.close()
            b.close()
        c.wait_for(lambda: admin.describe_consumer_groups(["g"])[0].state == "Empty",
                   what="the static member's session running out")
        # without members: the notice, and the members' table has no rows
        out = tool(c.bootstrap, "--describe", "--group", "g", "--members")
        assert out.returncode == 0 and "has no active members" in out.stderr
        assert parse_table(out.stdout, ["GROUP", "CONSUMER-ID", "HOST", "CLIENT-ID",
                                        "#PARTITIONS"]) == []
        rows = parse_table(ok(c.bootstrap, "--describe", "--group", "g", "--state"),
                           ["GROUP", "COORDINATOR (ID)", "ASSIGNMENT-STRATEGY", "STATE",
                            "#MEMBERS"])
        assert (rows[0]["STATE"], rows[0]["#MEMBERS"]) == ("Empty", "0")


def test_a_group_that_does_not_exist(cluster):
    c = start(cluster)
    c.create_topic("t", partitions=1)
    for extra in ([], ["--members"], ["--state"]):
        out = tool(c.bootstrap, "--describe", "--group", "nope", *extra)
        assert (out.returncode, out.stdout) == (1, "")
        assert out.stderr == "zb-consumer-groups: Consumer group 'nope' does not exist.\n"
    out = tool(c.bootstrap, "--delete", "--group", "nope")
    assert out.returncode == 1
    assert "* Group 'nope' could not be deleted due to: The group 'nope' does not exist." in \
        out.stderr
    out = tool(c.bootstrap, "--delete-offsets", "--group", "nope", "--topic", "t")
    assert out.returncode == 1 and "does not exist" in out.stderr and "Traceback" not in \
        out.stderr
    assert ok(c.bootstrap, "--list") == ""


# --- --reset-offsets ------------------------------------------------------------------------------

def test_reset_to_earliest_dry_run_then_execute_and_read_again(cluster):
    c = start(cluster)
    c.create_topic("t", partitions=2)
    sent = produce_keys(c.bootstrap, "t", 20)
    consume_and_commit(c, "g", "t", 20)
    with AdminClient(c.bootstrap) as admin:
        end = ends(admin, "t", 2)
        assert committed(admin, "g") == end
        expected = [{"GROUP": "g", "TOPIC": "t", "PARTITION": str(p), "NEW-OFFSET": "0"}
                    for p in (0, 1)]
        columns = ["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"]

        out = tool(c.bootstrap, "--reset-offsets", "--group", "g", "--topic", "t",
                   "--to-earliest")
        assert out.returncode == 0
        assert out.stderr.startswith("WARN: No action will be performed as the --execute "
                                     "option is missing")
        assert parse_table(out.stdout, columns) == expected
        assert out.stdout.splitlines()[1] == f"{'GROUP':<30} {'TOPIC':<30} {'PARTITION':<10} " \
                                             f"NEW-OFFSET"
        out = tool(c.bootstrap, "--reset-offsets", "--group", "g", "--topic", "t",
                   "--to-earliest", "--dry-run")
        assert (out.returncode, out.stderr) == (0, "")
        assert parse_table(out.stdout, columns) == expected
        assert ok(c.bootstrap, "--reset-offsets", "--group", "g", "--topic", "t",
                  "--to-earliest", "--dry-run", "--export") == "t,0,0\nt,1,0\n"
        assert committed(admin, "g") == end                    # nothing changed

        assert parse_table(ok(c.bootstrap, "--reset-offsets", "--group", "g", "--all-topics",
                              "--to-earliest", "--execute"), columns) == expected
        assert committed(admin, "g") == {tp: 0 for tp in end}
    # the group's next member (starting from the commits, not from auto_offset_reset) reads
    # everything again
    with consumer(c, "g", "t", auto_offset_reset="latest") as cons:
        again = read(cons, 20)
    assert sorted(r.value for r in again) == sorted(sent)


def test_reset_is_refused_while_the_group_has_active_members(cluster):
    c = start(cluster)
    c.create_topic("t", partitions=2)
    produce_keys(c.bootstrap, "t", 20)
    consume_and_commit(c, "g", "t", 20)
    with AdminClient(c.bootstrap) as admin:
        before = committed(admin, "g")
        with consumer(c, "g", "t") as m:
            wait_stable(admin, "g", [m])
            out = tool(c.bootstrap, "--reset-offsets", "--group", "g", "--all-topics",
                       "--to-earliest", "--execute")
            assert out.returncode == 1
            assert out.stderr == ("zb-consumer-groups: Assignments can only be reset if the "
                                  "group 'g' is inactive, but the current state is Stable.\n")
            assert out.stdout == ""
            assert committed(admin, "g") == before
        assert committed(admin, "g") == before


def test_reset_scenarios_and_clamping(cluster):
    c = start(cluster)
    c.create_topic("t", partitions=2)
    produce_keys(c.bootstrap, "t", 40)
    consume_and_commit(c, "g", "t", 40)
    t0, t1 = TopicPartition("t", 0), TopicPartition("t", 1)

    def reset(*args: str) -> tuple[dict, str]:
        out = tool(c.bootstrap, "--reset-offsets", "--group", "g", *args, "--execute")
        assert out.returncode == 0, out.stderr
        rows = parse_table(out.stdout, ["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"])
        shown = {TopicPartition(r["TOPIC"], int(r["PARTITION"])): int(r["NEW-OFFSET"])
                 for r in rows}
        return shown, out.stderr

    with AdminClient(c.bootstrap) as admin:
        end = ends(admin, "t", 2)
        assert min(end.values()) >= 3, end         # 40 keyed records over 2 partitions

        shown, err = reset("--topic", "t:0", "--shift-by", "-3")
        assert shown == {t0: end[t0] - 3} and err == ""
        assert committed(admin, "g") == {t0: end[t0] - 3, t1: end[t1]}
        shown, err = reset("--all-topics", "--shift-by", "100")
        assert shown == end
        assert f"WARN: New offset ({end[t0] - 3 + 100}) is higher than latest offset for " \
               f"topic partition t-0. Value will be set to {end[t0]}" in err
        shown, err = reset("--topic", "t", "--shift-by=-1000")
        assert shown == {t0: 0, t1: 0}
        assert f"WARN: New offset ({end[t1] - 1000}) is lower than earliest offset for topic " \
               f"partition t-1. Value will be set to 0" in err
        assert reset("--topic", "t", "--to-offset", "2")[0] == {t0: 2, t1: 2}
        assert committed(admin, "g") == {t0: 2, t1: 2}
        assert reset("--topic", "t:1", "--to-offset", "100000")[0] == {t1: end[t1]}
        assert reset("--topic", "t:0,1", "--to-current")[0] == {t0: 2, t1: end[t1]}
        assert reset("--topic", "t", "--to-latest")[0] == end
        assert committed(admin, "g") == end

        # --to-datetime: the first record at or after the time, in UTC or with a zone
        time.sleep(0.05)
        cut_ms = int(time.time() * 1000)
        time.sleep(0.05)
        produce_keys(c.bootstrap, "t", 10, start=40)
        later = ends(admin, "t", 2)
        cut = datetime.datetime.fromtimestamp(cut_ms / 1000, datetime.timezone.utc)
        utc = cut.strftime("%Y-%m-%dT%H:%M:%S.") + f"{cut_ms % 1000:03d}"
        plus_one = (cut + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.") + \
            f"{cut_ms % 1000:03d}+01:00"
        assert reset("--all-topics", "--to-earliest")[0] == {t0: 0, t1: 0}
        for text in (utc, utc + "Z", plus_one):
            shown, err = reset("--all-topics", "--to-datetime", text)
            assert shown == end, text           # the first record produced after the cut
            empty = [tp for tp in end if later[tp] == end[tp]]
            for tp in empty:                    # nothing after the cut: latest, with a warning
                assert f"Partition {tp.partition} from topic t is empty" in err
        assert reset("--all-topics", "--by-duration", "PT1H")[0] == {t0: 0, t1: 0}
        assert reset("--all-topics", "--by-duration", "PT0S")[0] == later

        # a shift needs a commit to shift from
        admin.delete_consumer_group_offsets("g", [t1])
        out = tool(c.bootstrap, "--reset-offsets", "--group", "g", "--topic", "t",
                   "--shift-by", "1", "--execute")
        assert out.returncode == 1
        assert out.stderr == ("zb-consumer-groups: Cannot shift offset for partition t-1 "
                              "since there is no current committed offset.\n")
        out = tool(c.bootstrap, "--reset-offsets", "--group", "g", "--topic", "nosuch",
                   "--to-earliest", "--execute")
        assert out.returncode == 1 and "'nosuch' does not exist" in out.stderr
        assert committed(admin, "g") == {t0: later[t0]}


# --- --delete, --delete-offsets -------------------------------------------------------------------

def test_delete_groups_and_offsets(cluster):
    c = start(cluster)
    c.create_topic("t", partitions=2)
    c.create_topic("u", partitions=3)
    produce_keys(c.bootstrap, "t", 10)
    produce_keys(c.bootstrap, "u", 10)
    consume_and_commit(c, "g", "t", 10)
    consume_and_commit(c, "g", "u", 10)
    columns = ["TOPIC", "PARTITION", "STATUS"]
    with AdminClient(c.bootstrap) as admin:
        assert len(committed(admin, "g")) == 5
        out = ok(c.bootstrap, "--delete-offsets", "--group", "g", "--topic", "t:0")
        assert out.splitlines()[0] == "Request succeed for deleting offsets with topic t:0 " \
                                      "group g"
        assert parse_table("\n".join(out.splitlines()[1:]), columns) == [
            {"TOPIC": "t", "PARTITION": "0", "STATUS": "Successful"}]
        assert sorted(committed(admin, "g")) == [TopicPartition("t", 1)] + \
            [TopicPartition("u", p) for p in range(3)]
        out = ok(c.bootstrap, "--delete-offsets", "--group", "g", "--topic", "u")
        assert [r["PARTITION"] for r in parse_table("\n".join(out.splitlines()[1:]),
                                                    columns)] == ["0", "1", "2"]
        assert sorted(committed(admin, "g")) == [TopicPartition("t", 1)]

        with consumer(c, "busy", "t") as m:
            wait_stable(admin, "busy", [m])
            m.commit()
            out = tool(c.bootstrap, "--delete-offsets", "--group", "busy", "--topic", "t")
            assert out.returncode == 1
            assert "were not deleted" in out.stderr
            rows = parse_table(out.stdout, columns)
            assert [(r["PARTITION"], r["STATUS"]) for r in rows] == [
                (p, "Error: A member of group 'busy' is subscribed to 't'; its offsets stay.")
                for p in ("0", "1")]
            out = tool(c.bootstrap, "--delete", "--group", "busy", "--group", "g")
            assert out.returncode == 1
            assert out.stderr.splitlines() == [
                "zb-consumer-groups: Deletion of some consumer groups failed:",
                "* Group 'busy' could not be deleted due to: The group 'busy' still has 1 "
                "member(s); it can only be deleted when empty."]
            assert out.stdout == "\nThese consumer groups were deleted successfully: 'g'\n"
            assert [g.group_id for g in admin.list_consumer_groups()] == ["busy"]
        out = ok(c.bootstrap, "--delete", "--all-groups")
        assert out == "Deletion of requested consumer groups ('busy') was successful.\n"
        assert admin.list_consumer_groups() == []
        assert admin.list_consumer_group_offsets("busy") == {}


# --- usage --------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, says", [
    ([], "exactly one action"),
    (["--list", "--describe"], "exactly one action"),
    (["--describe"], "--describe takes one of these options: --group, --all-groups"),
    (["--describe", "--group", "g", "--all-groups"], "--group cannot be used with"),
    (["--describe", "--group", "g", "--members", "--state"], "at most one of"),
    (["--describe", "--group", "g", "--state", "stable"], "does not take a value"),
    (["--list", "--members"], "--members cannot be used with --list"),
    (["--list", "--group", "g"], "--group cannot be used with --list"),
    (["--list", "--state", "bogus"], "Invalid state list 'bogus'"),
    (["--describe", "--group", "g", "--topic", "t"], "--topic cannot be used"),
    (["--reset-offsets", "--group", "g", "--topic", "t"], "requires exactly one of the "
                                                          "following scenarios"),
    (["--reset-offsets", "--group", "g", "--topic", "t", "--to-earliest", "--to-offset", "0"],
     "(not --to-offset and --to-earliest)"),
    (["--reset-offsets", "--group", "g", "--to-earliest"], "reset scopes"),
    (["--reset-offsets", "--group", "g", "--all-topics", "--topic", "t", "--to-latest"],
     "reset scopes"),
    (["--reset-offsets", "--group", "g", "--all-topics", "--to-latest", "--dry-run",
      "--execute"], "only accepts one of --execute and --dry-run"),
    (["--reset-offsets", "--all-topics", "--to-latest"], "--group, --all-groups"),
    (["--reset-offsets", "--group", "g", "--topic", "t:x", "--to-latest"],
     "Invalid partition 'x'"),
    (["--reset-offsets", "--group", "g", "--topic", "t", "--to-datetime", "yesterday"],
     "--to-datetime expects a time"),
    (["--reset-offsets", "--group", "g", "--topic", "t", "--to-datetime",
      "2026-13-01T00:00:00.000"], "is not a valid time"),
    (["--reset-offsets", "--group", "g", "--topic", "t", "--by-duration", "1h"],
     "--by-duration expects a duration"),
    (["--reset-offsets", "--group", "g", "--topic", "t", "--to-offset", "abc"],
     "Argument --to-offset: invalid int value: 'abc'"),
    (["--describe", "--group", "g", "--to-earliest"], "--to-earliest cannot be used with "
                                                      "--describe"),
    (["--delete", "--group", "g", "--topic", "t"], "does not support topic-specific"),
    (["--delete-offsets", "--group", "g"], "--delete-offsets takes the following options"),
    (["--delete-offsets", "--group", "g", "--group", "h", "--topic", "t"], "one group at a"),
    (["--list", "--bogus"], "Unrecognized arguments: --bogus"),
    (["--list", "--timeout", "0"], "--timeout must be a positive"),
    (["--describe", "--group", ""], "non-empty string"),
])
def test_bad_usage_is_one_sentence_and_exit_status_2(args, says):
    out = tool(f"127.0.0.1:{free_port()}", *args)    # nothing listens: checked before that
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zb-consumer-groups: "), out.stderr
    assert lines[0].endswith("."), lines[0]
    assert says in lines[0]


def test_datetimes_and_durations_as_kafka_reads_them():
    new_year = 1767225600000                    # 2026-01-01T00:00:00Z
    for text in ("2026-01-01T00:00:00.000", "2026-01-01T00:00:00.000Z",
                 "2026-01-01T01:00:00.000+01:00", "2026-01-01T01:00:00.000+0100",
                 "2026-01-01T00:00:00"):
        assert parse_datetime_ms(text) == new_year, text
    assert parse_datetime_ms("2025-12-31T19:00:00.250-05") == new_year + 250
    for bad in ("2026-01-01", "2026-01-01T00:00:00.5", "2026-02-30T00:00:00.000"):
        with pytest.raises(UsageError):
            parse_datetime_ms(bad)
    assert [parse_duration_ms(d) for d in ("PT1H30M", "P1DT12H", "PT0.5S", "-PT1S", "PT-1.5S",
                                           "pt2m")] == \
        [5400000, 129600000, 500, -1000, -1500, 120000]
    for bad in ("P", "PT", "1h", "PT1X"):
        with pytest.raises(UsageError):
            parse_duration_ms(bad)


@pytest.mark.timeout(60)
def test_help_version_and_a_missing_bootstrap_server():
    out = tool(None, "--help")
    assert out.returncode == 0 and "--reset-offsets" in out.stdout and "--to-datetime" in \
        out.stdout
    out = tool(None, "--version")
    assert (out.returncode, out.stdout) == (0, metadata.version("zbroker") + "\n")
    out = tool(None, "--list")
    assert out.returncode == 2
    assert out.stderr == ("zb-consumer-groups: The following arguments are required: "
                          "--bootstrap-server.\n")
    port = free_port()
    out = tool(f"127.0.0.1:{port}", "--list", "--timeout", "500")
    assert out.returncode == 1
    assert out.stderr.startswith(f"zb-consumer-groups: No broker answered at 127.0.0.1:{port}")
