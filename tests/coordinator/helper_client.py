"""A client in its own process, for tests that kill -9 a client.

    python -m tests.coordinator.helper_client ADDRESS ephemeral PATH TIMEOUT_MS
    python -m tests.coordinator.helper_client ADDRESS elect PATH TIMEOUT_MS NAME
"""

import sys
import time

from coordinator.client import CoordinatorClient
from coordinator.election import Election


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
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
