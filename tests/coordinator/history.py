"""Histories for the linearizability checker: client threads doing reads, writes and
compare-and-sets on a few keys of a coordinator (an ensemble, usually while it is being hurt),
each operation recorded with when it was called and when it returned.

    python -m tests.coordinator.history ADDRESSES SECONDS SEED OUT.json

runs the clients for SECONDS (after creating the keys) and writes the history as JSON; the
tests that run clients inside a network namespace use that, the others call ``Recorder``.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time

from coordinator.client import CoordinatorClient
from tests.coordinator.linearizability import Op
from zbroker.errors import BadVersion, ConnectionLoss, NodeExists

KEYS = [f"/lin/{k}" for k in range(3)]
INITIAL = (b"0", 0)


def create_keys(address: str) -> None:
    with CoordinatorClient(address, session_timeout_ms=6000) as c:
        for path in ["/lin", *KEYS]:
            try:
                c.create(path, b"0" if path != "/lin" else b"")
            except NodeExists:
                pass


class Recorder:
    """``clients`` threads, each with its own session, until ``stop()``."""

    def __init__(self, address: str, seed: int, clients: int = 4,
                 session_timeout_ms: int = 6000, request_timeout_ms: int = 3000):
        self.address, self.seed = address, seed
        self.session_timeout_ms, self.request_timeout_ms = session_timeout_ms, request_timeout_ms
        self.history: list[Op] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(clients)]
        for t in self.threads:
            t.start()

    def stop(self) -> list[Op]:
        self._stop.set()
        for t in self.threads:
            t.join(30)
        return self.history

    def _record(self, op: Op) -> None:
        with self.lock:
            self.history.append(op)

    def _client(self, cid: int) -> None:
        rng = random.Random(self.seed + cid)
        c = CoordinatorClient(self.address, session_timeout_ms=self.session_timeout_ms,
                              request_timeout_ms=self.request_timeout_ms)
        try:
            n = 0
            while not self._stop.is_set():
                time.sleep(0.002)       # (bounds the history, so checking it stays quick)
                key = rng.choice(KEYS)
                kind = rng.choice(["read", "read", "write", "cas"])
                value = b"c%d-%d" % (cid, n)
                n += 1
                arg = None
                call = time.monotonic()
                try:
                    if kind == "read":
                        result = tuple(c.get(key))
                    elif kind == "write":
                        arg = value
                        result = c.set(key, value)
                    else:
                        got = tuple(c.get(key))     # a read of its own, recorded as one
                        self._record(Op(cid, key, "read", None, call, time.monotonic(), got))
                        call = time.monotonic()
                        arg = (got[1], value)
                        try:
                            result = c.set(key, value, version=got[1])
                        except BadVersion:
                            result = "bad_version"
                    ret = time.monotonic()
                except ConnectionLoss:
                    result, ret = None, None
                    if kind == "read" or arg is None:
                        continue        # a read that did not answer tells nothing (nor a cas
                        # whose own read did not: it sent no write)
                self._record(Op(cid, key, kind, arg, call, ret, result))
        finally:
            c.close()


def to_json(history: list[Op]) -> str:
    def enc(v):
        if isinstance(v, bytes):
            return {"b": v.decode()}
        if isinstance(v, (tuple, list)):
            return [enc(x) for x in v]
        return v
    return json.dumps([[enc(f) for f in op] for op in history])


def from_json(text: str) -> list[Op]:
    def dec(v):
        if isinstance(v, dict):
            return v["b"].encode()
        if isinstance(v, list):
            return tuple(dec(x) for x in v)
        return v
    return [Op(*[dec(f) for f in row]) for row in json.loads(text)]


def main(argv: list[str]) -> int:
    address, seconds, seed, out = argv[0], float(argv[1]), int(argv[2]), argv[3]
    create_keys(address)
    r = Recorder(address, seed, session_timeout_ms=3000, request_timeout_ms=2500)
    time.sleep(seconds)
    history = r.stop()
    with open(out, "w") as f:
        f.write(to_json(history))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
