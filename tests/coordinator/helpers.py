"""What the coordinator's process tests share: waiting for a condition, the coordinator's
start-up log line, its data files by transaction id."""

from __future__ import annotations

import json

from tests.procs import wait_until  # noqa: F401 (for the tests that import it from here)


def recovered_line(coord):
    """The fields of the 'recovered' line the coordinator logs at start-up (JSON lines), once it
    is there (it listens before it recovers)."""
    def find():
        for line in coord.proc.log_path.read_text(errors="replace").splitlines():
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            if isinstance(fields, dict) and fields.get("event") == "recovered":
                return fields
        assert coord.proc.popen.poll() is None, coord.proc.log_tail()
        return None
    return wait_until(find, 30, "the coordinator's 'recovered' log line")


def files_by_zxid(data_dir, prefix):
    """The transaction ids in the names of ``data_dir``'s complete files named ``prefix``<zxid>
    ("snapshot.", "txlog.")."""
    return sorted(int(p.name[len(prefix):]) for p in data_dir.iterdir()
                  if p.name.startswith(prefix) and p.name[len(prefix):].isdigit())
