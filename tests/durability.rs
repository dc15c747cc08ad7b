//! kill -9 under an acks=all producer: every acknowledged message survives
//! the restart, exactly once and in order, and offsets never go back.

mod common;

use std::time::Duration;

use common::acked::{verify, AckedWriter};
use common::Server;

const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start();
    let out = server.cli(&["create", "durable", "--partitions", &PARTITIONS.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let writer = AckedWriter::spawn(&server.bootstrap(), "durable", PARTITIONS);
    writer.wait_for_more(3000, Duration::from_secs(60));
    server.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    writer.wait_for_more(3000, Duration::from_secs(90));
    let acked = writer.stop().await;
    verify(&server.bootstrap(), "durable", &acked);
}
