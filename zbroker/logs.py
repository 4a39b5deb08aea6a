"""Logging for zbroker: structlog on top of the standard library's logging.

Every module logs through ``get_logger(name)``: a structlog logger whose lines go to the stdlib
logger ``name``. The client library never configures anything, so in a user's program its lines
follow the user's own logging setup (and stay silent below WARNING when there is none).

Server processes and tools call ``configure_logging`` once at start: one stderr handler on the
root logger that renders every line (ours and other libraries') as readable key=value text on a
terminal, or as JSON lines otherwise (for files and log shippers).
"""

from __future__ import annotations

import logging
import sys

import structlog

_PROCESSORS = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]


def get_logger(name: str):
    return structlog.wrap_logger(logging.getLogger(name), processors=_PROCESSORS,
                                 wrapper_class=structlog.stdlib.BoundLogger,
                                 cache_logger_on_first_use=True)


def configure_logging(level: str = "INFO", json: bool | None = None, **context) -> None:
    """Set up logging for a server process or tool. ``json=None`` picks JSON unless stderr is a
    terminal. ``context`` (e.g. ``process="coordinator"``) is bound to every line."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer = (structlog.processors.JSONRenderer() if json
                else structlog.dev.ConsoleRenderer(colors=False))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.stdlib.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)]))
    root = logging.getLogger()
    root.handlers = [handler]
    level_no = logging.getLevelName(level.upper())
    root.setLevel(level_no if isinstance(level_no, int) else logging.INFO)
    if context:
        structlog.contextvars.bind_contextvars(**context)
