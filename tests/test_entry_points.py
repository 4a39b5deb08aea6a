"""Every installed zb-* command answers --help (exit 0, a usage line naming itself) and turns a
bad command line into a usage error (exit 2, a sentence naming the tool), not a traceback. The list comes from pyproject.toml, so a
new tool is covered as soon as it is registered."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml (read by hand: tomllib is Python 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, re.M))


SCRIPTS = _scripts()
BIN = Path(sys.executable).parent


def test_the_script_list_was_read():
    assert {"zb-server-start", "zb-topics", "zb-consumer-groups"} <= set(SCRIPTS)

pytestmark = pytest.mark.timeout(60)


def test_every_entry_point_is_installed():
    missing = [name for name in SCRIPTS if not (BIN / name).exists()]
    assert not missing, f"not installed in {BIN}: {missing} (pip install -e .)"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help(name):
    r = subprocess.run([str(BIN / name), "--help"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.startswith("usage:") and name in out.splitlines()[0]
    assert b"Traceback" not in r.stderr


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_an_unknown_flag_is_a_usage_error(name):
    r = subprocess.run([str(BIN / name), "--no-such-flag"], capture_output=True, timeout=30)
    assert r.returncode == 2, r.stderr
    err = r.stderr.decode()
    assert "Traceback" not in err and f"{name}: " in err     # a sentence naming the tool
