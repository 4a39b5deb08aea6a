"""What every command-line tool shares: one-sentence errors, properties, logging setup."""

from __future__ import annotations

import argparse
import sys

from zbroker.errors import ZbError
from zbroker.logs import configure_logging


class UsageError(Exception):
    """A mistake on the command line: printed as one sentence, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose parsing mistakes (an unknown flag, a missing or malformed value) are one
    sentence on stderr and exit status 2, as ``run()`` prints a UsageError, instead of the
    usage text and a lower-case fragment."""

    def error(self, message: str):
        sentence = message[:1].upper() + message[1:]
        if not sentence.endswith("."):
            sentence += "."
        self.exit(2, f"{self.prog}: {sentence}\n")


def add_command_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--command-config", metavar="FILE",
                        help="client settings in a .properties file: security.protocol, "
                             "curve.secret.key.file, curve.server.key.file (Kafka's flag)")


def command_config_kwargs(args) -> dict:
    """The client keyword arguments ``--command-config`` names (none without it)."""
    from zbroker.security import SecurityError, command_config
    try:
        return command_config(getattr(args, "command_config", None))
    except SecurityError as e:
        raise UsageError(str(e)) from None


def parse_properties(items: list[str] | None, flag: str) -> dict[str, str]:
    """``["k=v", ...]`` -> dict (the value may hold '=' and spaces)."""
    out: dict[str, str] = {}
    for pair in items or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects key=value, not {pair!r}.")
        out[key.strip()] = value
    return out


def truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def unescape(value: str) -> str:
    """Kafka tools accept separators like ``\\t`` written as two characters."""
    return value.encode("utf-8").decode("unicode_escape")


def run(prog: str, parser: argparse.ArgumentParser, body, argv) -> int:
    """Parse ``argv``, run ``body(args)``, and turn every failure into one line on stderr."""
    args = parser.parse_args(argv)
    configure_logging(level="ERROR", json=False)
    try:
        return body(args) or 0
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except ZbError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except (ValueError, TimeoutError, OSError) as e:
        if isinstance(e, BrokenPipeError):
            return 1
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except NotImplementedError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
