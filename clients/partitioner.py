"""How the producer picks a partition.

* A record with a key goes to ``xxhash.xxh32_intdigest(key, seed=0) % num_partitions``: the
  32-bit xxHash (XXH32) of the key's bytes, seed 0, as an unsigned integer, modulo the topic's
  partition count at the time of sending. Records with one key therefore stay in one partition
  (and in order) as long as the partition count does not change.
* A record without a key goes to the topic's *sticky* partition: one partition is used until the
  batch being filled for it is sent, then another is picked at random (Kafka's sticky
  partitioner, KIP-480), so keyless records make full batches instead of many small ones.
* An explicit ``partition=`` always wins.
"""

from __future__ import annotations

import random

import xxhash

xxh32 = xxhash.xxh32_intdigest


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition of a keyed record: ``xxh32(key, seed=0) % num_partitions``."""
    return xxh32(key) % num_partitions


def next_sticky_partition(num_partitions: int, previous: int | None,
                          rng: random.Random | None = None) -> int:
    """A partition for the next keyless batch: random, and different from ``previous`` when the
    topic has more than one partition."""
    r = rng or random
    if num_partitions <= 1:
        return 0
    if previous is None or not 0 <= previous < num_partitions:
        return r.randrange(num_partitions)
    p = r.randrange(num_partitions - 1)
    return p if p < previous else p + 1


__all__ = ["partition_for_key", "next_sticky_partition"]
