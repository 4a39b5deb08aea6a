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
from zbroker.storage import PartitionLog

log = get_logger("zbroker.broker.replicas")

PARTITION_METADATA = "partition.metadata"
LOCK_FILE = ".lock"
DELETE_SUFFIX = "-delete"


class StartupError(Exception):
    """The broker cannot start; the text is one sentence for the operator."""


class FollowerState:
    """What a leader knows of one follower (Kafka's Replica): its log end offset (its last
    fetch offset; -1 until it fetches in this leadership) and when it was last caught up."""

    __slots__ = ("log_end_offset", "last_caught_up_s", "last_fetch_s", "last_fetch_leader_leo")

    def __init__(self, caught_up_s: float):
        self.log_end_offset = -1
        self.last_caught_up_s = caught_up_s
        self.last_fetch_s = 0.0
        self.last_fetch_leader_leo = -1


class Partition:
    """A partition this broker holds a replica of: its log, its role (leader or follower) in the
    current leader epoch, and as leader the followers' progress, the ISR and the high watermark.

    The replication state machine (no I/O): ``become_leader`` / ``become_follower`` on a new
    partition state, ``update_follower`` on each follower fetch, ``maybe_advance_high_watermark``,
    and ``isr_to_expand`` / ``isr_to_shrink`` that return the ISR the leader should write (the
    loop writes it through the coordinator with a version check and calls ``isr_written``)."""

    __slots__ = ("topic", "partition", "topic_id", "log", "leader_epoch", "waiters",
                 "hw_waiters", "produce_waiters", "is_leader", "leader_id", "replicas", "isr",
                 "state_version", "controller_epoch", "high_watermark", "followers",
                 "pending_isr", "min_insync_replicas", "broker_id", "epoch_start_offset")

    def __init__(self, topic: str, partition: int, topic_id: str, log_: PartitionLog,
                 broker_id: int):
        self.topic, self.partition, self.topic_id = topic, partition, topic_id
        self.log = log_
        self.broker_id = broker_id
        self.leader_epoch = -1
        self.waiters: list = []         # delayed follower fetches waiting for data here
        self.hw_waiters: list = []      # delayed consumer fetches waiting for the HW to move
        self.produce_waiters: list = []  # acks=all produces waiting for the HW
        self.is_leader = False
        self.leader_id = md.NO_LEADER
        self.replicas: tuple = ()
        self.isr: tuple = ()
        self.state_version = -1
        self.controller_epoch = 0
        self.high_watermark = max(log_.log_start_offset,
                                  min(log_.high_watermark_checkpoint, log_.log_end_offset))
        self.followers: dict[int, FollowerState] = {}
        self.pending_isr: tuple | None = None
        self.min_insync_replicas = 1
        self.epoch_start_offset = 0

    # --- role changes ---------------------------------------------------------------------------
    def become_leader(self, st: md.PartitionState, now_s: float) -> None:
        assert st.leader == self.broker_id
        if self.is_leader and st.leader_epoch < self.leader_epoch:
            raise AssertionError(f"leader epoch went back for {self.topic}-{self.partition}")
        self.is_leader = True
        self.leader_id = st.leader
        self.leader_epoch = st.leader_epoch
        self.replicas = st.replicas
        self.isr = st.isr
        self.state_version = st.version
        self.controller_epoch = st.controller_epoch
        self.pending_isr = None
        self.followers = {r: FollowerState(now_s if r in st.isr else 0.0)
                          for r in st.replicas if r != self.broker_id}
        cache = self.log.leader_epoch_cache
        if st.leader_epoch > cache.latest_epoch:
            # The epoch starts at our log end offset (Kafka assigns it at election), so a
            # follower asking where its older epoch ends gets our log end offset.
            cache.assign(st.leader_epoch, self.log.log_end_offset)
        self.epoch_start_offset = self.log.log_end_offset
        self.high_watermark = min(self.high_watermark, self.log.log_end_offset)
        self.maybe_advance_high_watermark()

    def become_follower(self, st: md.PartitionState) -> None:
        self.is_leader = False
        self.leader_id = st.leader
        self.leader_epoch = st.leader_epoch
        self.replicas = st.replicas
        self.isr = st.isr
        self.state_version = st.version
        self.controller_epoch = st.controller_epoch
        self.followers = {}
        self.pending_isr = None

    def adopt_state(self, st: md.PartitionState) -> bool:
        """A newer version of our partition state in the same leader epoch (the controller took a
        dead or departing broker out of the ISR, or our own ISR write came back). True when the
        ISR changed."""
        if st.version <= self.state_version:
            return False
        self.state_version = st.version
        self.controller_epoch = st.controller_epoch
        changed = st.isr != self.isr
        self.isr = st.isr
        if self.pending_isr is not None and self.pending_isr == st.isr:
            self.pending_isr = None
        return changed

    # --- the leader's view of its followers -------------------------------------------------------
    def update_follower(self, replica_id: int, fetch_offset: int, now_s: float) -> None:
        f = self.followers.get(replica_id)
        if f is None:
            return
        leo = self.log.log_end_offset
        if fetch_offset >= leo:
            f.last_caught_up_s = now_s
        elif fetch_offset >= f.last_fetch_leader_leo:
            f.last_caught_up_s = max(f.last_caught_up_s, f.last_fetch_s)
        f.log_end_offset = min(fetch_offset, leo)
        f.last_fetch_s = now_s
        f.last_fetch_leader_leo = leo

    def maximal_isr(self) -> tuple:
        if self.pending_isr is None:
            return self.isr
        return tuple(sorted(set(self.isr) | set(self.pending_isr)))

    def maybe_advance_high_watermark(self) -> bool:
        """High watermark = lowest log end offset in the ISR (including a member being added or
        removed right now); it never goes back while leading. True when it moved."""
        if not self.is_leader:
            return False
        hw = self.log.log_end_offset
        for r in self.maximal_isr():
            if r == self.broker_id:
                continue
            f = self.followers.get(r)
            if f is None or f.log_end_offset < 0:
                return False
            hw = min(hw, f.log_end_offset)
        if hw > self.high_watermark:
            self.high_watermark = hw
            return True
        return False

    def isr_to_expand(self, replica_id: int, shutting_down) -> tuple | None:
        """The ISR with ``replica_id`` added, when it has caught up (its log end offset reached
        the high watermark and the start of this leader epoch), else None."""
        if self.pending_isr is not None or replica_id in self.isr or \
                replica_id in shutting_down:
            return None
        f = self.followers.get(replica_id)
        if f is None or f.log_end_offset < self.high_watermark or \
                f.log_end_offset < self.epoch_start_offset:
            return None
        return tuple(sorted((*self.isr, replica_id)))

    def isr_to_shrink(self, now_s: float, lag_max_s: float) -> tuple | None:
        """The ISR without followers that have not caught up for ``lag_max_s``, or None."""
        if self.pending_isr is not None:
            return None
        out = [r for r in self.isr if r == self.broker_id or
               (r in self.followers and now_s - self.followers[r].last_caught_up_s <= lag_max_s)]
        if len(out) == len(self.isr):
            return None
        return tuple(out)

    def isr_written(self, isr: tuple, version: int) -> None:
        self.isr = isr
        self.state_version = version
        self.pending_isr = None


class ReplicaManager:
    def __init__(self, broker_id: int, log_dirs: list[str], log_defaults: dict, cfg=None):
        self.broker_id = broker_id
        self.cfg = cfg
        self.log_dirs = [os.path.abspath(d) for d in log_dirs]
        self.log_defaults = log_defaults
        self.partitions: dict[tuple[str, int], Partition] = {}
        self._lock_fds: list[int] = []

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

    # --- following the metadata -------------------------------------------------------------------
    def apply_image(self, image: md.ClusterImage, now_s: float):
        """Open logs of partitions this broker now holds, close the others, delete the logs of
        deleted topics, and move each to the role the image gives it. Returns (partitions that
        became leader in a new epoch, that became followers in a new epoch, whose ISR changed in
        the same epoch, closed)."""
        leaders, followers, isr_changed, closed = [], [], [], []
        me = self.broker_id
        for key, part in list(self.partitions.items()):
            t = image.topics.get(part.topic)
            st = image.partition(*key)
            if t is None or t.topic_id != part.topic_id:
                self._close(key)
                closed.append(part)
                self._delete_dir(part.log.dir)
            elif st is None or me not in st.replicas:
                self._close(key)
                closed.append(part)
        for t in image.topics.values():
            for st in t.partitions:
                if st is None or me not in st.replicas:
                    continue
                key = (t.name, st.partition)
                part = self.partitions.get(key)
                if part is None:
                    try:
                        part = self._open(t, st)
                    except Exception as e:
                        log.error("cannot open partition log", topic=t.name,
                                  partition=st.partition, error=str(e))
                        continue
                    self.partitions[key] = part
                part.min_insync_replicas = topic_min_insync_replicas(self.cfg, t.config)
                if st.leader_epoch > part.leader_epoch or \
                        (st.leader_epoch == part.leader_epoch and
                         (st.leader == me) != part.is_leader):
                    if st.leader == me:
                        part.become_leader(st, now_s)
                        leaders.append(part)
                        log.info("leading partition", topic=t.name, partition=st.partition,
                                 leader_epoch=st.leader_epoch, isr=list(st.isr),
                                 log_end_offset=part.log.log_end_offset)
                    else:
                        part.become_follower(st)
                        followers.append(part)
                        log.info("following partition", topic=t.name, partition=st.partition,
                                 leader=st.leader, leader_epoch=st.leader_epoch,
                                 log_end_offset=part.log.log_end_offset)
                elif st.leader_epoch == part.leader_epoch:
                    if part.adopt_state(st):
                        isr_changed.append(part)
        return leaders, followers, isr_changed, closed

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
        plog = PartitionLog(path, topic_log_config(self.log_defaults, t.config))
        if found is None:
            tmp = meta + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"topic_id: {t.topic_id}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, meta)
        return Partition(t.name, st.partition, t.topic_id, plog, self.broker_id)

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
    def run_retention(self) -> None:
        for part in self.partitions.values():
            try:
                part.log.apply_retention()
            except errors.ZbError as e:
                log.error("retention failed", dir=part.log.dir, error=str(e))

    def maybe_flush(self) -> None:
        for part in self.partitions.values():
            part.log.maybe_flush()

    def checkpoint_high_watermarks(self) -> None:
        for part in self.partitions.values():
            try:
                hw = min(part.high_watermark, part.log.log_end_offset)
                if part.log.high_watermark_checkpoint != hw and hw >= part.log.log_start_offset:
                    part.log.write_high_watermark(hw)
            except (OSError, ValueError, errors.ZbError) as e:
                log.error("high watermark checkpoint failed", dir=part.log.dir, error=str(e))

    def close_all(self) -> None:
        for key in list(self.partitions):
            self._close(key)
        for fd in self._lock_fds:
            os.close(fd)
        self._lock_fds = []
