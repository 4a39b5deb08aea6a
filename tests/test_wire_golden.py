"""Golden bytes for both wire protocols: the broker's (clients <-> brokers, followers -> leaders,
zbroker/protocol.py) and the coordinator's (coordinator/protocol.py). A change to a frame's
layout, a field's name or an entry's field order fails here first: the bytes are what other
processes, older clients and scripts read. (Record batches are pinned in
tests/storage/test_records.py.)"""

import pytest

from coordinator import protocol as C
from zbroker import errors
from zbroker import protocol as P

pytestmark = pytest.mark.timeout(10)

BROKER = {
    "produce request": (
        lambda: P.encode_request("Produce", 7, [b"BATCH"], acks=-1, timeout_ms=30000,
                                 parts=[P.ProducePart("t", 0, 3)]),
        ["86a461636b73ffaa74696d656f75745f6d73cd7530a570617274739193a1740003a3617069a750726f"
         "64756365a17601a2696407", "4241544348"]),
    "produce response": (
        lambda: P.encode_response(7, parts=[P.ProduceResult("t", 0, 0, 42, -1, 0, None)]),
        ["83a570617274739197a17400002aff00c0a2696407a365727200"]),
    "replica fetch request": (
        lambda: P.encode_request("Fetch", 8, replica_id=2, replica_epoch=4294967301,
                                 max_wait_ms=500, min_bytes=1, max_bytes=1048576,
                                 parts=[P.ReplicaFetchPart("t", 0, 10, 3, 65536, 2)]),
        ["89aa7265706c6963615f696402ad7265706c6963615f65706f6368cf0000000100000005ab6d61785f"
         "776169745f6d73cd01f4a96d696e5f627974657301a96d61785f6279746573ce00100000a570617274"
         "739196a174000a03ce0001000002a3617069a54665746368a17601a2696408"]),
    "fetch response with a diverging epoch": (
        lambda: P.encode_response(8, [b"", b"DATA"],
                                  parts=[P.FetchResult("t", 0, 0, 10, 0, 15),
                                         P.FetchResult("t", 1, 1, 5, 3, 9)],
                                  diverging=[P.DivergingEpoch("t", 0, 1, 8)]),
        ["84a570617274739296a17400000a000f96a1740101050309a9646976657267696e679194a174000108"
         "a2696408a365727200", "", "44415441"]),
    "offset for leader epoch response": (
        lambda: P.encode_response(9, parts=[P.EpochEndResult("t", 0, 0, 1, 8)]),
        ["83a570617274739195a17400000108a2696409a365727200"]),
    "list offsets response": (
        lambda: P.encode_response(10, parts=[P.ListOffsetsResult("t", 0, 0, 5, -1, 3)]),
        ["83a570617274739196a174000005ff03a269640aa365727200"]),
    "metadata response": (
        lambda: P.encode_response(
            11, brokers=[P.BrokerEntry(1, "h", 9092, None)], controller_id=1, cluster_id="c",
            topics=[P.TopicMetadataEntry("t", 0, False, [
                P.PartitionMetadataEntry(0, 0, 1, 3, [1, 2], [1], [])])]),
        ["86a762726f6b657273919401a168cd2384c0ad636f6e74726f6c6c65725f696401aa636c7573746572"
         "5f6964a163a6746f706963739194a17400c2919700000103920102910190a269640ba365727200"]),
    "error response": (
        lambda: P.encode_error(12, errors.StaleBrokerEpoch("no")),
        ["83a269640ca36572724da36d7367a26e6f"]),
}

COORDINATOR = {
    "create request": (
        lambda: C.encode_request("create", 5, 77, path="/a", value=b"v", ephemeral=True,
                                 sequential=False),
        "88a470617468a22f61a576616c7565c40176a9657068656d6572616cc3aa73657175656e7469616cc2"
        "a3617069a6637265617465a17601a2696405a37369644d"),
    "reply": (lambda: C.encode_reply(5, path="/a", zxid=12),
              "84a470617468a22f61a47a7869640ca2696405a365727200"),
    "watch event": (
        lambda: C.encode_watch_event(3, 1, 12, "changed", "/a", 2, b"v"),
        "88a26576a57761746368a377696403a373657101a47a7869640ca474797065a76368616e676564a470"
        "617468a22f61a776657273696f6e02a576616c7565c40176"),
    "expired event": (lambda: C.encode_expired_event(77), "82a26576a765787069726564a37369644d"),
}


@pytest.mark.parametrize("name", sorted(BROKER))
def test_broker_protocol_bytes(name):
    make, frames = BROKER[name]
    assert [f.hex() for f in make()] == frames


@pytest.mark.parametrize("name", sorted(COORDINATOR))
def test_coordinator_protocol_bytes(name):
    make, frame = COORDINATOR[name]
    assert make().hex() == frame


def test_named_entries_decode_back_and_refuse_what_does_not_fit():
    header, blobs = P.decode_response(BROKER["fetch response with a diverging epoch"][0]())
    results = P.decode_entries(P.FetchResult, header["parts"], "Fetch")
    assert results[1] == P.FetchResult("t", 1, 1, 5, 3, 9) and results[1].high_watermark == 5
    assert P.decode_entries(P.DivergingEpoch, header["diverging"], "diverging") == \
        [P.DivergingEpoch("t", 0, 1, 8)]
    assert blobs == [b"", b"DATA"]
    with pytest.raises(errors.CorruptMessage):
        P.decode_entries(P.FetchResult, [["t", 0, 0]], "Fetch")
    header, blobs = P.decode_request(BROKER["replica fetch request"][0]())
    P.check_entries("Fetch", "parts", header["parts"], P.REPLICA_FETCH_PART)
    assert P.ReplicaFetchPart._make(header["parts"][0]).last_fetched_epoch == 2
    req = C.decode_request(COORDINATOR["create request"][0]())
    assert (req["api"], req["path"], req["value"], req["ephemeral"]) == ("create", "/a", b"v",
                                                                         True)
