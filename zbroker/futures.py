"""A light future for request/response clients: the ``concurrent.futures.Future`` surface that
callers use (``result``, ``exception``, ``done``, ``add_done_callback``), at about a sixth of its
cost. A waiter blocks on a lock that completion releases; no Condition is built per future.
"""

from __future__ import annotations

import _thread
from typing import Any, Callable

from zbroker.logs import get_logger

log = get_logger("zbroker.futures")
_CALLBACKS = _thread.allocate_lock()    # guards every future's callback list (held briefly)


class Future:
    __slots__ = ("_lock", "_done", "_value", "_error", "_callbacks")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()            # released once, on completion
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[["Future"], Any]] | None = None

    def done(self) -> bool:
        return self._done

    def _wait(self, timeout: float | None) -> None:
        if self._done:
            return
        if not self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            raise TimeoutError("The result did not arrive in time.")
        self._lock.release()

    def result(self, timeout: float | None = None) -> Any:
        """The value, or raise the error; TimeoutError when not done within ``timeout``."""
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error

    def add_done_callback(self, fn: Callable[["Future"], Any]) -> None:
        """Call ``fn(future)`` on completion (at once, here, when already done)."""
        with _CALLBACKS:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        fn(self)

    def set_result(self, value: Any) -> None:
        self._value = value
        self._finish()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._finish()

    def _finish(self) -> None:
        with _CALLBACKS:
            if self._done:
                raise RuntimeError("A future can only be completed once.")
            self._done = True
            callbacks, self._callbacks = self._callbacks, None
        self._lock.release()
        if callbacks:
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:
                    log.exception("a future's done-callback raised")
