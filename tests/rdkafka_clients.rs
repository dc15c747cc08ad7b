//! Round trips through librdkafka (the rdkafka crate) against a real server.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Server;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn producer(server: &Server, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", server.bootstrap());
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

fn consumer(server: &Server) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("group.id", "sluice-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

async fn create_topic(server: &Server, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .create()
        .expect("admin");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

/// Reads `count` messages from the given partitions, starting at offset 0.
fn consume(
    server: &Server,
    topic: &str,
    partitions: i32,
    count: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = consumer(server);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::with_capacity(count);
    while out.len() < count && Instant::now() < deadline {
        if let Some(result) = consumer.poll(Duration::from_millis(200)) {
            out.push(result.expect("consume").detach());
        }
    }
    assert_eq!(
        out.len(),
        count,
        "consumed {} of {count} messages",
        out.len()
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_headers_null_and_empty_values_round_trip() {
    let server = Server::start();
    let producer = producer(&server, &[]);
    let topic = "round-trip"; // auto-created by the producer's metadata request
    for i in 0..100 {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "index",
                value: Some(&i.to_string()),
            })
            .insert(Header {
                key: "empty",
                value: None::<&[u8]>,
            });
        let mut record = FutureRecord::to(topic).key(&key).headers(headers);
        if i == 10 {
            // null value
        } else if i == 11 {
            record = record.payload("");
        } else {
            record = record.payload(&value);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
    }
    let messages = consume(&server, topic, 1, 100);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.offset(), i as i64);
        assert_eq!(m.key(), Some(format!("key-{i}").as_bytes()));
        let headers = m.headers().expect("headers");
        assert_eq!(headers.count(), 2);
        assert_eq!(headers.get(0).value, Some(i.to_string().as_bytes()));
        assert_eq!(headers.get(1).value, None);
        match i {
            10 => assert_eq!(m.payload(), None),
            11 => assert_eq!(m.payload(), Some(&b""[..])),
            _ => assert_eq!(m.payload(), Some(format!("value-{i}").as_bytes())),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_compression_codec_round_trips() {
    let server = Server::start();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        create_topic(&server, &topic, 1).await;
        let producer = producer(&server, &[("compression.type", codec), ("linger.ms", "20")]);
        let deliveries = (0..2000)
            .map(|i| {
                let payload = format!("{codec} message {i} {}", "x".repeat(i % 50));
                enqueue(
                    &producer,
                    FutureRecord::<(), _>::to(&topic).payload(&payload),
                )
            })
            .collect();
        delivered(deliveries).await;
        let messages = consume(&server, &topic, 1, 2000);
        for (i, m) in messages.iter().enumerate() {
            let expected = format!("{codec} message {i} {}", "x".repeat(i % 50));
            assert_eq!(
                m.payload(),
                Some(expected.as_bytes()),
                "{codec} message {i}"
            );
        }
    }
}

/// Enqueues one record, waiting while the producer's queue is full. Records
/// enqueued one after another keep their order, as in an application.
fn enqueue<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
) -> DeliveryFuture {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("enqueue failed: {e}"),
        }
    }
}

/// Waits for every delivery report; each must be a success.
async fn delivered(deliveries: Vec<DeliveryFuture>) -> Vec<(i32, i64)> {
    let mut out = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let delivery = d.await.expect("delivery report").expect("delivered");
        out.push((delivery.partition, delivery.offset));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn one_megabyte_messages_and_oversized_rejection() {
    let server = Server::start();
    create_topic(&server, "big", 1).await;
    let producer = producer(&server, &[("message.max.bytes", "5000000")]);
    let big = vec![7u8; 1_000_000];
    for _ in 0..3 {
        producer
            .send(
                FutureRecord::<(), _>::to("big").payload(&big),
                Duration::from_secs(10),
            )
            .await
            .expect("1 MB message accepted");
    }
    let too_big = vec![1u8; 2_000_000];
    let refused = producer
        .send(
            FutureRecord::<(), _>::to("big").payload(&too_big),
            Duration::from_secs(10),
        )
        .await;
    match refused {
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {}
        other => panic!("expected MessageSizeTooLarge, got {:?}", other.map(|_| ())),
    }
    let messages = consume(&server, "big", 1, 3);
    assert!(messages.iter().all(|m| m.payload() == Some(&big[..])));
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_producer_writes_each_message_once_in_order() {
    let server = Server::start();
    create_topic(&server, "idem", 3).await;
    let producer = producer(
        &server,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
        ],
    );
    let deliveries = (0..6000u32)
        .map(|i| {
            let payload = i.to_string();
            let key = (i % 3).to_string();
            enqueue(
                &producer,
                FutureRecord::to("idem")
                    .partition((i % 3) as i32)
                    .key(&key)
                    .payload(&payload),
            )
        })
        .collect();
    delivered(deliveries).await;
    producer.flush(Duration::from_secs(10)).expect("flush");
    let messages = consume(&server, "idem", 3, 6000);
    let mut per_partition: HashMap<i32, Vec<u32>> = HashMap::new();
    for m in &messages {
        let value: u32 = std::str::from_utf8(m.payload().expect("payload"))
            .unwrap()
            .parse()
            .unwrap();
        per_partition.entry(m.partition()).or_default().push(value);
    }
    for (p, values) in per_partition {
        let expected: Vec<u32> = (0..6000).filter(|i| (i % 3) as i32 == p).collect();
        assert_eq!(values, expected, "partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn assign_seek_watermarks_and_offsets_for_times() {
    let server = Server::start();
    create_topic(&server, "seek", 1).await;
    let producer = producer(&server, &[]);
    let start = chrono_ms();
    for i in 0..100 {
        producer
            .send(
                FutureRecord::<(), _>::to("seek").payload(&format!("m{i}")),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
    }
    let consumer = consumer(&server);
    let (low, high) = consumer
        .fetch_watermarks("seek", 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!((low, high), (0, 100));

    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("seek", 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let first = next_message(&consumer);
    assert_eq!(first.offset(), 0);
    consumer
        .seek("seek", 0, Offset::Offset(50), Duration::from_secs(10))
        .expect("seek");
    let after_seek = next_message(&consumer);
    assert_eq!(after_seek.offset(), 50);
    assert_eq!(after_seek.payload(), Some(&b"m50"[..]));

    let mut times = TopicPartitionList::new();
    times
        .add_partition_offset("seek", 0, Offset::Offset(start))
        .unwrap();
    let found = consumer
        .offsets_for_times(times, Duration::from_secs(10))
        .expect("offsets for times");
    let offset = found.find_partition("seek", 0).unwrap().offset();
    assert_eq!(offset, Offset::Offset(0));
    let mut future = TopicPartitionList::new();
    future
        .add_partition_offset("seek", 0, Offset::Offset(start + 3_600_000))
        .unwrap();
    let found = consumer
        .offsets_for_times(future, Duration::from_secs(10))
        .expect("offsets for times");
    assert_eq!(
        found.find_partition("seek", 0).unwrap().offset(),
        Offset::End
    );
}

fn next_message(consumer: &BaseConsumer) -> rdkafka::message::OwnedMessage {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            return m.expect("message").detach();
        }
    }
    panic!("no message within 20 s");
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn many_partitions() {
    let server = Server::start();
    create_topic(&server, "wide", 64).await;
    let producer = producer(&server, &[("linger.ms", "5")]);
    let deliveries = (0..640)
        .map(|i| {
            enqueue(
                &producer,
                FutureRecord::<(), _>::to("wide")
                    .partition(i % 64)
                    .payload(&format!("{i}")),
            )
        })
        .collect();
    delivered(deliveries).await;
    let messages = consume(&server, "wide", 64, 640);
    let mut counts: HashMap<i32, usize> = HashMap::new();
    for m in &messages {
        *counts.entry(m.partition()).or_default() += 1;
    }
    assert_eq!(counts.len(), 64);
    assert!(counts.values().all(|&c| c == 10));
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_segments_and_the_log_start_survives_restart() {
    let mut server = Server::start_with(&["log.retention.check.interval.ms=200"]);
    let out = server.cli(&[
        "create",
        "short-lived",
        "--partitions",
        "1",
        "--config",
        "segment.bytes=20000",
        "--config",
        "retention.bytes=60000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let producer = producer(&server, &[("linger.ms", "0"), ("batch.num.messages", "1")]);
    let payload = vec![b'r'; 1000];
    let deliveries = (0..300)
        .map(|_| {
            enqueue(
                &producer,
                FutureRecord::<(), _>::to("short-lived")
                    .partition(0)
                    .payload(&payload),
            )
        })
        .collect();
    delivered(deliveries).await;

    // Retention passes run every 200 ms: wait until they have deleted all
    // they will (the log start has stayed put for a second), so the offsets
    // compared below are not read across a pass.
    let consumer = consumer(&server);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut settled: Option<((i64, i64), Instant)> = None;
    let (low, high) = loop {
        let watermarks = consumer
            .fetch_watermarks("short-lived", 0, Duration::from_secs(10))
            .unwrap();
        match settled {
            Some((seen, since)) if seen == watermarks => {
                if watermarks.0 > 0 && since.elapsed() >= Duration::from_secs(1) {
                    break watermarks;
                }
            }
            _ => settled = Some((watermarks, Instant::now())),
        }
        if Instant::now() > deadline {
            break watermarks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(high, 300);
    assert!(low > 0, "retention deleted no segment");
    assert!(
        high - low >= 40,
        "retention keeps at least retention.bytes of data ({low}..{high})"
    );

    // The earliest offset is where consumption from the beginning starts.
    let first = consume_from_beginning_first_offset(&server, "short-lived");
    assert_eq!(first, low);

    drop(consumer);
    server.kill9();
    server.restart();
    let consumer = self::consumer(&server);
    let (low_after, high_after) = consumer
        .fetch_watermarks("short-lived", 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(high_after, 300);
    assert!(
        low_after >= low,
        "log start went back from {low} to {low_after}"
    );
}

fn consume_from_beginning_first_offset(server: &Server, topic: &str) -> i64 {
    let consumer = consumer(server);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    next_message(&consumer).offset()
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_zero_and_acks_all_both_deliver() {
    let server = Server::start();
    create_topic(&server, "acks", 1).await;
    for acks in ["0", "1", "all"] {
        let producer = producer(&server, &[("acks", acks)]);
        let deliveries = (0..100)
            .map(|i| {
                enqueue(
                    &producer,
                    FutureRecord::<(), _>::to("acks")
                        .partition(0)
                        .payload(&format!("{acks}-{i}")),
                )
            })
            .collect();
        delivered(deliveries).await;
        producer.flush(Duration::from_secs(10)).expect("flush");
    }
    // acks=0 gets no answer from the broker, so wait for its writes to land.
    let consumer = consumer(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumer
        .fetch_watermarks("acks", 0, Duration::from_secs(5))
        .unwrap()
        .1
        < 300
    {
        assert!(Instant::now() < deadline, "acks=0 writes did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let messages = consume(&server, "acks", 1, 300);
    let values: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap()).into_owned())
        .collect();
    for acks in ["0", "1", "all"] {
        let ours: Vec<&String> = values
            .iter()
            .filter(|v| v.starts_with(&format!("{acks}-")))
            .collect();
        assert_eq!(ours.len(), 100, "acks={acks}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_topics_are_refused_when_auto_creation_is_off() {
    let server = Server::start_with(&["auto.create.topics.enable=false"]);
    let producer = producer(&server, &[("message.timeout.ms", "3000")]);
    let result = producer
        .send(
            FutureRecord::<(), _>::to("never-created").payload("x"),
            Duration::from_secs(5),
        )
        .await;
    assert!(result.is_err(), "a produce to an unknown topic must fail");
    let out = server.cli(&["list"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("never-created"));
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_for_times_finds_the_exact_record_inside_a_batch() {
    let server = Server::start();
    create_topic(&server, "times", 1).await;
    // One batch (long linger) whose records carry explicit timestamps.
    let producer = producer(&server, &[("linger.ms", "200")]);
    let base = 1_700_000_000_000i64;
    let deliveries = (0..10)
        .map(|i| {
            enqueue(
                &producer,
                FutureRecord::<(), _>::to("times")
                    .partition(0)
                    .payload("t")
                    .timestamp(base + i * 1000),
            )
        })
        .collect();
    let offsets = delivered(deliveries).await;
    assert_eq!(
        offsets.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    let consumer = consumer(&server);
    for (target, expected) in [(base, 0), (base + 5500, 6), (base + 9000, 9)] {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("times", 0, Offset::Offset(target))
            .unwrap();
        let found = consumer
            .offsets_for_times(tpl, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            found.find_partition("times", 0).unwrap().offset(),
            Offset::Offset(expected),
            "target {target}"
        );
    }
}
