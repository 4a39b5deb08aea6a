"""Java-style ``.properties`` configuration, typed and validated, shared by every server.

A server declares its settings once as a ``ConfigDef`` (key, type, default, bounds, doc). Loading
reads a ``.properties`` file, applies ``--override key=value`` pairs on top, converts each value
to its type and checks its bounds. Every problem is a ``ConfigError`` whose text is one sentence
naming the key, so a start-up script can print it as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable


class ConfigError(Exception):
    """A configuration problem, described in one sentence."""


def load_properties(path: str) -> dict[str, str]:
    """Read a ``.properties`` file: ``key=value`` or ``key: value`` lines, ``#``/``!`` comments,
    a trailing backslash continues a line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"Cannot read the config file {path}: {e.strerror}.") from None
    return parse_properties(text, source=path)


def parse_properties(text: str, source: str = "<text>") -> dict[str, str]:
    props: dict[str, str] = {}
    pending = ""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#!":
            continue
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        for i, ch in enumerate(line):
            if ch in "=:":
                key, value = line[:i].strip(), line[i + 1:].strip()
                break
        else:
            raise ConfigError(f"Line {lineno} of {source} is not a key=value pair: {raw.strip()!r}.")
        if not key:
            raise ConfigError(f"Line {lineno} of {source} has an empty key.")
        props[key] = value
    return props


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` (from ``--override``) to a dict."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"The override {pair!r} is not of the form key=value.")
        out[key.strip()] = value.strip()
    return out


def _to_bool(s: str) -> bool:
    low = s.strip().lower()
    if low in ("true", "yes", "1", "on"):
        return True
    if low in ("false", "no", "0", "off"):
        return False
    raise ValueError(s)


def _to_list(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


_CONVERTERS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str, bool: _to_bool,
                                                 list: _to_list}
_TYPE_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false",
               list: "a comma-separated list"}


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    type: type
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None


class Config:
    """Typed values by key. ``cfg["tick.ms"]`` or ``cfg.tick_ms``."""

    def __init__(self, values: dict[str, Any]):
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name.replace("_", ".")]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


class ConfigDef:
    def __init__(self, settings: Iterable[Setting]):
        self.settings = {s.key: s for s in settings}

    def parse(self, props: dict[str, str], *, ignore_unknown: bool = False) -> Config:
        values: dict[str, Any] = {k: s.default for k, s in self.settings.items()}
        for key, raw in props.items():
            setting = self.settings.get(key)
            if setting is None:
                if ignore_unknown:
                    continue
                raise ConfigError(f"Unknown setting {key!r}; known settings are: "
                                  f"{', '.join(sorted(self.settings))}.")
            try:
                value = _CONVERTERS[setting.type](raw)
            except ValueError:
                raise ConfigError(f"The setting {key} must be {_TYPE_WORDS[setting.type]}, "
                                  f"not {raw!r}.") from None
            if setting.min is not None and value < setting.min:
                raise ConfigError(f"The setting {key} must be at least {setting.min:g}, not {raw}.")
            if setting.max is not None and value > setting.max:
                raise ConfigError(f"The setting {key} must be at most {setting.max:g}, not {raw}.")
            if setting.choices is not None and value not in setting.choices:
                raise ConfigError(f"The setting {key} must be one of "
                                  f"{', '.join(map(str, setting.choices))}, not {raw!r}.")
            values[key] = value
        return Config(values)

    def load(self, path: str | None, overrides: Iterable[str] = ()) -> Config:
        props = load_properties(path) if path else {}
        props.update(parse_overrides(overrides))
        return self.parse(props)

    def describe(self) -> str:
        """Every setting with its default and doc, for ``--help`` epilogues."""
        lines = []
        for s in self.settings.values():
            default = ",".join(s.default) if isinstance(s.default, list) else s.default
            lines.append(f"  {s.key} (default {default}): {s.doc}")
        return "\n".join(lines)


def server_arg_parser(prog: str, description: str, config_def: ConfigDef) -> argparse.ArgumentParser:
    """The command line every server shares: ``PROG [CONFIG] [--override key=value ...]``, with
    every setting, its default and its meaning in ``--help``."""
    p = argparse.ArgumentParser(
        prog=prog, description=description,
        epilog="Settings (set them in CONFIG or with --override):\n" + config_def.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="a .properties file (optional)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set a configuration key, overriding the file (repeatable)")
    return p
