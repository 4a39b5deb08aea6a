"""Logging setup for zbroker's processes (servers and command-line tools).

Servers call ``configure_logging`` once at start: readable key=value lines on a terminal, JSON
lines otherwise (for files and log shippers). The client library never calls it: a user's program
keeps its own logging configuration (structlog's default prints to stdout only if nobody configured
it, so library code logs at debug through ``get_logger`` and stays quiet by default).
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", json: bool | None = None, **context) -> None:
    """Set up structlog for a server process. ``json=None`` picks JSON unless stderr is a tty.
    ``context`` (e.g. ``process="coordinator"``) is bound to every line."""
    if json is None:
        json = not sys.stderr.isatty()
    level_no = logging.getLevelName(level.upper())
    if not isinstance(level_no, int):
        level_no = logging.INFO
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(
        colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if context:
        structlog.contextvars.bind_contextvars(**context)


def get_logger(name: str):
    return structlog.get_logger(name)
