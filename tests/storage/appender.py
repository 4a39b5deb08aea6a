"""Child process for the kill -9 test: appends batches to a partition log in a loop and prints
``<base_offset> <last_offset>`` for each append once it returned (acknowledged), until killed.

Batch ``i`` of a run holds ``1 + i % 7`` records whose values are ``b"<run>-<i>-<j>"`` padded
to ``20 + 37 * (i % 9)`` bytes, so the parent can tell what every offset must hold.

    python -m tests.storage.appender <dir> <run>
"""

import sys

from zbroker.logs import configure_logging
from zbroker.records import BatchBuilder
from zbroker.storage import PartitionLog

CONFIG = {"segment.bytes": 30_000, "index.interval.bytes": 512}


def batch_values(run: int, i: int) -> list[bytes]:
    return [(b"%d-%d-%d|" % (run, i, j)).ljust(20 + 37 * (i % 9), b"x") for j in range(1 + i % 7)]


def main() -> None:
    configure_logging("WARNING", json=True)
    directory, run = sys.argv[1], int(sys.argv[2])
    log = PartitionLog(directory, CONFIG)
    out = sys.stdout
    out.write(f"open {log.log_end_offset}\n")
    out.flush()
    i = 0
    while True:
        b = BatchBuilder("zlib" if i % 5 == 0 else "none")
        for v in batch_values(run, i):
            b.append(v, timestamp_ms=1_000_000 + i)
        res = log.append(b.build(), leader_epoch=run)
        out.write(f"{res.base_offset} {res.last_offset}\n")
        out.flush()
        i += 1


if __name__ == "__main__":
    main()
