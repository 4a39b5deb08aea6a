"""The replication simulator in CI: a few hundred seeds of faults against the real replication
state machine, and proof that its checks catch a broken one."""

import os

import pytest

from tests.sim.cluster import InvariantBroken, run_seed
from zbroker import replication

SEEDS = int(os.environ.get("ZB_SIM_SEEDS", "300"))
WORKERS = min(2, os.cpu_count() or 1)      # seeds are independent: one process per core
FIRST_SEED = int(os.environ.get("ZB_SIM_FIRST_SEED", "0"))
SIM_S = 10.0


def _acked(seed: int) -> int:
    return len(run_seed(seed, SIM_S).checker.acks)  # raises InvariantBroken: seed and trace


@pytest.mark.timeout(300)
def test_every_invariant_holds_over_many_seeds():
    import multiprocessing
    seeds = range(FIRST_SEED, FIRST_SEED + SEEDS)
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        acked = sum(pool.imap_unordered(_acked, seeds, chunksize=4))
    print(f"{SEEDS} seeds, {acked} acknowledged records checked")
    assert acked > SEEDS * 10


def first_failure(seeds: int) -> str | None:
    for seed in range(seeds):
        try:
            run_seed(seed, SIM_S)
        except InvariantBroken as e:
            return str(e)
    return None


@pytest.mark.timeout(120)
def test_a_leader_that_does_not_wait_for_its_followers_is_caught(monkeypatch):
    real = replication.ReplicaCore._advance_high_watermark

    def eager(self, force=False):       # the HW at the leader's own log end: acks=1 in disguise
        if self.is_leader and self.log.log_end_offset > self.high_watermark:
            self.high_watermark = self.log.log_end_offset
            out = [replication.HighWatermarkMoved(self.high_watermark)]
            for t in [t for t, o in self._waits.items() if o <= self.high_watermark]:
                del self._waits[t]
                out.append(replication.ProduceDone(t, None))
            return out
        return real(self, force)
    monkeypatch.setattr(replication.ReplicaCore, "_advance_high_watermark", eager)
    failure = first_failure(40)
    assert failure is not None and "acknowledged value" in failure, failure


@pytest.mark.timeout(120)
def test_a_follower_that_never_truncates_is_caught(monkeypatch):
    monkeypatch.setattr(replication.ReplicaCore, "_truncate_to_shared",
                        lambda self, epoch, end, why: ([], True))
    failure = first_failure(40)
    assert failure is not None and ("converge" in failure or "committed" in failure), failure


@pytest.mark.timeout(120)
def test_a_leader_that_does_not_deduplicate_is_caught(monkeypatch):
    from zbroker.storage.producer_state import ProducerStateManager
    monkeypatch.setattr(ProducerStateManager, "check", lambda self, headers: [None] * len(headers))
    failure = first_failure(40)
    assert failure is not None and "more than once" in failure, failure
