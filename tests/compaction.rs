//! Log compaction end to end through librdkafka: a compacted topic keeps
//! each key's latest value (at its acknowledged offset), tombstoned keys
//! vanish after delete.retention.ms, idempotent producers carry on after a
//! clean, and a kill -9 in the middle of a clean loses nothing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::acked::wait_until;
use common::cluster::{partitions, Cluster, Mode};
use common::Server;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// key -> (offset, value; None for a tombstone)
type View = BTreeMap<String, (i64, Option<Vec<u8>>)>;

async fn create_topic(bootstrap: &str, name: &str, replicas: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let mut topic = NewTopic::new(name, 1, TopicReplication::Fixed(replicas));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

fn producer(bootstrap: &str, idempotent: bool) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set(
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        )
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Sends `records` in order (windows of 500 in flight) and returns the
/// acknowledged offset of each. Panics on any delivery error.
async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Option<Vec<u8>>)],
) -> Vec<i64> {
    let mut offsets = Vec::with_capacity(records.len());
    for chunk in records.chunks(500) {
        let mut deliveries = Vec::with_capacity(chunk.len());
        for (key, value) in chunk {
            let mut record = FutureRecord::to(topic).partition(0).key(key.as_str());
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            let delivery = loop {
                match producer.send_result(record) {
                    Ok(d) => break d,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => panic!("send failed: {e}"),
                }
            };
            deliveries.push(delivery);
        }
        for d in deliveries {
            let delivered = d
                .await
                .expect("delivery canceled")
                .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
            offsets.push(delivered.offset);
        }
    }
    offsets
}

/// Every record of partition 0, from the log start to its end, as
/// (offset, key, value).
fn read_all(bootstrap: &str, topic: &str) -> Vec<(i64, String, Option<Vec<u8>>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "compaction-check")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "reading {topic} did not reach its end"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push((
                m.offset(),
                String::from_utf8(m.key().expect("a key").to_vec()).expect("utf-8 key"),
                m.payload().map(<[u8]>::to_vec),
            )),
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            // A dead broker in the bootstrap list, a leader moving: retried
            // until the deadline.
            Some(Err(_)) | None => {}
        }
    }
}

/// Reads until the records are exactly `expected` (each key once, at its
/// offset, with its value), for at most `limit`.
fn wait_for_exactly(
    bootstrap: &str,
    topic: &str,
    expected: &View,
    limit: Duration,
    logs: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    loop {
        let records = read_all(bootstrap, topic);
        let view: View = records
            .iter()
            .map(|(o, k, v)| (k.clone(), (*o, v.clone())))
            .collect();
        if records.len() == expected.len() && view == *expected {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = expected.keys().filter(|k| !view.contains_key(*k)).collect();
            let wrong: Vec<_> = expected
                .iter()
                .filter(|(k, v)| view.get(*k).is_some_and(|got| got != *v))
                .map(|(k, _)| k)
                .collect();
            panic!(
                "{topic}: {} records read, {} expected; missing keys {missing:?}, wrong values {wrong:?}, \
                 extra keys {:?}\nserver log tail:\n{}",
                records.len(),
                expected.len(),
                view.keys().filter(|k| !expected.contains_key(*k)).collect::<Vec<_>>(),
                tail(&logs())
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The latest write of each key, as a consumer from the start must see it.
fn latest(records: &[(String, Option<Vec<u8>>)], offsets: &[i64], view: &mut View) {
    for ((key, value), &offset) in records.iter().zip(offsets) {
        view.insert(key.clone(), (offset, value.clone()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compacted_topic_keeps_each_keys_latest_value_and_drops_tombstones() {
    // The cleaner and the time-based roll run every 100 ms, so the whole
    // log gets sealed and cleaned within moments of the last write.
    let server = Server::start_with(&[
        "log.cleaner.backoff.ms=100",
        "log.retention.check.interval.ms=100",
    ]);
    create_topic(
        &server.bootstrap(),
        "compacted",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "4096"),
            ("segment.ms", "300"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "1000"),
            // Would empty the topic if compaction did not replace retention.
            ("retention.ms", "1"),
        ],
    )
    .await;

    let idempotent = producer(&server.bootstrap(), true);
    let mut records = Vec::new();
    for round in 0..40 {
        for k in 0..50 {
            records.push((
                format!("key-{k:02}"),
                Some(format!("round {round} of key {k}").into_bytes()),
            ));
        }
    }
    let offsets = send_all(&idempotent, "compacted", &records).await;
    let mut expected = View::new();
    latest(&records, &offsets, &mut expected);

    // Records without a key are refused on a compacted topic.
    let plain = producer(&server.bootstrap(), false);
    let refused = plain
        .send(
            FutureRecord::<(), _>::to("compacted")
                .partition(0)
                .payload("no key"),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord),
                _
            ))
        ),
        "{refused:?}"
    );

    wait_for_exactly(
        &server.bootstrap(),
        "compacted",
        &expected,
        Duration::from_secs(60),
        &|| server.log(),
    );

    // Tombstones for ten keys: once delete.retention.ms has passed since
    // their first clean, the keys are gone altogether.
    let tombstones: Vec<(String, Option<Vec<u8>>)> =
        (0..10).map(|k| (format!("key-{k:02}"), None)).collect();
    send_all(&idempotent, "compacted", &tombstones).await;
    for (key, _) in &tombstones {
        expected.remove(key);
    }
    // The idempotent producer goes on after the cleans (its sequence
    // survived them).
    let again: Vec<(String, Option<Vec<u8>>)> = (10..50)
        .map(|k| {
            (
                format!("key-{k:02}"),
                Some(format!("after the clean {k}").into_bytes()),
            )
        })
        .collect();
    let offsets = send_all(&idempotent, "compacted", &again).await;
    latest(&again, &offsets, &mut expected);
    wait_for_exactly(
        &server.bootstrap(),
        "compacted",
        &expected,
        Duration::from_secs(60),
        &|| server.log(),
    );
    assert!(server.log().contains("cleaned log"));
}

/// The cleaner's work in progress in a partition directory: swap files and
/// the files in its work directory.
fn cleaner_files(dir: &Path) -> Vec<String> {
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found: Vec<String> = names(dir)
        .into_iter()
        .filter(|n| n.ends_with(".swap"))
        .collect();
    found.extend(
        names(&dir.join("cleaner"))
            .into_iter()
            .map(|n| format!("cleaner/{n}")),
    );
    found
}

/// key -> (offset, value) of the latest acknowledged write of each key.
type Acked = Arc<Mutex<BTreeMap<String, (i64, Vec<u8>)>>>;

/// Writes `keys` keys round robin with an idempotent acks=all producer until
/// aborted, remembering the latest acknowledged write of each key.
fn spawn_keyed_writer(
    server: &Server,
    topic: &str,
    keys: usize,
    round: usize,
) -> (Acked, tokio::task::JoinHandle<()>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "5000")
        .create()
        .expect("producer");
    let acked: Acked = Arc::default();
    let topic = topic.to_string();
    let task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let mut window = Vec::new();
                for _ in 0..500 {
                    let key = format!("key-{:05}", n % keys);
                    let value = format!("{round:03}-{n:08}-{}", "x".repeat(500)).into_bytes();
                    let record = FutureRecord::to(&topic)
                        .partition(0)
                        .key(&key)
                        .payload(&value);
                    match producer.send_result(record) {
                        Ok(d) => window.push((key, value, d)),
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                    n += 1;
                }
                for (key, value, d) in window {
                    if let Ok(Ok(delivered)) = d.await {
                        let mut acked = acked.lock().unwrap();
                        let entry = acked.entry(key).or_insert((-1, Vec::new()));
                        if delivered.offset > entry.0 {
                            *entry = (delivered.offset, value);
                        }
                    }
                }
            }
        })
    };
    (acked, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_a_clean_loses_nothing() {
    // Segments seal every few milliseconds under the writer, and the
    // cleaner runs back to back rewriting the whole log (ratio 0): it is
    // nearly always in the middle of a clean when the kill comes.
    let mut server = Server::start_with(&["log.cleaner.backoff.ms=1"]);
    create_topic(
        &server.bootstrap(),
        "compacted",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "65536"),
            ("min.cleanable.dirty.ratio", "0"),
        ],
    )
    .await;
    let dir = server.data.join("compacted-0");
    let mut acked_before: BTreeMap<String, (i64, Vec<u8>)> = BTreeMap::new();
    let mut killed_mid_clean = Vec::new();
    for attempt in 0..25 {
        let (acked, writer) = spawn_keyed_writer(&server, "compacted", 3000, attempt);
        tokio::time::sleep(Duration::from_millis(700 + (attempt as u64 * 137) % 900)).await;
        server.kill9();
        let left = cleaner_files(&dir);
        writer.abort();
        let _ = writer.await;
        if !left.is_empty() {
            killed_mid_clean.push(left);
        }
        for (key, write) in acked.lock().unwrap().iter() {
            let entry = acked_before.entry(key.clone()).or_insert((-1, Vec::new()));
            if write.0 > entry.0 {
                *entry = write.clone();
            }
        }
        server.restart();
        // Each key's latest acknowledged write is there at its offset, or a
        // later write of the key (sent, its acknowledgement lost in the kill).
        let view: BTreeMap<String, (i64, Option<Vec<u8>>)> =
            read_all(&server.bootstrap(), "compacted")
                .into_iter()
                .map(|(o, k, v)| (k, (o, v)))
                .collect();
        for (key, (offset, value)) in &acked_before {
            let got = view.get(key);
            assert!(
                got.is_some_and(
                    |(o, v)| o > offset || (o == offset && v.as_deref() == Some(value.as_slice()))
                ),
                "attempt {attempt}: key {key}: acknowledged at offset {offset}, read {:?}",
                got.map(|(o, _)| o)
            );
        }
        assert!(
            cleaner_files(&dir).is_empty(),
            "attempt {attempt}: recovery left cleaner files"
        );
        if killed_mid_clean.len() >= 3 {
            break;
        }
    }
    assert!(
        !killed_mid_clean.is_empty(),
        "no kill landed inside a clean; the test proved nothing"
    );
    assert!(server.log().contains("cleaned log"));
    eprintln!(
        "killed mid-clean {} times, leaving {killed_mid_clean:?}",
        killed_mid_clean.len()
    );
}

in_both_modes!(a_follower_catches_up_from_a_cleaned_leader_and_serves_the_same_keys);
/// Every replica compacts the same data: a follower that was down while
/// the leader wrote and cleaned catches up from the cleaned log (gaps in
/// offsets, emptied batches, delete horizons), and alone it serves each
/// key's latest value once the others are gone.
async fn a_follower_catches_up_from_a_cleaned_leader_and_serves_the_same_keys(mode: Mode) {
    let mut cluster = Cluster::start_in(
        mode,
        1,
        3,
        &[
            "broker.session.timeout.ms=3000",
            "broker.heartbeat.interval.ms=500",
            "replica.lag.time.max.ms=5000",
            "log.cleaner.backoff.ms=100",
            "log.retention.check.interval.ms=100",
        ],
    );
    let bootstrap = cluster.bootstrap();
    create_topic(
        &bootstrap,
        "compacted",
        3,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "4096"),
            ("segment.ms", "300"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "1000"),
            ("min.insync.replicas", "2"),
        ],
    )
    .await;
    let isr_is = |bootstrap: &str, n: usize| {
        let p = partitions(bootstrap, "compacted");
        p.len() == 1 && p[0].1 >= 0 && p[0].2 == n
    };
    wait_until(|| isr_is(&bootstrap, 3), Duration::from_secs(30));
    cluster.broker(3).kill9();
    wait_until(|| isr_is(&bootstrap, 2), Duration::from_secs(30));

    let p = producer(&bootstrap, true);
    let mut expected = View::new();
    for round in 0..20 {
        let records: Vec<(String, Option<Vec<u8>>)> = (0..50)
            .map(|k| {
                let value = (round < 19 || k >= 10).then(|| format!("{round}/{k}").into_bytes());
                (format!("key-{k:02}"), value)
            })
            .collect();
        let offsets = send_all(&p, "compacted", &records).await;
        latest(&records, &offsets, &mut expected);
    }
    // The last round deleted keys 0..10.
    expected.retain(|_, (_, v)| v.is_some());
    drop(p);
    let logs = || cluster.logs();
    wait_for_exactly(
        &bootstrap,
        "compacted",
        &expected,
        Duration::from_secs(60),
        &logs,
    );

    cluster.broker(3).restart();
    cluster.broker(3).wait_serving(Duration::from_secs(60));
    wait_until(|| isr_is(&bootstrap, 3), Duration::from_secs(60));
    let alone = cluster.broker(3).address();
    cluster.kill_brokers_except(3);
    wait_until(
        || {
            let p = partitions(&alone, "compacted");
            p.len() == 1 && p[0].1 == 3 && p[0].2 == 1
        },
        Duration::from_secs(30),
    );
    let logs = || cluster.logs();
    wait_for_exactly(
        &alone,
        "compacted",
        &expected,
        Duration::from_secs(60),
        &logs,
    );
}
