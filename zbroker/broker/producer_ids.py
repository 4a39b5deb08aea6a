"""InitProducerId: every broker hands out producer ids from blocks it claims in the coordinator,
so ids are unique across the cluster and across restarts (Kafka's ProducerIdManager).

The coordinator key ``/latest_producer_id_block`` holds the last block claimed,
``{"broker": id, "start": first id, "end": last id}`` (msgpack). A broker claims the next block
with a compare-and-set on the key's version (a create when it does not exist yet); a broker
that loses the race reads again. A restarted broker claims a fresh block: the ids it had not
handed out are skipped, never reused.

``ProducerIdBlocks`` is the bookkeeping without I/O; ``ProducerIdService`` carries its claims
out through the broker's coordinator client, whose replies come back through the broker's inbox,
so the loop never waits on the coordinator. A request that finds no id left waits (bounded) for
the claim under way.
"""

from __future__ import annotations

import collections
from typing import NamedTuple

from zbroker import errors, protocol
from zbroker.broker import metadata as md
from zbroker.logs import get_logger

log = get_logger(__name__)

BLOCK_PATH = "/latest_producer_id_block"
BLOCK_SIZE = 1000                   # Kafka's
PREFETCH_FRACTION = 0.1             # claim the next block when this much of the current is left
WAITERS_MAX = 10_000
CLAIM_ATTEMPTS_MAX = 10
PRODUCER_ID_MAX = (1 << 63) - 1


class Block(NamedTuple):
    broker: int
    start: int
    end: int                        # inclusive


def next_block(broker_id: int, latest: Block | None, size: int = BLOCK_SIZE) -> Block:
    start = 0 if latest is None else latest.end + 1
    if start + size - 1 > PRODUCER_ID_MAX:
        raise errors.UnknownServerError("The cluster has handed out every producer id.")
    return Block(broker_id, start, start + size - 1)


def decode_block(raw: bytes) -> Block:
    try:
        v = md.unpack(raw)
        block = Block(int(v["broker"]), int(v["start"]), int(v["end"]))
    except Exception as e:
        raise errors.UnknownServerError(f"The coordinator's {BLOCK_PATH} is malformed: "
                                        f"{e}.") from None
    if not 0 <= block.start <= block.end:
        raise errors.UnknownServerError(f"The coordinator's {BLOCK_PATH} is malformed.")
    return block


def encode_block(block: Block) -> bytes:
    return md.pack({"broker": block.broker, "start": block.start, "end": block.end})


class ProducerIdBlocks:
    """The ids this broker may hand out: the current block and at most one claimed ahead."""

    def __init__(self, block_size: int = BLOCK_SIZE):
        self.block_size = block_size
        self._blocks: collections.deque[list[int]] = collections.deque()   # [next, end]

    def take(self) -> int | None:
        while self._blocks:
            block = self._blocks[0]
            if block[0] <= block[1]:
                block[0] += 1
                return block[0] - 1
            self._blocks.popleft()
        return None

    def left(self) -> int:
        return sum(end - nxt + 1 for nxt, end in self._blocks)

    def wants_block(self) -> bool:
        return len(self._blocks) < 2 and self.left() <= self.block_size * PREFETCH_FRACTION

    def add(self, block: Block) -> None:
        self._blocks.append([block.start, block.end])

    def clear(self) -> None:
        self._blocks.clear()


class ProducerIdService:
    def __init__(self, server, block_size: int = BLOCK_SIZE):
        self.server = server
        self.blocks = ProducerIdBlocks(block_size)
        self.waiters: collections.deque[tuple[bytes, int]] = collections.deque()
        self._claiming = False
        self._attempts = 0

    # --- the API ------------------------------------------------------------------------------
    def handle(self, ident: bytes, header: dict) -> list | None:
        if header.get("transactional_id") is not None:
            raise errors.InvalidRequest("Transactions are not supported; InitProducerId takes "
                                        "no transactional_id.")
        pid = self.blocks.take()
        self._maybe_claim()
        if pid is not None:
            return self._response(header["id"], pid)
        if len(self.waiters) >= WAITERS_MAX:
            raise errors.CoordinatorNotAvailable(
                "The broker is waiting for producer ids from the coordinator; try again.")
        self.waiters.append((ident, header["id"]))
        return None

    @staticmethod
    def _response(req_id: int, pid: int) -> list:
        return protocol.encode_response(req_id, producer_id=pid, producer_epoch=0)

    def _answer_waiters(self) -> None:
        while self.waiters:
            pid = self.blocks.take()
            if pid is None:
                break
            ident, req_id = self.waiters.popleft()
            self.server._send(ident, self._response(req_id, pid))
        self._maybe_claim()

    def _fail_waiters(self, err: errors.ZbError) -> None:
        while self.waiters:
            ident, req_id = self.waiters.popleft()
            self.server._send(ident, protocol.encode_error(req_id, err))

    def session_lost(self) -> None:
        """A new coordinator session: keep the ids already claimed (they stay ours)."""
        self._claiming = False

    # --- claiming a block -------------------------------------------------------------------------
    def _maybe_claim(self) -> None:
        if self._claiming or not (self.blocks.wants_block() or self.waiters):
            return
        client = self.server.client
        if client is None:
            self._fail_waiters(errors.CoordinatorNotAvailable(
                "The broker has no coordinator session to claim producer ids with."))
            return
        self._claiming = True
        self._attempts += 1
        try:
            fut = client.get_with_stat_async(BLOCK_PATH)
        except Exception as e:
            self._claim_failed(e)
            return
        fut.add_done_callback(lambda f: self.server._post(("producer_ids", self._on_read, f)))

    def _on_read(self, fut) -> None:
        exc = fut.exception()
        client = self.server.client
        try:
            if isinstance(exc, errors.NoNode):
                block = next_block(self.server.broker_id, None, self.blocks.block_size)
                wfut = client.create_async(BLOCK_PATH, encode_block(block))
            elif exc is not None:
                raise exc
            else:
                raw, stat = fut.result()
                block = next_block(self.server.broker_id, decode_block(raw),
                                   self.blocks.block_size)
                wfut = client.set_async(BLOCK_PATH, encode_block(block), stat.version)
        except Exception as e:
            self._claim_failed(e)
            return
        wfut.add_done_callback(
            lambda f: self.server._post(("producer_ids", self._on_written, block, f)))

    def _on_written(self, block: Block, fut) -> None:
        exc = fut.exception()
        self._claiming = False
        if isinstance(exc, (errors.BadVersion, errors.NodeExists)) and \
                self._attempts < CLAIM_ATTEMPTS_MAX:
            self._maybe_claim()             # another broker claimed first: read again
            return
        if exc is not None:
            self._claim_failed(exc)
            return
        self._attempts = 0
        log.info("claimed producer ids", start=block.start, end=block.end)
        self.blocks.add(block)
        self._answer_waiters()

    def _claim_failed(self, exc: BaseException) -> None:
        self._claiming = False
        self._attempts = 0
        log.warning("claiming producer ids failed", error=str(exc))
        self._fail_waiters(errors.CoordinatorNotAvailable(
            f"The broker could not claim producer ids from the coordinator ({exc}); try "
            f"again."))


__all__ = ["ProducerIdService", "ProducerIdBlocks", "Block", "BLOCK_PATH", "next_block"]
