//! Named listeners, as Kafka has them: every broker serves an EXTERNAL and
//! an INTERNAL listener, on different addresses, and each client is told the
//! endpoints of the listener it came in on. This is what lets the host and
//! the containers of `docker-compose.yml` each reach the brokers; here it
//! runs on loopback (127.0.0.1 and 127.0.0.2), in both modes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{Cluster, Mode};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Brokers: EXTERNAL on 127.0.0.1 (the harness's address), INTERNAL on
/// 127.0.0.2, replication over INTERNAL although EXTERNAL is listed first.
/// Controllers keep their CONTROLLER listener on 127.0.0.1.
const TWO_LISTENERS: &[&str] = &[
    "listeners=EXTERNAL://127.0.0.1:{port},INTERNAL://127.0.0.2:{port},CONTROLLER://127.0.0.1:{port}",
    "listener.security.protocol.map=EXTERNAL:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "inter.broker.listener.name=INTERNAL",
    "default.replication.factor=3",
    "min.insync.replicas=2",
];

/// The brokers (host:port) a librdkafka client bootstrapped at `bootstrap`
/// is told about.
fn advertised_to(bootstrap: &str) -> BTreeSet<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata
        .brokers()
        .iter()
        .map(|b| format!("{}:{}", b.host(), b.port()))
        .collect()
}

/// Produces `count` records with acks=all through `bootstrap` and reads
/// them back from the start, with librdkafka at its defaults.
async fn round_trip(bootstrap: &str, topic: &str, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..count {
        producer
            .send(
                FutureRecord::<(), str>::to(topic)
                    .partition(0)
                    .payload(&format!("record-{i}")),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("producing through {bootstrap}: {e}"));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("listeners-{topic}"))
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut read = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read.len() < count && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            read.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).to_string());
        }
    }
    let expected: Vec<String> = (0..count).map(|i| format!("record-{i}")).collect();
    assert_eq!(read, expected, "reading back through {bootstrap}");
}

async fn each_client_is_told_the_endpoints_of_its_listener(mode: Mode) {
    let mut cluster = Cluster::start_in(mode, 3, 3, TWO_LISTENERS);
    let ports: Vec<u16> = (1..=3).map(|id| cluster.broker(id).port).collect();
    let external: BTreeSet<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let internal: BTreeSet<String> = ports.iter().map(|p| format!("127.0.0.2:{p}")).collect();

    // Every broker answers each listener with that listener's endpoints,
    // once all three are registered.
    for port in &ports {
        for (host, expected) in [("127.0.0.1", &external), ("127.0.0.2", &internal)] {
            let bootstrap = format!("{host}:{port}");
            common::acked::wait_until(
                || advertised_to(&bootstrap) == *expected,
                Duration::from_secs(30),
            );
        }
    }

    // Replicated writes through either listener: followers fetch over
    // INTERNAL, clients use the listener they were given.
    for topic in ["from-outside", "from-inside"] {
        let out = cluster.cli(&["create", topic, "--partitions", "1"]);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
    }
    round_trip(&format!("127.0.0.1:{}", ports[0]), "from-outside", 20).await;
    round_trip(&format!("127.0.0.2:{}", ports[1]), "from-inside", 20).await;
}
in_both_modes!(each_client_is_told_the_endpoints_of_its_listener);
