"""The partition logs this broker hosts, opened and closed as the metadata image says.

A broker opens the log of every partition it holds a replica of
(``<log.dir>/<topic>-<partition>``), as leader or follower as the partition state says, and
closes the ones it no longer holds; when a topic is deleted it deletes that topic's directories.
Each partition directory holds a ``partition.metadata`` file naming the topic id, so a directory
left behind by a deleted topic (say its broker was down during the delete) is recognised and
wiped when a new topic of the same name lands on it, instead of resurrecting old records.

Owned by the loop thread. Directory deletion (rename first, then remove) runs on a worker thread.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading

from zbroker import errors
from zbroker.broker import metadata as md
from zbroker.broker.config import topic_log_config, topic_min_insync_replicas
from zbroker.logs import get_logger
from zbroker.replication import ReplicaCore, Role
from zbroker.storage import PartitionLog
from zbroker.storage.checkpoints import (REPLICATION_OFFSET_CHECKPOINT, CheckpointWriter,
                                         encode_partition_offsets, read_partition_offsets)

log = get_logger("zbroker.broker.replicas")

PARTITION_METADATA = "partition.metadata"
LOCK_FILE = ".lock"
DELETE_SUFFIX = "-delete"


class StartupError(Exception):
    """The broker cannot start; the text is one sentence for the operator."""


class Partition:
    """A partition this broker holds a replica of: its log, its replication state machine
    (``core``, zbroker/replication.py, which decides everything about roles, the ISR and the
    high watermark) and what the transport parks on it (delayed fetches)."""

    __slots__ = ("topic", "partition", "topic_id", "log", "core", "waiters", "hw_waiters")

    def __init__(self, topic: str, partition: int, topic_id: str, log_: PartitionLog,
                 broker_id: int):
        self.topic, self.partition, self.topic_id = topic, partition, topic_id
        self.log = log_
        self.core = ReplicaCore(broker_id, log_, f"{topic}-{partition}")
        self.waiters: list = []         # delayed follower fetches waiting for data here
        self.hw_waiters: list = []      # delayed consumer fetches waiting for the HW to move

    # read-only views of the core's state, for the transport and the group coordinator
    is_leader = property(lambda self: self.core.role is Role.LEADER)
    leader_id = property(lambda self: self.core.leader_id)
    leader_epoch = property(lambda self: self.core.leader_epoch)
    high_watermark = property(lambda self: self.core.high_watermark)
    isr = property(lambda self: self.core.isr)
    replicas = property(lambda self: self.core.replicas)
    min_insync_replicas = property(lambda self: self.core.min_insync_replicas)


class ReplicaManager:
    def __init__(self, broker_id: int, log_dirs: list[str], log_defaults: dict, cfg=None):
        self.broker_id = broker_id
        self.cfg = cfg
        self.lag_max_s = (cfg["replica.lag.time.max.ms"] / 1000) if cfg is not None else 30.0
        self.log_dirs = [os.path.abspath(d) for d in log_dirs]
        self.log_defaults = log_defaults
        self.partitions: dict[tuple[str, int], Partition] = {}
        self._lock_fds: list[int] = []
        self._writer = CheckpointWriter()
        self._checkpointed: dict[str, bytes] = {}       # log dir -> the content last handed over
        self.hw_changed = True          # since the last checkpoint (set by the transport too)
        self._timed_flush: list | None = None       # partitions with flush.ms set (None: redo)
        self._hw_at_start: dict[tuple[str, int], int] = {}

    # --- start-up -------------------------------------------------------------------------------
    def lock_dirs(self) -> None:
        for d in self.log_dirs:
            try:
                os.makedirs(d, exist_ok=True)
                fd = os.open(os.path.join(d, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise StartupError(f"The log directory {d} is not usable: {e.strerror}.")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise StartupError(f"Another broker is already using the log directory {d}.")
            self._lock_fds.append(fd)
            probe = os.path.join(d, ".write-probe")
            try:
                with open(probe, "wb") as f:
                    f.write(b"ok")
                os.unlink(probe)
            except OSError as e:
                raise StartupError(f"The log directory {d} is not writable: {e.strerror}.")
            for name in os.listdir(d):        # deletions a crash interrupted
                if name.endswith(DELETE_SUFFIX):
                    shutil.rmtree(os.path.join(d, name), ignore_errors=True)
            self._hw_at_start.update(
                read_partition_offsets(os.path.join(d, REPLICATION_OFFSET_CHECKPOINT)))

    # --- following the metadata -------------------------------------------------------------------
    def apply_image(self, image: md.ClusterImage, now_s: float, changed=None):
        """Open logs of partitions this broker now holds, close the others, delete the logs of
        deleted topics, and give each partition's state machine its new state. Returns
        (partitions that became leader in a new epoch, that became followers in a new epoch,
        closed, [(partition, effect)] for the transport to carry out). ``changed``: when only
        the states of these partitions differ from the last image applied, only they are
        looked at (an image after an ISR change need not visit 10,000 partitions)."""
        leaders, followers, closed, effects = [], [], [], []
        me = self.broker_id
        self.hw_changed = True
        epochs = {b: info.epoch for b, info in image.brokers.items()}
        if changed is not None:
            for key in changed:
                st = image.partition(*key)
                if st is not None and me in st.replicas:
                    self._apply_state(image.topics[key[0]], st, epochs, image, now_s,
                                      leaders, followers, effects)
            return leaders, followers, closed, effects
        self._timed_flush = None
        for key, part in list(self.partitions.items()):
            t = image.topics.get(part.topic)
            st = image.partition(*key)
            if t is None or t.topic_id != part.topic_id or st is None or me not in st.replicas:
                effects.extend((part, e) for e in part.core.stop())
                self._close(key)
                closed.append(part)
                if t is None or t.topic_id != part.topic_id:
                    self._delete_dir(part.log.dir)
        for t in image.topics.values():
            for st in t.partitions:
                if st is None or me not in st.replicas:
                    continue
                self._apply_state(t, st, epochs, image, now_s, leaders, followers, effects)
        return leaders, followers, closed, effects

    def _apply_state(self, t: md.TopicImage, st: md.PartitionState, epochs: dict, image,
                     now_s: float, leaders: list, followers: list, effects: list) -> None:
        key = (t.name, st.partition)
        part = self.partitions.get(key)
        if part is None:
            try:
                part = self._open(t, st)
            except Exception as e:
                log.error("cannot open partition log", topic=t.name, partition=st.partition,
                          error=str(e))
                return
            self.partitions[key] = part
            self._timed_flush = None
        core = part.core
        core.min_insync_replicas = topic_min_insync_replicas(self.cfg, t.config)
        core.lag_max_s = self.lag_max_s
        core.set_broker_epochs(epochs, image.shutting_down)
        before = (core.role, core.leader_epoch)
        effects.extend((part, e) for e in core.on_partition_state(st, now_s))
        if (core.role, core.leader_epoch) == before:
            return
        if core.is_leader:
            leaders.append(part)
            log.info("leading partition", topic=t.name, partition=st.partition,
                     leader_epoch=st.leader_epoch, isr=list(st.isr),
                     log_end_offset=part.log.log_end_offset)
        else:
            followers.append(part)
            log.info("following partition", topic=t.name, partition=st.partition,
                     leader=st.leader, leader_epoch=st.leader_epoch,
                     log_end_offset=part.log.log_end_offset)

    def _find_dir(self, name: str) -> str:
        for d in self.log_dirs:
            path = os.path.join(d, name)
            if os.path.isdir(path):
                return path
        counts = []
        for d in self.log_dirs:
            try:
                counts.append((len(os.listdir(d)), d))
            except OSError:
                counts.append((1 << 30, d))
        return os.path.join(min(counts)[1], name)

    def _open(self, t: md.TopicImage, st: md.PartitionState) -> Partition:
        path = self._find_dir(f"{t.name}-{st.partition}")
        meta = os.path.join(path, PARTITION_METADATA)
        try:
            with open(meta, encoding="utf-8") as f:
                found = f.read().strip().removeprefix("topic_id: ")
        except FileNotFoundError:
            found = None
        if found is not None and found != t.topic_id:
            log.info("wiping the log of an earlier topic of the same name", dir=path)
            self._delete_dir(path)
            found = None
        plog = PartitionLog(path, topic_log_config(self.log_defaults, t.config),
                            checkpoint_writer=self._writer)
        if found is None:
            tmp = meta + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"topic_id: {t.topic_id}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, meta)
        part = Partition(t.name, st.partition, t.topic_id, plog, self.broker_id)
        hw = self._hw_at_start.pop((t.name, st.partition), None)
        if hw is not None and found is not None:        # (the partition's own file otherwise)
            part.core.high_watermark = max(plog.log_start_offset, min(hw, plog.log_end_offset))
        return part

    def _close(self, key) -> None:
        part = self.partitions.pop(key)
        try:
            part.log.close()
        except Exception as e:
            log.error("closing a partition log failed", dir=part.log.dir, error=str(e))

    def _delete_dir(self, path: str) -> None:
        if not os.path.isdir(path):
            return
        doomed = f"{path}.{os.urandom(4).hex()}{DELETE_SUFFIX}"
        try:
            os.rename(path, doomed)
        except OSError as e:
            log.error("cannot delete a partition log", dir=path, error=str(e))
            return
        log.info("deleting partition log", dir=path)
        threading.Thread(target=shutil.rmtree, args=(doomed,), kwargs={"ignore_errors": True},
                         daemon=True).start()

    # --- periodic -------------------------------------------------------------------------------
    def run_retention(self) -> list:
        """Each partition's retention on its own: one that fails (a file it cannot delete, a bug)
        is logged and the others still run; the next round tries it again. Returns the
        partitions whose log start moved."""
        moved = []
        for part in list(self.partitions.values()):
            try:
                start = part.log.log_start_offset
                part.log.apply_retention(high_watermark=part.high_watermark)
                if part.log.log_start_offset != start:
                    moved.append(part)
            except (OSError, errors.ZbError) as e:
                log.error("retention failed", dir=part.log.dir, error=str(e))
            except Exception:
                log.exception("retention failed", dir=part.log.dir)
        if moved:
            self.hw_changed = True
        return moved

    def maybe_flush(self) -> None:
        """``flush.ms``: only partitions that have it set are looked at."""
        if self._timed_flush is None:
            self._timed_flush = [p for p in self.partitions.values() if p.log.timed_flush]
        for part in self._timed_flush:
            part.log.maybe_flush()

    def checkpoint_high_watermarks(self, wait: bool = False) -> None:
        """Every partition's high watermark, one file per log directory, written by the
        checkpoint thread (the loop only builds the text, and only when a high watermark, a log
        end or start or the partitions may have changed). ``wait``: until it is on disk."""
        if not self.hw_changed and not wait:
            return
        self.hw_changed = False
        by_dir: dict[str, dict] = {d: {} for d in self.log_dirs}
        for (topic, p), part in self.partitions.items():
            hw = max(part.log.log_start_offset, min(part.high_watermark, part.log.log_end_offset))
            by_dir.setdefault(os.path.dirname(part.log.dir), {})[(topic, p)] = hw
        for d, offsets in by_dir.items():
            data = encode_partition_offsets(offsets)
            if self._checkpointed.get(d) != data:
                self._checkpointed[d] = data
                self._writer.write(os.path.join(d, REPLICATION_OFFSET_CHECKPOINT), data)
        if wait and not self._writer.flush():
            log.error("high watermark checkpoints not written within 10 s")

    def close_all(self) -> None:
        for key in list(self.partitions):
            self._close(key)
        for fd in self._lock_fds:
            os.close(fd)
        self._lock_fds = []
