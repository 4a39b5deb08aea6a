"""Start real zbroker processes for tests, and always kill and reap them.

``Procs`` is handed out by the ``procs`` fixture. Every process started through it is killed
(SIGKILL) and reaped at teardown, whether the test passed or not, and its stderr is kept in a
file whose tail is printed when a start fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 15.0,
                  proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
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

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Procs:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.started: list[Proc] = []
        self._count = 0

    def start(self, name: str, args: list[str], env: dict | None = None,
              cwd: str | None = None) -> Proc:
        """Start ``python -m``-style ``args`` (a list passed to Popen as is)."""
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


class CoordinatorProc:
    """A real coordinator process on a free loopback port, restartable on the same data dir."""

    def __init__(self, procs: Procs, data_dir: Path, overrides: dict | None = None):
        self.procs = procs
        self.data_dir = data_dir
        self.port = free_port()
        self.overrides = {"tick.ms": "100", "min.session.timeout.ms": "200",
                          **(overrides or {})}
        self.proc: Proc | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        args = ["--override", f"listeners=tcp://127.0.0.1:{self.port}",
                "--override", f"data.dir={self.data_dir}"]
        for k, v in self.overrides.items():
            args += ["--override", f"{k}={v}"]
        return args

    def start(self) -> "CoordinatorProc":
        self.proc = self.procs.python("coordinator", "coordinator.server", *self.argv())
        try:
            wait_for_port(self.port, proc=self.proc.popen)
        except Exception as e:
            raise RuntimeError(f"coordinator did not start: {e}\n{self.proc.log_tail()}")
        return self

    def kill9(self) -> None:
        self.proc.kill9()

    def restart(self) -> "CoordinatorProc":
        if self.proc is not None and self.proc.popen.poll() is None:
            self.proc.kill9()
        return self.start()
