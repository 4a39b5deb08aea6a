"""The partitioner: the exact key hash (pinned with golden values) and the sticky choice."""

import random

import pytest
import xxhash

from clients.partitioner import next_sticky_partition, partition_for_key

pytestmark = pytest.mark.timeout(10)


def test_key_hash_is_xxh32_seed_0_mod_partitions():
    # golden values: a change here re-routes every keyed record of every user
    assert xxhash.xxh32_intdigest(b"") == 0x02CC5D05
    assert xxhash.xxh32_intdigest(b"abc") == 0x32D153FF
    assert partition_for_key(b"abc", 6) == 0x32D153FF % 6 == 3
    assert partition_for_key(b"", 7) == 0x02CC5D05 % 7
    for key in (b"user-1", b"\x00\xff", b"x" * 1000):
        assert partition_for_key(key, 12) == xxhash.xxh32_intdigest(key, seed=0) % 12


def test_same_key_same_partition_and_keys_spread():
    counts = [0] * 6
    for i in range(6000):
        p = partition_for_key(b"key-%d" % i, 6)
        assert p == partition_for_key(b"key-%d" % i, 6)
        counts[p] += 1
    assert min(counts) > 800


def test_sticky_partition_changes_and_stays_in_range():
    rng = random.Random(7)
    assert next_sticky_partition(1, 0, rng) == 0
    prev = None
    for _ in range(200):
        p = next_sticky_partition(5, prev, rng)
        assert 0 <= p < 5 and p != prev
        prev = p
    assert next_sticky_partition(4, 9, rng) in range(4)
