"""A raw DEALER connection to a broker for tests: requests as zbroker.protocol spells them."""

from __future__ import annotations

import itertools

import zmq

from zbroker import protocol, records


class Conn:
    def __init__(self, port: int):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.ids = itertools.count(1)

    def send(self, api: str, blobs=None, **fields) -> int:
        req_id = next(self.ids)
        self.sock.send_multipart(protocol.encode_request(api, req_id, blobs, **fields))
        return req_id

    def send_raw(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_s: float = 5.0) -> tuple[dict, list[bytes]]:
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError("no response")
        return protocol.decode_response(self.sock.recv_multipart())

    def request(self, api: str, blobs=None, timeout_s: float = 5.0, **fields):
        req_id = self.send(api, blobs, **fields)
        header, out = self.recv(timeout_s)
        assert header["id"] == req_id, (header, req_id)
        return header, out

    def produce(self, topic, partition, batches, acks=1, leader_epoch=-1):
        blob = b"".join(batches) if isinstance(batches, list) else batches
        header, _ = self.request("Produce", [blob], acks=acks, timeout_ms=5000,
                                 parts=[[topic, partition, leader_epoch]])
        return header["parts"][0]

    def fetch(self, topic, partition, offset, leader_epoch=-1, max_wait_ms=0, min_bytes=1,
              max_bytes=1 << 20, timeout_s=5.0):
        header, blobs = self.request("Fetch", timeout_s=timeout_s, max_wait_ms=max_wait_ms,
                                     min_bytes=min_bytes, max_bytes=max_bytes,
                                     parts=[[topic, partition, offset, leader_epoch, max_bytes]])
        return header["parts"][0], blobs[0]

    def list_offset(self, topic, partition, timestamp, leader_epoch=-1):
        header, _ = self.request("ListOffsets",
                                 parts=[[topic, partition, timestamp, leader_epoch]])
        return header["parts"][0]

    def close(self):
        self.sock.close(0)


def batch(values: list[bytes], timestamp_ms: int | None = None) -> bytes:
    b = records.BatchBuilder()
    for v in values:
        b.append(v, timestamp_ms=timestamp_ms)
    return b.build()


def values_of(blob: bytes) -> list[tuple[int, bytes]]:
    out = []
    for _, view in records.iter_batches(blob):
        out += [(r.offset, r.value) for r in records.decode_records(view)]
    return out


def leaders(parts: list) -> dict[int, int]:
    """partition -> leader from a Metadata topic's partition list."""
    return {p[0]: p[2] for p in parts}
