//! The `sluice topics` commands against a running server.

mod common;

use std::time::Duration;

use common::Server;

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "command should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn create_list_describe_alter_delete() {
    let server = Server::start();
    let created = ok(server.cli(&[
        "create",
        "orders",
        "--partitions",
        "3",
        "--config",
        "retention.ms=3600000",
    ]));
    assert!(
        created.contains("Created topic orders with 3 partition(s)"),
        "{created}"
    );
    ok(server.cli(&["create", "audit"]));

    let listed = ok(server.cli(&["list"]));
    assert_eq!(listed.lines().collect::<Vec<_>>(), vec!["audit", "orders"]);

    let described = ok(server.cli(&["describe", "orders"]));
    assert!(described.contains("PartitionCount: 3"), "{described}");
    assert!(described.contains("retention.ms=3600000"), "{described}");
    assert!(described.contains("PARTITION"), "{described}");
    assert_eq!(
        described
            .lines()
            .filter(|l| l.starts_with(['0', '1', '2']))
            .count(),
        3,
        "{described}"
    );

    let altered = ok(server.cli(&[
        "alter",
        "orders",
        "--partitions",
        "5",
        "--config",
        "retention.ms=60000",
    ]));
    assert!(altered.contains("now has 5 partitions"), "{altered}");
    let described = ok(server.cli(&["describe", "orders"]));
    assert!(
        described.contains("PartitionCount: 5") && described.contains("retention.ms=60000"),
        "{described}"
    );
    ok(server.cli(&["alter", "orders", "--delete-config", "retention.ms"]));
    assert!(!ok(server.cli(&["describe", "orders"])).contains("retention.ms="));

    assert!(fails(server.cli(&["create", "orders"])).contains("TopicAlreadyExists"));
    ok(server.cli(&["create", "orders", "--if-not-exists"]));
    assert!(fails(server.cli(&["create", "bad name!"])).contains("InvalidTopicException"));
    assert!(fails(server.cli(&["create", "x", "--partitions", "0"])).contains("InvalidPartitions"));
    // Two billion partitions would be two billion records: refused up front.
    assert!(
        fails(server.cli(&["create", "huge", "--partitions", "2000000000"]))
            .contains("InvalidPartitions")
    );
    assert!(
        fails(server.cli(&["alter", "orders", "--partitions", "2000000000"]))
            .contains("InvalidPartitions")
    );
    assert!(
        fails(server.cli(&["create", "y", "--replication-factor", "3"]))
            .contains("InvalidReplicationFactor")
    );
    assert!(
        fails(server.cli(&["create", "z", "--config", "retention.ms=soon"]))
            .contains("InvalidConfig")
    );
    assert!(
        fails(server.cli(&["alter", "orders", "--partitions", "2"])).contains("InvalidPartitions")
    );
    assert!(ok(server.cli(&["create", "v", "--validate-only"])).contains("Would create"));
    assert!(!ok(server.cli(&["list"])).contains('v'));

    ok(server.cli(&["delete", "orders", "audit"]));
    assert_eq!(ok(server.cli(&["list"])).trim(), "");
    assert!(fails(server.cli(&["delete", "orders"])).contains("UnknownTopicOrPartition"));
}

#[test]
fn topics_and_data_survive_a_clean_restart_and_metrics_are_served() {
    let mut server = Server::start();
    ok(server.cli(&["create", "kept", "--partitions", "2"]));
    let bootstrap = server.bootstrap();
    let produce = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("seq 1 50 | kcat -P -b {bootstrap} -t kept -p 1"))
        .status()
        .unwrap();
    assert!(produce.success());

    let metrics = http_get(server.metrics_port, "/metrics");
    for name in [
        "sluice_requests_total",
        "sluice_request_duration_seconds_bucket",
        "sluice_bytes_in_total",
        "sluice_partitions",
        "sluice_raft_commit_index",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    assert!(server.stop(), "clean shutdown on SIGTERM");
    server.restart();
    let described = ok(server.cli(&["describe", "kept"]));
    assert!(described.contains("PartitionCount: 2"), "{described}");
    let out = std::process::Command::new("kcat")
        .args([
            "-C",
            "-b",
            &bootstrap,
            "-t",
            "kept",
            "-p",
            "1",
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 50);
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn metadata_comes_back_from_snapshot_and_log_after_kill_9() {
    // A snapshot every few entries, so the restart loads one and replays a tail.
    let mut server = Server::start_with(&["metadata.snapshot.max.records=4"]);
    for i in 0..12 {
        ok(server.cli(&["create", &format!("t{i:02}"), "--partitions", "2"]));
    }
    ok(server.cli(&["delete", "t03"]));
    ok(server.cli(&["alter", "t05", "--config", "retention.ms=1234"]));
    let before = ok(server.cli(&["list"]));
    server.kill9();
    server.restart();
    assert!(
        server.log().contains("loaded metadata snapshot"),
        "the restart loads a snapshot"
    );
    assert_eq!(ok(server.cli(&["list"])), before);
    assert!(!before.contains("t03"));
    assert!(ok(server.cli(&["describe", "t05"])).contains("retention.ms=1234"));
    // New changes keep working after the restart.
    ok(server.cli(&["create", "after-restart"]));
}

/// `sluice cluster up` as README shows it: starts, reports, answers
/// `cluster status`, serves clients, and stops every node on SIGTERM.
#[test]
fn cluster_up_starts_a_cluster_and_status_describes_it() {
    let dir = tempfile::tempdir().unwrap();
    // A base port whose neighbours (+1, +100..+102) are very likely free.
    let base = 20_000 + (std::process::id() % 20_000) as u16;
    let mut command = std::process::Command::new(common::BIN);
    command
        .args(["cluster", "up", "--controllers", "3", "--brokers", "2"])
        .args(["--port", &base.to_string(), "--data-dir"])
        .arg(dir.path());
    let (mut up, printed) = common::start_cluster_up(command, dir.path(), Duration::from_secs(120));
    assert!(printed.contains("controller  1001"), "{printed}");
    assert!(
        printed.contains(&format!("127.0.0.1:{}", base + 1)),
        "{printed}"
    );

    let status = std::process::Command::new(common::BIN)
        .args(["cluster", "status", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("Metadata quorum: leader 100"), "{text}");
    assert!(text.contains("observer (broker)"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{base}")), "{text}");

    let bootstrap = format!("127.0.0.1:{base}");
    let produce = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "seq 1 20 | kcat -P -b {bootstrap} -t up -X acks=all"
        ))
        .status()
        .unwrap();
    assert!(produce.success());
    let consumed = std::process::Command::new("kcat")
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

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let status = common::wait_exit(&mut up, Duration::from_secs(90));
    assert!(status.success());
    // Every node is gone: nothing listens on the brokers' port any more.
    assert!(std::net::TcpStream::connect(&bootstrap).is_err());
}

/// Ctrl-C in a terminal sends SIGINT to `sluice cluster up` and to every
/// node it started (they share its process group): were the nodes to act
/// on it, the controllers (or ZooKeeper) would be gone before the brokers'
/// controlled shutdown could finish, and each broker would wait for it in
/// vain. The brokers stop first, the rest after, and no shutdown falls
/// short, in both modes.
#[test]
fn ctrl_c_stops_the_brokers_before_the_controllers() {
    // Ports below Linux's ephemeral range; ZooKeeper's quorum and election
    // ports are its client ports plus 707 and 1707.
    let base = 20_000 + (std::process::id() % 10_000) as u16 + 7;
    let zk_base = 27_000 + (std::process::id() % 2_000) as u16;
    stop_on_ctrl_c(&["--controllers", "3"], base);
    stop_on_ctrl_c(
        &[
            "--mode",
            "zk",
            "--zookeepers",
            "3",
            "--zk-port",
            &zk_base.to_string(),
        ],
        base + 3,
    );
}

fn stop_on_ctrl_c(mode: &[&str], base: u16) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    // Its own process group, like a shell's foreground job.
    let mut command = std::process::Command::new(common::BIN);
    command
        .args(["cluster", "up", "--brokers", "3"])
        .args(mode)
        .args(["--port", &base.to_string(), "--data-dir"])
        .arg(dir.path())
        .process_group(0);
    // And, like an interactive shell's job, with SIGINT at its default:
    // this test may itself run with SIGINT ignored (a background job of a
    // script), which `cluster up` would inherit and, by the nohup
    // convention, keep.
    // SAFETY: signal(2) is async-signal-safe, as a pre_exec hook requires.
    unsafe {
        command.pre_exec(|| {
            if libc::signal(libc::SIGINT, libc::SIG_DFL) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (mut up, _) = common::start_cluster_up(command, dir.path(), Duration::from_secs(180));
    let bootstrap = format!("127.0.0.1:{base}");
    let created = std::process::Command::new(common::BIN)
        .args([
            "topics",
            "--bootstrap-server",
            &bootstrap,
            "create",
            "stop-order",
        ])
        .args(["--partitions", "6", "--replication-factor", "3"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");

    // What Ctrl-C does: SIGINT to the whole foreground process group.
    let stopping = std::time::Instant::now();
    // SAFETY: kill(2) on the process group of a child we started.
    assert_eq!(unsafe { libc::kill(-(up.id() as i32), libc::SIGINT) }, 0);
    let Some(status) = common::exit_within(&mut up, Duration::from_secs(120)) else {
        // SAFETY: as above; the nodes must not outlive the test.
        unsafe { libc::kill(-(up.id() as i32), libc::SIGKILL) };
        panic!(
            "{mode:?}: cluster up did not stop within 120 s of Ctrl-C\n{}",
            common::logs_in(dir.path())
        );
    };
    eprintln!(
        "{mode:?}: the whole cluster stopped in {:?}",
        stopping.elapsed()
    );
    assert!(status.success());
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node-{id}.log"))).unwrap();
        assert!(
            log.contains("controlled shutdown complete"),
            "{mode:?}: broker {id} did not complete its controlled shutdown:\n{log}"
        );
        assert!(
            !log.contains("controlled shutdown did not complete"),
            "{mode:?}: broker {id}'s controlled shutdown fell short:\n{log}"
        );
    }
}

/// `sluice health` with the settings a node of `cluster` runs with.
fn health(voters: &str, id: i32, role: &str, listener: &str) -> std::process::Output {
    std::process::Command::new(common::BIN)
        .arg("health")
        .args(["--set", &format!("node.id={id}")])
        .args(["--set", &format!("process.roles={role}")])
        .args(["--set", &format!("controller.quorum.voters={voters}")])
        .args(["--set", &format!("listeners={listener}")])
        .output()
        .expect("running sluice health")
}

#[test]
fn health_says_whether_a_broker_and_a_controller_are_ready() {
    let mut cluster = common::cluster::Cluster::start(3, 1, &[]);
    let voters = (1001..=1003)
        .map(|id| format!("{id}@{}", cluster.controller(id).address()))
        .collect::<Vec<_>>()
        .join(",");
    let controller = format!("CONTROLLER://{}", cluster.controller(1001).address());
    let broker = format!("PLAINTEXT://{}", cluster.broker(1).address());

    let out = ok(health(&voters, 1001, "controller", &controller));
    assert!(out.contains("controller 1001 is ready"), "{out}");
    // The broker is ready once its own metadata shows it unfenced, which
    // follows its start-up line by a heartbeat or two.
    common::acked::wait_until(
        || health(&voters, 1, "broker", &broker).status.success(),
        Duration::from_secs(30),
    );
    let out = ok(health(&voters, 1, "broker", &broker));
    assert!(out.contains("broker 1 is ready"), "{out}");

    // A broker that is gone, and one that is not in the cluster, are not.
    let err = fails(health(&voters, 2, "broker", &broker));
    assert!(err.contains("broker 2 is not ready"), "{err}");
    cluster.broker(1).kill9();
    let err = fails(health(&voters, 1, "broker", &broker));
    assert!(err.contains("asking the broker"), "{err}");
}
