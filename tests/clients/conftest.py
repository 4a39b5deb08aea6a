import pytest

from tests.clients.fake_broker import FakeBroker


@pytest.fixture
def fake_broker():
    """An in-process fake broker with topics t (3 partitions) and one (1 partition)."""
    fb = FakeBroker(topics={"t": 3, "one": 1})
    try:
        yield fb
    finally:
        fb.close()
