"""Read the coordinator's clock and a key's stat, from wherever this runs (e.g. inside a test
host's network namespace).

    python -m tests.coordinator.helper_probe ADDRESS PATH [UNTIL_MS]

Writes the key /probe-clock until its mtime (the coordinator's clock, wall-clock ms) is at least
UNTIL_MS (default 0: once), then reads PATH, and prints one JSON line:
{"clock_ms": <that mtime>, "stat": <PATH's stat as a list, or null>}. Because the read comes
after the write, the stat is what PATH was at or after that moment on the coordinator's clock.
Exits 1 with a sentence when the clock does not get there within 30 seconds.
"""

import dataclasses
import json
import sys
import time

from coordinator.client import CoordinatorClient, NodeExists

CLOCK_KEY = "/probe-clock"


def main() -> int:
    address, path = sys.argv[1:3]
    until_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    c = CoordinatorClient(address, session_timeout_ms=10000)
    try:
        try:
            c.create(CLOCK_KEY)
        except NodeExists:
            pass
        deadline = time.monotonic() + 30
        while True:
            c.set(CLOCK_KEY, b"")
            clock_ms = c.exists(CLOCK_KEY).mtime_ms
            if clock_ms >= until_ms:
                break
            if time.monotonic() > deadline:
                print(f"the coordinator's clock did not reach {until_ms} within 30 s "
                      f"(it is at {clock_ms})", file=sys.stderr)
                return 1
            time.sleep(0.05)
        stat = c.exists(path)
        print(json.dumps({"clock_ms": clock_ms,
                          "stat": None if stat is None else list(dataclasses.astuple(stat))}))
        return 0
    finally:
        c.close()


if __name__ == "__main__":
    sys.exit(main())
