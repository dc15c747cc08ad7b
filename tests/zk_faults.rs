//! ZooKeeper mode under faults, with real processes: a real three-server
//! ZooKeeper ensemble (Debian's zookeeper 3.8) and `sluice server` brokers
//! killed with kill -9, paused with SIGSTOP, fed garbage, and cut off from
//! their ensemble. Each test is bounded by generous limits and asserts on
//! outcomes, never on how long they took. Nothing skips: a test that cannot
//! start ZooKeeper or a broker fails with the logs.
//!
//! (The active controller killed, and a push from its old epoch refused,
//! is in tests/zookeeper.rs, run in both modes; consumer groups in ZooKeeper
//! mode are in tests/groups.rs, parametrised over both modes.)

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::acked::{verify, AckedWriter};
use common::cluster::{wait_for_controller, zk_view, Cluster};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{EnvelopeRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_broker::KafkaClient;
use sluice_metadata::control_requests::{ControlRequest, ControlResponse, PushHeader};
use sluice_zk::channel::send_control;

/// A short ZooKeeper session, so a lost broker is noticed within seconds
/// (the test ensemble's tick allows sessions down to 1 s), and a short
/// replica lag, so an ISR shrinks and grows back within the test's limits.
const FAST: &[&str] = &[
    "zookeeper.session.timeout.ms=4000",
    "replica.lag.time.max.ms=5000",
];

/// Kafka's STALE_CONTROLLER_EPOCH.
const STALE_CONTROLLER_EPOCH: i16 = 11;
/// Kafka's INVALID_REQUEST.
const INVALID_REQUEST: i16 = 42;
/// Kafka's STALE_BROKER_EPOCH.
const STALE_BROKER_EPOCH: i16 = 77;

/// Polls `condition` every 200 ms until it holds; fails with every log
/// after `limit`.
fn wait_for(cluster: &Cluster, limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Creates `topic` with replication factor 3 and min.insync.replicas 2,
/// and waits until each partition has a leader and a full ISR.
fn create_replicated(cluster: &mut Cluster, topic: &str, partitions: i32) {
    let out = cluster.cli(&[
        "create",
        topic,
        "--partitions",
        &partitions.to_string(),
        "--replication-factor",
        "3",
        "--config",
        "min.insync.replicas=2",
    ]);
    assert!(
        out.status.success(),
        "creating {topic}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let bootstrap = cluster.bootstrap();
    wait_for(cluster, Duration::from_secs(60), "a full ISR", || {
        (0..partitions).all(|p| {
            state(&bootstrap, topic, p).is_some_and(|(leader, isr)| leader >= 0 && isr.len() == 3)
        })
    });
}

/// The leader and ISR of `topic`'s `partition`, as the brokers at
/// `bootstrap` describe it.
fn state(bootstrap: &str, topic: &str, partition: i32) -> Option<(i32, Vec<i32>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let topic = metadata.topics().iter().find(|t| t.name() == topic)?;
    if topic.error().is_some() {
        return None;
    }
    let p = topic.partitions().iter().find(|p| p.id() == partition)?;
    if p.error().is_some() {
        return None;
    }
    let mut isr = p.isr().to_vec();
    isr.sort_unstable();
    Some((p.leader(), isr))
}

/// The addresses of every broker but `except`.
/// Creates a 2-partition topic with the CLI, asking again until a
/// controller takes it (or `limit` passes).
fn create_once_a_controller_takes_it(cluster: &mut Cluster, topic: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let out = cluster.cli(&["create", topic, "--partitions", "2"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "creating {topic}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn bootstrap_without(cluster: &Cluster, except: &[i32]) -> String {
    cluster
        .brokers
        .iter()
        .filter(|b| !except.contains(&b.id))
        .map(|b| b.address())
        .collect::<Vec<_>>()
        .join(",")
}

/// Produces sequence numbers `from..from + count` round-robin over
/// `partitions` with acks=all; returns what was acknowledged, in
/// [`verify`]'s shape. Fails if any message is not acknowledged.
async fn produce(
    cluster: &Cluster,
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    from: u64,
    count: u64,
) -> BTreeMap<i32, Vec<(i64, u64)>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let payloads: Vec<(u64, String)> = (from..from + count).map(|s| (s, s.to_string())).collect();
    let mut pending = Vec::new();
    for (seq, payload) in &payloads {
        let record = FutureRecord::<(), _>::to(topic)
            .partition((seq % partitions as u64) as i32)
            .payload(payload);
        pending.push((*seq, producer.send(record, Duration::from_secs(60))));
    }
    let mut acked: BTreeMap<i32, Vec<(i64, u64)>> = BTreeMap::new();
    for (seq, delivery) in pending {
        match delivery.await {
            Ok(d) => acked.entry(d.partition).or_default().push((d.offset, seq)),
            Err((e, _)) => panic!(
                "message {seq} to {topic} not acknowledged: {e}\n{}",
                cluster.logs()
            ),
        }
    }
    acked
}

/// Sends `request_data` in an Envelope to the broker at `address`, as the
/// controller sends its pushes, and returns the Envelope's error code and
/// the decoded control response.
async fn send_raw(address: &str, request_data: &[u8]) -> (i16, ControlResponse) {
    let mut client = KafkaClient::connect(address, "sluice-test")
        .await
        .expect("connecting to the broker");
    let envelope = EnvelopeRequest::default()
        .with_request_data(Bytes::copy_from_slice(request_data))
        .with_client_host_address(Bytes::new());
    let response = client
        .send_version(envelope, 0)
        .await
        .expect("an Envelope answer");
    let data = response.response_data.unwrap_or_default();
    let decoded = ControlResponse::decode(&data).unwrap_or_default();
    (response.error_code, decoded)
}

/// An UpdateMetadata that, if accepted, would leave the receiver knowing no
/// live broker and no topic at all.
fn wiping_push(controller_id: i32, controller_epoch: i32, broker_epoch: i64) -> ControlRequest {
    ControlRequest::UpdateMetadata {
        header: PushHeader {
            controller_id,
            controller_epoch,
            broker_epoch,
        },
        full: true,
        live_brokers: Vec::new(),
        partitions: Vec::new(),
    }
}

/// The broker epoch (registration czxid) ZooKeeper holds for `broker`.
async fn registered_epoch(cluster: &Cluster, broker: i32) -> Option<i64> {
    let view = zk_view(cluster).await?;
    view.brokers
        .iter()
        .find(|r| r.broker_id == broker)
        .map(|r| r.epoch)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// 1. The leader of a replicated partition killed with kill -9 while an
///    acks=all producer writes: writes resume once its session expires and
///    the controller elects another leader; restarted, it rejoins the ISR;
///    every acknowledged message is read back once, in order, at its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_loses_no_acknowledged_write_and_rejoins_the_isr() {
    let mut cluster = Cluster::start_zk(3, 3, FAST);
    wait_for_controller(&mut cluster, Duration::from_secs(60)).await;
    create_replicated(&mut cluster, "acked", 1);
    let bootstrap = cluster.bootstrap();
    let (leader, _) = state(&bootstrap, "acked", 0).expect("a leader");

    let writer = AckedWriter::spawn(&bootstrap, "acked", 1);
    let target = writer.count() + 200;
    wait_for(
        &cluster,
        Duration::from_secs(60),
        "200 acked writes",
        || writer.count() >= target,
    );

    cluster.broker(leader).kill9();
    let others = bootstrap_without(&cluster, &[leader]);
    wait_for(&cluster, Duration::from_secs(90), "a new leader", || {
        state(&others, "acked", 0).is_some_and(|(l, _)| l >= 0 && l != leader)
    });
    let target = writer.count() + 200;
    wait_for(
        &cluster,
        Duration::from_secs(120),
        "writes resumed after the leader's kill",
        || writer.count() >= target,
    );

    cluster.broker(leader).restart();
    cluster
        .broker(leader)
        .wait_serving(Duration::from_secs(120));
    wait_for(
        &cluster,
        Duration::from_secs(120),
        "the restarted broker back in the ISR",
        || state(&others, "acked", 0).is_some_and(|(_, isr)| isr.contains(&leader)),
    );
    let target = writer.count() + 100;
    wait_for(&cluster, Duration::from_secs(60), "100 more acked", || {
        writer.count() >= target
    });
    let acked = writer.stop().await;
    let logs = verify(&bootstrap, "acked", &acked);
    println!(
        "leader {leader} killed; {} messages acknowledged, log of {} read back",
        acked.values().map(Vec::len).sum::<usize>(),
        logs[&0].len()
    );
}

/// 3. A zombie: the leader is paused (SIGSTOP) past its session timeout, so
///    ZooKeeper expires its session and the controller moves leadership.
///    Resumed, it stops leading, registers again with a new broker epoch,
///    and rejoins as a follower; its log then matches the new leader's
///    exactly (no tail of its own), and every acks=all message survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_whose_session_expired_comes_back_as_a_follower() {
    let mut cluster = Cluster::start_zk(3, 3, FAST);
    wait_for_controller(&mut cluster, Duration::from_secs(60)).await;
    create_replicated(&mut cluster, "zombie", 1);
    let bootstrap = cluster.bootstrap();
    let (zombie, _) = state(&bootstrap, "zombie", 0).expect("a leader");
    let zombie_address = cluster.broker(zombie).address();
    let epoch_before = registered_epoch(&cluster, zombie)
        .await
        .expect("the leader's registration");

    let writer = AckedWriter::spawn(&bootstrap, "zombie", 1);
    let target = writer.count() + 200;
    wait_for(
        &cluster,
        Duration::from_secs(60),
        "200 acked writes",
        || writer.count() >= target,
    );

    cluster.broker(zombie).pause();
    let others = bootstrap_without(&cluster, &[zombie]);
    wait_for(
        &cluster,
        Duration::from_secs(90),
        "leadership moved off the paused broker",
        || state(&others, "zombie", 0).is_some_and(|(l, _)| l >= 0 && l != zombie),
    );
    let target = writer.count() + 100;
    wait_for(
        &cluster,
        Duration::from_secs(120),
        "writes resumed on the new leader",
        || writer.count() >= target,
    );
    cluster.broker(zombie).resume();

    // It noticed: a new registration (a new broker epoch), and it no longer
    // says it leads, even when asked directly.
    wait_for(
        &cluster,
        Duration::from_secs(90),
        "the resumed broker registered with a new epoch",
        || block_on(registered_epoch(&cluster, zombie)).is_some_and(|e| e != epoch_before),
    );
    wait_for(
        &cluster,
        Duration::from_secs(90),
        "the resumed broker no longer leads",
        || state(&zombie_address, "zombie", 0).is_some_and(|(l, _)| l >= 0 && l != zombie),
    );
    wait_for(
        &cluster,
        Duration::from_secs(120),
        "the resumed broker back in the ISR",
        || state(&others, "zombie", 0).is_some_and(|(_, isr)| isr.contains(&zombie)),
    );
    let target = writer.count() + 100;
    wait_for(&cluster, Duration::from_secs(60), "100 more acked", || {
        writer.count() >= target
    });
    let acked = writer.stop().await;
    let leader_log = verify(&others, "zombie", &acked);
    // Let the followers fetch the last batches.
    wait_for(&cluster, Duration::from_secs(60), "a full ISR", || {
        state(&others, "zombie", 0).is_some_and(|(_, isr)| isr.len() == 3)
    });
    std::thread::sleep(Duration::from_secs(3));

    // Its own copy, read from it: the other two killed, it is the only ISR
    // member left and leads again (and becomes the controller).
    let other_ids: Vec<i32> = cluster
        .brokers
        .iter()
        .map(|b| b.id)
        .filter(|&id| id != zombie)
        .collect();
    for id in other_ids {
        cluster.broker(id).kill9();
    }
    wait_for(
        &cluster,
        Duration::from_secs(120),
        "the former zombie leads again",
        || state(&zombie_address, "zombie", 0).is_some_and(|(l, _)| l == zombie),
    );
    let own_log = verify(&zombie_address, "zombie", &acked);
    assert_eq!(
        own_log[&0].len(),
        leader_log[&0].len(),
        "the former zombie's log differs in length from the leader's"
    );
    assert_eq!(
        own_log, leader_log,
        "the former zombie's log differs from the leader's"
    );
    println!(
        "zombie {zombie}: epoch {epoch_before} -> {:?}; {} messages, logs identical",
        block_on(registered_epoch(&cluster, zombie)),
        leader_log[&0].len()
    );
}

/// 4. Two of three ZooKeeper servers killed: no quorum. Brokers keep
///    serving produce and fetch on the partitions they have (for longer than
///    the session timeout); creating a topic fails with an error within its
///    timeout; with the servers back, topic creation works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_keep_serving_while_zookeeper_has_no_quorum() {
    let mut cluster = Cluster::start_zk(3, 3, FAST);
    wait_for_controller(&mut cluster, Duration::from_secs(60)).await;
    create_replicated(&mut cluster, "steady", 3);
    let bootstrap = cluster.bootstrap();
    let mut acked = produce(&cluster, &bootstrap, "steady", 3, 0, 100).await;

    cluster.zk().kill9(1);
    cluster.zk().kill9(2);
    // Past the session timeout: the brokers are cut off for longer than
    // their sessions could last.
    std::thread::sleep(Duration::from_secs(8));
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg("120")
        .arg(common::BIN)
        .args(["topics", "--bootstrap-server", &bootstrap])
        .args(["create", "during-outage", "--partitions", "1"])
        .output()
        .expect("running sluice topics");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(124),
        "topic creation hung without ZooKeeper\n{}",
        cluster.logs()
    );
    assert!(
        !out.status.success(),
        "a topic was created without a ZooKeeper quorum\n{}",
        cluster.logs()
    );
    assert!(!stderr.trim().is_empty(), "no error message");
    println!(
        "creation without a quorum failed after {:?}: {}",
        started.elapsed(),
        stderr.trim()
    );

    for (p, more) in produce(&cluster, &bootstrap, "steady", 3, 100, 100).await {
        acked.entry(p).or_default().extend(more);
    }
    verify(&bootstrap, "steady", &acked);

    cluster.zk().restart(1);
    cluster.zk().restart(2);
    cluster.zk().wait_ready(Duration::from_secs(90));
    create_once_a_controller_takes_it(&mut cluster, "after-outage", Duration::from_secs(120));
    let after = produce(&cluster, &bootstrap, "after-outage", 2, 0, 20).await;
    verify(&bootstrap, "after-outage", &after);
    for (p, more) in produce(&cluster, &bootstrap, "steady", 3, 200, 30).await {
        acked.entry(p).or_default().extend(more);
    }
    verify(&bootstrap, "steady", &acked);
}

/// 5. Bad input and bad state: garbage in an Envelope, a push from an old
///    controller epoch and one for an old broker epoch are refused with
///    error codes and change nothing; a corrupt `/brokers/topics/<t>` is
///    logged as an error with its path while every broker keeps serving the
///    other topics, and a new controller loading it still comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_pushes_and_a_corrupt_topic_znode_harm_nothing() {
    let mut cluster = Cluster::start_zk(3, 3, FAST);
    let (controller, epoch) = wait_for_controller(&mut cluster, Duration::from_secs(60)).await;
    create_replicated(&mut cluster, "good", 3);
    let bootstrap = cluster.bootstrap();
    let mut acked = produce(&cluster, &bootstrap, "good", 3, 0, 30).await;

    let target = cluster
        .brokers
        .iter()
        .find(|b| b.id != controller)
        .map(|b| (b.id, b.address()))
        .unwrap();
    let (target_id, target_address) = target;
    let (code, response) = send_raw(&target_address, b"{garbage").await;
    assert_eq!(code, INVALID_REQUEST, "{response:?}");
    assert_eq!(response.error_code, INVALID_REQUEST, "{response:?}");
    assert!(!response.message.is_empty());
    let (code, _) = send_raw(&target_address, b"").await;
    assert_ne!(code, 0, "an empty Envelope was accepted");

    let mut client = KafkaClient::connect(&target_address, "sluice-test")
        .await
        .unwrap();
    let stale = send_control(&mut client, &wiping_push(controller, epoch - 1, -1))
        .await
        .expect("an answer");
    assert_eq!(stale.error_code, STALE_CONTROLLER_EPOCH, "{stale:?}");
    let old_registration = send_control(&mut client, &wiping_push(controller, epoch, 1))
        .await
        .expect("an answer");
    assert_eq!(
        old_registration.error_code, STALE_BROKER_EPOCH,
        "{old_registration:?}"
    );
    // Nothing changed: the broker still knows the topic, its leaders and
    // every broker, and serves it.
    for p in 0..3 {
        let (leader, isr) = state(&target_address, "good", p).expect("the topic is still known");
        assert!(
            leader >= 0 && isr.len() == 3,
            "partition {p}: {leader} {isr:?}"
        );
    }
    assert!(cluster.broker(target_id).is_running());
    for (p, more) in produce(&cluster, &target_address, "good", 3, 30, 30).await {
        acked.entry(p).or_default().extend(more);
    }
    verify(&target_address, "good", &acked);

    // A corrupt topic znode, written behind the brokers' backs.
    let connect = cluster.zookeeper_connect.clone().unwrap();
    let zk = zookeeper_client::Client::connector()
        .connect(&connect)
        .await
        .expect("connecting to ZooKeeper");
    zk.create(
        "/brokers/topics/bad",
        b"{garbage",
        &zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
    )
    .await
    .expect("writing the corrupt znode");
    let logged = |cluster: &Cluster, id: i32| {
        cluster
            .brokers
            .iter()
            .find(|b| b.id == id)
            .unwrap()
            .log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("/brokers/topics/bad"))
    };
    wait_for(
        &cluster,
        Duration::from_secs(60),
        "the controller logs the corrupt znode as an error with its path",
        || logged(&cluster, controller),
    );
    for broker in cluster.brokers.iter_mut() {
        assert!(broker.is_running(), "broker {} exited", broker.id);
    }
    for (p, more) in produce(&cluster, &bootstrap, "good", 3, 60, 30).await {
        acked.entry(p).or_default().extend(more);
    }
    verify(&bootstrap, "good", &acked);
    let out = cluster.cli(&["create", "beside-bad", "--partitions", "2"]);
    assert!(
        out.status.success(),
        "creating a topic beside the corrupt one: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );

    // A new controller reads every topic znode when it wins: it logs the
    // corrupt one and comes up all the same.
    cluster.broker(controller).kill9();
    let successor = {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (id, new_epoch) = wait_for_controller(&mut cluster, Duration::from_secs(60)).await;
            if id != controller {
                assert!(new_epoch > epoch);
                break id;
            }
            assert!(
                Instant::now() < deadline,
                "no new controller\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_for(
        &cluster,
        Duration::from_secs(60),
        "the new controller logs the corrupt znode",
        || logged(&cluster, successor),
    );
    let live = bootstrap_without(&cluster, &[controller]);
    create_once_a_controller_takes_it(
        &mut cluster,
        "after-new-controller",
        Duration::from_secs(90),
    );
    let fresh = produce(&cluster, &live, "after-new-controller", 2, 0, 20).await;
    verify(&live, "after-new-controller", &fresh);
    for (p, more) in produce(&cluster, &live, "good", 3, 90, 30).await {
        acked.entry(p).or_default().extend(more);
    }
    verify(&live, "good", &acked);
    for broker in cluster.brokers.iter_mut().filter(|b| b.id != controller) {
        assert!(broker.is_running(), "broker {} exited", broker.id);
    }
}

/// 6. A broker restarted after kill -9 binds its listener before the
///    controller has told it the cluster (the controller's pushes arrive on
///    that listener), and with the old registration still in ZooKeeper until
///    its session expires, that takes seconds. A client asking in that
///    window must not hear that its topic is gone: librdkafka then sets the
///    topic's partition count to 0 and a consumer group member loses its
///    assignment. Every Metadata answer from the restarted broker lists the
///    topic with all its partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_broker_never_answers_that_a_topic_is_unknown() {
    let mut cluster = Cluster::start_zk(1, 1, FAST);
    wait_for_controller(&mut cluster, Duration::from_secs(60)).await;
    let out = cluster.cli(&["create", "kept", "--partitions", "3"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let address = cluster.broker(1).address();
    wait_for(&cluster, Duration::from_secs(60), "3 leaders", || {
        (0..3).all(|p| state(&address, "kept", p).is_some_and(|(leader, _)| leader == 1))
    });

    cluster.broker(1).kill9();
    let served =
        |cluster: &mut Cluster| cluster.broker(1).log().matches("serving Kafka on").count();
    let served_before = served(&mut cluster);
    cluster.broker(1).restart();
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("kept"))))]));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answers = 0;
    // Ask on fresh connections from the moment the port accepts until the
    // broker has joined (it prints its serving line) and a bit beyond.
    let mut joined_at: Option<Instant> = None;
    while joined_at.is_none_or(|at| at.elapsed() < Duration::from_secs(2)) {
        assert!(Instant::now() < deadline, "no answers\n{}", cluster.logs());
        if joined_at.is_none() && served(&mut cluster) > served_before {
            joined_at = Some(Instant::now());
        }
        let Ok(mut client) = KafkaClient::connect(&address, "sluice-test").await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        client.set_request_timeout(Duration::from_secs(60));
        let Ok(response) = client.send(request.clone()).await else {
            continue;
        };
        answers += 1;
        let topic = &response.topics[0];
        assert_eq!(
            (topic.error_code, topic.partitions.len()),
            (0, 3),
            "answer {answers} of the restarted broker: {topic:?}\n{}",
            cluster.logs()
        );
    }
    assert!(answers > 0);
}
