"""Test hosts in network namespaces: each host is a namespace with its own loopback, joined to
the others over veth pairs to a bridge that lives in a namespace of its own, so no traffic ever
touches the machine's real network. Needs root and iproute2; ``hosts_or_skip`` says why not.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def why_not_available() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = f"zbprobe{os.getpid()}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _remove_stale() -> None:
    """Delete test namespaces left by a test process that died before it could clean up."""
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"^zb(\d+)x\d+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _ip("netns", "del", name, check=False)


class Hosts:
    """``n`` hosts named h0..h{n-1} on one private subnet, each reachable at ``address(i)``."""

    def __init__(self, n: int):
        _remove_stale()
        self.tag = f"zb{os.getpid()}x{random.randrange(100)}"     # veth names stay <= 15 chars
        self.subnet = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
        self.switch = f"{self.tag}sw"
        self.names = [f"{self.tag}h{i}" for i in range(n)]
        self._created: list[str] = []
        try:
            self._build()
        except Exception:
            self.destroy()
            raise

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self._created.append(self.switch)
        self._in(self.switch, "link", "add", "br0", "type", "bridge")
        self._in(self.switch, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            _ip("netns", "add", ns)
            self._created.append(ns)
            self._in(ns, "link", "set", "lo", "up")
            host_end, switch_end = f"eth{i}", f"p{i}"
            _ip("link", "add", f"{self.tag}a{i}", "type", "veth", "peer", "name",
                f"{self.tag}b{i}")
            _ip("link", "set", f"{self.tag}a{i}", "netns", ns)
            _ip("link", "set", f"{self.tag}b{i}", "netns", self.switch)
            self._in(ns, "link", "set", f"{self.tag}a{i}", "name", host_end)
            self._in(self.switch, "link", "set", f"{self.tag}b{i}", "name", switch_end)
            self._in(ns, "addr", "add", f"{self.address(i)}/24", "dev", host_end)
            self._in(ns, "link", "set", host_end, "up")
            self._in(self.switch, "link", "set", switch_end, "master", "br0")
            self._in(self.switch, "link", "set", switch_end, "up")

    def _in(self, ns: str, *args: str) -> None:
        _ip("-n", ns, *args)

    def address(self, i: int) -> str:
        return f"{self.subnet}.{i + 1}"

    def command(self, i: int, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``i``."""
        return ["ip", "netns", "exec", self.names[i], *argv]

    def python(self, i: int, module: str, *args: str) -> list[str]:
        return self.command(i, [sys.executable, "-m", module, *args])

    def disconnect(self, i: int) -> None:
        """Cut host ``i`` off the network (its cable is pulled at the switch)."""
        self._in(self.switch, "link", "set", f"p{i}", "down")

    def reconnect(self, i: int) -> None:
        self._in(self.switch, "link", "set", f"p{i}", "up")

    def destroy(self) -> None:
        for ns in reversed(self._created):
            _ip("netns", "del", ns, check=False)
        self._created = []
