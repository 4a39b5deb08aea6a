"""The per-directory high-watermark checkpoint (replication-offset-checkpoint) and the thread
that writes checkpoint files off the loop."""

import threading

import pytest

from zbroker.storage import checkpoints as cp

pytestmark = pytest.mark.timeout(30)


def test_partition_offsets_round_trip_and_refuse_garbage(tmp_path):
    path = str(tmp_path / cp.REPLICATION_OFFSET_CHECKPOINT)
    offsets = {("orders", 0): 10, ("orders", 11): 0, ("__consumer_offsets", 7): 123456}
    cp.write_atomically(path, cp.encode_partition_offsets(offsets))
    assert open(path).read().splitlines()[:3] == ["0", "3", "__consumer_offsets 7 123456"]
    assert cp.read_partition_offsets(path) == offsets
    assert cp.read_partition_offsets(str(tmp_path / "missing")) == {}
    for bad in ("1\n1\nt 0 5\n", "0\n2\nt 0 5\n", "0\n1\nt x 5\n", "0\n1\nt 0\n", "\xff"):
        with open(path, "w", encoding="latin-1") as f:
            f.write(bad)
        assert cp.read_partition_offsets(path) == {}, bad


def test_the_writer_keeps_the_newest_content_and_flush_waits_for_it(tmp_path, monkeypatch):
    gate = threading.Event()
    written = []
    real = cp.write_atomically

    def slow_write(path, data):
        gate.wait(5)
        real(path, data)
        written.append((path, data))
    monkeypatch.setattr(cp, "write_atomically", slow_write)
    w = cp.CheckpointWriter()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    w.write(a, b"1")                # taken by the thread, which waits at the gate
    assert not w.flush(0.2)
    w.write(a, b"2")                # replaces ...
    w.write(a, b"3")                # ... and is replaced before it is written
    w.write(b, b"x")
    gate.set()
    assert w.flush(5)
    assert sorted(written)[-1] == (b, b"x") and open(a, "rb").read() == b"3"
    assert [d for p, d in written if p == a] == [b"1", b"3"]     # "2" never hit the disk


def test_a_broker_restarts_with_the_high_watermarks_it_checkpointed(tmp_path):
    from zbroker.broker import config as broker_config
    from zbroker.broker import metadata as md
    from zbroker.broker.replicas import ReplicaManager
    from tests.broker.helpers import batch

    cfg = broker_config.load(None, ["broker.id=1", f"log.dirs={tmp_path / 'logs'}"])

    def image(leader, epoch):
        st = md.PartitionState("t", 0, (1,), leader, epoch, (1,), 1, epoch)
        topic = md.TopicImage("t", "id-1", (st,), ((1,),), {}, 0)
        return md.ClusterImage({1: md.BrokerInfo(1, "127.0.0.1", 1, None, 7)}, {"t": topic},
                               1, 1, None)

    first = ReplicaManager(1, cfg["log.dirs"], broker_config.default_log_props(cfg), cfg)
    first.lock_dirs()
    first.apply_image(image(1, 1), 0.0)
    part = first.partitions[("t", 0)]
    part.log.append(batch([b"a", b"b", b"c"]), 1)
    part.core.on_leader_append()                  # alone in the ISR: the HW is 3
    assert part.high_watermark == 3
    first.checkpoint_high_watermarks(wait=True)
    part.log.append(batch([b"d"]), 1)             # not checkpointed: the restart must not see 4
    part.core.on_leader_append()
    first.close_all()

    second = ReplicaManager(1, cfg["log.dirs"], broker_config.default_log_props(cfg), cfg)
    second.lock_dirs()
    second.apply_image(image(2, 2), 1.0)          # a follower now: its HW is what it kept
    assert second.partitions[("t", 0)].high_watermark == 3
    second.close_all()


def test_retention_of_one_partition_failing_does_not_stop_the_others(tmp_path, monkeypatch):
    from zbroker.broker import config as broker_config
    from zbroker.broker import metadata as md
    from zbroker.broker.replicas import ReplicaManager

    cfg = broker_config.load(None, ["broker.id=1", f"log.dirs={tmp_path / 'logs'}"])
    states = tuple(md.PartitionState("t", p, (1,), 1, 1, (1,), 1, 1) for p in range(3))
    image = md.ClusterImage({1: md.BrokerInfo(1, "127.0.0.1", 1, None, 7)},
                            {"t": md.TopicImage("t", "id-1", states, ((1,),) * 3, {}, 0)},
                            1, 1, None)
    manager = ReplicaManager(1, cfg["log.dirs"], broker_config.default_log_props(cfg), cfg)
    manager.lock_dirs()
    manager.apply_image(image, 0.0)
    ran = []
    for p, part in sorted(manager.partitions.items()):
        def apply(p=p, **_kw):
            ran.append(p)
            if p == ("t", 0):
                raise OSError(5, "Input/output error")
            if p == ("t", 1):
                raise KeyError("a bug")
            return 0
        monkeypatch.setattr(part.log, "apply_retention", apply)
    manager.run_retention()
    assert sorted(ran) == [("t", 0), ("t", 1), ("t", 2)]
    manager.close_all()


def test_leader_epoch_truncations_go_to_the_writer_and_never_land_after_a_newer_epoch(
        tmp_path, monkeypatch):
    """A follower-to-be's epoch truncation is written by the writer thread; a new epoch written
    right after it waits for that write and is the file's final content; a log appends only
    once what the writer held is on disk; and a truncation lost in a crash is redone on open."""
    from tests.broker.helpers import batch
    from zbroker.storage import PartitionLog
    gate, taken = threading.Event(), threading.Event()
    real = cp.write_atomically
    order = []

    def slow_write(path, data):
        if threading.current_thread().name == "zb-checkpoints":
            taken.set()
            gate.wait(5)
        real(path, data)
        order.append(data)
    monkeypatch.setattr(cp, "write_atomically", slow_write)
    writer = cp.CheckpointWriter()
    log = PartitionLog(str(tmp_path / "t-0"), checkpoint_writer=writer)
    path = log.leader_epoch_cache.path
    log.append(batch([b"a", b"b"]), 1)
    log.leader_epoch_cache.assign(3, 2, durable=False)     # an election: no records yet
    assert cp.read_entries(path, 2) == [(1, 0)], "written before the writer got to it"
    assert taken.wait(5)            # the writer is writing it now (held at the gate)
    log.leader_epoch_cache.truncate_from_end(2)              # ... and following again
    done = threading.Thread(target=log.append, args=(batch([b"c"]), 4))
    done.start()                    # must wait for the writer (held at the gate) to settle
    done.join(0.3)
    assert done.is_alive(), "appended before the pending epoch write was settled"
    gate.set()
    done.join(5)
    assert cp.read_entries(path, 2) == [(1, 0), (4, 2)]
    assert writer.flush(5) and cp.read_entries(path, 2) == [(1, 0), (4, 2)]
    assert order[-1] == cp.encode_entries([(1, 0), (4, 2)])
    # an epoch left on disk past the log end (its truncation never written) goes on open
    log.close()
    cp.write_entries(path, [(1, 0), (4, 2), (6, 3)])
    again = PartitionLog(str(tmp_path / "t-0"), checkpoint_writer=writer)
    assert again.leader_epoch_cache.entries() == [(1, 0), (4, 2)]
    again.close()
    assert writer.flush(5) and cp.read_entries(path, 2) == [(1, 0), (4, 2)]
