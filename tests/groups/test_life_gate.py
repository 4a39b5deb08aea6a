"""A group coordinator shard loads only on a __consumer_offsets leadership of this life of the
broker (ReplicaCore.leads_in_this_life): a leadership written before the broker registered may
rest on a log a power loss shortened, and writing group records there could be lost when the
controller elects anew. Event-driven: the real GroupCoordinator and Partition, a stand-in for
the broker around them."""

import types

import pytest

from zbroker import errors, protocol
from zbroker.broker import config as broker_config
from zbroker.broker import metadata as md
from zbroker.broker.groups import GroupCoordinator
from zbroker.broker.replicas import Partition
from zbroker.broker.server import BrokerServer
from zbroker.storage import PartitionLog

pytestmark = pytest.mark.timeout(30)

TOPIC = protocol.OFFSETS_TOPIC


def test_no_groups_load_on_a_leadership_from_an_earlier_life(tmp_path):
    cfg = broker_config.load(None, ["broker.id=1", "coordinator.connect=127.0.0.1:1",
                                    f"log.dirs={tmp_path}"])
    part = Partition(TOPIC, 0, "id", PartitionLog(str(tmp_path / f"{TOPIC}-0")), 1)
    part.core.set_broker_epochs({1: 100})
    # the state was written at zxid 50, before this life registered (its broker epoch is 100)
    old = md.PartitionState(TOPIC, 0, (1,), 1, 3, (1,), 1, 0, zxid=50)
    part.core.on_partition_state(old, 0.0)
    assert part.is_leader
    image = md.ClusterImage({1: md.BrokerInfo(1, "h", 1, None, 100)},
                            {TOPIC: md.TopicImage(TOPIC, "id", (old,), ((1,),), {}, 0)},
                            1, 1, "c")
    server = types.SimpleNamespace(
        cfg=cfg, broker_id=1, broker_epoch=100, leadership_paused=False, image=image,
        replicas=types.SimpleNamespace(partitions={(TOPIC, 0): part}),
        _send=lambda ident, frames: None)
    server._earlier_life = lambda p: BrokerServer._earlier_life(server, p)
    groups = GroupCoordinator(server)
    groups.on_image(image)
    assert groups.hosts == {}, "groups loaded on an earlier life's leadership"
    with pytest.raises(errors.NotLeaderOrFollower):
        BrokerServer.append_internal(server, part, b"x")
    assert part.log.log_end_offset == 0
    # the controller elects anew (a new leader epoch, written after the registration)
    new = old._replace(leader_epoch=4, version=1, zxid=150)
    part.core.on_partition_state(new, 1.0)
    image = md.ClusterImage(image.brokers,
                            {TOPIC: md.TopicImage(TOPIC, "id", (new,), ((1,),), {}, 0)},
                            1, 1, "c")
    server.image = image
    groups.on_image(image)
    assert list(groups.hosts) == [0]
    groups.close()
    part.log.close()
