import pytest

from tests.procs import CoordinatorProc, Procs


@pytest.fixture
def procs(tmp_path):
    """Start real processes; all of them are killed with SIGKILL and reaped at teardown."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def coordinator(procs, tmp_path):
    """A running coordinator process (tick 100 ms) with its own data directory."""
    return CoordinatorProc(procs, tmp_path / "coordinator-data").start()


@pytest.fixture
def coordinator_client(coordinator):
    from coordinator.client import CoordinatorClient
    c = CoordinatorClient(coordinator.address, session_timeout_ms=4000)
    try:
        yield c
    finally:
        c.close()
