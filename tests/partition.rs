//! A leader broker cut off from the rest of the cluster by the network
//! (each node in its own Linux network namespace): it cannot commit acks=all
//! writes alone, the majority side elects a new leader, and once the network
//! heals there is one leader and no acknowledged write is lost.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::acked::{verify, wait_until, AckedWriter};
use common::cluster::{wait_for_quorum, Cluster};
use common::netns::Network;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const FAST: &[&str] = &[
    "broker.session.timeout.ms=3000",
    "broker.heartbeat.interval.ms=500",
    "replica.lag.time.max.ms=5000",
];

/// Sequence numbers written to the isolated leader; the writer's are small.
const ISOLATED_BASE: u64 = 1_000_000_000_000;

/// (leader, ISR size) of partition 0 as the broker at `address` alone sees it.
fn view(address: &str) -> Option<(i32, usize)> {
    view_of(address, "split", 0)
}

/// (leader, ISR size) of a partition as the broker at `address` alone sees it.
fn view_of(address: &str, topic: &str, partition: i32) -> Option<(i32, usize)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let p = metadata
        .topics()
        .first()?
        .partitions()
        .iter()
        .find(|p| p.id() == partition)?;
    Some((p.leader(), p.isr().len()))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_leader_commits_nothing_and_heals_into_one_leader() {
    let network = Network::for_test(6);
    let mut cluster = Cluster::start_on(Some(&network), 3, 3, FAST);
    let out = cluster.cli(&[
        "create",
        "split",
        "--partitions",
        "1",
        "--replication-factor",
        "3",
        "--config",
        "min.insync.replicas=2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bootstrap = cluster.bootstrap();
    let writer = AckedWriter::spawn(&bootstrap, "split", 1);
    writer.wait_for_more(1000, Duration::from_secs(60));

    let (leader, _) = view(&bootstrap).expect("partition 0 has a leader");
    let leader_host = 3 + (leader as usize - 1);
    let leader_address = cluster.broker(leader).address();
    network.cut(leader_host);
    let cut_at = Instant::now();

    // From inside the cut-off host, acks=all writes to the old leader
    // cannot be acknowledged: its followers are out of reach.
    let isolated: Vec<String> = (0..20).map(|i| (ISOLATED_BASE + i).to_string()).collect();
    let kcat = Command::new("ip")
        .args([
            "netns",
            "exec",
            &network.namespace(leader_host),
            "kcat",
            "-P",
        ])
        .args(["-b", &leader_address, "-t", "split", "-p", "0"])
        .args([
            "-X",
            "acks=all",
            "-X",
            "message.timeout.ms=6000",
            "-X",
            "topic.metadata.refresh.interval.ms=600000",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kcat");
    let mut kcat = kcat;
    {
        use std::io::Write;
        let mut stdin = kcat.stdin.take().expect("kcat stdin");
        stdin.write_all(isolated.join("\n").as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }
    let kcat = kcat.wait_with_output().expect("kcat output");
    let kcat_err = String::from_utf8_lossy(&kcat.stderr).to_string();
    assert!(
        kcat_err.contains("Delivery failed")
            || kcat_err.contains("timed out")
            || !kcat.status.success(),
        "writes to the isolated leader were acknowledged: {kcat_err}"
    );

    // The majority side elects another leader and writes go on there.
    let others: Vec<String> = cluster
        .brokers
        .iter()
        .filter(|b| b.id != leader)
        .map(|b| b.address())
        .collect();
    wait_until(
        || {
            others
                .iter()
                .all(|a| view(a).is_some_and(|(l, _)| l >= 0 && l != leader))
        },
        Duration::from_secs(30),
    );
    eprintln!("new leader elected {:?} after the cut", cut_at.elapsed());
    writer.wait_for_more(1000, Duration::from_secs(60));

    // Heal: the old leader follows, truncates what it never committed and
    // rejoins the ISR; every broker names the same leader.
    network.heal(leader_host);
    let all: Vec<String> = cluster.brokers.iter().map(|b| b.address()).collect();
    wait_until(
        || {
            let views: Vec<Option<(i32, usize)>> = all.iter().map(|a| view(a)).collect();
            views
                .iter()
                .all(|v| v.is_some_and(|(l, isr)| l >= 0 && isr == 3))
                && views
                    .windows(2)
                    .all(|w| w[0].map(|v| v.0) == w[1].map(|v| v.0))
        },
        Duration::from_secs(90),
    );
    writer.wait_for_more(500, Duration::from_secs(60));
    let acked = writer.stop().await;
    let logs = verify(&bootstrap, "split", &acked);
    // The old leader's own copy: with the other brokers gone it leads again
    // and serves everything that was acknowledged, and nothing else.
    cluster.kill_brokers_except(leader);
    // Once both are fenced it is the whole ISR, and the high watermark is
    // its own log end (while a dead replica is still in the ISR, the high
    // watermark rightly waits for it).
    wait_until(
        || view(&leader_address) == Some((leader, 1)),
        Duration::from_secs(30),
    );
    let old_leader_logs = verify(&leader_address, "split", &acked);
    // Nothing written only to the isolated leader survives anywhere.
    for log in logs.values().chain(old_leader_logs.values()) {
        assert!(
            log.values().all(|&seq| seq < ISOLATED_BASE),
            "an unacknowledged write to the isolated leader was kept"
        );
    }
}

/// The controller listener's port on every controller host.
const CONTROLLER_PORT: u16 = 9093;

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_follows_the_metadata_log_past_a_voter_cut_off_from_the_quorum() {
    // Controllers on hosts 0..3 (ids 1001..), brokers 1 and 2 on hosts 3 and 4.
    let network = Network::for_test(5);
    let mut cluster = Cluster::start_on(Some(&network), 3, 2, FAST);
    let out = cluster.cli(&[
        "create",
        "moving",
        "--partitions",
        "2",
        "--replication-factor",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker_1 = cluster.broker(1).address();
    // A partition broker 2 leads, with broker 1 in sync: it moves to
    // broker 1 when broker 2 goes.
    let mut moving = None;
    wait_until(
        || {
            moving = (0..2).find(|&p| view_of(&broker_1, "moving", p) == Some((2, 2)));
            moving.is_some()
        },
        Duration::from_secs(60),
    );
    let moving = moving.expect("a partition led by broker 2");

    // The voter broker 1 fetches the metadata log from: among the
    // controllers it is connected to (its follower, and its heartbeats to
    // the active controller), the one that is not the active controller,
    // if any.
    let active = wait_for_quorum(&mut cluster, Duration::from_secs(30))
        .await
        .leader;
    let host_of = |id: i32| (id - 1001) as usize;
    let connected = network.connected_hosts(3, CONTROLLER_PORT);
    assert!(
        !connected.is_empty(),
        "broker 1 has no controller connection"
    );
    let source = connected
        .iter()
        .copied()
        .find(|&h| h != host_of(active))
        .unwrap_or(host_of(active));
    eprintln!(
        "broker 1 follows controller {}; controller {active} leads",
        1001 + source
    );

    // Cut that voter off from the other voters; brokers still reach it.
    for other in (0..3).filter(|&h| h != source) {
        network.cut_between(source, other);
    }
    let cut_at = Instant::now();
    // The other two lead (a new leader if the cut one led).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = wait_for_quorum(&mut cluster, Duration::from_secs(30)).await;
        if host_of(q.leader) != source {
            break;
        }
        assert!(Instant::now() < deadline, "no leader besides the cut voter");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A leadership change after the cut: broker 2 shuts down, and its
    // partition moves to broker 1, which must learn that it leads.
    cluster.broker(2).stop();
    let learned = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = view_of(&broker_1, "moving", moving);
            if seen.is_some_and(|(leader, _)| leader == 1) || Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(
        learned.is_some_and(|(leader, _)| leader == 1),
        "broker 1 still sees {learned:?} for partition {moving} {:?} after the cut: \
         it follows a voter cut off from the quorum\n{}",
        cut_at.elapsed(),
        cluster.logs()
    );
    eprintln!(
        "broker 1 learned it leads {:?} after the cut",
        cut_at.elapsed()
    );
    for other in (0..3).filter(|&h| h != source) {
        network.heal_between(source, other);
    }
}
