"""kafka-python (a pure-Python client), 2.x and 3.x: produce, consume, admin."""

import time

import kafka
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import (
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidTopicError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

KAFKA_PYTHON_MAJOR = int(kafka.__version__.split(".")[0])


def consume(bootstrap, topic, partitions, count):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = []
    deadline = time.time() + 60
    while len(out) < count and time.time() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            out.extend(records)
    consumer.close()
    assert len(out) == count
    return out


def test_round_trip_default_settings(server):
    producer = KafkaProducer(bootstrap_servers=server.bootstrap)
    futures = []
    for i in range(300):
        value = None if i == 3 else (b"" if i == 4 else f"v{i}".encode())
        futures.append(producer.send("kp-topic", key=f"k{i}".encode(), value=value, headers=[("h", b"x")]))
    producer.flush()
    offsets = [f.get(timeout=10).offset for f in futures]
    assert offsets == list(range(300))
    got = consume(server.bootstrap, "kp-topic", 1, 300)
    for i, r in enumerate(got):
        assert r.offset == i
        assert r.key == f"k{i}".encode()
        assert r.value == (None if i == 3 else (b"" if i == 4 else f"v{i}".encode()))
        assert r.headers == [("h", b"x")]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression(server, codec):
    producer = KafkaProducer(bootstrap_servers=server.bootstrap, compression_type=codec, linger_ms=10)
    for i in range(500):
        producer.send(f"kp-{codec}", value=f"{codec} {i}".encode() * 5)
    producer.flush()
    got = consume(server.bootstrap, f"kp-{codec}", 1, 500)
    assert [r.value for r in got] == [f"{codec} {i}".encode() * 5 for i in range(500)]


def eventually(read, wanted, limit=10):
    """`read()` until it gives `wanted` or `limit` seconds pass; the last value."""
    deadline = time.monotonic() + limit
    value = read()
    while value != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value


def test_seek_and_offsets_for_times(server):
    producer = KafkaProducer(bootstrap_servers=server.bootstrap)
    start = int(time.time() * 1000)
    for i in range(50):
        producer.send("kp-seek", value=str(i).encode())
    producer.flush()
    consumer = KafkaConsumer(bootstrap_servers=server.bootstrap, enable_auto_commit=False)
    tp = TopicPartition("kp-seek", 0)
    consumer.assign([tp])
    assert consumer.beginning_offsets([tp])[tp] == 0
    # With several brokers, metadata about a topic created on first use may
    # reach the broker asked a moment later.
    assert eventually(lambda: consumer.end_offsets([tp])[tp], 50) == 50
    assert consumer.offsets_for_times({tp: start})[tp].offset == 0
    assert consumer.offsets_for_times({tp: start + 3_600_000})[tp] is None
    consumer.seek(tp, 40)
    records = []
    deadline = time.time() + 20
    while len(records) < 10 and time.time() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    assert [r.offset for r in records] == list(range(40, 50))


def test_admin(server):
    admin = KafkaAdminClient(bootstrap_servers=server.bootstrap)
    admin.create_topics([NewTopic("kp-admin", 2, 1, topic_configs={"retention.ms": "999"})])
    # With several brokers, the one asked may learn of the topic a moment
    # after the one that created it.
    deadline = time.monotonic() + 10
    topics = admin.list_topics()
    while "kp-admin" not in topics and time.monotonic() < deadline:
        time.sleep(0.1)
        topics = admin.list_topics()
    assert "kp-admin" in topics
    admin.create_topics([NewTopic("kp-validate", 1, 1)], validate_only=True)
    assert "kp-validate" not in admin.list_topics()

    resource = ConfigResource(ConfigResourceType.TOPIC, "kp-admin")
    if KAFKA_PYTHON_MAJOR >= 3:
        configs = admin.describe_configs([resource], config_filter="all")["topic"]["kp-admin"]
        assert configs["retention.ms"]["value"] == "999"
        assert configs["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        assert configs["cleanup.policy"]["value"] == "delete"
        assert configs["cleanup.policy"]["config_source"] == "DEFAULT_CONFIG"
        modified = admin.describe_configs([resource])
        assert set(modified["topic"]["kp-admin"]) == {"retention.ms"}
    else:
        # 2.x answers with the raw responses: (name, value, read_only, source, ...)
        [response] = admin.describe_configs([resource])
        entries = {c[0]: c for c in response.resources[0][4]}
        assert entries["retention.ms"][1] == "999"
        assert entries["retention.ms"][3] == 1  # DYNAMIC_TOPIC_CONFIG
        assert entries["cleanup.policy"][1] == "delete"
        assert entries["cleanup.policy"][3] == 5  # DEFAULT_CONFIG

    admin.create_partitions({"kp-admin": NewPartitions(4)})
    assert eventually(lambda: len(admin.describe_topics(["kp-admin"])[0]["partitions"]), 4) == 4

    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics([NewTopic("kp-admin", 1, 1)])
    with pytest.raises(InvalidTopicError):
        admin.create_topics([NewTopic("bad topic", 1, 1)])
    # More replicas than the cluster has brokers.
    with pytest.raises(InvalidReplicationFactorError):
        admin.create_topics([NewTopic("kp-rf", 1, len(server.brokers) + 1)])
    with pytest.raises(InvalidPartitionsError):
        admin.create_partitions({"kp-admin": NewPartitions(1)})

    admin.delete_topics(["kp-admin"])
    assert "kp-admin" not in admin.list_topics()
    with pytest.raises(UnknownTopicOrPartitionError):
        admin.delete_topics(["kp-admin"])
    admin.close()
