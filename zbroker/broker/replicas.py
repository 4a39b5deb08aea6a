"""The partition logs this broker hosts, opened and closed as the metadata image says.

A broker opens the log of every partition it holds a replica of
(``<log.dir>/<topic>-<partition>``), as leader or follower as the partition state says, and
closes the ones it no longer holds; when a topic is deleted it deletes that topic's directories.
Each partition directory holds a ``partition.metadata`` file naming the topic id, so a directory
left behind by a deleted topic (say its broker was down during the delete) is recognised and
wiped when a new topic of the same name lands on it, instead of resurrecting old records.

Owned by the loop thread. Directory deletion (rename first, then remove) runs on a worker thread.

Opening logs at start-up: ``start_preload`` opens every partition directory found on a thread of
its own while the broker registers (a broker restarted after a crash waits there for its earlier
registration to expire), with the default log configuration; the first metadata image then
takes the logs it holds from there (``_open``) and gives each its topic's configuration. A log
the image needs before the preloader got to it is opened by the loop itself; the preloader
skips it. What the image does not hold is closed again, untouched on disk (``end_preload``).
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
from zbroker.storage.producer_state import PRODUCERS_MAX_DEFAULT
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
        self.producers_max = (cfg["producer.id.max.per.partition"] if cfg is not None
                              else PRODUCERS_MAX_DEFAULT)
        self.log_dirs = [os.path.abspath(d) for d in log_dirs]
        self.log_defaults = log_defaults
        self.partitions: dict[tuple[str, int], Partition] = {}
        self._lock_fds: list[int] = []
        self._writer = CheckpointWriter()
        self._checkpointed: dict[str, bytes] = {}       # log dir -> the content last handed over
        self.hw_changed = True          # since the last checkpoint (set by the transport too)
        self._timed_flush: list | None = None       # partitions with flush.ms set (None: redo)
        self._hw_at_start: dict[tuple[str, int], int] = {}
        # the preloader's hand-over (under _preload_cv): path -> (topic id, log) opened, or
        # None while the preloader is opening it; _claimed: paths the loop opens itself
        self._preload_cv = threading.Condition()
        self._preloaded: dict[str, tuple[str, PartitionLog] | None] = {}
        self._claimed: set[str] = set()
        self._preload_stop = False
        self._preloader: threading.Thread | None = None

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

    def start_preload(self) -> None:
        """Open the logs found in the log directories on a thread of their own (see the module
        docstring); call after lock_dirs."""
        self._preloader = threading.Thread(target=self._preload, name="log-preloader",
                                           daemon=True)
        self._preloader.start()

    def _preload(self) -> None:
        try:
            self._preload_dirs()
            with self._preload_cv:
                while not self._preload_stop:
                    self._preload_cv.wait()
        finally:
            with self._preload_cv:      # (busy until closed: nobody opens them meanwhile)
                left = {p: v for p, v in self._preloaded.items() if v is not None}
                self._preloaded.update(dict.fromkeys(left))
            for _, plog in left.values():
                self._close_log(plog)
            with self._preload_cv:
                self._preloaded = {}
                self._preload_cv.notify_all()
            if left:
                log.info("closed the logs found at start-up that this broker does not hold",
                         logs=len(left))

    def _preload_dirs(self) -> None:
        config = topic_log_config(self.log_defaults, {})
        for d in self.log_dirs:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for name in names:
                path = os.path.join(d, name)
                try:
                    with open(os.path.join(path, PARTITION_METADATA), encoding="utf-8") as f:
                        topic_id = f.read().strip().removeprefix("topic_id: ")
                except OSError:         # not a partition directory (or unreadable: the
                    continue            # loop's own open says why, if it needs it)
                with self._preload_cv:
                    if self._preload_stop:
                        return
                    if path in self._claimed:
                        continue
                    self._preloaded[path] = None
                opened = None
                try:
                    opened = topic_id, PartitionLog(path, config, checkpoint_writer=self._writer,
                                                    producers_max=self.producers_max)
                except Exception as e:      # the loop opens it again and reports the error
                    log.warning("could not open a partition log at start-up", dir=path,
                                error=str(e))
                with self._preload_cv:
                    if opened is not None and not self._preload_stop:
                        self._preloaded[path] = opened
                        self._preload_cv.notify_all()
                        continue
                if opened is not None:          # stopped meanwhile: nobody wants it
                    self._close_log(opened[1])
                with self._preload_cv:
                    del self._preloaded[path]
                    self._preload_cv.notify_all()

    def _take_preloaded(self, path: str) -> tuple[str, PartitionLog] | None:
        """The log the preloader opened at ``path`` (waiting if it is opening it now), or None:
        then the caller opens it, and the preloader will not."""
        if self._preloader is None:
            return None
        with self._preload_cv:
            while path in self._preloaded and self._preloaded[path] is None:
                self._preload_cv.wait()
            if self._preload_stop:
                return None
            taken = self._preloaded.pop(path, None)
            if taken is None:
                self._claimed.add(path)
            return taken

    def end_preload(self, wait: bool = False) -> None:
        """After the first full image: the preloader stops and closes what nobody took."""
        if self._preloader is None:
            return
        with self._preload_cv:
            self._preload_stop = True
            self._preload_cv.notify_all()
        if wait:
            self._preloader.join()

    @staticmethod
    def _close_log(plog: PartitionLog) -> None:
        try:
            plog.close()
        except Exception as e:
            log.error("closing a partition log failed", dir=plog.dir, error=str(e))

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
        self.end_preload()      # everything this image holds is open
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
        config = topic_log_config(self.log_defaults, t.config)
        plog = None
        taken = self._take_preloaded(path)
        meta = os.path.join(path, PARTITION_METADATA)
        if taken is not None and taken[0] == t.topic_id:
            plog, found = taken[1], taken[0]        # (the preloader read the topic id)
            plog.reconfigure(config)
        else:
            if taken is not None:
                self._close_log(taken[1])       # an earlier topic's: wiped below
            try:
                with open(meta, encoding="utf-8") as f:
                    found = f.read().strip().removeprefix("topic_id: ")
            except FileNotFoundError:
                found = None
        if found is not None and found != t.topic_id:
            log.info("wiping the log of an earlier topic of the same name", dir=path)
            self._delete_dir(path)
            found = None
        if plog is None:
            plog = PartitionLog(path, config, checkpoint_writer=self._writer,
                                producers_max=self.producers_max)
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
        self._close_log(self.partitions.pop(key).log)

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

    def expire_producers(self, now_ms: int, expiration_ms: int) -> int:
        """``producer.id.expiration.ms`` over every partition; returns how many were forgotten."""
        n = 0
        for part in list(self.partitions.values()):
            n += part.log.expire_producers(now_ms, expiration_ms)
        return n

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
        self.end_preload(wait=True)
        for key in list(self.partitions):
            self._close(key)
        for fd in self._lock_fds:
            os.close(fd)
        self._lock_fds = []
