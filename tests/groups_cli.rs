//! The `sluice groups` commands against running servers, with librdkafka
//! consumer groups: list, describe (members, assignments, offsets, lag),
//! reset-offsets and delete; and `sluice bench commits`, which makes groups.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Mode};
use common::{Server, BIN};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const CLIENT_ID: &str = "groups-cli-test";

fn groups(bootstrap: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("groups")
        .args(args)
        .arg("--bootstrap-server")
        .arg(bootstrap)
        .output()
        .expect("running sluice groups")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "command failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command failed; returns its stderr.
fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "command should have failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Calls `f` until it returns Some, for at most `limit`; `what` says what
/// was awaited and `last` shows the last attempt when it never does.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut(&mut String) -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        if let Some(v) = f(&mut last) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; last attempt:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn produce(bootstrap: &str, topic: &str, partition: i32, count: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    for i in 0..count {
        let payload = format!("{topic}-{partition}-{i}");
        let mut record = BaseRecord::<(), _>::to(topic)
            .payload(&payload)
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("every message delivered");
}

/// A librdkafka group member on its own thread: it subscribes, consumes,
/// commits once it has read `expect` messages, and keeps polling (so it
/// stays in the group) until stopped, when it leaves the group.
struct GroupConsumer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicBool>,
    /// (partition, offset) of every message read.
    seen: Arc<Mutex<Vec<(i32, i64)>>>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl GroupConsumer {
    fn start(bootstrap: &str, group: &str, topic: &str, expect: usize, reset: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("client.id", CLIENT_ID)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", reset)
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failure = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, committed, seen, failure) = (
                stop.clone(),
                committed.clone(),
                seen.clone(),
                failure.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => seen.lock().unwrap().push((m.partition(), m.offset())),
                        Some(Err(e)) => {
                            *failure.lock().unwrap() = Some(format!("consume: {e}"));
                        }
                        None => {}
                    }
                    if !committed.load(Ordering::SeqCst) && seen.lock().unwrap().len() >= expect {
                        match consumer.commit_consumer_state(CommitMode::Sync) {
                            Ok(()) => committed.store(true, Ordering::SeqCst),
                            Err(e) => *failure.lock().unwrap() = Some(format!("commit: {e}")),
                        }
                    }
                }
                // Dropping the consumer closes it: it leaves the group.
                drop(consumer);
            })
        };
        Self {
            stop,
            committed,
            seen,
            failure,
            thread: Some(thread),
        }
    }

    fn wait_committed(&self, limit: Duration) {
        eventually(limit, "the consumer read and committed", |last| {
            *last = format!(
                "read {} message(s); last error: {:?}",
                self.seen.lock().unwrap().len(),
                self.failure.lock().unwrap()
            );
            self.committed.load(Ordering::SeqCst).then_some(())
        });
    }

    fn seen(&self) -> Vec<(i32, i64)> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops polling and leaves the group.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("consumer thread");
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The per-partition rows of `describe` (or `reset-offsets`) output for
/// `group` and `topic`: partition -> the row's fields.
fn partition_rows(out: &str, group: &str, topic: &str) -> BTreeMap<i32, Vec<String>> {
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 4 && f[0] == group && f[1] == topic)
        .filter_map(|f| Some((f[2].parse().ok()?, f)))
        .collect()
}

/// The member rows of `describe` output (those naming the test's client id).
fn member_rows(out: &str, group: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 7 && f[0] == group && f[4] == CLIENT_ID)
        .collect()
}

/// (current, log end, lag) per partition, as printed.
fn offsets(out: &str, group: &str, topic: &str) -> BTreeMap<i32, (String, String, String)> {
    partition_rows(out, group, topic)
        .into_iter()
        .map(|(p, f)| (p, (f[3].clone(), f[4].clone(), f[5].clone())))
        .collect()
}

fn triple(current: &str, end: &str, lag: &str) -> (String, String, String) {
    (current.to_string(), end.to_string(), lag.to_string())
}

/// The GROUP/STATE/PROTOCOL-TYPE row of `group` in `list` output.
fn listed(out: &str, group: &str) -> Option<Vec<String>> {
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.first().map(String::as_str) == Some(group))
}

#[test]
fn a_consumer_group_from_list_to_delete() {
    let server = Server::start();
    let b = server.bootstrap();
    let created = server.cli(&["create", "events", "--partitions", "3"]);
    assert!(created.status.success(), "{}", text(&created));
    for p in 0..3 {
        produce(&b, "events", p, 10);
    }

    let consumer = GroupConsumer::start(&b, "g1", "events", 30, "earliest");
    consumer.wait_committed(Duration::from_secs(60));

    // Listed as a stable consumer group.
    eventually(Duration::from_secs(20), "g1 listed as Stable", |last| {
        let out = ok(groups(&b, &["list"]));
        *last = out.clone();
        let row = listed(&out, "g1")?;
        (row[1] == "Stable" && row[2] == "consumer").then_some(())
    });
    assert!(ok(groups(&b, &["list", "--state", "Empty"]))
        .lines()
        .all(|l| !l.starts_with("g1")));

    // Described while running: the member, its assignment and the offsets.
    let described = ok(groups(&b, &["describe", "g1"]));
    assert!(described.contains("Stable"), "{described}");
    let members = member_rows(&described, "g1");
    assert_eq!(members.len(), 1, "{described}");
    let member_id = members[0][1].clone();
    assert_eq!(members[0][5], "3", "{described}");
    assert_eq!(members[0][6], "events(0,1,2)", "{described}");
    let rows = partition_rows(&described, "g1", "events");
    assert_eq!(rows.len(), 3, "{described}");
    for (p, f) in &rows {
        assert_eq!(&f[3..6], ["10", "10", "0"], "partition {p}:\n{described}");
        assert_eq!(
            f[6], member_id,
            "partition {p} is owned by the member:\n{described}"
        );
        assert_eq!(f[8], CLIENT_ID, "{described}");
    }

    // An active group is neither deleted nor reset.
    let refused = fails(groups(&b, &["delete", "g1"]));
    assert!(
        refused.contains("NonEmptyGroup") && refused.contains("active members"),
        "{refused}"
    );
    let refused = fails(groups(
        &b,
        &[
            "reset-offsets",
            "--group",
            "g1",
            "--topic",
            "events",
            "--to-earliest",
            "--execute",
        ],
    ));
    assert!(refused.contains("active member"), "{refused}");
    // ... though the plan can be shown.
    let plan = groups(
        &b,
        &[
            "reset-offsets",
            "--group",
            "g1",
            "--topic",
            "events",
            "--to-earliest",
        ],
    );
    assert!(
        String::from_utf8_lossy(&plan.stderr).contains("active member"),
        "{}",
        text(&plan)
    );
    let plan = ok(plan);
    assert_eq!(partition_rows(&plan, "g1", "events").len(), 3, "{plan}");

    consumer.stop();
    produce(&b, "events", 0, 5);

    // Stopped: no members, committed offsets and lag remain.
    let described = eventually(Duration::from_secs(30), "g1 empty", |last| {
        let out = ok(groups(&b, &["describe", "g1"]));
        *last = out.clone();
        out.contains("has no active members").then_some(out)
    });
    assert!(described.contains("Empty"), "{described}");
    assert_eq!(
        offsets(&described, "g1", "events"),
        BTreeMap::from([
            (0, triple("10", "15", "5")),
            (1, triple("10", "10", "0")),
            (2, triple("10", "10", "0")),
        ]),
        "{described}"
    );
    for (p, f) in partition_rows(&described, "g1", "events") {
        assert_eq!(f[6], "-", "partition {p} has no owner:\n{described}");
    }
    let list = ok(groups(&b, &["list", "--state", "Empty"]));
    assert_eq!(
        listed(&list, "g1").map(|r| r[1].clone()).as_deref(),
        Some("Empty"),
        "{list}"
    );

    // Dry runs plan without committing.
    let new_offsets = |plan: &str| -> BTreeMap<i32, String> {
        partition_rows(plan, "g1", "events")
            .into_iter()
            .map(|(p, f)| (p, f[4].clone()))
            .collect()
    };
    let plan = ok(groups(
        &b,
        &[
            "reset-offsets",
            "-g",
            "g1",
            "-t",
            "events:0",
            "--shift-by",
            "-3",
        ],
    ));
    assert!(plan.contains("Dry run"), "{plan}");
    assert_eq!(
        new_offsets(&plan),
        BTreeMap::from([(0, "7".to_string())]),
        "{plan}"
    );
    let plan = ok(groups(
        &b,
        &[
            "reset-offsets",
            "-g",
            "g1",
            "-t",
            "events",
            "--to-offset",
            "12",
        ],
    ));
    assert_eq!(
        new_offsets(&plan),
        BTreeMap::from([(0, "12".into()), (1, "10".into()), (2, "10".into())]),
        "offsets beyond the log end are kept at it:\n{plan}"
    );
    let plan = ok(groups(
        &b,
        &["reset-offsets", "-g", "g1", "--all-topics", "--to-latest"],
    ));
    assert_eq!(
        new_offsets(&plan),
        BTreeMap::from([(0, "15".into()), (1, "10".into()), (2, "10".into())]),
        "{plan}"
    );
    let plan = ok(groups(
        &b,
        &[
            "reset-offsets",
            "-g",
            "g1",
            "-t",
            "events:1,2",
            "--to-datetime",
            "2000-01-01T00:00:00Z",
        ],
    ));
    assert_eq!(
        new_offsets(&plan),
        BTreeMap::from([(1, "0".into()), (2, "0".into())]),
        "{plan}"
    );
    let plan = ok(groups(
        &b,
        &[
            "reset-offsets",
            "-g",
            "g1",
            "-t",
            "events",
            "--to-datetime",
            "2100-01-01T00:00:00+01:00",
        ],
    ));
    assert_eq!(
        new_offsets(&plan),
        BTreeMap::from([(0, "15".into()), (1, "10".into()), (2, "10".into())]),
        "no record that late: the log end\n{plan}"
    );
    let unchanged = ok(groups(&b, &["describe", "g1"]));
    assert_eq!(
        offsets(&unchanged, "g1", "events")[&0].0,
        "10",
        "{unchanged}"
    );

    // Reset to the earliest offsets for real.
    let done = ok(groups(
        &b,
        &[
            "reset-offsets",
            "--group",
            "g1",
            "--topic",
            "events",
            "--to-earliest",
            "--execute",
        ],
    ));
    assert!(
        done.contains("Committed new offsets for 3 partition(s)"),
        "{done}"
    );
    let described = ok(groups(&b, &["describe", "g1"]));
    assert_eq!(
        offsets(&described, "g1", "events"),
        BTreeMap::from([
            (0, triple("0", "15", "15")),
            (1, triple("0", "10", "10")),
            (2, triple("0", "10", "10")),
        ]),
        "{described}"
    );

    // A new member starts from the reset offsets (not from `latest`).
    let again = GroupConsumer::start(&b, "g1", "events", 35, "latest");
    again.wait_committed(Duration::from_secs(60));
    let seen = again.seen();
    again.stop();
    for (p, count) in [(0, 15), (1, 10), (2, 10)] {
        let mut offsets: Vec<i64> = seen
            .iter()
            .filter(|(sp, _)| *sp == p)
            .map(|(_, o)| *o)
            .collect();
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (0..count).collect::<Vec<i64>>(),
            "partition {p} read again from 0"
        );
    }

    // Deleted once empty; gone afterwards.
    eventually(Duration::from_secs(30), "g1 deleted", |last| {
        let out = groups(&b, &["delete", "g1"]);
        *last = text(&out);
        out.status.success().then_some(())
    });
    let list = ok(groups(&b, &["list"]));
    assert!(listed(&list, "g1").is_none(), "{list}");
    assert!(fails(groups(&b, &["describe", "g1"])).contains("does not exist"));
    assert!(fails(groups(&b, &["delete", "g1"])).contains("GroupIdNotFound"));
}

#[test]
fn offsets_of_a_group_without_members_and_clear_errors() {
    let server = Server::start();
    let b = server.bootstrap();
    let created = server.cli(&["create", "plain", "--partitions", "2"]);
    assert!(created.status.success(), "{}", text(&created));
    produce(&b, "plain", 0, 4);
    produce(&b, "plain", 1, 6);

    // Offsets committed for a group nobody has joined (generation -1).
    let done = ok(groups(
        &b,
        &[
            "reset-offsets",
            "--group",
            "offline",
            "--topic",
            "plain",
            "--to-latest",
            "--execute",
        ],
    ));
    assert!(
        done.contains("Committed new offsets for 2 partition(s)"),
        "{done}"
    );
    let described = ok(groups(&b, &["describe", "offline"]));
    assert!(described.contains("has no active members"), "{described}");
    assert_eq!(
        offsets(&described, "offline", "plain"),
        BTreeMap::from([(0, triple("4", "4", "0")), (1, triple("6", "6", "0"))]),
        "{described}"
    );
    let done = ok(groups(
        &b,
        &[
            "reset-offsets",
            "-g",
            "offline",
            "-t",
            "plain:1",
            "--shift-by",
            "-2",
            "--execute",
        ],
    ));
    assert!(
        done.contains("Committed new offsets for 1 partition(s)"),
        "{done}"
    );
    let described = ok(groups(&b, &["describe", "offline"]));
    assert_eq!(
        offsets(&described, "offline", "plain")[&1],
        triple("4", "6", "2"),
        "{described}"
    );
    let list = ok(groups(&b, &["list"]));
    assert!(listed(&list, "offline").is_some(), "{list}");

    // Clear errors.
    assert!(fails(groups(&b, &["describe", "nobody"])).contains("does not exist"));
    let both = groups(&b, &["describe", "offline", "nobody"]);
    assert!(
        String::from_utf8_lossy(&both.stdout).contains("offline"),
        "{}",
        text(&both)
    );
    assert!(fails(both).contains("does not exist"));
    assert!(fails(groups(&b, &["delete", "nobody"])).contains("GroupIdNotFound"));
    assert!(fails(groups(
        &b,
        &[
            "reset-offsets",
            "-g",
            "offline",
            "-t",
            "missing",
            "--to-earliest"
        ]
    ))
    .contains("UnknownTopicOrPartition"));
    assert!(fails(groups(
        &b,
        &[
            "reset-offsets",
            "-g",
            "offline",
            "-t",
            "plain:7",
            "--to-earliest"
        ]
    ))
    .contains("no partition 7"));
    assert!(fails(groups(
        &b,
        &[
            "reset-offsets",
            "-g",
            "nobody",
            "-t",
            "plain",
            "--shift-by",
            "1"
        ]
    ))
    .contains("no committed offset"));
    assert!(fails(groups(
        &b,
        &["reset-offsets", "-g", "offline", "-t", "plain"]
    ))
    .contains("--to-"));
    assert!(fails(groups(
        &b,
        &[
            "reset-offsets",
            "-g",
            "offline",
            "-t",
            "plain",
            "--to-datetime",
            "soon"
        ]
    ))
    .contains("YYYY-MM-DD"));
    let unreachable = format!("127.0.0.1:{}", common::free_port());
    assert!(fails(groups(&unreachable, &["list"])).contains("no bootstrap server answered"));

    assert!(ok(groups(&b, &["delete", "offline"])).contains("Deleted consumer group 'offline'"));
    assert!(listed(&ok(groups(&b, &["list"])), "offline").is_none());
}

/// Short broker sessions, so that a killed coordinator is replaced quickly.
const FAST: &[&str] = &[
    "broker.session.timeout.ms=3000",
    "broker.heartbeat.interval.ms=500",
];

in_both_modes!(sync groups_across_a_cluster);
/// Three brokers: every broker's groups are listed, describe and
/// reset-offsets find each group's coordinator from any bootstrap broker,
/// and follow a group to its new coordinator when the old one is killed.
fn groups_across_a_cluster(mode: Mode) {
    let mut cluster = Cluster::start_in(mode, 1, 3, FAST);
    let all = cluster.bootstrap();
    let first = cluster.brokers[0].address();
    let last = cluster.brokers[2].address();
    let created = cluster.cli(&[
        "create",
        "spread",
        "--partitions",
        "3",
        "--replication-factor",
        "3",
    ]);
    assert!(created.status.success(), "{}", text(&created));
    for p in 0..3 {
        produce(&all, "spread", p, 3);
    }
    let names: Vec<String> = (0..8).map(|i| format!("spread-{i}")).collect();
    for (i, group) in names.iter().enumerate() {
        let bootstrap = &cluster.brokers[i % 3].address();
        let done = ok(groups(
            bootstrap,
            &[
                "reset-offsets",
                "-g",
                group,
                "-t",
                "spread",
                "--to-latest",
                "--execute",
            ],
        ));
        assert!(done.contains("Committed"), "{done}");
    }
    let consumer = GroupConsumer::start(&all, "spread-live", "spread", 9, "earliest");
    consumer.wait_committed(Duration::from_secs(60));

    for bootstrap in [&first, &last] {
        let list = ok(groups(bootstrap, &["list"]));
        for group in &names {
            let row = listed(&list, group).unwrap_or_else(|| panic!("{group} missing:\n{list}"));
            assert_eq!(row[1], "Empty", "{list}");
        }
        assert!(listed(&list, "spread-live").is_some(), "{list}");
        let described = ok(groups(bootstrap, &["describe", "spread-live", &names[0]]));
        assert_eq!(
            member_rows(&described, "spread-live").len(),
            1,
            "{described}"
        );
        let live = offsets(&described, "spread-live", "spread");
        assert_eq!(live.len(), 3, "{described}");
        assert!(
            live.values().all(|o| *o == triple("3", "3", "0")),
            "{described}"
        );
        let offline = offsets(&described, &names[0], "spread");
        assert!(
            offline.values().all(|o| *o == triple("3", "3", "0")),
            "{described}"
        );
    }
    consumer.stop();
    eventually(Duration::from_secs(30), "spread-live deleted", |last| {
        let out = groups(&all, &["delete", "spread-live"]);
        *last = text(&out);
        out.status.success().then_some(())
    });
    let deleted = ok(groups(&all, &["delete", &names[0], &names[1]]));
    assert_eq!(
        deleted.matches("Deleted consumer group").count(),
        2,
        "{deleted}"
    );
    let list = ok(groups(&first, &["list"]));
    assert!(
        listed(&list, "spread-live").is_none() && listed(&list, &names[0]).is_none(),
        "{list}"
    );
    assert!(listed(&list, &names[2]).is_some(), "{list}");

    // kill -9 of a group's coordinator: describe, through another broker,
    // waits out the move (the old coordinator refuses connections, then the
    // new one may still be loading) and finds the offsets on the new one.
    let coordinator: i32 = listed(&list, &names[2])
        .and_then(|row| row.get(3)?.parse().ok())
        .unwrap_or_else(|| panic!("no coordinator of {} listed:\n{list}", names[2]));
    cluster.broker(coordinator).kill9();
    let survivor = cluster
        .brokers
        .iter()
        .find(|b| b.id != coordinator)
        .map(|b| b.address())
        .expect("a surviving broker");
    let started = Instant::now();
    let described = ok(groups(&survivor, &["describe", &names[2]]));
    eprintln!(
        "describe after the coordinator's kill -9 took {:?}",
        started.elapsed()
    );
    let summary = described
        .lines()
        .find(|l| l.starts_with(names[2].as_str()))
        .unwrap_or_else(|| panic!("no summary:\n{described}"));
    assert!(
        !summary.contains(&format!("({coordinator})")),
        "a new coordinator:\n{described}"
    );
    let moved = offsets(&described, &names[2], "spread");
    assert_eq!(moved.len(), 3, "{described}");
    assert!(
        moved.values().all(|o| *o == triple("3", "3", "0")),
        "{described}"
    );
}

/// `sluice bench commits` runs end to end (its figures are not judged here):
/// the idle groups and the benchmark's own groups exist afterwards, with
/// their offsets.
#[test]
fn the_commit_benchmark_runs_and_leaves_its_groups() {
    let server = Server::start();
    let bootstrap = server.bootstrap();
    let out = Command::new(BIN)
        .args(["bench", "commits", "-b", &bootstrap])
        .args(["--groups", "2", "--partitions", "3", "--seconds", "1"])
        .args(["--idle-groups", "40"])
        .output()
        .expect("running sluice bench commits");
    let report = ok(out);
    for line in [
        "created 40 idle groups",
        "baseline: OffsetFetch",
        "OffsetCommit",
        "committed offsets per second",
    ] {
        assert!(report.contains(line), "{line:?} missing from:\n{report}");
    }
    let list = ok(groups(&bootstrap, &["list"]));
    let bench_groups: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|g| g.starts_with("sluice-commit-bench-"))
        .collect();
    assert_eq!(
        bench_groups.iter().filter(|g| g.contains("-idle-")).count(),
        40,
        "{list}"
    );
    assert_eq!(
        bench_groups
            .iter()
            .filter(|g| g.contains("-group-"))
            .count(),
        2,
        "{list}"
    );
    let idle = bench_groups
        .iter()
        .find(|g| g.contains("-idle-"))
        .expect("an idle group");
    let described = ok(groups(&bootstrap, &["describe", idle]));
    assert!(described.contains(idle), "{described}");
}
