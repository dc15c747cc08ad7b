//! A cluster of separate processes: three brokers coordinated by three
//! KRaft controllers replicating the metadata log, or (the same tests, see
//! [`in_both_modes!`]) by a three-server ZooKeeper ensemble with one broker
//! the controller. Controllers, ZooKeeper servers and brokers are killed
//! with kill -9 under real clients. Tests of the Raft quorum itself stay
//! KRaft-only, each saying so.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::acked::{verify, wait_until, AckedWriter, TailingReader};
use common::cluster::{partitions, wait_for_quorum, Cluster, Mode};
use kafka_protocol::messages::{fetch_request, BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sluice_broker::KafkaClient;

/// Short sessions so that failover is quick enough for a test
/// (`broker.session.timeout.ms` is also the ZooKeeper session in ZK mode).
const FAST: &[&str] = &[
    "broker.session.timeout.ms=3000",
    "broker.heartbeat.interval.ms=500",
    "replica.lag.time.max.ms=5000",
    "metadata.snapshot.max.records=25",
];

fn created(cluster: &mut Cluster, args: &[&str]) {
    let out = cluster.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
}

fn topic_list(cluster: &mut Cluster) -> String {
    let out = cluster.cli(&["list"]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// KRaft-only: a Raft controller killed and caught up again from a
/// metadata snapshot. ZooKeeper mode has no controller nodes nor metadata
/// log; its controller (a broker) killed is
/// `tests/zookeeper.rs::the_active_controller_killed`, run in both modes.
#[tokio::test(flavor = "multi_thread")]
async fn active_controller_failover_keeps_metadata() {
    let mut cluster = Cluster::start(3, 3, FAST);
    created(
        &mut cluster,
        &[
            "create",
            "before",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
    );
    let first = wait_for_quorum(&mut cluster, Duration::from_secs(30)).await;
    cluster.controller(first.leader).kill9();

    // A new controller takes over and metadata changes go on.
    let started = Instant::now();
    created(
        &mut cluster,
        &[
            "create",
            "after",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
    );
    eprintln!(
        "topic created {:?} after killing the active controller",
        started.elapsed()
    );
    let second = wait_for_quorum(&mut cluster, Duration::from_secs(30)).await;
    assert_ne!(second.leader, first.leader);
    assert!(second.epoch > first.epoch);

    // Enough changes while it is down that the others snapshot and compact.
    for i in 0..30 {
        created(
            &mut cluster,
            &[
                "create",
                &format!("while-down-{i}"),
                "--partitions",
                "1",
                "--replication-factor",
                "1",
            ],
        );
    }
    cluster.controller(first.leader).restart();
    cluster
        .controller(first.leader)
        .wait_serving(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = wait_for_quorum(&mut cluster, Duration::from_secs(30)).await;
        let caught_up = q
            .voters
            .iter()
            .any(|&(id, end)| id == first.leader && end >= q.high_watermark);
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted controller did not catch up:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cluster
            .controller(first.leader)
            .log()
            .contains("installing a snapshot")
            || cluster
                .controller(first.leader)
                .log()
                .contains("loaded metadata snapshot"),
        "the restarted controller should have caught up from a snapshot"
    );

    // Now the second leader goes too: the restarted one serves the full state.
    cluster.controller(second.leader).kill9();
    created(
        &mut cluster,
        &[
            "create",
            "last",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
    );
    // Brokers learn of "last" by following the log, which means finding the
    // new leader after the kill: the listing converges, it is not immediate.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let topics = topic_list(&mut cluster);
        let missing: Vec<&str> = ["before", "after", "while-down-0", "while-down-29", "last"]
            .into_iter()
            .filter(|name| !topics.lines().any(|l| l.trim() == *name))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing:?} missing from:\n{topics}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

in_both_modes!(leader_broker_kill_9_loses_no_acknowledged_write);
async fn leader_broker_kill_9_loses_no_acknowledged_write(mode: Mode) {
    let mut cluster = Cluster::start_in(mode, 3, 3, FAST);
    created(
        &mut cluster,
        &[
            "create",
            "orders",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
            "--config",
            "min.insync.replicas=2",
        ],
    );
    let bootstrap = cluster.bootstrap();
    let writer = AckedWriter::spawn(&bootstrap, "orders", 3);
    let reader = TailingReader::spawn(&bootstrap, "orders", 3);
    writer.wait_for_more(2000, Duration::from_secs(60));

    let leader = partitions(&bootstrap, "orders")
        .iter()
        .find(|p| p.0 == 0)
        .map(|p| p.1)
        .expect("partition 0 has a leader");
    cluster.broker(leader).kill9();
    let killed_at = Instant::now();
    let last_seq_before_kill = writer.max_seq();
    writer.wait_for_more(2000, Duration::from_secs(60));
    // The consumer goes on too: it reads writes made after the kill.
    wait_until(
        || reader.max_seq() > last_seq_before_kill + 1000,
        Duration::from_secs(60),
    );
    eprintln!(
        "2000 more writes acknowledged {:?} after killing broker {leader}",
        killed_at.elapsed()
    );
    let now = partitions(&bootstrap, "orders");
    assert!(
        now.iter().all(|p| p.1 != leader),
        "broker {leader} still leads: {now:?}"
    );

    cluster.broker(leader).restart();
    cluster.broker(leader).wait_serving(Duration::from_secs(60));
    writer.wait_for_more(2000, Duration::from_secs(60));
    let acked = writer.stop().await;
    let read = reader.stop();
    for (partition, offsets) in &read {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: the consumer saw an offset twice or go back"
        );
    }
    // The restarted broker catches up and rejoins every ISR.
    wait_until(
        || {
            let p = partitions(&bootstrap, "orders");
            p.len() == 3 && p.iter().all(|p| p.2 == 3)
        },
        Duration::from_secs(60),
    );
    verify(&bootstrap, "orders", &acked);
    // The restarted broker's own copy is whole: with the others gone it
    // leads every partition and serves every acknowledged write.
    let restarted = cluster.broker(leader).address();
    cluster.kill_brokers_except(leader);
    wait_until(
        || {
            // Led by it alone: the others are fenced and out of every ISR.
            let p = partitions(&restarted, "orders");
            p.len() == 3 && p.iter().all(|p| p.1 == leader && p.2 == 1)
        },
        Duration::from_secs(30),
    );
    verify(&restarted, "orders", &acked);
}

in_both_modes!(losing_the_controller_majority_stops_metadata_changes_only);
/// The metadata quorum loses its majority: two of three KRaft controllers
/// (not the leader), or two of three ZooKeeper servers.
async fn losing_the_controller_majority_stops_metadata_changes_only(mode: Mode) {
    let mut cluster = Cluster::start_in(mode, 3, 3, FAST);
    created(
        &mut cluster,
        &[
            "create",
            "steady",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
    );
    let down: Vec<i32> = match mode {
        Mode::KRaft => {
            let q = wait_for_quorum(&mut cluster, Duration::from_secs(30)).await;
            let down: Vec<i32> = cluster
                .controllers
                .iter()
                .map(|c| c.id)
                .filter(|&id| id != q.leader)
                .collect();
            for &id in &down {
                cluster.controller(id).kill9();
            }
            down
        }
        Mode::ZooKeeper => {
            let zk = cluster.zk();
            let leader = zk.wait_leader(Duration::from_secs(30));
            // The leader and one follower: what is left is no quorum.
            let other = (1..=3).find(|&id| id != leader).unwrap();
            for id in [leader, other] {
                zk.kill9(id);
            }
            vec![leader as i32, other as i32]
        }
    };

    // Metadata changes fail with an error rather than hanging.
    let out = cluster.cli(&[
        "create",
        "refused",
        "--partitions",
        "1",
        "--replication-factor",
        "1",
    ]);
    assert!(
        !out.status.success(),
        "topic creation without a controller majority succeeded"
    );
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        text.contains("controller") || text.contains("timed out"),
        "unclear error: {text}"
    );

    // Existing leaders keep serving acks=1 produce and fetch.
    let bootstrap = cluster.bootstrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "1")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    for i in 0..30 {
        let payload = format!("m{i}");
        producer
            .send(
                FutureRecord::<(), _>::to("steady")
                    .partition(i % 3)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("acks=1 produce without a controller majority");
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "steady-check")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("steady", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < 30 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            assert!(m.payload().is_some());
            seen += 1;
        }
    }
    assert_eq!(seen, 30);

    // The majority comes back: everything recovers, once the ensemble has
    // a leader again and the brokers have new sessions (ZooKeeper mode
    // refuses admin requests at once until then).
    for &id in &down {
        match mode {
            Mode::KRaft => cluster.controller(id).restart(),
            Mode::ZooKeeper => cluster.zk().restart(id as u32),
        }
    }
    let args = [
        "create",
        "recovered",
        "--partitions",
        "1",
        "--replication-factor",
        "3",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = cluster.cli(&args);
    while !last.status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        last = cluster.cli(&args);
    }
    assert!(
        last.status.success(),
        "no topic could be created within 60 s of the majority's return: {}\n{}",
        String::from_utf8_lossy(&last.stderr),
        cluster.logs()
    );
}

/// KRaft-only: garbage on the Raft controllers' port. (ZooKeeper mode's
/// hostile pushes and znodes are tested in the zk crate and tests/zookeeper.rs.)
#[tokio::test(flavor = "multi_thread")]
async fn malformed_raft_streams_are_dropped_without_harm() {
    let mut cluster = Cluster::start(3, 1, FAST);
    let target = cluster.controllers[0].address();
    let target_id = cluster.controllers[0].id;
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(&target).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(bytes);
        // The controller closes the stream: a read sees the end.
        let mut buf = [0u8; 16];
        let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
        assert!(closed);
    };
    let stream = |peer: u64, frame: &[u8]| {
        let mut v = b"SLRF".to_vec();
        v.extend_from_slice(&peer.to_be_bytes());
        v.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        v.extend_from_slice(frame);
        v
    };
    // Garbage where a protobuf message should be.
    send(&stream(1002, &[0xff; 40]));
    // A frame claiming 4 GiB.
    let mut huge = b"SLRF".to_vec();
    huge.extend_from_slice(&1002u64.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    send(&huge);
    // A well-formed message from a node other than the stream's peer:
    // protobuf fields msg_type=3 (append), to, from=3, term=100.
    let mut forged = vec![0x08, 0x03, 0x10];
    varint(target_id as u64, &mut forged);
    forged.extend_from_slice(&[0x18, 0x03, 0x20, 0x64]);
    send(&stream(1002, &forged));
    // A well-formed message from the right peer but of a stale term
    // (append at term 0) is ignored by Raft; the quorum keeps its leader.
    let before = wait_for_quorum(&mut cluster, Duration::from_secs(10)).await;
    let mut stale = vec![0x08, 0x03, 0x10];
    varint(target_id as u64, &mut stale);
    stale.push(0x18);
    varint(1002, &mut stale);
    stale.extend_from_slice(&[0x20, 0x00]);
    {
        let mut s = TcpStream::connect(&target).unwrap();
        s.write_all(&stream(1002, &stale)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let after = wait_for_quorum(&mut cluster, Duration::from_secs(10)).await;
    assert_eq!((after.leader, after.epoch), (before.leader, before.epoch));
    // Kafka framing with a stream magic on the broker port is refused too.
    let broker = cluster.brokers[0].address();
    let mut s = TcpStream::connect(&broker).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(&stream(1002, &[0; 8]));
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));

    // Replication requests from the wrong replica or with a stale leader
    // epoch are refused with the error a follower acts on.
    created(
        &mut cluster,
        &[
            "create",
            "epochs",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
    );
    let mut client = KafkaClient::connect(&broker, "test").await.unwrap();
    for (replica, epoch) in [(7, -1), (7, -5), (7, 99)] {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(replica))
            .with_max_wait_ms(0)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("epochs")))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(epoch)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1024)])]);
        // The broker learns of the new topic from the metadata log a moment
        // after the controller commits it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let code = loop {
            let response = client.send_version(request.clone(), 12).await.unwrap();
            let code = response.responses[0].partitions[0].error_code;
            if code != ResponseError::UnknownTopicOrPartition.code() || Instant::now() > deadline {
                break code;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            [
                ResponseError::NotLeaderOrFollower.code(),
                ResponseError::UnknownLeaderEpoch.code(),
                ResponseError::FencedLeaderEpoch.code()
            ]
            .contains(&code),
            "replica {replica} at epoch {epoch}: error code {code}"
        );
    }

    // The quorum is unharmed and still takes changes.
    assert!(cluster.controllers.iter_mut().all(|c| c.is_running()));
    assert!(cluster.brokers.iter_mut().all(|b| b.is_running()));
    created(
        &mut cluster,
        &[
            "create",
            "after-garbage",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
    );
    let q = wait_for_quorum(&mut cluster, Duration::from_secs(10)).await;
    assert!(q.voters.len() == 3);
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

in_both_modes!(controlled_shutdown_moves_leadership_before_the_broker_exits);
async fn controlled_shutdown_moves_leadership_before_the_broker_exits(mode: Mode) {
    let mut cluster = Cluster::start_in(mode, 3, 3, FAST);
    created(
        &mut cluster,
        &[
            "create",
            "handover",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
    );
    let bootstrap = cluster.bootstrap();
    wait_until(
        || {
            let p = partitions(&bootstrap, "handover");
            p.len() == 3 && p.iter().all(|p| p.2 == 3)
        },
        Duration::from_secs(30),
    );
    // SIGTERM: by the time the process has exited, broker 1 leads nothing;
    // no session timeout is waited for.
    cluster.broker(1).stop();
    let others: Vec<String> = cluster
        .brokers
        .iter()
        .filter(|b| b.id != 1)
        .map(|b| b.address())
        .collect();
    let now = partitions(&others.join(","), "handover");
    assert_eq!(now.len(), 3);
    for (partition, leader, isr) in now {
        assert!(
            leader >= 0 && leader != 1,
            "partition {partition} led by {leader}"
        );
        assert_eq!(isr, 2, "partition {partition}: broker 1 left the ISR");
    }
    assert!(
        cluster
            .broker(1)
            .log()
            .contains("controlled shutdown complete"),
        "{}",
        cluster.broker(1).log()
    );
}

in_both_modes!(a_broker_far_behind_catches_up_from_a_metadata_snapshot);
/// A broker down while topics come and go catches up when it restarts:
/// KRaft, from the controller's metadata snapshot (the log before it is
/// gone); ZooKeeper mode, from the controller's full push.
async fn a_broker_far_behind_catches_up_from_a_metadata_snapshot(mode: Mode) {
    let mut settings = FAST.to_vec();
    settings.push("metadata.snapshot.max.records=10");
    let mut cluster = Cluster::start_in(mode, 3, 2, &settings);
    created(
        &mut cluster,
        &[
            "create",
            "early",
            "--partitions",
            "2",
            "--replication-factor",
            "2",
        ],
    );
    cluster.broker(2).kill9();
    for i in 0..25 {
        created(
            &mut cluster,
            &[
                "create",
                &format!("later-{i}"),
                "--partitions",
                "1",
                "--replication-factor",
                "1",
            ],
        );
    }
    created(&mut cluster, &["delete", "later-0"]);
    // KRaft-only (ZooKeeper mode has no controller nodes): restarted
    // controllers keep entries only from their latest snapshot on.
    for i in 0..cluster.controllers.len() {
        cluster.controllers[i].stop();
        cluster.controllers[i].restart();
        cluster.controllers[i].wait_serving(Duration::from_secs(60));
    }
    cluster.broker(2).restart();
    cluster.broker(2).wait_serving(Duration::from_secs(60));
    if mode == Mode::KRaft {
        assert!(
            cluster
                .broker(2)
                .log()
                .contains("loaded metadata snapshot from the controller"),
            "{}",
            cluster.broker(2).log()
        );
    }
    // Its view is the cluster's: the deleted topic is gone, the rest are there.
    let view = String::from_utf8_lossy(
        &std::process::Command::new(common::BIN)
            .args([
                "topics",
                "--bootstrap-server",
                &cluster.broker(2).address(),
                "list",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    assert!(
        view.lines().any(|l| l == "early") && view.lines().any(|l| l == "later-24"),
        "{view}"
    );
    assert!(!view.lines().any(|l| l == "later-0"), "{view}");
}

in_both_modes!(acks_all_across_leader_bounces_acknowledges_only_its_own_batches);
/// acks=all under an idempotent producer while leadership bounces: a leader
/// is stopped (its partitions move away), restarts, and the preferred-leader
/// election gives them back (leader -> other -> leader); then the same with
/// kill -9. Every acknowledged offset must hold the message acknowledged
/// there, never another batch written after a truncation.
async fn acks_all_across_leader_bounces_acknowledges_only_its_own_batches(mode: Mode) {
    let mut settings = FAST.to_vec();
    settings.extend([
        "auto.leader.rebalance.enable=true",
        "leader.imbalance.check.interval.seconds=1",
    ]);
    let mut cluster = Cluster::start_in(mode, 1, 3, &settings);
    created(
        &mut cluster,
        &[
            "create",
            "bounce",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
            "--config",
            "min.insync.replicas=2",
        ],
    );
    let bootstrap = cluster.bootstrap();
    wait_until(
        || {
            let p = partitions(&bootstrap, "bounce");
            p.len() == 3 && p.iter().all(|p| p.2 == 3)
        },
        Duration::from_secs(30),
    );
    // At creation every partition is led by its preferred replica.
    let preferred = partitions(&bootstrap, "bounce");
    let writer = AckedWriter::spawn(&bootstrap, "bounce", 3);
    writer.wait_for_more(1000, Duration::from_secs(60));

    for (round, kill) in [(0, false), (1, true)] {
        let leader = preferred[round].1;
        if kill {
            cluster.broker(leader).kill9();
        } else {
            cluster.broker(leader).stop();
        }
        // Its partitions move to other replicas (after the session timeout,
        // for kill -9) and take writes there.
        wait_until(
            || {
                let now = partitions(&bootstrap, "bounce");
                now.len() == 3 && now.iter().all(|p| p.1 >= 0 && p.1 != leader)
            },
            Duration::from_secs(60),
        );
        writer.wait_for_more(500, Duration::from_secs(60));
        eprintln!(
            "broker {leader} {}: (partition, leader, ISR size) {:?}",
            if kill { "killed" } else { "stopped" },
            partitions(&bootstrap, "bounce")
        );
        cluster.broker(leader).restart();
        cluster.broker(leader).wait_serving(Duration::from_secs(60));
        // Back in every ISR, then leading its preferred partitions again.
        wait_until(
            || {
                let now = partitions(&bootstrap, "bounce");
                now.len() == 3
                    && now.iter().all(|p| p.2 == 3)
                    && now
                        .iter()
                        .all(|p| preferred.iter().any(|q| q.0 == p.0 && q.1 == p.1))
            },
            Duration::from_secs(90),
        );
        writer.wait_for_more(500, Duration::from_secs(60));
        eprintln!(
            "broker {leader} restarted and preferred again: {:?}",
            partitions(&bootstrap, "bounce")
        );
    }
    let acked = writer.stop().await;
    eprintln!(
        "{} acknowledged messages",
        acked.values().map(Vec::len).sum::<usize>()
    );
    verify(&bootstrap, "bounce", &acked);
}
