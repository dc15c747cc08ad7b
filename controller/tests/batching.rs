//! Concurrent controller operations share Raft entries, and each still
//! gets the answer it would have had alone.

use sluice_controller::Controller;
use std::collections::BTreeSet;
use std::sync::Arc;

mod common;

use common::standalone_controller;
use sluice_metadata::controller_api::ControllerApi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operations_are_committed_together() {
    let dir = tempfile::tempdir().unwrap();
    let controller = standalone_controller(dir.path(), 1, |_| {}).await;
    let before = controller.quorum().status().commit_index;

    let calls: Vec<_> = (0..200)
        .map(|i| {
            let c: Arc<Controller> = controller.clone();
            tokio::spawn(async move { c.allocate_producer_ids(i, 10).await })
        })
        .collect();
    let mut firsts = BTreeSet::new();
    for call in calls {
        let first = call.await.unwrap().expect("allocation");
        assert!(firsts.insert(first), "block {first} handed out twice");
    }
    // 200 blocks of 10, back to back, each handed out once.
    assert_eq!(firsts.len(), 200);
    assert!(firsts
        .iter()
        .zip(firsts.iter().skip(1))
        .all(|(a, b)| b - a == 10));

    let entries = controller.quorum().status().commit_index - before;
    assert!(
        entries < 100,
        "200 concurrent operations took {entries} entries: they were not batched"
    );
    controller.shutdown().await;
}
