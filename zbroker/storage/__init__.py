"""Partition log storage: segments of record batches on disk, their indexes, recovery,
retention and the checkpoints that live beside a log. See log.py for the design."""

from zbroker.storage.checkpoints import (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET,
                                         LeaderEpochCache, OffsetCheckpoint)
from zbroker.storage.log import LOG_CONFIG, AppendResult, PartitionLog, log_config

__all__ = ["PartitionLog", "AppendResult", "LOG_CONFIG", "log_config", "LeaderEpochCache",
           "OffsetCheckpoint", "UNDEFINED_EPOCH", "UNDEFINED_EPOCH_OFFSET"]
