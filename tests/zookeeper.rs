//! ZooKeeper mode's harness and local cluster: a real three-server
//! ensemble (Debian's zookeeper 3.8, each server its own java process),
//! `sluice cluster up --mode zk` end to end, and one round trip in each mode
//! through the shared [`Cluster`]. Nothing here skips: without ZooKeeper
//! the tests fail with the reason.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{partitions, wait_for_controller, zk_view, Cluster, Mode};
use common::zk::ZkEnsemble;
use sluice_broker::KafkaClient;
use sluice_metadata::control_requests::{ControlRequest, PushHeader};
use sluice_zk::channel::send_control;

/// Three servers elect a leader; the ensemble survives its leader's
/// kill -9 and a paused follower, and the killed server rejoins.
#[test]
fn ensemble_survives_a_leader_kill_and_a_pause() {
    let mut zk = ZkEnsemble::start(3);
    let leader = zk.wait_leader(Duration::from_secs(30));
    let followers: Vec<u32> = (1..=3).filter(|&id| id != leader).collect();
    for &id in &followers {
        assert_eq!(zk.status(id).unwrap().mode, "follower");
    }
    let zxid_before = zk.status(leader).unwrap().zxid;

    zk.kill9(leader);
    let second = zk.wait_leader(Duration::from_secs(30));
    assert_ne!(second, leader);
    // A new leader starts a new epoch: the zxid's high 32 bits.
    assert!(zk.status(second).unwrap().zxid >> 32 > zxid_before >> 32);

    // A paused server answers nobody, and the other two still form a quorum.
    let paused = followers.into_iter().find(|&id| id != second).unwrap();
    zk.pause(paused);
    assert!(zk.status(paused).is_none());
    assert_eq!(zk.wait_leader(Duration::from_secs(30)), second);
    zk.resume(paused);

    zk.restart(leader);
    zk.wait_ready(Duration::from_secs(60));
    let modes: Vec<String> = (1..=3).map(|id| zk.status(id).unwrap().mode).collect();
    assert_eq!(
        modes.iter().filter(|m| *m == "leader").count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| *m == "follower").count(),
        2,
        "{modes:?}"
    );
}

in_both_modes!(a_round_trip_in_each_mode);
/// The same produce/consume round trip in both modes through one harness.
async fn a_round_trip_in_each_mode(mode: Mode) {
    {
        let mut cluster = Cluster::start_in(mode, 3, 3, &[]);
        let (controller, epoch) = wait_for_controller(&mut cluster, Duration::from_secs(60)).await;
        assert!(
            epoch >= 1,
            "{mode:?}: controller {controller} epoch {epoch}"
        );
        if mode == Mode::ZooKeeper {
            // The controller is a broker, and every broker is registered
            // with its own epoch (the registration's czxid).
            assert!(cluster.brokers.iter().any(|b| b.id == controller));
            let view = zk_view(&cluster).await.expect("ZooKeeper answers");
            let ids: Vec<i32> = view.brokers.iter().map(|b| b.broker_id).collect();
            assert_eq!(ids, vec![1, 2, 3], "{view:?}");
            assert!(view.brokers.iter().all(|b| b.epoch > 0));
        }
        let out = cluster.cli(&[
            "create",
            "round-trip",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ]);
        assert!(
            out.status.success(),
            "{mode:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        let bootstrap = cluster.bootstrap();
        let produced = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "seq 1 50 | kcat -P -b {bootstrap} -t round-trip -X acks=all"
            ))
            .status()
            .unwrap();
        assert!(produced.success(), "{mode:?}\n{}", cluster.logs());
        let consumed = Command::new("kcat")
            .args(["-C", "-b", &bootstrap, "-t", "round-trip"])
            .args(["-o", "beginning", "-e", "-q"])
            .output()
            .unwrap();
        let mut values: Vec<u32> = String::from_utf8_lossy(&consumed.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        values.sort_unstable();
        assert_eq!(values, (1..=50).collect::<Vec<_>>(), "{mode:?}");
    }
}

/// `sluice cluster up --mode zk` as README shows it: an ensemble and
/// brokers, `cluster status` with the servers' roles, the controller and
/// the registrations, clients served, and every process (ZooKeeper's too)
/// stopped on SIGTERM.
#[test]
fn cluster_up_in_zookeeper_mode() {
    let dir = tempfile::tempdir().unwrap();
    // Base ports whose neighbours are very likely free (brokers +0..+2;
    // ZooKeeper clients +0..+2, quorum +707.., election +1707..), below
    // Linux's ephemeral range, where outgoing connections take ports.
    let base = 20_000 + (std::process::id() % 3_000) as u16;
    let zk_base = 24_000 + (std::process::id() % 3_000) as u16;
    let mut command = Command::new(common::BIN);
    command
        .args([
            "cluster",
            "up",
            "--mode",
            "zk",
            "--zookeepers",
            "3",
            "--brokers",
            "3",
        ])
        .args([
            "--port",
            &base.to_string(),
            "--zk-port",
            &zk_base.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path());
    let (mut up, printed) = common::start_cluster_up(command, dir.path(), Duration::from_secs(180));
    for id in 1..=3 {
        let zk = format!("127.0.0.1:{}", zk_base + id - 1);
        assert!(printed.contains(&format!("zookeeper  {id}")), "{printed}");
        assert!(printed.contains(&zk), "{printed}");
        assert!(dir.path().join(format!("zk-{id}/data/myid")).exists());
        assert!(dir.path().join(format!("zk-{id}.log")).exists());
    }
    assert!(printed.contains("/sluice"), "{printed}");
    let layout = std::fs::read_to_string(dir.path().join("cluster.toml")).unwrap();
    assert!(layout.contains("mode = \"zk\""), "{layout}");
    assert!(layout.contains("role = \"zookeeper\""), "{layout}");

    // Status: once a broker is the controller, everything is in place.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = Command::new(common::BIN)
            .args(["cluster", "status", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.contains("Controller: broker") {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status.matches(" leader ").count(), 1, "{status}");
    assert_eq!(status.matches(" follower ").count(), 2, "{status}");
    assert!(status.contains("controller epoch"), "{status}");
    for port in base..base + 3 {
        assert!(
            status.contains(&format!("PLAINTEXT://127.0.0.1:{port}")),
            "{status}"
        );
    }
    assert!(!status.contains("not registered"), "{status}");

    let bootstrap = format!("127.0.0.1:{base}");
    let produce = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "seq 1 20 | kcat -P -b {bootstrap} -t up -X acks=all"
        ))
        .status()
        .unwrap();
    assert!(produce.success());
    let consumed = Command::new("kcat")
        .args([
            "-C",
            "-b",
            &bootstrap,
            "-t",
            "up",
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&consumed.stdout).lines().count(),
        20
    );

    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let exit = common::wait_exit(&mut up, Duration::from_secs(120));
    assert!(exit.success());
    // Every process is gone: brokers and ZooKeeper servers.
    for port in (base..base + 3).chain(zk_base..zk_base + 3) {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still listens on {port}"
        );
    }
}

in_both_modes!(the_active_controller_killed);
/// The active controller killed with kill -9, in each mode through the
/// same test: another controller takes over with a higher epoch, and topic
/// creation works again. (KRaft: a controller node; ZooKeeper mode: the
/// broker holding `/controller`, found gone when its session expires.)
async fn the_active_controller_killed(mode: Mode) {
    // broker.session.timeout.ms is also the ZooKeeper session in ZK mode.
    let fast = &[
        "broker.session.timeout.ms=3000",
        "broker.heartbeat.interval.ms=500",
    ];
    {
        let mut cluster = Cluster::start_in(mode, 3, 3, fast);
        let (first, epoch) = wait_for_controller(&mut cluster, Duration::from_secs(60)).await;
        cluster.node(first).kill9();
        let started = Instant::now();
        let (second, new_epoch) = loop {
            let (id, e) = wait_for_controller(&mut cluster, Duration::from_secs(60)).await;
            if id != first {
                break (id, e);
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{mode:?}: {first} still the controller\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(new_epoch > epoch, "{mode:?}: epoch {epoch} -> {new_epoch}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = cluster.cli(&["create", "after-failover", "--partitions", "2"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode:?}: topic creation after the failover: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if mode == Mode::ZooKeeper {
            a_push_from_the_old_epoch_is_refused(&mut cluster, first, epoch).await;
        }
        println!(
            "{mode:?}: controller {first} (epoch {epoch}) killed; {second} (epoch {new_epoch}) \
             took over, topics created again after {:?}",
            started.elapsed()
        );
    }
}

/// ZooKeeper mode, after a failover: a push stamped with the killed
/// controller's epoch reaches a live broker (as a push delayed in the
/// network, or from a controller that has not noticed it lost). The broker
/// refuses it with STALE_CONTROLLER_EPOCH and changes nothing, though the
/// push, if applied, would leave it knowing no broker and no topic.
async fn a_push_from_the_old_epoch_is_refused(cluster: &mut Cluster, old: i32, old_epoch: i32) {
    let target = cluster
        .brokers
        .iter_mut()
        .find_map(|b| (b.id != old && b.is_running()).then(|| b.address()))
        .expect("a live broker");
    let stale = ControlRequest::UpdateMetadata {
        header: PushHeader {
            controller_id: old,
            controller_epoch: old_epoch,
            broker_epoch: -1,
        },
        full: true,
        live_brokers: Vec::new(),
        partitions: Vec::new(),
    };
    let served = |listed: &[(i32, i32, usize)]| {
        listed.len() == 2 && listed.iter().all(|(_, leader, _)| *leader >= 0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !served(&partitions(&target, "after-failover")) {
        assert!(
            Instant::now() < deadline,
            "the new topic has no leaders\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = KafkaClient::connect(&target, "sluice-test")
        .await
        .expect("connecting to a live broker");
    let response = send_control(&mut client, &stale)
        .await
        .expect("an answer to the push");
    // Kafka's STALE_CONTROLLER_EPOCH.
    assert_eq!(response.error_code, 11, "{response:?}");
    let listed = partitions(&target, "after-failover");
    assert!(served(&listed), "the broker forgot the topic: {listed:?}");
    let out = cluster.cli(&["describe", "after-failover"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
