"""The broker loop's timer heap stays bounded whatever clients ask (no processes): fetches
answered before their wait ended leave the heap once it grows, and nothing live is lost."""

import heapq

import pytest

from zbroker.broker import config as broker_config
from zbroker.broker.server import TIMERS_COMPACT_MIN, BrokerServer, DelayedFetch

pytestmark = pytest.mark.timeout(30)


def test_answered_fetches_do_not_pile_up_in_the_timer_heap(tmp_path):
    cfg = broker_config.load(None, ["broker.id=1", f"log.dirs={tmp_path}"])
    server = BrokerServer(cfg)
    try:
        fired = []
        server._add_timer(3600, lambda: fired.append("live"))
        for i in range(20 * TIMERS_COMPACT_MIN):
            fetch = DelayedFetch(b"c", i, [], 1, 1)
            fetch.done = True                    # answered at once, its 60 s wait pending
            server._add_timer(60, server._complete_fetch, fetch)
            assert len(server._timers) <= 2 * TIMERS_COMPACT_MIN + 1
        assert any(t[2] is not server._complete_fetch for t in server._timers)
        server._timers = [(0.0, *t[1:]) for t in server._timers]   # every deadline passed
        heapq.heapify(server._timers)
        server._run_timers()
        assert fired == ["live"] and server._timers == []
    finally:
        server.ctx.term()
