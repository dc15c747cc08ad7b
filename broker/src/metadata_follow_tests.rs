//! The metadata log as brokers follow it: controller listeners over test
//! logs whose leadership the test moves. A broker leaves a voter that no
//! longer knows the quorum leader (cut off, or its quorum loop stopped) for
//! the leader.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_metadata::controller_api::{BoxFuture, ControllerApi, MetadataLogSource, QuorumLeader};
use sluice_metadata::{encode_batch, MetadataRecord, TopicRecord, Uuid};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::controller_client::follow_metadata_log;
use crate::controller_service::ControllerService;
use crate::replication_tests::TestController;
use crate::server;

/// One voter's committed log, as the test sets it.
#[derive(Default)]
struct LogState {
    entries: Vec<(u64, Bytes)>,
    /// Entries up to here are no longer kept (a snapshot covers them).
    base: u64,
    leader: Option<QuorumLeader>,
}

#[derive(Default)]
struct TestLog {
    state: Mutex<LogState>,
    snapshots_encoded: AtomicUsize,
}

impl TestLog {
    fn set(&self, f: impl FnOnce(&mut LogState)) {
        f(&mut self.state.lock().unwrap());
    }
}

/// Entry `offset`: a topic named after it.
fn entry(offset: u64) -> (u64, Bytes) {
    let record = MetadataRecord::Topic(TopicRecord {
        name: format!("t{offset}"),
        topic_id: Uuid::new_v4(),
    });
    (offset, Bytes::from(encode_batch(&[record])))
}

fn leader(id: i32, term: i32) -> Option<QuorumLeader> {
    Some(QuorumLeader {
        leader_id: id,
        term,
    })
}

impl MetadataLogSource for TestLog {
    fn read_entries(&self, from: u64, max_bytes: usize) -> Option<Vec<(u64, Bytes)>> {
        let state = self.state.lock().unwrap();
        if from <= state.base {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for (offset, data) in state.entries.iter().filter(|(o, _)| *o >= from) {
            if !out.is_empty() && bytes + data.len() > max_bytes {
                break;
            }
            bytes += data.len();
            out.push((*offset, data.clone()));
        }
        Some(out)
    }

    fn last_offset(&self) -> u64 {
        let state = self.state.lock().unwrap();
        state.entries.last().map_or(state.base, |(o, _)| *o)
    }

    /// Not a loadable image: bytes that tell the offset they were taken at.
    fn snapshot(&self) -> (u64, Vec<u8>) {
        self.snapshots_encoded.fetch_add(1, Ordering::SeqCst);
        let offset = self.last_offset();
        (offset, snapshot_bytes(offset))
    }

    fn wait_beyond(&self, _offset: u64, max_wait: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(max_wait.min(Duration::from_millis(50))))
    }

    fn quorum_leader(&self) -> Option<QuorumLeader> {
        self.state.lock().unwrap().leader
    }
}

fn snapshot_bytes(offset: u64) -> Vec<u8> {
    (0..1000u32)
        .map(|i| (offset as u32).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

/// Serves `log` as controller `node_id` on a controller listener; returns its address.
async fn serve(node_id: i32, log: Arc<TestLog>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let service = ControllerService::new(
        node_id,
        "cluster".into(),
        Arc::new(TestController::idle()) as Arc<dyn ControllerApi>,
        log as Arc<dyn MetadataLogSource>,
        Arc::new(|_, _| Box::pin(async {})),
        Vec::new(),
    );
    let (stop, stop_rx) = watch::channel(false);
    std::mem::forget(stop); // serve until the test ends
    tokio::spawn(server::run(listener, Arc::new(service), stop_rx));
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_leaves_a_voter_cut_off_from_the_quorum_for_the_leader() {
    // Voter 1 leads; both voters hold entries 1..=3.
    let (one, two) = (Arc::new(TestLog::default()), Arc::new(TestLog::default()));
    for (log, term) in [(&one, 1), (&two, 1)] {
        log.set(|s| {
            s.entries = (1..=3).map(entry).collect();
            s.leader = leader(1, term);
        });
    }
    let voters = vec![
        (1, serve(1, one.clone()).await),
        (2, serve(2, two.clone()).await),
    ];
    let (stop, stop_rx) = watch::channel(false);
    let mut image = follow_metadata_log(7, voters, Vec::new(), stop_rx);
    let reached = |image: &mut watch::Receiver<_>, offset: u64| {
        let mut image = image.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                image.wait_for(|i: &Arc<sluice_metadata::MetadataImage>| i.offset >= offset),
            )
            .await
            .is_ok()
        }
    };
    assert!(reached(&mut image, 3).await, "the broker follows the log");

    // Voter 1 is cut off from voter 2: it steps down and knows no leader,
    // and its log stays as it was. Voter 2 leads and the log goes on there.
    one.set(|s| s.leader = None);
    two.set(|s| {
        s.leader = leader(2, 2);
        s.entries.extend((4..=6).map(entry));
    });
    assert!(
        reached(&mut image, 6).await,
        "the broker stays on a voter that knows no leader: it is at offset {}",
        image.borrow().offset
    );
    assert!(image.borrow().topic("t6").is_some());

    // A voter that names another leader is left for it as well.
    two.set(|s| s.leader = leader(1, 3));
    one.set(|s| {
        s.leader = leader(1, 3);
        s.entries = (1..=8).map(entry).collect();
    });
    assert!(
        reached(&mut image, 8).await,
        "the broker stays on a voter that is not the leader: it is at offset {}",
        image.borrow().offset
    );
    let _ = stop.send(true);
}
