"""aiokafka (asyncio, its own protocol code): idempotent produce, consume."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def round_trip(bootstrap, topic, codec):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, enable_idempotence=True)
    await producer.start()
    try:
        for i in range(200):
            await producer.send(topic, key=b"k%d" % i, value=b"v%d" % i, headers=[("h", b"%d" % i)])
        last = await producer.send_and_wait(topic, None, key=b"last")
    finally:
        await producer.stop()
    assert last.offset == 200

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got = []
        deadline = asyncio.get_running_loop().time() + 30
        while len(got) < 201 and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    assert len(got) == 201
    for i, r in enumerate(got[:200]):
        assert (r.offset, r.key, r.value, tuple(r.headers)) == (i, b"k%d" % i, b"v%d" % i, (("h", b"%d" % i),))
    assert got[200].value is None


@pytest.mark.parametrize("codec", [None, "gzip"])
def test_round_trip(server, codec):
    asyncio.run(round_trip(server.bootstrap, f"aio-{codec or 'none'}", codec))
