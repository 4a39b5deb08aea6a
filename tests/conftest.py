import pytest

from tests.procs import Procs


@pytest.fixture
def procs(tmp_path):
    """Start real processes; all of them are killed with SIGKILL and reaped at teardown."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()
