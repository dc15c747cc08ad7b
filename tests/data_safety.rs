//! Data that must survive what users do every day: a topic deleted and
//! created again under the same name, then a restart; a node started with
//! the usual 1024 open-file limit and thousands of partitions.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::acked::{verify, AckedWriter};
use common::cluster::{Cluster, Mode};
use common::Server;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;

/// Runs a `sluice topics` command until it succeeds (a deletion takes a
/// moment to reach every broker, so a re-creation may be refused at first).
fn until_ok(limit: Duration, mut run: impl FnMut() -> std::process::Output, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let out = run();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes with an acks=all idempotent producer until `count` more messages
/// are acknowledged; returns what was acknowledged.
async fn write(
    bootstrap: &str,
    topic: &str,
    count: usize,
) -> std::collections::BTreeMap<i32, Vec<(i64, u64)>> {
    let writer = AckedWriter::spawn(bootstrap, topic, PARTITIONS);
    writer.wait_for_more(count, Duration::from_secs(90));
    writer.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_topic_keeps_its_data_across_restarts() {
    let mut server = Server::start();
    let partitions = PARTITIONS.to_string();
    until_ok(
        Duration::from_secs(10),
        || server.cli(&["create", "orders", "--partitions", &partitions]),
        "create",
    );
    write(&server.bootstrap(), "orders", 300).await;
    until_ok(
        Duration::from_secs(10),
        || server.cli(&["delete", "orders"]),
        "delete",
    );
    until_ok(
        Duration::from_secs(30),
        || server.cli(&["create", "orders", "--partitions", &partitions]),
        "re-create",
    );
    let acked = write(&server.bootstrap(), "orders", 300).await;

    // A clean restart replays the metadata log: create, delete, create.
    assert!(server.stop(), "clean shutdown failed:\n{}", server.log());
    server.restart();
    verify(&server.bootstrap(), "orders", &acked);

    // And so does a kill -9.
    server.kill9();
    server.restart();
    verify(&server.bootstrap(), "orders", &acked);
}

in_both_modes!(a_recreated_replicated_topic_keeps_its_data_across_broker_and_cluster_restarts);
async fn a_recreated_replicated_topic_keeps_its_data_across_broker_and_cluster_restarts(
    mode: Mode,
) {
    let mut cluster = Cluster::start_in(mode, 3, 3, &["broker.session.timeout.ms=4000"]);
    let bootstrap = cluster.bootstrap();
    let partitions = PARTITIONS.to_string();
    let create = [
        "create",
        "orders",
        "--partitions",
        &partitions,
        "--replication-factor",
        "3",
    ];
    until_ok(Duration::from_secs(30), || cluster.cli(&create), "create");
    write(&bootstrap, "orders", 300).await;
    until_ok(
        Duration::from_secs(10),
        || cluster.cli(&["delete", "orders"]),
        "delete",
    );
    until_ok(
        Duration::from_secs(30),
        || cluster.cli(&create),
        "re-create",
    );
    let acked = write(&bootstrap, "orders", 300).await;

    // One broker restarts and replays the log from the controllers (ZK
    // mode: gets the controller's push).
    cluster.broker(1).kill9();
    cluster.broker(1).restart();
    cluster.broker(1).wait_serving(Duration::from_secs(60));
    verify(&bootstrap, "orders", &acked);

    // Then every node at once: no in-sync replica is left to copy from.
    cluster.kill9_and_restart_all(Duration::from_secs(120));
    verify(&bootstrap, "orders", &acked);
    // Each broker still holds its own copy, under the new topic's directory.
    for broker in &cluster.brokers {
        let dirs = partition_dirs(&broker.data, "orders");
        assert_eq!(
            dirs.len(),
            PARTITIONS as usize,
            "broker {}: {dirs:?}",
            broker.id
        );
    }
}

/// The `<topic>-<p>` directories under a data dir.
fn partition_dirs(data: &Path, topic: &str) -> BTreeSet<String> {
    std::fs::read_dir(data)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix(topic)
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(|p| p.parse::<i32>().is_ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

const TOPICS: usize = 20;
const PER_TOPIC: i32 = 100;

/// Reads every partition of the `fd-*` topics from the beginning; returns
/// how many messages came back.
/// One acknowledged record (acks=all) to every partition of every `fd-` topic.
async fn produce_one_to_each(bootstrap: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    let mut deliveries = Vec::new();
    for t in 0..TOPICS {
        let topic = format!("fd-{t:02}");
        for p in 0..PER_TOPIC {
            let record = FutureRecord::<(), _>::to(&topic)
                .partition(p)
                .payload("kept");
            deliveries.push(producer.send_result(record).expect("queued"));
        }
    }
    for delivery in deliveries {
        delivery.await.expect("delivered").expect("acknowledged");
    }
}

/// How many distinct records of the `fd-` topics a consumer reads from the
/// beginning, stopping once it has `wanted`.
fn consume_all(bootstrap: &str, wanted: usize, limit: Duration) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-fd-check")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for t in 0..TOPICS {
        for p in 0..PER_TOPIC {
            assignment
                .add_partition_offset(&format!("fd-{t:02}"), p, Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + limit;
    while seen.len() < wanted && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            seen.insert((m.topic().to_string(), m.partition(), m.offset()));
        }
    }
    seen.len()
}

/// The end of a server log, without the per-partition chatter.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("became leader") && !l.contains("became follower"))
        .collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn all_partition_dirs(data: &Path) -> usize {
    (0..TOPICS)
        .map(|t| partition_dirs(data, &format!("fd-{t:02}")).len())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_partitions_under_a_low_open_file_limit_are_served_and_never_deleted() {
    let wanted = TOPICS * PER_TOPIC as usize;
    let mut server = Server::start();
    let per_topic = PER_TOPIC.to_string();
    for t in 0..TOPICS {
        let name = format!("fd-{t:02}");
        until_ok(
            Duration::from_secs(30),
            || server.cli(&["create", &name, "--partitions", &per_topic]),
            "create",
        );
    }
    produce_one_to_each(&server.bootstrap()).await;
    assert_eq!(all_partition_dirs(&server.data), wanted);

    // The usual soft limit of 1024 descriptors (a systemd service's default)
    // is far below the three per segment 2,000 partitions hold.
    let hard = Server::hard_open_file_limit();
    assert!(
        hard >= 8192,
        "this test needs a hard open-file limit of 8192 or more, not {hard}"
    );
    server.kill9();
    server.set_open_file_limit(1024, hard);
    server.restart();
    assert_eq!(
        all_partition_dirs(&server.data),
        wanted,
        "partition directories were removed:\n{}",
        server.log()
    );
    let read = consume_all(&server.bootstrap(), wanted, Duration::from_secs(120));
    assert_eq!(
        read,
        wanted,
        "messages read back; log:\n{}",
        tail(&server.log())
    );

    // With a hard limit below the number of partitions, files are opened
    // and closed within a budget: every partition is still served, and
    // takes writes.
    server.kill9();
    server.set_open_file_limit(1024, 1024);
    server.restart();
    produce_one_to_each(&server.bootstrap()).await;
    let read = consume_all(&server.bootstrap(), 2 * wanted, Duration::from_secs(120));
    assert_eq!(
        read,
        2 * wanted,
        "messages read back under a hard limit of 1024; log:\n{}",
        tail(&server.log())
    );
    assert!(
        !server
            .log()
            .contains("the partition is offline on this broker"),
        "partitions went offline for want of descriptors:\n{}",
        tail(&server.log())
    );
    server.kill9();
    server.set_open_file_limit(hard, hard);
    server.restart();
    let read = consume_all(&server.bootstrap(), 2 * wanted, Duration::from_secs(120));
    assert_eq!(
        read,
        2 * wanted,
        "messages read back; log:\n{}",
        tail(&server.log())
    );
}
