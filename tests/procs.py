"""Start real zbroker processes for tests, and always kill and reap them.

``Procs`` is handed out by the ``procs`` fixture. Every process started through it is killed
(SIGKILL) and reaped at teardown, whether the test passed or not, and its stderr is kept in a
file whose tail is printed when a start fails.

Ports. ``free_port()`` hands out ports below the kernel's ephemeral range (so no outgoing
connection can take one as its local port between the check and the server's bind), never the
same one twice in a test session, from a slice of its own for each pytest-xdist worker,
checked free at that moment. Another process can still bind
one first (a concurrent test run, say), so ``CoordinatorProc`` and ``BrokerProc`` count a
server as started only once the process itself listens on its port (read from /proc, not just
"something answers there"), and when it exits because its address is in use: a first start on a
port of our choosing goes again on a fresh port (``PORT_ATTEMPTS`` times); a port that must be
kept (a restart after kill -9: clients and the coordinator know the address; or one the test
chose) is tried again for ``REBIND_S`` seconds.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PORT_ATTEMPTS = 5           # fresh ports a first start tries when it finds its port taken
REBIND_S = 20.0             # how long a restart keeps trying the address it must keep
REBIND_INTERVAL_S = 0.2     # between two such tries
ADDRESS_IN_USE = "is already in use"    # in the one sentence a server exits with (both kinds)

_handed_out: set[int] = set()       # every port free_port() returned in this test session
_random = random.Random()           # our own: tests that seed the module's generator don't
                                    # make two runs pick the same ports


def _port_range() -> tuple[int, int]:
    """[low, high) of ports to hand out: below the ephemeral range where it leaves room (the
    kernel gives ephemeral ports to outgoing connections and to bind(port 0)), else in it."""
    try:
        low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low = 32768
    if low - 20000 >= 2000:
        low, high = 20000, low
    else:
        low, high = 1024, 65536
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")        # gw0, gw1, ... under pytest -n
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        share = (high - low) // count       # each worker its own slice: no two pick one port
        low += int(worker[2:]) % count * share
        high = low + share
    return low, high


def _is_free(port: int) -> bool:
    """Nothing is bound to ``port`` on any IPv4 address (no SO_REUSEADDR: a port with
    connections in TIME_WAIT counts as taken, to be safe)."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """A TCP port (the first of ``count`` consecutive ones) that nothing is bound to right now
    and that no earlier call in this test session returned."""
    low, high = _port_range()
    for _ in range(2000):
        first = _random.randrange(low, high - count + 1)
        ports = range(first, first + count)
        if any(p in _handed_out for p in ports):
            continue
        if all(_is_free(p) for p in ports):
            _handed_out.update(ports)
            return first
    raise RuntimeError(f"no {count} free consecutive ports in [{low}, {high}) after 2000 tries")


def listening_ports(pid: int) -> set[int] | None:
    """The TCP ports that process ``pid`` itself listens on (its sockets in /proc, in its own
    network namespace); None where /proc cannot tell (gone, or no /proc)."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
        ports = set()
        for table in ("tcp", "tcp6"):
            try:
                lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except FileNotFoundError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:   # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports
    except OSError:
        return None


class ProcessExited(RuntimeError):
    """A process being waited for exited first."""


def wait_until(predicate, timeout_s: float, what: str):
    """Poll ``predicate()`` until it returns something truthy, and return that; fail after
    ``timeout_s`` seconds, naming ``what``. (One helper for every test's bounded wait.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what} ({timeout_s} s)"
        time.sleep(0.05)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 15.0,
                  proc: subprocess.Popen | None = None) -> None:
    """Until something listens on ``host:port``; with ``proc``, until that process itself does
    (so another process on the same port is not taken for it), raising ProcessExited if it
    exits first."""
    deadline = time.monotonic() + timeout_s
    by_proc = proc is not None and os.path.isdir("/proc/self/fd")
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"process exited with {proc.returncode} before listening on "
                                f"{port}")
        if by_proc:
            if port in (listening_ports(proc.pid) or ()):
                return
        else:
            try:
                with socket.create_connection((host, port), timeout=0.2):
                    return
            except OSError:
                pass
        time.sleep(0.02)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s}s")


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path, args: list[str]):
        self.name, self.popen, self.log_path, self.args = name, popen, log_path, args

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill9(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout_s: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    @property
    def exited_address_in_use(self) -> bool:
        """It exited, saying its listening address is taken."""
        return self.popen.poll() is not None and ADDRESS_IN_USE in self.log_text()


class Procs:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.started: list[Proc] = []
        self._count = 0
        self._cleaned_up = False

    def start(self, name: str, args: list[str], env: dict | None = None,
              cwd: str | None = None) -> Proc:
        """Start ``python -m``-style ``args`` (a list passed to Popen as is)."""
        if self._cleaned_up:    # (a test's thread, late): nothing would kill it
            raise RuntimeError(f"not starting {name}: the test's processes were cleaned up")
        self._count += 1
        log_path = self.tmp / f"{name}-{self._count}.log"
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        log = open(log_path, "wb")
        popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                 cwd=cwd, stdin=subprocess.DEVNULL)
        log.close()
        proc = Proc(name, popen, log_path, args)
        self.started.append(proc)
        return proc

    def python(self, name: str, module: str, *argv: str, env: dict | None = None) -> Proc:
        return self.start(name, [sys.executable, "-m", module, *argv], env=env)

    def cleanup(self) -> None:
        self._cleaned_up = True
        for p in self.started:
            if p.popen.poll() is None:
                try:
                    p.popen.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.started:
            try:
                p.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass


class _Server:
    """What CoordinatorProc and BrokerProc share: a port of their own, and a start-up that
    survives finding it taken (see the module's docstring)."""

    proc: Proc | None

    def __init__(self, port: int | None):
        self._port = port or free_port()
        self._pinned = port is not None     # the port must be kept: given, or served on

    @property
    def port(self) -> int:
        return self._port

    @port.setter
    def port(self, value: int) -> None:
        self._port, self._pinned = value, True

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self) -> Proc:
        raise NotImplementedError

    def _wait_serving(self, timeout_s: float) -> None:
        """Until the process serves on its port; raises if it exits or the time runs out."""
        raise NotImplementedError

    def _until_serving(self, timeout_s: float) -> None:
        """Wait for ``self.proc`` to serve; while it exits because its address is in use, start
        it again: on a fresh port if the port is ours to change, else on the same one for up to
        REBIND_S seconds."""
        fresh_left = PORT_ATTEMPTS
        rebind_until = time.monotonic() + REBIND_S
        while True:
            try:
                self._wait_serving(timeout_s)
                self._pinned = True
                return
            except Exception:
                if not self.proc.exited_address_in_use:
                    raise
                if not self._pinned and fresh_left > 0:
                    fresh_left -= 1
                    self._port = free_port()
                elif self._pinned and time.monotonic() < rebind_until:
                    time.sleep(REBIND_INTERVAL_S)       # a retry interval, not a check
                else:
                    raise
            self.proc = self._spawn()


class CoordinatorProc(_Server):
    """A real coordinator process on a free loopback port, restartable on the same data dir
    (and the same port)."""

    def __init__(self, procs: Procs, data_dir: Path, overrides: dict | None = None,
                 port: int | None = None):
        super().__init__(port)
        self.procs = procs
        self.data_dir = data_dir
        self.overrides = {"tick.ms": "100", "min.session.timeout.ms": "200",
                          **(overrides or {})}
        self.proc: Proc | None = None

    def argv(self) -> list[str]:
        args = ["--override", f"listeners=tcp://127.0.0.1:{self.port}",
                "--override", f"data.dir={self.data_dir}"]
        for k, v in self.overrides.items():
            args += ["--override", f"{k}={v}"]
        return args

    def _spawn(self) -> Proc:
        return self.procs.python("coordinator", "coordinator.server", *self.argv())

    def _wait_serving(self, timeout_s: float) -> None:
        wait_for_port(self.port, timeout_s=timeout_s, proc=self.proc.popen)

    def start(self, timeout_s: float = 15.0) -> "CoordinatorProc":
        self.proc = self._spawn()
        try:
            self._until_serving(timeout_s)
        except Exception as e:
            raise RuntimeError(f"coordinator did not start: {e}\n{self.proc.log_tail()}")
        return self

    def kill9(self) -> None:
        self.proc.kill9()

    def restart(self) -> "CoordinatorProc":
        if self.proc is not None and self.proc.popen.poll() is None:
            self.proc.kill9()
        return self.start()


class Ensemble:
    """``n`` coordinator processes forming one ensemble on loopback (``coordinator.id`` and
    ``server.N`` lines with free peer ports), each restartable on its own data dir and ports."""

    def __init__(self, procs: Procs, tmp: Path, n: int = 3, overrides: dict | None = None):
        peer_ports = {i: free_port() for i in range(1, n + 1)}
        servers = {f"server.{i}": f"127.0.0.1:{p}" for i, p in peer_ports.items()}
        self.members = {i: CoordinatorProc(procs, tmp / f"coordinator-{i}", {
            "coordinator.id": str(i), **servers, **(overrides or {})})
            for i in range(1, n + 1)}
        self.peer_ports = peer_ports

    def start(self) -> "Ensemble":
        for m in self.members.values():
            m.start()
        return self

    @property
    def address(self) -> str:
        return ",".join(m.address for m in self.members.values())

    def member(self, i: int) -> CoordinatorProc:
        return self.members[i]

    def leader_id(self, timeout_s: float = 15.0) -> int:
        """The member that leads, from the members' own logs ('serving as leader' in the
        newest term); waits until one serves."""
        import json

        def find():
            best = None
            for i, m in self.members.items():
                if m.proc is None or m.proc.popen.poll() is not None:
                    continue
                for line in m.proc.log_path.read_text(errors="replace").splitlines():
                    if '"serving as leader"' not in line:
                        continue
                    try:
                        term = json.loads(line)["term"]
                    except (ValueError, KeyError):
                        continue
                    if best is None or term > best[0]:
                        best = (term, i)
            return best
        return wait_until(find, timeout_s, "an ensemble leader")[1]


def broker_request(port: int, api: str, timeout_s: float = 5.0, blobs: list | None = None,
                   security=None, **fields) -> tuple[dict, list[bytes]]:
    """One request to a broker over a fresh DEALER socket (with ``security``, a
    zbroker.security.ClientSecurity, for a CURVE broker); returns (header, blobs)."""
    import zmq

    from zbroker import protocol
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if security is not None:
        security.apply(sock)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send_multipart(protocol.encode_request(api, 1, blobs, **fields))
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"broker on port {port} did not answer {api} in {timeout_s}s")
        return protocol.decode_response(sock.recv_multipart())
    finally:
        sock.close(0)


class BrokerProc(_Server):
    """A real broker process on a free loopback port with its own log dir; restartable on the
    same port and log dir (as the same broker id)."""

    def __init__(self, procs: Procs, broker_id: int, coordinator: str, log_dir: Path,
                 overrides: dict | None = None, port: int | None = None):
        super().__init__(port)
        self.procs = procs
        self.broker_id = broker_id
        self.coordinator = coordinator
        self.log_dir = Path(log_dir)
        self.overrides = {"coordinator.session.timeout.ms": "2000", **(overrides or {})}
        self.proc: Proc | None = None
        self.security = None        # a ClientSecurity for the tests' own requests (CURVE)

    def argv(self) -> list[str]:
        settings = {"broker.id": str(self.broker_id),
                    "listeners": f"tcp://127.0.0.1:{self.port}",
                    "log.dirs": str(self.log_dir),
                    "coordinator.connect": self.coordinator,
                    **self.overrides}
        args: list[str] = []
        for k, v in settings.items():
            args += ["--override", f"{k}={v}"]
        return args

    def _spawn(self) -> Proc:
        return self.procs.python(f"broker{self.broker_id}", "zbroker.broker.server",
                                 *self.argv())

    def start(self, wait: bool = True, timeout_s: float = 20.0) -> "BrokerProc":
        """Start; with ``wait``, return once the broker answers Metadata listing itself and a
        controller. (Without, ``wait_ready`` does that later, starting it again if its port
        was taken.)"""
        self.proc = self._spawn()
        if wait:
            try:
                self.wait_ready(timeout_s)
            except Exception as e:
                raise RuntimeError(f"broker {self.broker_id} did not start: {e}\n"
                                   f"{self.proc.log_tail()}") from None
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        self._until_serving(timeout_s)

    def _wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        wait_for_port(self.port, timeout_s=timeout_s, proc=self.proc.popen)
        while True:
            if self.proc.popen.poll() is not None:
                raise ProcessExited(f"exited with {self.proc.popen.returncode}")
            try:
                header, _ = broker_request(self.port, "Metadata", timeout_s=1.0, topics=[],
                                           security=self.security)
                if any(b[0] == self.broker_id for b in header.get("brokers", ())) and \
                        header.get("controller_id", -1) >= 0:
                    return
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"not registered within {timeout_s}s")
            time.sleep(0.05)

    def metadata(self, topics: list | None = None, **fields) -> dict:
        header, _ = broker_request(self.port, "Metadata", topics=topics,
                                   security=self.security, **fields)
        return header

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def kill9(self) -> None:
        self.proc.kill9()

    def terminate(self, timeout_s: float = 15.0) -> int:
        return self.proc.terminate(timeout_s)

    def restart(self, wait: bool = True) -> "BrokerProc":
        if self.alive:
            self.proc.kill9()
        return self.start(wait)


class Cluster:
    """A coordinator and n brokers (ids 1..n), all real processes. ``bootstrap`` is
    "127.0.0.1:p1,127.0.0.1:p2,..."."""

    def __init__(self, coordinator: CoordinatorProc, brokers: list[BrokerProc]):
        self.coordinator = coordinator
        self.brokers = brokers

    @classmethod
    def start(cls, procs: Procs, root: Path, settings: dict, n: int = 3,
              ready_s: float = 20.0) -> "Cluster":
        """A coordinator (``root``/coordinator) and brokers 1..n (``root``/broker<i>) with
        ``settings``, started together; returns once every broker sees every other and a
        controller (each broker within ``ready_s``)."""
        coord = CoordinatorProc(procs, root / "coordinator").start()
        brokers = [BrokerProc(procs, i, coord.address, root / f"broker{i}", settings)
                   for i in range(1, n + 1)]
        for b in brokers:
            b.start(wait=False)
        for b in brokers:
            b.wait_ready(ready_s)
        cluster = cls(coord, brokers)
        cluster.wait_ready()
        return cluster

    @classmethod
    def of(cls, coordinator, brokers: list[BrokerProc]) -> "Cluster":
        """Start ``brokers`` (made by the caller, with settings of their own) together; returns
        once every broker sees every other and a controller."""
        for b in brokers:
            b.start(wait=False)
        for b in brokers:
            b.wait_ready()
        cluster = cls(coordinator, brokers)
        cluster.wait_ready()
        return cluster

    @property
    def bootstrap(self) -> str:
        return ",".join(b.address for b in self.brokers)

    def broker(self, broker_id: int) -> BrokerProc:
        return next(b for b in self.brokers if b.broker_id == broker_id)

    def live_brokers(self) -> list[BrokerProc]:
        return [b for b in self.brokers if b.alive]

    def metadata(self, topics: list | None = None, via: BrokerProc | None = None,
                 **fields) -> dict:
        b = via or self.live_brokers()[0]
        return b.metadata(topics, **fields)

    def controller_id(self) -> int:
        return self.metadata([])["controller_id"]

    def wait_for(self, predicate, timeout_s: float = 15.0, what: str = "the condition"):
        """Poll ``predicate()`` until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                got = predicate()
            except (TimeoutError, OSError):
                got = None
            if got:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not happen within {timeout_s}s")
            time.sleep(0.05)

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Until every live broker lists every live broker and names a controller."""
        ids = {b.broker_id for b in self.live_brokers()}

        def ready():
            for b in self.live_brokers():
                md = b.metadata([])
                if {x[0] for x in md["brokers"]} != ids or md["controller_id"] not in ids:
                    return False
            return True
        self.wait_for(ready, timeout_s, "cluster start-up")

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                     config: dict | None = None, timeout_s: float = 15.0) -> list:
        """CreateTopics at the controller; waits until every live broker's metadata shows the
        topic with a leader for each partition. Returns the topic's Metadata partitions."""
        def attempt():
            cid = self.controller_id()
            if cid < 0:
                return None
            header, _ = broker_request(self.broker(cid).port, "CreateTopics",
                                       security=self.broker(cid).security,
                                       topics=[[name, partitions, replication_factor,
                                                config or {}, None]], timeout_ms=10000)
            if header["err"]:
                return None         # e.g. NOT_CONTROLLER during a change: ask again
            return header["topics"][0]
        result = self.wait_for(attempt, timeout_s, f"creating {name}")
        if result[1] != 0:
            raise RuntimeError(f"CreateTopics {name}: {result}")
        return self.wait_topic(name, partitions, timeout_s)

    def wait_topic(self, name: str, partitions: int, timeout_s: float = 15.0) -> list:
        def seen():
            parts = None
            for b in self.live_brokers():
                md = b.metadata([name], allow_auto_create=False)
                t = md["topics"][0]
                if t[1] != 0 or len(t[3]) != partitions or any(p[2] < 0 for p in t[3]):
                    return None
                parts = t[3]
            return parts
        return self.wait_for(seen, timeout_s, f"topic {name} in every broker's metadata")
