//! kill -9 under an acks=all producer: every acknowledged message survives
//! the restart, exactly once and in order, and offsets never go back.

mod common;

use std::time::Duration;

use common::acked::{verify, AckedWriter};
use common::Server;

const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    kill_9_under_acked_writes(Server::start(), &[]).await;
}

/// The same with `flush.messages=1` on the topic (each append fsynced before
/// it is answered) and the broker's time-based flush checked every 100 ms:
/// the settings are accepted and the produce path keeps working with them.
/// (That the fsync happens is shown below the process, on the storage
/// crate's test file system: sluice-storage log::crash_tests.)
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9_with_flush_settings() {
    let server = Server::start_with(&[
        "log.flush.interval.ms=1000",
        "log.flush.scheduler.interval.ms=100",
    ]);
    kill_9_under_acked_writes(server, &["--config", "flush.messages=1"]).await;
}

async fn kill_9_under_acked_writes(mut server: Server, topic_args: &[&str]) {
    let partitions = PARTITIONS.to_string();
    let mut args = vec!["create", "durable", "--partitions", &partitions];
    args.extend_from_slice(topic_args);
    let out = server.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let described = server.cli(&["describe", "durable"]);
    let described = String::from_utf8_lossy(&described.stdout);
    for arg in topic_args.iter().filter(|a| a.contains('=')) {
        assert!(described.contains(arg), "{arg} missing from {described}");
    }

    let writer = AckedWriter::spawn(&server.bootstrap(), "durable", PARTITIONS);
    writer.wait_for_more(3000, Duration::from_secs(60));
    server.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    writer.wait_for_more(3000, Duration::from_secs(90));
    let acked = writer.stop().await;
    verify(&server.bootstrap(), "durable", &acked);
}
