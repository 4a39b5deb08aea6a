"""An in-process fake broker for unit tests of the clients' I/O logic: one ROUTER socket on a
thread that speaks zbroker/protocol.py, with in-memory partition logs. Not a broker: no
replication, no disk; just enough to exercise the client side, plus fault injection hooks."""

from __future__ import annotations

import threading
import time

import zmq

from tests.procs import free_port
from zbroker import errors, protocol, records
from zbroker.storage.producer_state import ProducerStateManager


class FakeBroker:
    def __init__(self, node_id: int = 0, topics: dict[str, int] | None = None):
        self.node_id = node_id
        self.port = free_port()
        self.logs: dict[tuple[str, int], list[bytearray]] = {}
        self.next_offset: dict[tuple[str, int], int] = {}
        self.topics: dict[str, int] = {}
        for name, n in (topics or {}).items():
            self.create(name, n)
        self.requests: list[dict] = []
        self.produce_errors: list[int] = []     # codes answered to the next Produce parts
        # the leader's sequence checks, as a broker has them (zbroker/storage/producer_state.py)
        self.producer_state: dict[tuple[str, int], ProducerStateManager] = {}
        self.next_producer_id = 1000
        self.drop_responses = 0                 # Produce requests written but not answered
        self.produce_delay_s = 0.0              # a slow disk: each Produce takes this long
        # (topic, partition) -> codes answered to its next Produce parts after writing them (a
        # leader that lost its leadership while the batch waited for replication)
        self.errors_after_append: dict[tuple[str, int], list[int]] = {}
        # (topic, partition) -> codes answered to its next Produce parts instead of writing
        self.part_errors: dict[tuple[str, int], list[int]] = {}
        self.drop_next = 0                      # requests to swallow without answering
        # fn(topic, partition, offset, data) -> data: rewrites the record bytes of a Fetch
        # answer (e.g. to end it inside a batch, as a real fetch may)
        self.fetch_hook = None
        self.lock = threading.Lock()
        self._parked: list = []                 # empty fetches held until data or max_wait
        self._stop = False
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(f"tcp://127.0.0.1:{self.port}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def create(self, name: str, n: int) -> None:
        self.topics[name] = n
        for p in range(n):
            self.logs.setdefault((name, p), [])
            self.next_offset.setdefault((name, p), 0)

    def records(self, topic: str, partition: int) -> list[records.Record]:
        out = []
        for b in self.logs[(topic, partition)]:
            out.extend(records.decode_records(bytes(b)))
        return out

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._sock.close(0)
        self._ctx.term()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop:
            poller.poll(10)
            with self.lock:
                self._unpark()
            while True:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                ident, frames = frames[0], frames[1:]
                try:
                    header, blobs = protocol.decode_request(frames)
                except errors.ZbError as e:
                    self._sock.send_multipart([ident, *protocol.encode_error(
                        getattr(e, "request_id", None), e)])
                    continue
                with self.lock:
                    self.requests.append(header)
                    if self.drop_next:
                        self.drop_next -= 1
                        continue
                    if header["api"] == "Fetch":
                        self._parked.append((ident, header, time.monotonic() +
                                             header.get("max_wait_ms", 0) / 1000))
                        self._unpark()
                        continue
                    reply = getattr(self, "_" + header["api"])(header, blobs)
                if reply is not None:
                    self._sock.send_multipart([ident, *reply])

    def _unpark(self) -> None:
        now = time.monotonic()
        keep = []
        for ident, header, deadline in self._parked:
            reply, has_data = self._Fetch(header, [])
            if has_data or now >= deadline:
                self._sock.send_multipart([ident, *reply])
            else:
                keep.append((ident, header, deadline))
        self._parked = keep

    def _metadata_topics(self, names):
        out = []
        for name in (names if names is not None else sorted(self.topics)):
            if name not in self.topics:
                out.append(protocol.TopicMetadataEntry(name, errors.UnknownTopicOrPartition.code,
                                                       False, []))
                continue
            out.append(protocol.TopicMetadataEntry(name, 0, False, [
                protocol.PartitionMetadataEntry(p, 0, self.node_id, 0, [self.node_id],
                                                [self.node_id], [])
                for p in range(self.topics[name])]))
        return out

    def _Metadata(self, h, blobs):
        return protocol.encode_response(
            h["id"], brokers=[protocol.BrokerEntry(self.node_id, "127.0.0.1", self.port, None)],
            controller_id=self.node_id, cluster_id="fake",
            topics=self._metadata_topics(h.get("topics")))

    def _Produce(self, h, blobs):
        if self.produce_delay_s:
            time.sleep(self.produce_delay_s)
        parts, batch_offsets = [], []
        for (topic, p, _epoch), blob in zip(map(protocol.ProducePart._make, h["parts"]), blobs):
            tp = (topic, p)
            if self.produce_errors:
                code = self.produce_errors.pop(0)
                parts.append(protocol.ProduceResult(topic, p, code, -1, -1, -1, "injected"))
                continue
            if tp not in self.logs:
                parts.append(protocol.ProduceResult(topic, p, errors.UnknownTopicOrPartition.code,
                                                    -1, -1, -1, None))
                continue
            if self.part_errors.get(tp):
                parts.append(protocol.ProduceResult(topic, p, self.part_errors[tp].pop(0), -1, -1,
                                                    -1, "injected"))
                continue
            buf = bytearray(blob)
            found = records.validate_batches(buf)
            state = self.producer_state.setdefault(tp, ProducerStateManager())
            try:
                plan = state.check([bh for _, bh in found])
            except errors.ZbError as e:
                parts.append(protocol.ProduceResult(topic, p, e.code, -1, -1, -1, str(e)))
                continue
            off = self.next_offset[tp]
            offsets = []
            for (pos, bh), dup in zip(found, plan):
                if dup is not None:
                    offsets.append(dup.base_offset)
                    continue
                records.set_base_offset_and_epoch(buf, off, 0, pos)
                self.logs[tp].append(bytearray(buf[pos:pos + bh.size]))
                state.update(bh._replace(base_offset=off))
                offsets.append(off)
                off += bh.last_offset_delta + 1
            self.next_offset[tp] = off
            if self.errors_after_append.get(tp):
                parts.append(protocol.ProduceResult(topic, p, self.errors_after_append[tp].pop(0),
                                                    -1, -1, -1, "injected after the write"))
                continue
            if any(d is not None for d in plan) and len(offsets) > 1:
                batch_offsets.append([len(parts), offsets])
            parts.append(protocol.ProduceResult(topic, p, 0, offsets[0], -1, 0, None))
        if h["acks"] == 0:
            return None
        if self.drop_responses:
            self.drop_responses -= 1
            return None
        extra = {"batch_offsets": batch_offsets} if batch_offsets else {}
        return protocol.encode_response(h["id"], parts=parts, **extra)

    def _InitProducerId(self, h, blobs):
        self.next_producer_id += 1
        return protocol.encode_response(h["id"], producer_id=self.next_producer_id - 1,
                                        producer_epoch=0)

    def _Fetch(self, h, blobs):
        parts, out = [], []
        has_data = False
        budget = h.get("max_bytes", 1 << 20)
        for topic, p, offset, _epoch, pmax in map(protocol.FetchPart._make, h["parts"]):
            tp = (topic, p)
            if tp not in self.logs:
                parts.append(protocol.FetchResult(topic, p, errors.UnknownTopicOrPartition.code,
                                                  -1, -1, -1))
                out.append(b"")
                has_data = True
                continue
            end = self.next_offset[tp]
            if offset > end or offset < 0:
                parts.append(protocol.FetchResult(topic, p, errors.OffsetOutOfRange.code, end, 0,
                                                  end))
                out.append(b"")
                has_data = True
                continue
            chunk = bytearray()
            for b in self.logs[tp]:
                bh = records.read_header(b)
                if bh.next_offset <= offset:
                    continue
                if chunk and len(chunk) + len(b) > min(pmax, budget):
                    break
                chunk += b
            budget -= len(chunk)
            has_data = has_data or bool(chunk)
            parts.append(protocol.FetchResult(topic, p, 0, end, 0, end))
            data = bytes(chunk)
            if self.fetch_hook is not None and data:
                data = self.fetch_hook(topic, p, offset, data)
            out.append(data)
        return protocol.encode_response(h["id"], out, parts=parts), has_data

    def _ListOffsets(self, h, blobs):
        parts = []
        for topic, p, ts, _epoch in map(protocol.ListOffsetsPart._make, h["parts"]):
            tp = (topic, p)
            if tp not in self.logs:
                parts.append(protocol.ListOffsetsResult(
                    topic, p, errors.UnknownTopicOrPartition.code, -1, -1, -1))
                continue
            off = 0 if ts == protocol.EARLIEST_TIMESTAMP else self.next_offset[tp]
            parts.append(protocol.ListOffsetsResult(topic, p, 0, off, -1, 0))
        return protocol.encode_response(h["id"], parts=parts)

    def _CreateTopics(self, h, blobs):
        out = []
        for name, n, rf, _config, _assignment in h["topics"]:
            if name in self.topics:
                out.append([name, errors.TopicAlreadyExists.code, f"Topic {name} exists."])
            elif rf > 1:
                out.append([name, errors.InvalidReplicationFactor.code, "Only 1 broker."])
            else:
                self.create(name, n)
                out.append([name, 0, None])
        return protocol.encode_response(h["id"], topics=out)

    def _DeleteTopics(self, h, blobs):
        out = []
        for name in h["topics"]:
            if name not in self.topics:
                out.append([name, errors.UnknownTopicOrPartition.code, None])
                continue
            for p in range(self.topics.pop(name)):
                self.logs.pop((name, p), None)
                self.next_offset.pop((name, p), None)
            out.append([name, 0, None])
        return protocol.encode_response(h["id"], topics=out)

    def _CreatePartitions(self, h, blobs):
        out = []
        for name, total in h["topics"]:
            if name not in self.topics:
                out.append([name, errors.UnknownTopicOrPartition.code, None])
            elif total <= self.topics[name]:
                out.append([name, errors.InvalidPartitions.code, "Cannot shrink."])
            else:
                self.create(name, total)
                out.append([name, 0, None])
        return protocol.encode_response(h["id"], topics=out)

    def _ApiVersions(self, h, blobs):
        return protocol.encode_response(h["id"], apis={})
