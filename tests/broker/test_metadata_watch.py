"""The metadata watcher against a real coordinator: partition state writes become new images
built from the watch events alone (``image.changed`` names the partitions), equal to what a
full read gives; anything else (a broker, a topic, the controller) reads everything again; and
an event older than a state already held is ignored."""

import queue

import pytest

from coordinator.client import Op
from tests.procs import wait_until
from zbroker.broker import metadata as md

pytestmark = pytest.mark.timeout(60)


def same(a: md.ClusterImage, b: md.ClusterImage) -> bool:
    return (a.brokers, a.topics, a.controller_id, a.controller_epoch, a.cluster_id,
            a.shutting_down) == (b.brokers, b.topics, b.controller_id, b.controller_epoch,
                                 b.cluster_id, b.shutting_down)


def test_state_writes_make_images_from_the_events_and_other_changes_read_all(
        coordinator_client):
    c = coordinator_client
    for path in ("/brokers", md.BROKER_IDS, md.TOPICS, md.SHUTDOWN):
        c.create(path, b"")
    c.create(md.broker_path(1), md.encode_registration("127.0.0.1", 9092, None), ephemeral=True)
    c.create(md.topic_path("t"), md.encode_topic("id-t", [[1], [1], [1]], {}))
    for p in range(3):
        c.create(md.partition_path("t", p), md.encode_state(1, 0, [1], 1))
    images: queue.Queue = queue.Queue()
    w = md.MetadataWatcher(c, images.put)
    w.start()
    try:
        first = images.get(timeout=10)
        assert first.changed is None and first.partition("t", 2).leader == 1

        def latest(pred):
            got = []

            def check():
                while not images.empty():
                    got.append(images.get_nowait())
                return got and pred(got[-1])
            wait_until(check, 10, "the image")
            return got

        # two state writes (one multi): a delta image naming exactly them, equal to a full read
        v0 = c.get(md.partition_path("t", 0))[1]
        v1 = c.get(md.partition_path("t", 1))[1]
        c.multi([Op.set(md.partition_path("t", 0), md.encode_state(-1, 1, [], 1), v0),
                 Op.set(md.partition_path("t", 1), md.encode_state(1, 0, [1], 2), v1)])
        got = latest(lambda im: im.partition("t", 1).controller_epoch == 2)
        assert all(im.changed is not None for im in got), [im.changed for im in got]
        assert set().union(*(im.changed for im in got)) == {("t", 0), ("t", 1)}
        delta = got[-1]
        assert same(delta, md.read_image(c)), "the delta image differs from a full read"
        assert delta.partition("t", 0).leader == -1 and delta.partition("t", 0).version == v0 + 1
        assert delta.partition("t", 2) is first.partition("t", 2)
        # a broker registering is not a state write: everything is read again
        c.create(md.broker_path(2), md.encode_registration("127.0.0.1", 9093, "r2"),
                 ephemeral=True)
        got = latest(lambda im: 2 in im.brokers)
        assert got[-1].changed is None and same(got[-1], md.read_image(c))
        # an event older than the state held (a full read saw a later write) changes nothing
        held = got[-1]
        stale = md.PartitionState("t", 2, (1,), 7, 7, (1,), 1, -5)
        w._image = held
        assert w._states_from([type("E", (), {"type": "changed", "path": md.partition_path(
            "t", 2), "value": md.encode_state(7, 7, [1], 1), "version": -5, "zxid": 1})()]) == []
        assert held.partition("t", 2) != stale
    finally:
        w.stop()
