//! Consumer groups with librdkafka (the rdkafka crate) and the raw group
//! APIs, against real server processes: membership and offsets live in the
//! metadata log (in ZooKeeper, in ZooKeeper mode), so they survive
//! coordinator deaths and restarts. The cluster tests run in both modes
//! (`<name>::kraft`, `<name>::zk`); single-server ones are KRaft (ZooKeeper
//! mode has no single-process form).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::{wait_for_topic_everywhere, Cluster, Mode};
use common::Server;
use kafka_protocol::messages::{
    join_group_request, offset_commit_request, offset_fetch_request, DescribeGroupsRequest,
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, OffsetCommitRequest,
    OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use sluice_broker::KafkaClient;

const FAST_GROUPS: &str = "group.initial.rebalance.delay.ms=0";

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

async fn produce(bootstrap: &str, topic: &str, partitions: i32, from: usize, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    let payloads: Vec<String> = (from..from + count).map(|i| i.to_string()).collect();
    let mut pending = Vec::new();
    for (i, payload) in (from..).zip(&payloads) {
        let record = FutureRecord::<(), _>::to(topic)
            .partition((i % partitions as usize) as i32)
            .payload(payload);
        pending.push(producer.send(record, Duration::from_secs(30)));
    }
    for p in pending {
        p.await.expect("acknowledged");
    }
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32, rf: i32) {
    let out = std::process::Command::new(common::BIN)
        .args(["topics", "--bootstrap-server", bootstrap, "create", topic])
        .args(["--partitions", &partitions.to_string()])
        .args(["--replication-factor", &rf.to_string()])
        .output()
        .expect("sluice topics");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What one member consumed: (partition, offset, payload, committed).
type Seen = Arc<Mutex<Vec<(i32, i64, String, bool)>>>;

/// Counts the rebalances a consumer goes through (each starts with a revoke).
#[derive(Clone, Default)]
struct Rebalances(Arc<std::sync::atomic::AtomicUsize>);

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A group member polling on its own thread and committing each message
/// synchronously after processing it.
struct Member {
    stop: Arc<AtomicBool>,
    seen: Seen,
    assignment: Arc<Mutex<BTreeSet<i32>>>,
    rebalances: Rebalances,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    fn spawn(bootstrap: &str, group: &str, topic: &str, extra: &[(&str, &str)]) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        let rebalances = Rebalances::default();
        let consumer: BaseConsumer<Rebalances> = config
            .create_with_context(rebalances.clone())
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Seen = Arc::default();
        let assignment: Arc<Mutex<BTreeSet<i32>>> = Arc::default();
        let thread = {
            let (stop, seen, assignment) = (stop.clone(), seen.clone(), assignment.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        let payload =
                            String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
                        let committed = consumer.commit_message(&m, CommitMode::Sync).is_ok();
                        seen.lock()
                            .unwrap()
                            .push((m.partition(), m.offset(), payload, committed));
                    }
                    if let Ok(tpl) = consumer.assignment() {
                        *assignment.lock().unwrap() =
                            tpl.elements().iter().map(|e| e.partition()).collect();
                    }
                }
                // Dropping the consumer leaves the group.
            })
        };
        Self {
            stop,
            seen,
            assignment,
            rebalances,
            thread: Some(thread),
        }
    }

    fn assigned(&self) -> BTreeSet<i32> {
        self.assignment.lock().unwrap().clone()
    }

    fn leave(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.leave();
    }
}

fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {limit:?}");
}

/// Every partition is assigned to exactly one of the members.
fn partitioned_exactly_once(members: &[&Member], partitions: i32) -> bool {
    let mut all = Vec::new();
    for m in members {
        all.extend(m.assigned());
    }
    all.sort();
    all == (0..partitions).collect::<Vec<_>>()
}

/// Checks that every payload 0..total was consumed, and that any payload
/// consumed twice had its first commit fail (so redelivery was allowed).
fn check_consumed(members: &[&Member], total: usize) {
    let mut firsts: BTreeMap<String, bool> = BTreeMap::new();
    for m in members {
        for (_, _, payload, committed) in m.seen.lock().unwrap().iter() {
            match firsts.get(payload) {
                Some(true) => {
                    panic!("payload {payload} was consumed again after its offset was committed")
                }
                _ => {
                    firsts.insert(payload.clone(), *committed);
                }
            }
        }
    }
    for i in 0..total {
        assert!(
            firsts.contains_key(&i.to_string()),
            "payload {i} was never consumed"
        );
    }
}

fn consumed(members: &[&Member]) -> usize {
    let distinct: BTreeSet<String> = members
        .iter()
        .flat_map(|m| {
            m.seen
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.2.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    distinct.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_and_rebalance_on_join_and_leave() {
    let server = Server::start_with(&[FAST_GROUPS]);
    let bootstrap = server.bootstrap();
    create_topic(&bootstrap, "shared", 6, 1);
    produce(&bootstrap, "shared", 6, 0, 600).await;

    let mut a = Member::spawn(&bootstrap, "trio", "shared", &[]);
    wait_until(Duration::from_secs(30), "a owns every partition", || {
        partitioned_exactly_once(&[&a], 6)
    });
    let b = Member::spawn(&bootstrap, "trio", "shared", &[]);
    let c = Member::spawn(&bootstrap, "trio", "shared", &[]);
    wait_until(
        Duration::from_secs(60),
        "three members share the partitions",
        || {
            partitioned_exactly_once(&[&a, &b, &c], 6)
                && [&a, &b, &c].iter().all(|m| m.assigned().len() == 2)
        },
    );
    wait_until(Duration::from_secs(60), "600 messages consumed", || {
        consumed(&[&a, &b, &c]) == 600
    });

    // One leaves: the other two take its partitions and the new messages.
    a.leave();
    wait_until(
        Duration::from_secs(60),
        "two members share the partitions",
        || partitioned_exactly_once(&[&b, &c], 6),
    );
    produce(&bootstrap, "shared", 6, 600, 300).await;
    wait_until(Duration::from_secs(60), "900 messages consumed", || {
        consumed(&[&a, &b, &c]) == 900
    });
    check_consumed(&[&a, &b, &c], 900);
    drop((b, c));

    // A new member of the same group starts from the committed offsets:
    // nothing is left to read.
    produce(&bootstrap, "shared", 6, 900, 6).await;
    let d = Member::spawn(&bootstrap, "trio", "shared", &[]);
    wait_until(
        Duration::from_secs(60),
        "the 6 new messages consumed",
        || consumed(&[&d]) == 6,
    );
    std::thread::sleep(Duration::from_secs(1));
    let seen: BTreeSet<String> = d.seen.lock().unwrap().iter().map(|e| e.2.clone()).collect();
    assert_eq!(seen, (900..906).map(|i| i.to_string()).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarting_within_its_session_keeps_its_partitions() {
    let server = Server::start_with(&[FAST_GROUPS]);
    let bootstrap = server.bootstrap();
    create_topic(&bootstrap, "pinned", 4, 1);
    let settings = |instance: &'static str| {
        [
            ("group.instance.id", instance),
            ("session.timeout.ms", "10000"),
        ]
    };
    let mut a = Member::spawn(&bootstrap, "statics", "pinned", &settings("member-a"));
    let b = Member::spawn(&bootstrap, "statics", "pinned", &settings("member-b"));
    wait_until(
        Duration::from_secs(60),
        "two static members share 4 partitions",
        || partitioned_exactly_once(&[&a, &b], 4) && a.assigned().len() == 2,
    );
    let a_partitions = a.assigned();
    let b_rebalances = b.rebalances.0.load(Ordering::SeqCst);

    // A static member closing does not leave the group; restarted within
    // its session it takes its place back without a rebalance.
    a.leave();
    std::thread::sleep(Duration::from_secs(2));
    let a2 = Member::spawn(&bootstrap, "statics", "pinned", &settings("member-a"));
    wait_until(
        Duration::from_secs(30),
        "the restarted member has partitions",
        || !a2.assigned().is_empty(),
    );
    assert_eq!(a2.assigned(), a_partitions);
    produce(&bootstrap, "pinned", 4, 0, 40).await;
    wait_until(Duration::from_secs(30), "40 messages consumed", || {
        consumed(&[&a2, &b]) == 40
    });
    assert_eq!(
        b.rebalances.0.load(Ordering::SeqCst),
        b_rebalances,
        "the other member went through a rebalance"
    );
    assert_eq!(a2.rebalances.0.load(Ordering::SeqCst), 0);
}

/// The broker coordinating `group`, asked of `bootstrap`.
async fn coordinator_of(bootstrap: &str, group: &str) -> Option<(i32, String)> {
    let first = bootstrap.split(',').next()?;
    let mut client = KafkaClient::connect(first, "sluice-test").await.ok()?;
    let response = client
        .send(
            FindCoordinatorRequest::default()
                .with_key_type(0)
                .with_coordinator_keys(vec![s(group)]),
        )
        .await
        .ok()?;
    let c = response.coordinators.first()?;
    (c.error_code == 0).then(|| (c.node_id.0, format!("{}:{}", c.host, c.port)))
}

/// The committed offset of each partition of `topic` for `group`.
async fn committed(
    coordinator: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let mut client = KafkaClient::connect(coordinator, "sluice-test")
        .await
        .expect("connect to the coordinator");
    let response = client
        .send(OffsetFetchRequest::default().with_groups(vec![
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s(group)))
                    .with_topics(Some(vec![offset_fetch_request::OffsetFetchRequestTopics::default()
                        .with_name(TopicName(s(topic)))
                        .with_partition_indexes((0..partitions).collect())])),
            ]))
        .await
        .expect("offset fetch");
    let group = &response.groups[0];
    assert_eq!(group.error_code, 0, "offset fetch error");
    group.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.committed_offset))
        .collect()
}

in_both_modes!(
    the_group_survives_its_coordinator_being_killed,
    flavor = "multi_thread",
    worker_threads = 2
);
/// The coordinator killed with kill -9; the group moves to another broker
/// with its committed offsets (KRaft: in the metadata log; ZooKeeper mode:
/// under `/consumers`), and consumption resumes without going back before them.
async fn the_group_survives_its_coordinator_being_killed(mode: Mode) {
    let mut cluster = Cluster::start_in(
        mode,
        3,
        3,
        &[
            FAST_GROUPS,
            "broker.session.timeout.ms=3000",
            "broker.heartbeat.interval.ms=500",
        ],
    );
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "moving", 6, 3);
    produce(&bootstrap, "moving", 6, 0, 300).await;

    let (coordinator, address) = coordinator_of(&bootstrap, "movers")
        .await
        .expect("a coordinator");
    let member_bootstrap: String = cluster
        .brokers
        .iter()
        .filter(|b| b.id != coordinator)
        .map(|b| b.address())
        .collect::<Vec<_>>()
        .join(",");
    let settings = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ];
    let a = Member::spawn(&member_bootstrap, "movers", "moving", &settings);
    let b = Member::spawn(&member_bootstrap, "movers", "moving", &settings);
    wait_until(Duration::from_secs(60), "300 messages consumed", || {
        consumed(&[&a, &b]) == 300
    });
    let before = committed(&address, "movers", "moving", 6).await;
    assert_eq!(before.values().sum::<i64>(), 300, "{before:?}");

    cluster.broker(coordinator).kill9();
    produce(&member_bootstrap, "moving", 6, 300, 300).await;
    let (successor, new_address) = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match coordinator_of(&member_bootstrap, "movers").await {
                Some((id, addr)) if id != coordinator => break (id, addr),
                _ if Instant::now() > deadline => panic!("no new coordinator"),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    assert_ne!(successor, coordinator);
    wait_until(Duration::from_secs(90), "600 messages consumed", || {
        consumed(&[&a, &b]) == 600
    });
    check_consumed(&[&a, &b], 600);
    let after = committed(&new_address, "movers", "moving", 6).await;
    for (p, offset) in &before {
        assert!(
            after[p] >= *offset,
            "partition {p}: {offset} went back to {}",
            after[p]
        );
    }
    wait_until(Duration::from_secs(30), "every offset committed", || {
        let total: i64 = block_on(committed(&new_address, "movers", "moving", 6))
            .values()
            .sum();
        total == 600
    });
    wait_until(
        Duration::from_secs(30),
        "both members still own partitions",
        || partitioned_exactly_once(&[&a, &b], 6),
    );
}

in_both_modes!(
    a_member_killed_without_leaving_loses_its_partitions,
    flavor = "multi_thread",
    worker_threads = 2
);
/// One of three members killed with kill -9 (a kcat
/// process: it never sends LeaveGroup) loses its partitions to the other
/// two once its session times out; they consume everything, committing as
/// they go, and a new member of the group resumes from those commits.
async fn a_member_killed_without_leaving_loses_its_partitions(mode: Mode) {
    let cluster = Cluster::start_in(
        mode,
        3,
        3,
        &[
            FAST_GROUPS,
            "broker.session.timeout.ms=3000",
            "broker.heartbeat.interval.ms=500",
        ],
    );
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "pack", 6, 3);
    wait_for_topic_everywhere(&bootstrap, "pack", 6);
    let settings = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ];
    let b = Member::spawn(&bootstrap, "pack", "pack", &settings);
    let c = Member::spawn(&bootstrap, "pack", "pack", &settings);
    let kcat_log = tempfile::NamedTempFile::new().unwrap();
    let mut a = std::process::Command::new("kcat")
        .args(["-b", &bootstrap, "-G", "pack", "pack", "-q"])
        .args([
            "-X",
            "session.timeout.ms=6000",
            "-X",
            "heartbeat.interval.ms=500",
        ])
        .args([
            "-X",
            "enable.auto.commit=false",
            "-X",
            "auto.offset.reset=earliest",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(kcat_log.reopen().unwrap())
        .spawn()
        .expect("kcat");
    wait_until(
        Duration::from_secs(90),
        &format!("{mode:?}: three members share six partitions"),
        || {
            if let Ok(Some(status)) = a.try_wait() {
                panic!(
                    "kcat exited ({status}): {}",
                    std::fs::read_to_string(kcat_log.path()).unwrap_or_default()
                );
            }
            let (mine_b, mine_c) = (b.assigned(), c.assigned());
            mine_b.len() == 2 && mine_c.len() == 2 && mine_b.is_disjoint(&mine_c)
        },
    );
    // kill -9: no LeaveGroup; the coordinator notices by its session.
    a.kill().unwrap();
    a.wait().unwrap();
    wait_until(
        Duration::from_secs(90),
        &format!("{mode:?}: the two survivors own every partition"),
        || partitioned_exactly_once(&[&b, &c], 6),
    );
    produce(&bootstrap, "pack", 6, 0, 600).await;
    wait_until(
        Duration::from_secs(90),
        &format!("{mode:?}: 600 messages consumed"),
        || consumed(&[&b, &c]) == 600,
    );
    check_consumed(&[&b, &c], 600);
    drop((b, c));

    produce(&bootstrap, "pack", 6, 600, 6).await;
    let d = Member::spawn(&bootstrap, "pack", "pack", &settings);
    wait_until(
        Duration::from_secs(90),
        &format!("{mode:?}: the 6 new messages consumed"),
        || consumed(&[&d]) == 6,
    );
    std::thread::sleep(Duration::from_secs(1));
    let seen: BTreeSet<String> = d.seen.lock().unwrap().iter().map(|e| e.2.clone()).collect();
    assert_eq!(
        seen,
        (600..606).map(|i| i.to_string()).collect(),
        "{mode:?}"
    );
}

/// Runs a future to completion from synchronous test code inside the runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

in_both_modes!(
    offsets_and_membership_come_back_after_a_whole_cluster_restart,
    flavor = "multi_thread",
    worker_threads = 2
);
async fn offsets_and_membership_come_back_after_a_whole_cluster_restart(mode: Mode) {
    let mut cluster = Cluster::start_in(mode, 3, 2, &[FAST_GROUPS]);
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "durable", 4, 2);
    produce(&bootstrap, "durable", 4, 0, 200).await;
    let member = Member::spawn(
        &bootstrap,
        "keepers",
        "durable",
        &[("session.timeout.ms", "60000")],
    );
    wait_until(Duration::from_secs(60), "200 messages consumed", || {
        consumed(&[&member]) == 200
    });
    let (_, address) = coordinator_of(&bootstrap, "keepers").await.unwrap();
    let before = committed(&address, "keepers", "durable", 4).await;
    assert_eq!(before.values().sum::<i64>(), 200);

    // kill -9 everything (ZooKeeper too) while the member is still in the group.
    cluster.kill9_all();
    drop(member);
    cluster.restart_all(Duration::from_secs(60));
    let (_, address) = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = coordinator_of(&bootstrap, "keepers").await {
                break found;
            }
            assert!(Instant::now() < deadline, "no coordinator after restart");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(committed(&address, "keepers", "durable", 4).await, before);
    // The group, with its member, is back as the log recorded it.
    let mut client = KafkaClient::connect(&address, "sluice-test").await.unwrap();
    let described = client
        .send(DescribeGroupsRequest::default().with_groups(vec![GroupId(s("keepers"))]))
        .await
        .unwrap();
    let group = &described.groups[0];
    assert_eq!(group.error_code, 0);
    assert_eq!(group.group_state.as_str(), "Stable");
    assert_eq!(group.members.len(), 1);
    assert_eq!(group.protocol_type.as_str(), "consumer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_get_kafka_errors_and_harm_nothing() {
    let mut server = Server::start_with(&[FAST_GROUPS]);
    let bootstrap = server.bootstrap();
    create_topic(&bootstrap, "real", 1, 1);
    let mut client = KafkaClient::connect(&bootstrap, "sluice-test")
        .await
        .unwrap();
    let commit = |group: &str, generation: i32, member: &str, topic: &str, metadata: &str| {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member))
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(42)
                            .with_committed_metadata(Some(s(metadata))),
                    ]),
            ])
    };
    let error_of = |r: &kafka_protocol::messages::OffsetCommitResponse| {
        ResponseError::try_from_code(r.topics[0].partitions[0].error_code)
    };

    let r = client
        .send(commit("ghost", 5, "m", "real", ""))
        .await
        .unwrap();
    assert_eq!(error_of(&r), Some(ResponseError::IllegalGeneration));
    let r = client
        .send(commit("free", -1, "", "nowhere", ""))
        .await
        .unwrap();
    assert_eq!(error_of(&r), Some(ResponseError::UnknownTopicOrPartition));
    let r = client
        .send(commit("free", -1, "", "real", &"x".repeat(5000)))
        .await
        .unwrap();
    assert_eq!(error_of(&r), Some(ResponseError::OffsetMetadataTooLarge));
    let r = client
        .send(commit("free", -1, "", "real", "ok"))
        .await
        .unwrap();
    assert_eq!(error_of(&r), None);

    // A real member, then requests that do not fit its generation.
    let join = |member: &str, session_ms: i32| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s("strict")))
            .with_session_timeout_ms(session_ms)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(s(member))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
            )
            .with_name(s("range"))
            .with_metadata(bytes::Bytes::from_static(b"\x00\x00"))])
    };
    let r = client.send(join("", 100)).await.unwrap();
    assert_eq!(
        ResponseError::try_from_code(r.error_code),
        Some(ResponseError::InvalidSessionTimeout)
    );
    let first = client.send(join("", 10_000)).await.unwrap();
    assert_eq!(
        ResponseError::try_from_code(first.error_code),
        Some(ResponseError::MemberIdRequired)
    );
    let joined = client
        .send(join(first.member_id.as_str(), 10_000))
        .await
        .unwrap();
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.generation_id, 1);
    let member = joined.member_id.to_string();
    let sync = |generation: i32| {
        SyncGroupRequest::default()
            .with_group_id(GroupId(s("strict")))
            .with_generation_id(generation)
            .with_member_id(s(&member))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range")))
    };
    let r = client.send(sync(7)).await.unwrap();
    assert_eq!(
        ResponseError::try_from_code(r.error_code),
        Some(ResponseError::IllegalGeneration)
    );
    let r = client.send(sync(1)).await.unwrap();
    assert_eq!(r.error_code, 0);
    let heartbeat = |member: &str, generation: i32| {
        HeartbeatRequest::default()
            .with_group_id(GroupId(s("strict")))
            .with_generation_id(generation)
            .with_member_id(s(member))
    };
    let r = client.send(heartbeat("stranger", 1)).await.unwrap();
    assert_eq!(
        ResponseError::try_from_code(r.error_code),
        Some(ResponseError::UnknownMemberId)
    );
    let r = client.send(heartbeat(&member, 0)).await.unwrap();
    assert_eq!(
        ResponseError::try_from_code(r.error_code),
        Some(ResponseError::IllegalGeneration)
    );
    let r = client
        .send(commit("strict", 2, &member, "real", ""))
        .await
        .unwrap();
    assert_eq!(error_of(&r), Some(ResponseError::IllegalGeneration));
    let r = client
        .send(commit("strict", -1, "", "real", ""))
        .await
        .unwrap();
    assert_eq!(error_of(&r), Some(ResponseError::UnknownMemberId));
    let r = client
        .send(commit("strict", 1, &member, "real", ""))
        .await
        .unwrap();
    assert_eq!(error_of(&r), None);
    // Transactions have no coordinator here; say so rather than hang.
    let r = client
        .send(
            FindCoordinatorRequest::default()
                .with_key_type(1)
                .with_coordinator_keys(vec![s("tx")]),
        )
        .await
        .unwrap();
    assert_eq!(
        ResponseError::try_from_code(r.coordinators[0].error_code),
        Some(ResponseError::InvalidRequest)
    );

    // Deleting a topic deletes the offsets committed for it.
    create_topic(&bootstrap, "doomed", 1, 1);
    let r = client
        .send(commit("free", -1, "", "doomed", ""))
        .await
        .unwrap();
    assert_eq!(error_of(&r), None);
    assert_eq!(committed(&bootstrap, "free", "doomed", 1).await[&0], 42);
    let out = server.cli(&["delete", "doomed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(committed(&bootstrap, "free", "doomed", 1).await[&0], -1);

    // Nothing above corrupted the log: after kill -9 the good commits are there.
    drop(client);
    server.kill9();
    server.restart();
    let bootstrap = server.bootstrap();
    assert_eq!(committed(&bootstrap, "free", "real", 1).await[&0], 42);
    assert_eq!(committed(&bootstrap, "strict", "real", 1).await[&0], 42);
    assert_eq!(committed(&bootstrap, "ghost", "real", 1).await[&0], -1);
}

/// KRaft-only: group writes go to the Raft controller in an envelope there.
/// In ZooKeeper mode the coordinator writes `/consumers/<group>/...` itself,
/// guarded by its registration (tested in the zk crate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_writes_from_anyone_but_the_coordinator_are_refused_by_the_controller() {
    use kafka_protocol::messages::EnvelopeRequest;
    use sluice_metadata::controller_api::{GroupWrite, GroupWriteRequest, GroupWriter};
    use sluice_metadata::{PartitionOffset, TopicOffsets};

    let mut cluster = Cluster::start(1, 2, &[FAST_GROUPS]);
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "guarded", 1, 1);
    let (coordinator, _) = coordinator_of(&bootstrap, "guarded-group").await.unwrap();
    let other = if coordinator == 1 { 2 } else { 1 };
    let controller = cluster.controller(1001).address();
    let mut client = KafkaClient::connect(&controller, "sluice-test")
        .await
        .unwrap();
    let send = |writer: GroupWriter| {
        EnvelopeRequest::default().with_request_data(bytes::Bytes::from(
            GroupWriteRequest {
                writer,
                write: GroupWrite::CommitOffsets {
                    group_id: "guarded-group".into(),
                    generation: -1,
                    member_id: String::new(),
                    offsets: vec![TopicOffsets {
                        topic: "guarded".into(),
                        partitions: vec![PartitionOffset {
                            partition: 0,
                            offset: 999,
                            leader_epoch: -1,
                            metadata: None,
                        }],
                    }],
                },
            }
            .encode(),
        ))
    };
    // Not JSON at all.
    let r = client
        .send(
            EnvelopeRequest::default().with_request_data(bytes::Bytes::from_static(b"\x00garbage")),
        )
        .await
        .unwrap();
    assert_eq!(
        ResponseError::try_from_code(r.error_code),
        Some(ResponseError::InvalidRequest)
    );
    // A broker that does not coordinate the group.
    let r = client
        .send(send(GroupWriter {
            broker_id: other,
            broker_epoch: 0,
        }))
        .await
        .unwrap();
    assert_eq!(
        ResponseError::try_from_code(r.error_code),
        Some(ResponseError::StaleBrokerEpoch)
    );
    // The coordinator's id with an epoch it does not hold.
    let r = client
        .send(send(GroupWriter {
            broker_id: coordinator,
            broker_epoch: 1 << 40,
        }))
        .await
        .unwrap();
    assert_eq!(
        ResponseError::try_from_code(r.error_code),
        Some(ResponseError::StaleBrokerEpoch)
    );

    // The cluster is unharmed and nothing was committed.
    let (_, address) = coordinator_of(&bootstrap, "guarded-group").await.unwrap();
    assert_eq!(
        committed(&address, "guarded-group", "guarded", 1).await[&0],
        -1
    );
    assert!(cluster.controller(1001).is_running());
}
