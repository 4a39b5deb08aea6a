"""The broker's side of ACLs: watching ``/acls`` in the coordinator, and changing it (on the
controller).

``AclWatcher`` (a thread per coordinator session) reads the value again whenever the watch says
it changed, and every 30 s as a safety net, and hands the bindings to the loop, which builds a
new ``AclCache``; a request is checked against the cache the loop holds, never waiting on the
coordinator. Until the first read, the cache is empty: only super users are allowed anything.

``change_acls`` is the controller's read-modify-write of the one value, as a compare-and-set
on its version, tried again when another write came between.
"""

from __future__ import annotations

import threading
from typing import Callable

from coordinator.client import BadVersion, CoordinatorClient, NodeExists, Op
from zbroker import acl, errors, protocol
from zbroker.acl import AclBinding
from zbroker.errors import ZbError
from zbroker.logs import get_logger

log = get_logger(__name__)

RESYNC_S = 30.0
CAS_ATTEMPTS_MAX = 20


def read_acls(client: CoordinatorClient) -> tuple[list[AclBinding], int]:
    """The stored bindings and the value's version (-1: no value yet)."""
    try:
        raw, version = client.get(acl.ACL_PATH)
    except errors.NoNode:
        return [], -1
    bindings, bad = acl.decode(raw)
    if bad:
        log.warning("stored ACL entries that are not usable were skipped", count=bad)
    return bindings, version


class AclWatcher:
    def __init__(self, client: CoordinatorClient, publish: Callable[[list[AclBinding]], None]):
        self.client = client
        self.publish = publish
        self._dirty = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="acls", daemon=True)

    def start(self) -> None:
        self.client.watch(acl.ACL_PATH, lambda event: self._dirty.set())
        self._dirty.set()
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._dirty.set()
        self._thread.join(5)

    def _main(self) -> None:
        while not self._stopping:
            self._dirty.wait(RESYNC_S)
            if self._stopping:
                return
            self._dirty.clear()
            try:
                bindings, _ = read_acls(self.client)
            except ZbError as e:
                log.warning("reading the ACLs failed; retrying", error=str(e))
                self._dirty.set()
                threading.Event().wait(0.2)
                continue
            self.publish(bindings)


def change_acls(client: CoordinatorClient, fence: Callable[[], list] | None,
                change: Callable[[list[AclBinding]], list[AclBinding]]) -> list[AclBinding]:
    """Replace the stored bindings by ``change(stored)``; returns what was stored before. The
    write is fenced by the controller's epoch (``fence()``: a multi op) when given."""
    for _ in range(CAS_ATTEMPTS_MAX):
        before, version = read_acls(client)
        after = change(list(before))
        if len(set(after)) > acl.BINDINGS_MAX:
            raise errors.InvalidRequest(f"The cluster may hold at most {acl.BINDINGS_MAX} ACL "
                                         f"bindings.")
        if set(after) == set(before):
            return before
        value = acl.encode(after)
        op = Op.create(acl.ACL_PATH, value) if version == -1 else \
            Op.set(acl.ACL_PATH, value, version)
        try:
            client.multi([fence(), op] if fence is not None else [op])
            return before
        except (BadVersion, NodeExists):
            continue        # another change came between our read and our write
    raise errors.RequestTimedOut("The ACLs kept changing under this request; retry.")


def checked_list(entries, what: str) -> list:
    if not isinstance(entries, list) or len(entries) > protocol.ACLS_PER_REQUEST_MAX:
        raise errors.InvalidRequest(f"An ACL request may carry at most "
                                    f"{protocol.ACLS_PER_REQUEST_MAX} {what}.")
    return entries
