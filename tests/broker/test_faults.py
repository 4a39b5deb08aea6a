"""kill -9 and restarts: controller failover, leaders follow their brokers, data survives."""

import pytest

from zbroker import errors
from tests.broker.helpers import Conn, batch, values_of

pytestmark = pytest.mark.timeout(60)


def topic_parts(b, name):
    return b.metadata([name], allow_auto_create=False)["topics"][0][3]


def test_controller_failover_and_leaders_follow_their_brokers(cluster):
    c = cluster(3)
    parts = c.create_topic("t", 6)
    before = {p[0]: (p[2], p[3]) for p in parts}
    old_cid = c.controller_id()
    victim = c.broker(old_cid)
    conn = Conn(victim.port)
    led = [p for p, (leader, _) in before.items() if leader == old_cid]
    for p in led:
        assert conn.produce("t", p, batch([b"before-%d" % p]))[2] == 0
    conn.close()
    victim.kill9()
    survivors = [b for b in c.brokers if b is not victim]

    def failed_over():
        for b in survivors:
            md = b.metadata(["t"], allow_auto_create=False)
            if md["controller_id"] in (-1, old_cid):
                return False
            for p in md["topics"][0][3]:
                leader, epoch = before[p[0]]
                if leader == old_cid:
                    if p[1] != errors.LeaderNotAvailable.code or p[2] != -1 or p[6] != [old_cid]:
                        return False
                elif (p[2], p[3]) != (leader, epoch):
                    return False            # untouched partitions keep leader and epoch
            if old_cid in [x[0] for x in md["brokers"]]:
                return False
        return md["controller_id"]
    new_cid = c.wait_for(failed_over, 15, "controller failover")
    assert new_cid != old_cid

    # the partitions of surviving brokers still take writes
    p_alive = next(p for p, (leader, _) in before.items() if leader != old_cid)
    conn = Conn(c.broker(before[p_alive][0]).port)
    assert conn.produce("t", p_alive, batch([b"still"]))[2] == 0
    conn.close()

    # the dead broker returns: it leads its partitions again, with a newer epoch, data intact
    victim.start()

    def back():
        parts = topic_parts(victim, "t")
        for p in parts:
            leader, epoch = before[p[0]]
            if leader == old_cid and not (p[2] == old_cid and p[3] > epoch and p[1] == 0):
                return None
        return parts
    parts = c.wait_for(back, 15, "leadership back on the restarted broker")
    conn = Conn(victim.port)
    try:
        for p in led:
            meta, blob = conn.fetch("t", p, 0)
            assert meta[2] == 0 and values_of(blob) == [(0, b"before-%d" % p)]
            new_epoch = next(x[3] for x in parts if x[0] == p)
            assert conn.produce("t", p, batch([b"after"]), leader_epoch=new_epoch)[2] == 0
            assert conn.produce("t", p, batch([b"old"]), leader_epoch=before[p][1])[2] == \
                errors.FencedLeaderEpoch.code
            assert values_of(conn.fetch("t", p, 0)[1])[-1] == (1, b"after")
    finally:
        conn.close()
    assert c.controller_id() == new_cid          # the controller does not move back


def test_data_survives_clean_and_unclean_restarts(cluster):
    c = cluster(1)
    c.create_topic("durable", 2)
    b = c.brokers[0]
    conn = Conn(b.port)
    for p in (0, 1):
        for i in range(10):
            assert conn.produce("durable", p, batch([b"%d-%d" % (p, i)] * 3))[2] == 0
    conn.close()
    assert b.terminate() == 0                   # SIGTERM: clean shutdown
    assert (b.log_dir / "durable-0" / ".clean-shutdown").exists()
    b.start()
    c.wait_topic("durable", 2)
    conn = Conn(b.port)
    # (its metadata may show it leader by the state of its earlier life a moment before the
    # controller elects it anew: until then it refuses, with NOT_LEADER_OR_FOLLOWER)
    c.wait_for(lambda: all(conn.fetch("durable", p, 0)[0][2] == 0 for p in (0, 1)), 15,
               "leading again")
    for p in (0, 1):
        meta, blob = conn.fetch("durable", p, 0)
        assert meta[2] == 0 and meta[3] == 30, meta
        assert len(values_of(blob)) == 30
        assert conn.produce("durable", p, batch([b"more"]))[3] == 30
    conn.close()
    b.kill9()                                   # unclean: recovery scans the tail
    b.start()
    c.wait_topic("durable", 2)
    conn = Conn(b.port)
    c.wait_for(lambda: all(conn.fetch("durable", p, 0)[0][2] == 0 for p in (0, 1)), 15,
               "leading again")
    for p in (0, 1):
        meta, blob = conn.fetch("durable", p, 0)
        assert meta[3] == 31 and values_of(blob)[-1] == (30, b"more")
    conn.close()


def test_cluster_carries_on_across_a_coordinator_restart(cluster):
    c = cluster(2)
    c.create_topic("a", 2)
    c.coordinator.kill9()
    c.coordinator.restart()
    parts = c.create_topic("b", 2)              # the controller still works (same sessions)
    for p in parts:
        conn = Conn(c.broker(p[2]).port)
        assert conn.produce("b", p[0], batch([b"x"]))[2] == 0
        conn.close()
    assert sorted(x[0] for x in c.metadata(None)["topics"]) == ["a", "b"]


def test_a_broker_whose_session_expired_registers_again_and_leads_again(cluster):
    import os
    import signal
    c = cluster(2)
    parts = c.create_topic("s", 2)
    victim_id = 2 if c.controller_id() == 1 else 1
    victim = c.broker(victim_id)
    p = next(x for x in parts if x[2] == victim_id)
    conn = Conn(victim.port)
    assert conn.produce("s", p[0], batch([b"one"]))[2] == 0
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        other = c.broker(3 - victim_id)
        c.wait_for(lambda: victim_id not in [b[0] for b in other.metadata([])["brokers"]],
                   10, "the session expiring")
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)

    def led_again():
        got = victim.metadata(["s"], allow_auto_create=False)["topics"][0][3]
        st = next(x for x in got if x[0] == p[0])
        return st if st[2] == victim_id and st[3] > p[3] else None
    st = c.wait_for(led_again, 15, "leading again after re-registering")
    # Its metadata may name it leader a moment before it acts as one again: until then a
    # produce is refused, and writes nothing, with one of these (any other code fails the test)
    not_yet = {errors.NotLeaderOrFollower.code, errors.LeaderNotAvailable.code,
               errors.UnknownLeaderEpoch.code}
    codes = []

    def accepted():
        code = conn.produce("s", p[0], batch([b"two"]), leader_epoch=st[3])[2]
        codes.append(code)
        assert code == 0 or code in not_yet, codes
        return code == 0
    c.wait_for(accepted, 10, "the produce being accepted")
    assert values_of(conn.fetch("s", p[0], 0)[1]) == [(0, b"one"), (1, b"two")]
    conn.close()
    assert victim.alive
