"""Bad requests get named errors and the broker keeps serving."""

import msgpack
import pytest

from zbroker import errors, protocol
from tests.broker.helpers import Conn, batch, values_of

pytestmark = pytest.mark.timeout(60)


def test_bad_requests_then_good_ones(cluster):
    c = cluster(1, message_max_bytes=2000)
    c.create_topic("t", 1)
    conn = Conn(c.brokers[0].port)
    try:
        def raw(frames):
            conn.send_raw(frames)
            return conn.recv()[0]

        h = raw([b"\xc1not msgpack"])
        assert h["err"] == errors.InvalidRequest.code and h["id"] is None and h["msg"]
        assert raw([msgpack.packb([1, 2])])["err"] == errors.InvalidRequest.code
        assert raw([msgpack.packb({"api": "Metadata", "v": 1})])["err"] == \
            errors.InvalidRequest.code                                  # no id
        h = raw([msgpack.packb({"api": "Nope", "v": 1, "id": 7})])
        assert h["err"] == errors.InvalidRequest.code and h["id"] == 7
        h = raw([msgpack.packb({"api": "Metadata", "v": 99, "id": 8})])
        assert h["err"] == errors.UnsupportedVersion.code and h["id"] == 8
        h = raw([msgpack.packb({"api": "Produce", "v": 1, "id": 9, "acks": "one",
                                "parts": []})])
        assert h["err"] == errors.InvalidRequest.code and "acks" in h["msg"]
        h = raw([msgpack.packb({"api": "Produce", "v": 1, "id": 10, "acks": 1,
                                "parts": [["t", "zero", -1]]}), b"x"])
        assert h["err"] == errors.InvalidRequest.code
        h = raw([msgpack.packb({"api": "Fetch", "v": 1, "id": 11, "parts": [["t", 0]]})])
        assert h["err"] == errors.InvalidRequest.code
        h = raw([msgpack.packb({"api": "Produce", "v": 1, "id": 12, "acks": 1,
                                "parts": [["t", 0, -1]]})])                  # no blob
        assert h["err"] == errors.InvalidRequest.code and "blob" in h["msg"]
        h = raw([msgpack.packb({"api": "Produce", "v": 1, "id": 13, "acks": 5,
                                "parts": [["t", 0, -1]]}), batch([b"x"])])
        assert h["err"] == errors.InvalidRequiredAcks.code
        h = raw([msgpack.packb({"api": "Metadata", "v": 1, "id": 14, "topics": [1, 2]})])
        assert h["err"] == errors.InvalidRequest.code
        h = raw([msgpack.packb({"api": "ListOffsets", "v": 1, "id": 15,
                                "parts": [["t", 0, -7, -1]]})])
        assert h["parts"][0][2] == errors.InvalidRequest.code

        # acks=0 promises no response, even for a refused request
        conn.send_raw([msgpack.packb({"api": "Produce", "v": 1, "id": 16, "acks": 0,
                                      "parts": [["t", 0, -1]]})])
        assert not conn.sock.poll(200)

        good = batch([b"ok"])
        corrupt = bytearray(good)
        corrupt[-1] ^= 0xFF
        assert conn.produce("t", 0, bytes(corrupt))[2] == errors.CorruptMessage.code
        assert conn.produce("t", 0, good[:30])[2] == errors.CorruptMessage.code
        assert conn.produce("t", 0, b"")[2] == errors.CorruptMessage.code
        assert conn.produce("t", 0, good + b"junk")[2] == errors.CorruptMessage.code
        assert conn.produce("t", 0, batch([b"x" * 3000]))[2] == errors.MessageTooLarge.code
        h, _ = conn.request("CreateTopics", topics=[["a", "b"]])
        assert h["err"] == errors.InvalidRequest.code

        # nothing bad was written; the broker serves everyone normally
        header, _ = conn.request("ApiVersions")
        assert header["err"] == 0 and header["apis"]["Produce"] == [1, 1]
        assert conn.produce("t", 0, good)[2:4] == [0, 0]
        assert values_of(conn.fetch("t", 0, 0)[1]) == [(0, b"ok")]
        assert conn.list_offset("t", 0, protocol.LATEST_TIMESTAMP)[3] == 1
    finally:
        conn.close()


def test_create_topics_with_malformed_entries_never_moves_the_controller(cluster):
    """Type-confused CreateTopics entries (assignment keys of mixed types, non-list replicas,
    config of the wrong types, a huge partition number) get named errors per topic; the
    controller neither steps down nor logs a traceback, and a good request then works."""
    from coordinator.client import CoordinatorClient
    c = cluster(1)
    conn = Conn(c.brokers[0].port)
    coord = CoordinatorClient(c.coordinator.address)
    try:
        _, before = coord.get_with_stat("/controller")
        bad = [["m1", 2, 1, {}, {0: [1], "x": [1]}],          # keys of mixed types
               ["m2", 1, 1, {}, {True: [1]}],                  # a bool for a partition
               ["m3", 1, 1, {}, {0: "1"}],                     # replicas not a list
               ["m4", 1, 1, {}, {0: [1.5]}],                   # a float for a broker
               ["m5", 1, 1, {"retention.ms": 5}, None],        # a config value not a string
               ["m6", 1, 1, {}, {1 << 40: [1]}]]               # a huge partition number
        h, _ = conn.request("CreateTopics", topics=bad, timeout_ms=5000)
        assert h["err"] == 0, h
        codes = {name: code for name, code, _ in h["topics"]}
        assert set(codes) == {e[0] for e in bad} and all(codes.values()), h["topics"]
        # one request may not create more than PARTITIONS_PER_REQUEST_MAX partitions
        h, _ = conn.request("CreateTopics", topics=[["big1", 6000, 1, {}, None],
                                                    ["big2", 6000, 1, {}, None]],
                            timeout_ms=5000)
        assert h["err"] == errors.InvalidRequest.code and "at most" in h["msg"], h
        h, _ = conn.request("CreateTopics", topics=[["good", 1, 1, {}, {0: [1]}]],
                            timeout_ms=5000)
        assert h["topics"] == [["good", 0, None]], h
        assert coord.exists("/brokers/topics/big1") is None
        _, after = coord.get_with_stat("/controller")
        assert after.czxid == before.czxid          # the same controller, never re-elected
        text = c.brokers[0].proc.log_path.read_text(errors="replace")
        assert "Traceback" not in text and "stepping down" not in text
    finally:
        conn.close()
        coord.close()


def test_garbage_in_cluster_keys_is_ignored_and_the_cluster_keeps_serving(cluster):
    """Anyone who can reach the coordinator may write its keys (until ACLs exist): garbage
    registrations, topic records and partition states are ignored with a warning; no
    controller steps down, no watcher stalls, no traceback is logged, and a topic created
    afterwards works."""
    from coordinator.client import CoordinatorClient
    c = cluster(2)
    c.create_topic("t", 1, 2)
    coord = CoordinatorClient(c.coordinator.address)
    try:
        _, before = coord.get_with_stat("/controller")
        coord.create("/brokers/ids/9", b"\xc1 not msgpack")
        coord.create("/brokers/ids/8", msgpack.packb({"host": 5, "port": "x"}))
        coord.create("/brokers/topics/junk", msgpack.packb({"replicas": "no"}))
        coord.set("/brokers/topics/t/0", msgpack.packb({"leader": "one", "isr": None}))
        c.create_topic("after", 1, 2)
        conn = Conn(c.brokers[0].port)
        try:
            h, _ = conn.request("Metadata", topics=["after"])
            leader = h["topics"][0][3][0][2]
        finally:
            conn.close()
        conn = Conn(c.broker(leader).port)
        try:
            assert conn.produce("after", 0, batch([b"ok"]))[2] == 0
        finally:
            conn.close()
        _, after = coord.get_with_stat("/controller")
        assert after.czxid == before.czxid
        for b in c.brokers:
            assert b.alive
            text = b.proc.log_path.read_text(errors="replace")
            assert "Traceback" not in text and "stepping down" not in text, b.broker_id
    finally:
        coord.close()


def test_acks_all_produces_waiting_are_bounded(cluster):
    """With its follower stopped, the leader holds acks=all produces until they replicate; past
    delayed.produces.max the next one is refused (retriable) before anything is written."""
    import signal
    from tests.replication.helpers import partition_info, wait_isr
    c = cluster(2, overrides={"delayed.produces.max": "2"})
    c.create_topic("w", 1, 2, {"min.insync.replicas": "2"})
    wait_isr(c, "w", 0, {1, 2})
    leader, *_ = partition_info(c, "w", 0)
    follower = c.broker(3 - leader)
    conn = Conn(c.broker(leader).port)
    follower.proc.popen.send_signal(signal.SIGSTOP)
    try:
        held = [conn.send("Produce", [batch([b"%d" % i])], acks=-1, timeout_ms=20000,
                          parts=[["w", 0, -1]]) for i in range(2)]
        refused_id = conn.send("Produce", [batch([b"refused"])], acks=-1, timeout_ms=20000,
                               parts=[["w", 0, -1]])
        h, _ = conn.recv(10)
        assert h["id"] == refused_id and h["err"] == errors.RequestTimedOut.code, h
        assert "delayed.produces.max" in h["msg"]
    finally:
        follower.proc.popen.send_signal(signal.SIGCONT)
    got = {conn.recv(20)[0]["id"] for _ in held}
    assert got == set(held)
    assert conn.list_offset("w", 0, protocol.LATEST_TIMESTAMP)[3] == 2     # "refused" is not in
    conn.close()
