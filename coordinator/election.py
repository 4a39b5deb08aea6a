"""Leader election with a fencing epoch, on top of the coordinator (Kafka's controller recipe).

A contender becomes the holder of ``path`` (e.g. ``/controller``) in one atomic multi: bump the
epoch key ``<path>_epoch`` with a version check and create the ephemeral holder key. The epoch
is the epoch key's version after the bump, so it only ever grows. A holder stamps its writes with
``election.fence()`` (an ``Op.fence`` in the same multi): once another contender has won, the
epoch key has moved on and every write stamped with the old epoch is refused with FencedEpoch,
all or nothing. When the holder's session ends, its ephemeral key goes and the others retry.
"""

from __future__ import annotations

import threading
import time

from coordinator.client import BadVersion, CoordinatorClient, NodeExists, NoNode, Op, WatchEvent


class Election:
    def __init__(self, client: CoordinatorClient, path: str = "/controller",
                 identifier: bytes = b"", epoch_path: str | None = None):
        self.client = client
        self.path = path
        self.epoch_path = epoch_path or path + "_epoch"
        self.identifier = identifier
        self.epoch: int | None = None
        self._changed = threading.Event()
        self._watch = None

    @property
    def is_leader(self) -> bool:
        """Whether this contender holds the election as far as it knows: a suspended or lost
        session means it may not (the key goes when the session expires)."""
        from coordinator.client import CONNECTED
        return self.epoch is not None and self.client.state == CONNECTED

    def try_acquire(self) -> int | None:
        """One attempt. Returns the new epoch when this client now holds ``path``, else None."""
        while True:
            try:
                _, version = self.client.get(self.epoch_path)
            except NoNode:
                try:
                    self.client.create(self.epoch_path, b"0")
                except NodeExists:
                    pass
                continue
            try:
                self.client.multi([
                    Op.set(self.epoch_path, str(version + 1).encode(), version),
                    Op.create(self.path, self.identifier, ephemeral=True),
                ])
            except BadVersion:
                continue        # another contender bumped the epoch; look again
            except NodeExists:
                return self._held_already()
            self.epoch = version + 1
            return self.epoch

    def _held_already(self) -> int | None:
        """After a lost reply our own multi may have won: the holder key is then ours."""
        stat = self.client.exists(self.path)
        if stat is None or stat.ephemeral_owner != self.client.session_id:
            return None
        _, version = self.client.get(self.epoch_path)
        self.epoch = version
        return self.epoch

    def run(self, timeout_s: float | None = None) -> int:
        """Block until this client holds ``path``; return the epoch. TimeoutError after
        ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self._watch is None:
            self._watch = self.client.watch(self.path, self._on_change)
        while True:
            self._changed.clear()
            epoch = self.try_acquire()
            if epoch is not None:
                return epoch
            remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if remaining <= 0:
                raise TimeoutError(f"Did not win the election for {self.path} in time.")
            self._changed.wait(remaining)

    def _on_change(self, event: WatchEvent) -> None:
        if event.type in ("deleted", "resync"):
            self._changed.set()

    def fence(self) -> list:
        """An op for ``client.multi`` that passes only while this holder's epoch is current."""
        if self.epoch is None:
            raise RuntimeError("This contender does not hold the election.")
        return Op.fence(self.epoch_path, self.epoch)

    def holder(self) -> tuple[bytes, int] | None:
        """(identifier, epoch) of the current holder, or None."""
        try:
            value, _ = self.client.get(self.path)
            _, epoch = self.client.get(self.epoch_path)
        except NoNode:
            return None
        return value, epoch

    def resign(self) -> None:
        if self.epoch is None:
            return
        try:
            self.client.multi([self.fence(), Op.delete(self.path)])
        except Exception:
            pass
        self.epoch = None
