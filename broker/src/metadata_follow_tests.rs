//! The metadata log as brokers follow it: controller listeners over test
//! logs whose leadership the test moves. A broker leaves a voter that no
//! longer knows the quorum leader (cut off, or its quorum loop stopped) for
//! the leader; and snapshots handed to brokers that catch up at different
//! times are each read whole.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    fetch_request, fetch_snapshot_request, BrokerId, FetchRequest, FetchSnapshotRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::{BoxFuture, ControllerApi, MetadataLogSource, QuorumLeader};
use sluice_metadata::{encode_batch, MetadataRecord, TopicRecord, Uuid};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::controller_client::follow_metadata_log;
use crate::controller_service::{ControllerService, METADATA_TOPIC};
use crate::replication_tests::TestController;
use crate::{server, KafkaClient};

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
    tokio::spawn(server::run(
        listener,
        "CONTROLLER".into(),
        Arc::new(service),
        stop_rx,
    ));
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
    let mut image = follow_metadata_log(7, voters, Vec::new(), stop_rx).applied;
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

fn snapshot_fetch(end_offset: i64, position: usize, max_bytes: i32) -> FetchSnapshotRequest {
    FetchSnapshotRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_bytes(max_bytes)
        .with_topics(vec![fetch_snapshot_request::TopicSnapshot::default()
            .with_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
            .with_partitions(vec![
                fetch_snapshot_request::PartitionSnapshot::default()
                    .with_partition(0)
                    .with_snapshot_id(
                        fetch_snapshot_request::SnapshotId::default()
                            .with_end_offset(end_offset)
                            .with_epoch(0),
                    )
                    .with_position(position as i64),
            ])])
}

/// A broker far behind: the snapshot end offset the controller points it to.
async fn fetch_from_start(client: &mut KafkaClient) -> i64 {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(9))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(1)
                .with_partition_max_bytes(1 << 20)])]);
    let response = client.send_version(request, 12).await.unwrap();
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, ResponseError::OffsetOutOfRange.code());
    p.snapshot_id.end_offset
}

/// Reads `size` bytes of snapshot `end_offset` from `from` on, in chunks of 300.
async fn read_snapshot(
    client: &mut KafkaClient,
    end_offset: i64,
    data: &mut Vec<u8>,
    chunks: usize,
) -> Result<(), i16> {
    for _ in 0..chunks {
        let response = client
            .send_version(snapshot_fetch(end_offset, data.len(), 300), 0)
            .await
            .unwrap();
        let p = &response.topics[0].partitions[0];
        if p.error_code != 0 {
            return Err(p.error_code);
        }
        data.extend_from_slice(&p.unaligned_records);
        if data.len() as i64 >= p.size {
            break;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_catching_up_at_different_times_each_read_their_snapshot_whole() {
    let log = Arc::new(TestLog::default());
    log.set(|s| {
        s.base = 10;
        s.entries = (11..=12).map(entry).collect();
        s.leader = leader(1, 1);
    });
    let address = serve(1, log.clone()).await;
    let mut a = KafkaClient::connect(&address, "a").await.unwrap();
    let mut b = KafkaClient::connect(&address, "b").await.unwrap();
    let mut c = KafkaClient::connect(&address, "c").await.unwrap();

    // Broker A is pointed at the snapshot at 12 and reads its first chunk.
    let a_snapshot = fetch_from_start(&mut a).await;
    assert_eq!(a_snapshot, 13);
    let mut a_data = Vec::new();
    read_snapshot(&mut a, a_snapshot, &mut a_data, 1)
        .await
        .unwrap();
    assert_eq!(a_data.len(), 300);

    // A second broker asks while that snapshot is still good: it is
    // handed the same one, not a new encoding of the image.
    assert_eq!(fetch_from_start(&mut c).await, 13);
    assert_eq!(log.snapshots_encoded.load(Ordering::SeqCst), 1);

    // The log moves on past the snapshot; broker B catches up later and
    // gets a newer one.
    log.set(|s| {
        s.base = 20;
        s.entries = (21..=25).map(entry).collect();
    });
    let b_snapshot = fetch_from_start(&mut b).await;
    assert_eq!(b_snapshot, 26);

    // Broker A goes on reading the snapshot it started, to its end.
    let result = read_snapshot(&mut a, a_snapshot, &mut a_data, 10).await;
    assert_eq!(
        result,
        Ok(()),
        "broker A's snapshot went away while it read it"
    );
    assert_eq!(a_data, snapshot_bytes(12));
    let mut b_data = Vec::new();
    read_snapshot(&mut b, b_snapshot, &mut b_data, 10)
        .await
        .unwrap();
    assert_eq!(b_data, snapshot_bytes(25));
}
