"""Opening logs at start-up on the preloader thread (ReplicaManager.start_preload): the first
image takes what it opened, with the topic's configuration; what the image does not hold is
closed untouched; an earlier topic's directory is still wiped; the loop never opens a directory
the preloader is opening. Driven without processes: the preloader's opening is gated by hand."""

import os
import threading

import pytest

from tests.broker.helpers import batch
from zbroker.broker import config as broker_config
from zbroker.broker import metadata as md
from zbroker.broker import replicas as replicas_mod
from zbroker.broker.replicas import ReplicaManager

pytestmark = pytest.mark.timeout(30)


def _image(topics: dict[str, tuple[str, int, dict]]):
    """topics: name -> (topic id, partitions, config); broker 1 leads every partition."""
    out = {}
    for name, (topic_id, n, config) in topics.items():
        states = tuple(md.PartitionState(name, p, (1,), 1, 1, (1,), 1, 1) for p in range(n))
        out[name] = md.TopicImage(name, topic_id, states, ((1,),) * n, config, 0)
    return md.ClusterImage({1: md.BrokerInfo(1, "127.0.0.1", 1, None, 7)}, out, 1, 1, None)


def _manager(tmp_path):
    cfg = broker_config.load(None, ["broker.id=1", f"log.dirs={tmp_path / 'logs'}"])
    m = ReplicaManager(1, cfg["log.dirs"], broker_config.default_log_props(cfg), cfg)
    m.lock_dirs()
    return m


def _first_life(tmp_path, topics):
    m = _manager(tmp_path)
    m.apply_image(_image(topics), 0.0)
    for (name, p), part in m.partitions.items():
        part.log.append(batch([f"{name}-{p}".encode()] * 3), 1)
    m.close_all()


def _counting_opens(monkeypatch):
    opened_by = []
    real = replicas_mod.PartitionLog

    def counting(path, *a, **kw):
        opened_by.append((threading.current_thread().name, os.path.basename(path)))
        return real(path, *a, **kw)
    monkeypatch.setattr(replicas_mod, "PartitionLog", counting)
    return opened_by


def test_the_first_image_takes_the_preloaded_logs_with_their_topic_config(tmp_path, monkeypatch):
    _first_life(tmp_path, {"a": ("id-a", 3, {})})
    opened_by = _counting_opens(monkeypatch)
    m = _manager(tmp_path)
    m.start_preload()
    with m._preload_cv:            # until the preloader opened all three
        assert m._preload_cv.wait_for(lambda: len([v for v in m._preloaded.values() if v]) == 3,
                                      10)
    m.apply_image(_image({"a": ("id-a", 3, {"retention.ms": "1234"})}), 0.0)
    assert sorted(opened_by) == [("log-preloader", f"a-{p}") for p in range(3)]
    for p in range(3):
        plog = m.partitions[("a", p)].log
        assert plog.config["retention.ms"] == 1234 and plog._retention_ms == 1234
        assert plog.log_end_offset == 3
    m.close_all()


def test_logs_the_image_does_not_hold_are_closed_and_kept_and_stale_ones_wiped(tmp_path,
                                                                               monkeypatch):
    _first_life(tmp_path, {"a": ("id-a", 1, {}), "gone": ("id-g", 1, {}), "b": ("id-b", 1, {})})
    m = _manager(tmp_path)
    m.start_preload()
    with m._preload_cv:
        assert m._preload_cv.wait_for(lambda: len([v for v in m._preloaded.values() if v]) == 3,
                                      10)
    # "b" was deleted and created again while we were down (a new topic id); "gone" is not ours
    m.apply_image(_image({"a": ("id-a", 1, {}), "b": ("id-b2", 1, {})}), 0.0)
    assert m.partitions[("a", 0)].log.log_end_offset == 3
    assert m.partitions[("b", 0)].log.log_end_offset == 0          # not the old topic's records
    m._preloader.join(10)
    assert not m._preloader.is_alive() and m._preloaded == {}
    gone = tmp_path / "logs" / "gone-0"
    assert any(f.suffix == ".log" for f in gone.iterdir())          # closed, still there
    m.close_all()
    again = _manager(tmp_path)      # "gone" opens as it was left
    again.apply_image(_image({"gone": ("id-g", 1, {})}), 0.0)
    assert again.partitions[("gone", 0)].log.log_end_offset == 3
    again.close_all()


def test_the_loop_waits_for_a_log_the_preloader_is_opening_and_opens_the_rest_itself(
        tmp_path, monkeypatch):
    _first_life(tmp_path, {"a": ("id-a", 4, {})})
    gate, inside = threading.Event(), threading.Event()
    opened_by = []
    real = replicas_mod.PartitionLog

    def gated(path, *a, **kw):
        who = threading.current_thread().name
        opened_by.append((who, os.path.basename(path)))
        if who == "log-preloader":
            inside.set()
            assert gate.wait(10)
        return real(path, *a, **kw)
    monkeypatch.setattr(replicas_mod, "PartitionLog", gated)
    m = _manager(tmp_path)
    m.start_preload()
    assert inside.wait(10)          # the preloader is inside a-0's open, held at the gate
    done = threading.Event()

    def apply():
        m.apply_image(_image({"a": ("id-a", 4, {})}), 0.0)
        done.set()
    t = threading.Thread(target=apply)
    t.start()
    assert not done.wait(0.3)       # waiting for a-0, not opening it a second time
    gate.set()
    assert done.wait(10)
    t.join(10)
    assert sorted(n for _, n in opened_by) == ["a-0", "a-1", "a-2", "a-3"]     # each once
    assert ("log-preloader", "a-0") in opened_by
    assert all(m.partitions[("a", p)].log.log_end_offset == 3 for p in range(4))
    m.close_all()
    assert not m._preloader.is_alive()


def test_a_log_the_preloader_cannot_open_is_opened_by_the_loop_which_reports_it(tmp_path,
                                                                               monkeypatch):
    _first_life(tmp_path, {"a": ("id-a", 2, {})})
    real = replicas_mod.PartitionLog
    failed = threading.Event()

    def failing(path, *a, **kw):
        if threading.current_thread().name == "log-preloader" and path.endswith("a-1"):
            failed.set()
            raise OSError(5, "Input/output error")
        return real(path, *a, **kw)
    monkeypatch.setattr(replicas_mod, "PartitionLog", failing)
    m = _manager(tmp_path)
    m.start_preload()
    assert failed.wait(10)
    with m._preload_cv:
        assert m._preload_cv.wait_for(lambda: list(m._preloaded) == [
            str(tmp_path / "logs" / "a-0")] and all(m._preloaded.values()), 10)
    m.apply_image(_image({"a": ("id-a", 2, {})}), 0.0)
    assert [m.partitions[("a", p)].log.log_end_offset for p in range(2)] == [3, 3]
    m.close_all()
