"""confluent-kafka (librdkafka inside the wheel): produce, consume, admin."""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic


def produce_all(bootstrap, topic, messages, **config):
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(err)

    for key, value, headers in messages:
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []


def consume_all(bootstrap, topic, partitions, count):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "py-test", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    import time

    deadline = time.time() + 60
    while len(out) < count and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        out.append(msg)
    consumer.close()
    assert len(out) == count
    return out


def test_round_trip_with_keys_headers_null_and_empty_values(server):
    messages = []
    for i in range(200):
        value = None if i == 5 else (b"" if i == 6 else f"value-{i}".encode())
        messages.append((f"key-{i}".encode(), value, [("i", str(i).encode()), ("nil", None)]))
    produce_all(server.bootstrap, "py-round-trip", messages)
    got = consume_all(server.bootstrap, "py-round-trip", 1, 200)
    for i, msg in enumerate(got):
        assert msg.offset() == i
        assert msg.key() == f"key-{i}".encode()
        assert msg.value() == messages[i][1]
        assert msg.headers() == [("i", str(i).encode()), ("nil", None)]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression(server, codec):
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    admin.create_topics([NewTopic(f"py-{codec}", 2, 1)])[f"py-{codec}"].result(10)
    messages = [(None, f"{codec}-{i}".encode() * 10, None) for i in range(1000)]
    produce_all(server.bootstrap, f"py-{codec}", messages, **{"compression.type": codec, "linger.ms": 10})
    got = consume_all(server.bootstrap, f"py-{codec}", 2, 1000)
    assert sorted(m.value() for m in got) == sorted(m[1] for m in messages)


def test_one_megabyte_messages_and_idempotent_producer(server):
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    admin.create_topics([NewTopic("py-big", 1, 1)])["py-big"].result(10)
    big = b"m" * 1_000_000
    produce_all(server.bootstrap, "py-big", [(None, big, None)] * 3, **{"message.max.bytes": 2_000_000})
    got = consume_all(server.bootstrap, "py-big", 1, 3)
    assert all(m.value() == big for m in got)

    messages = [(str(i % 7).encode(), str(i).encode(), None) for i in range(5000)]
    produce_all(server.bootstrap, "py-idem", messages, **{"enable.idempotence": True})
    got = consume_all(server.bootstrap, "py-idem", 1, 5000)
    assert [int(m.value()) for m in got] == list(range(5000))


def wait_for_topic(admin, topic, limit=10):
    deadline = time.monotonic() + limit
    while True:
        md = admin.list_topics(timeout=10)
        if topic in md.topics or time.monotonic() > deadline:
            return md
        time.sleep(0.1)


def wait_for_partitions(admin, topic, count, limit=10):
    """The partition count of `topic` in a Metadata answer, once it is
    `count` or `limit` s have passed. The broker that grew the topic
    answers only when it shows the new partitions; a Metadata request may
    go to another broker, which the controller tells a moment later (as in
    Kafka)."""
    deadline = time.monotonic() + limit
    while True:
        found = len(admin.list_topics(timeout=10).topics[topic].partitions)
        if found == count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_admin_create_list_describe_alter_delete_and_errors(server):
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    # validate_only creates nothing
    admin.create_topics([NewTopic("checked", 3, 1)], validate_only=True)["checked"].result(10)
    assert "checked" not in admin.list_topics(timeout=10).topics

    fs = admin.create_topics([NewTopic("admin-a", 3, 1, config={"retention.ms": "123456", "cleanup.policy": "delete"})])
    fs["admin-a"].result(10)
    # With several brokers, the one asked may learn of the topic a moment
    # after the one that created it.
    md = wait_for_topic(admin, "admin-a")
    assert len(md.topics["admin-a"].partitions) == 3
    assert md.cluster_id
    # KRaft: the combined node 1; ZK mode: whichever broker holds /controller.
    broker_ids = [id for id, _ in server.brokers]
    assert md.controller_id in broker_ids

    res = ConfigResource(ConfigResource.Type.TOPIC, "admin-a")
    configs = admin.describe_configs([res])[res].result(10)
    assert configs["retention.ms"].value == "123456"
    assert configs["retention.ms"].source == 1  # DYNAMIC_TOPIC_CONFIG
    assert configs["segment.bytes"].value == "1073741824"
    assert configs["segment.bytes"].is_default

    broker = ConfigResource(ConfigResource.Type.BROKER, "1")
    broker_configs = admin.describe_configs([broker])[broker].result(10)
    assert broker_configs["num.partitions"].value == "1"
    assert broker_configs["log.dirs"].value == server.data

    cluster = admin.describe_cluster().result(10)
    assert cluster.cluster_id == md.cluster_id
    assert cluster.controller.id == md.controller_id
    assert sorted((n.id, n.port) for n in cluster.nodes) == server.brokers

    admin.create_partitions([NewPartitions("admin-a", 5)])["admin-a"].result(10)
    assert wait_for_partitions(admin, "admin-a", 5) == 5

    def error_of(future):
        with pytest.raises(KafkaException) as e:
            future.result(10)
        return e.value.args[0].code()

    assert error_of(admin.create_topics([NewTopic("admin-a", 1, 1)])["admin-a"]) == KafkaError.TOPIC_ALREADY_EXISTS
    assert error_of(admin.create_topics([NewTopic("bad/name", 1, 1)])["bad/name"]) == KafkaError.TOPIC_EXCEPTION
    too_many = len(server.brokers) + 1
    assert error_of(admin.create_topics([NewTopic("rf", 1, too_many)])["rf"]) == KafkaError.INVALID_REPLICATION_FACTOR
    assert error_of(admin.create_topics([NewTopic("cfg", 1, 1, config={"retention.ms": "x"})])["cfg"]) == KafkaError.INVALID_CONFIG
    assert error_of(admin.create_partitions([NewPartitions("admin-a", 2)])["admin-a"]) == KafkaError.INVALID_PARTITIONS
    assert error_of(admin.delete_topics(["missing"])["missing"]) == KafkaError.UNKNOWN_TOPIC_OR_PART

    admin.delete_topics(["admin-a"])["admin-a"].result(10)
    # Every broker drops the topic once the controller tells it.
    deadline = time.monotonic() + 10
    while "admin-a" in (topics := admin.list_topics(timeout=10).topics) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "admin-a" not in topics


# Topic configs Sluice does not honour are refused rather than stored; the
# refused values are the ones whose behaviour Sluice lacks.
UNIMPLEMENTED = [
    ("compression.type", "gzip"),
    ("message.timestamp.type", "LogAppendTime"),
    ("preallocate", "true"),
    ("segment.jitter.ms", "5000"),
    ("file.delete.delay.ms", "1000"),
    ("segment.index.bytes", "1048576"),
]

IMPLEMENTED = {
    "cleanup.policy": "compact,delete",
    "delete.retention.ms": "1000",
    "min.cleanable.dirty.ratio": "0.1",
    "min.compaction.lag.ms": "10",
    "max.compaction.lag.ms": "60000",
    "unclean.leader.election.enable": "true",
    "flush.messages": "1",
    "flush.ms": "1000",
    "compression.type": "producer",
    "message.timestamp.type": "CreateTime",
    "retention.ms": "3600000",
    "segment.bytes": "1048576",
}


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")
def test_unimplemented_topic_configs_are_refused_at_create_and_alter(server):
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    admin = AdminClient({"bootstrap.servers": server.bootstrap})

    def error_of(future):
        with pytest.raises(KafkaException) as e:
            future.result(10)
        return e.value.args[0]

    for name, value in UNIMPLEMENTED:
        err = error_of(admin.create_topics([NewTopic("unimpl", 1, 1, config={name: value})])["unimpl"])
        assert err.code() == KafkaError.INVALID_CONFIG, (name, err)
        assert "does not implement" in err.str(), err
    assert "unimpl" not in admin.list_topics(timeout=10).topics

    admin.create_topics([NewTopic("impl", 1, 1, config=IMPLEMENTED)])["impl"].result(10)
    res = ConfigResource(ConfigResource.Type.TOPIC, "impl")
    configs = admin.describe_configs([res])[res].result(10)
    for name, value in IMPLEMENTED.items():
        assert configs[name].value == value, name

    for name, value in UNIMPLEMENTED:
        # IncrementalAlterConfigs
        inc = ConfigResource(
            ConfigResource.Type.TOPIC,
            "impl",
            incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)],
        )
        err = error_of(admin.incremental_alter_configs([inc])[inc])
        assert err.code() == KafkaError.INVALID_CONFIG, (name, err)
        # The legacy AlterConfigs
        legacy = ConfigResource(ConfigResource.Type.TOPIC, "impl", set_config={**IMPLEMENTED, name: value})
        err = error_of(admin.alter_configs([legacy])[legacy])
        assert err.code() == KafkaError.INVALID_CONFIG, (name, err)
    configs = admin.describe_configs([res])[res].result(10)
    assert configs["compression.type"].value == "producer"

    inc = ConfigResource(
        ConfigResource.Type.TOPIC,
        "impl",
        incremental_configs=[ConfigEntry("delete.retention.ms", "2000", incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([inc])[inc].result(10)
    configs = admin.describe_configs([res])[res].result(10)
    assert configs["delete.retention.ms"].value == "2000"


def test_a_config_change_shows_on_every_broker_at_once(server):
    """A client sends DescribeConfigs to any broker, so each must show a
    change another broker has just acknowledged (in ZooKeeper mode, as in
    Kafka's, by reading the config znode rather than waiting for the change
    notification). Each round writes on one broker and reads on the next."""
    from kafka.protocol.admin.configs import DescribeConfigsRequest, IncrementalAlterConfigsRequest

    from wire import Wire

    topic, key, TOPIC, SET, UNKNOWN_TOPIC = "configs-everywhere", "retention.ms", 2, 0, 3
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    wires = [Wire(port) for _, port in server.brokers]

    def describe(wire):
        request = DescribeConfigsRequest(
            resources=[
                DescribeConfigsRequest.DescribeConfigsResource(
                    resource_type=TOPIC, resource_name=topic, configuration_keys=[key]
                )
            ],
            include_synonyms=False,
            include_documentation=False,
        )
        return wire.call(request).results[0]

    for wire in wires:
        deadline = time.time() + 30
        while describe(wire).error_code == UNKNOWN_TOPIC and time.time() < deadline:
            time.sleep(0.1)

    for i in range(12):
        writer, reader = wires[i % len(wires)], wires[(i + 1) % len(wires)]
        value = str(60_000 + i)
        alter = IncrementalAlterConfigsRequest(
            resources=[
                IncrementalAlterConfigsRequest.AlterConfigsResource(
                    resource_type=TOPIC,
                    resource_name=topic,
                    configs=[
                        IncrementalAlterConfigsRequest.AlterConfigsResource.AlterableConfig(
                            name=key, config_operation=SET, value=value
                        )
                    ],
                )
            ],
            validate_only=False,
        )
        assert writer.call(alter).responses[0].error_code == 0
        result = describe(reader)
        assert result.error_code == 0, result
        assert [(c.name, c.value) for c in result.configs] == [(key, value)], f"round {i}"
    for wire in wires:
        wire.close()
