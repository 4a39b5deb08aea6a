"""Cleaning up after deploy-script tests: the scripts start processes that are not children of
the test (nohup'd through bash), so the tests find them by their pidfiles, and must never signal
a pid the system has since given to someone else."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def ours(run_dir: Path) -> dict[int, str]:
    """{pid: command line} of the processes the pidfiles in ``run_dir`` name that still run and
    are ours: their command line names ``run_dir``'s data directory."""
    out = {}
    marker = str(run_dir.parent)
    for pidfile in run_dir.glob("*.pid"):
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        line = cmdline(pid)
        if alive(pid) and marker in line:
            out[pid] = line
    return out


def kill_and_wait(run_dir: Path, timeout_s: float = 10.0) -> None:
    """SIGKILL every process of ours in ``run_dir`` and wait until each is gone; raise if one
    is not."""
    pids = ours(run_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes did not die: {[p for p in pids if alive(p)]}")
        time.sleep(0.05)
