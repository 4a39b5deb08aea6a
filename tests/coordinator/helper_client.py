"""A client in its own process, for tests that kill -9 a client or the coordinator under it.

    python -m tests.coordinator.helper_client ADDRESS ephemeral PATH TIMEOUT_MS
    python -m tests.coordinator.helper_client ADDRESS elect PATH TIMEOUT_MS NAME
    python -m tests.coordinator.helper_client ADDRESS watch PREFIX TIMEOUT_MS

``watch`` prints ``WATCHING`` once its watch is registered, then one ``EVENT {json}`` line per
event (type, path, zxid, value); after a ``resync`` event it re-reads the prefix's children, as
the event asks, and prints ``READ {json}`` ({child: value}).
"""

import json
import sys
import time

from coordinator.client import CoordinatorClient
from coordinator.election import Election


def _text(value):
    return None if value is None else value.decode(errors="replace")


def main():
    address, mode, path, timeout_ms = sys.argv[1:5]
    c = CoordinatorClient(address, session_timeout_ms=int(timeout_ms))
    c.add_listener(lambda state: print(f"STATE {state}", flush=True))
    if mode == "ephemeral":
        c.create(path, b"held", ephemeral=True)
        print("CREATED", flush=True)
    elif mode == "elect":
        name = sys.argv[5].encode()
        election = Election(c, path, identifier=name)
        epoch = election.run()
        print(f"LEADER {epoch}", flush=True)
    elif mode == "watch":
        def on_event(e):        # on the client's callback thread, which may call the client
            print("EVENT " + json.dumps({"type": e.type, "path": e.path, "zxid": e.zxid,
                                         "value": _text(e.value)}), flush=True)
            if e.type == "resync":
                now = {child: _text(c.get(f"{path}/{child}")[0]) for child in c.children(path)}
                print("READ " + json.dumps(now), flush=True)
        c.watch(path, on_event)
        print("WATCHING", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
