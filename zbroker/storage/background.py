"""One worker thread per process for the storage work that must not stall an event loop:
fsync of a segment that was just rolled, and unlinking deleted segments.

Jobs get file descriptors they own (duplicates) and paths, never a segment object, so nothing the
loop thread does to a segment afterwards (closing, deleting) races with a job. A job's result is
reported through a callback that only sets plain attributes (safe under the GIL); the owner acts
on it on its own thread.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable

from zbroker.logs import get_logger

log = get_logger(__name__)

QUEUE_LENGTH_MAX = 10_000


class Job:
    def __init__(self, fds: list[int], unlink_paths: list[str], fsync_dir: str | None,
                 on_done: Callable[[], None] | None):
        self.fds, self.unlink_paths, self.fsync_dir, self.on_done = fds, unlink_paths, fsync_dir, on_done
        self.done = threading.Event()

    def run(self) -> None:
        try:
            for fd in self.fds:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self.fds = []
            for path in self.unlink_paths:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            if self.fsync_dir:
                dfd = os.open(self.fsync_dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            if self.on_done is not None:
                self.on_done()
        except OSError as e:
            log.error("storage_background_job_failed", error=str(e), paths=self.unlink_paths)
        finally:
            for fd in self.fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.done.set()


class Worker:
    def __init__(self):
        self._queue: queue.Queue[Job] = queue.Queue(QUEUE_LENGTH_MAX)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Job) -> Job:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="zb-storage-worker",
                                                daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:  # a backlog this long means the disk is far behind: do it here
            job.run()
        return job

    def _run(self) -> None:
        while True:
            self._queue.get().run()


_worker = Worker()


def submit(fds: list[int] = (), unlink_paths: list[str] = (), fsync_dir: str | None = None,
           on_done: Callable[[], None] | None = None) -> Job:
    return _worker.submit(Job(list(fds), list(unlink_paths), fsync_dir, on_done))
