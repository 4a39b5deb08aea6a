"""Producer.metrics() and Consumer.metrics() under kafka-python's names, against a real
broker: the counts match what was sent and consumed, latencies are measured, and the lag of a
consumer that has read half a partition shows in records-lag-max."""

from __future__ import annotations

import pytest

from clients import Consumer, Producer, TopicPartition

pytestmark = pytest.mark.timeout(60)


def test_client_metrics_count_what_moved(cluster):
    c = cluster(1)
    c.create_topic("m", 1, 1)
    with Producer(c.bootstrap, linger_ms=5) as producer:
        assert producer.metrics()["producer-metrics"]["record-send-total"] == 0
        for i in range(200):
            producer.send("m", b"x" * 100, key=b"k%03d" % i)
        producer.flush(20)
        m = producer.metrics()["producer-metrics"]
    assert m["record-send-total"] == 200
    assert m["record-error-total"] == 0
    assert m["record-send-rate"] > 0
    assert m["byte-total"] >= 200 * 100
    assert m["request-total"] >= 1 and m["request-latency-max"] > 0
    assert m["request-latency-avg"] <= m["request-latency-max"]
    assert m["records-per-request-avg"] > 0 and m["batch-size-max"] >= m["batch-size-avg"] > 0
    assert m["requests-in-flight"] == 0

    tp = TopicPartition("m", 0)
    with Consumer(bootstrap_servers=c.bootstrap, auto_offset_reset="earliest",
                  max_poll_records=100) as consumer:
        consumer.assign([tp])
        got = []
        while len(got) < 100:
            for recs in consumer.poll(1000, max_records=100 - len(got)).values():
                got += recs
        m = consumer.metrics()["consumer-fetch-manager-metrics"]
        assert m["records-consumed-total"] == 100
        assert m["bytes-consumed-total"] == sum(len(r.key) + len(r.value) for r in got)
        assert m["fetch-total"] >= 1 and m["fetch-latency-max"] > 0
        assert m["records-lag-max"] == 100         # 200 written, position at 100
        while len(got) < 200:
            for recs in consumer.poll(1000).values():
                got += recs
        assert consumer.metrics()["consumer-fetch-manager-metrics"]["records-lag-max"] == 0
