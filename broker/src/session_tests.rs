//! Incremental fetch sessions between a leader and its followers: what an
//! incremental request is answered with, and that skipping idle partitions
//! keeps an idle follower in the ISR.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_metadata::{
    MetadataRecord, OffsetCommitRecord, PartitionOffset, TopicOffsets, TopicRecord, Uuid,
};

use crate::replication_tests::{eventually, partition_record, produce_many, two_brokers, TOPIC};
use crate::KafkaClient;

const PARTITIONS: i32 = 40;

/// Creates the test topic with `PARTITIONS` partitions, led by broker 1,
/// both brokers in the ISR.
fn create_topic(cluster: &std::sync::Mutex<crate::replication_tests::Cluster>) -> Uuid {
    let topic_id = Uuid::new_v4();
    let mut records = vec![MetadataRecord::Topic(TopicRecord {
        name: TOPIC.into(),
        topic_id,
    })];
    for index in 0..PARTITIONS {
        records.push(partition_record(topic_id, index, 1, 0, vec![1, 2], 0));
    }
    cluster.lock().unwrap().commit(&records);
    topic_id
}

/// A Fetch as follower 2 sends it (version 12, topics by name).
fn follower_fetch(
    session: (i32, i32),
    partitions: &[(i32, i64)],
    max_wait_ms: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(2))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_id(session.0)
        .with_session_epoch(session.1)
        .with_topics(if partitions.is_empty() {
            Vec::new()
        } else {
            vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&(index, offset)| {
                            FetchPartition::default()
                                .with_partition(index)
                                .with_current_leader_epoch(0)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(1 << 16)
                        })
                        .collect(),
                )]
        })
}

async fn send(address: SocketAddr, request: FetchRequest) -> FetchResponse {
    let mut client = KafkaClient::connect(&address.to_string(), "test")
        .await
        .unwrap();
    client.send_version(request, 12).await.unwrap()
}

/// (partition, high watermark, record bytes) of each partition answered.
fn answered(response: &FetchResponse) -> Vec<(i32, i64, usize)> {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| {
            (
                p.partition_index,
                p.high_watermark,
                p.records.as_ref().map_or(0, |r| r.len()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_incremental_fetch_is_answered_with_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _controller, nodes) = two_brokers(dir.path()).await;
    create_topic(&cluster);
    let leader = nodes[0].address;
    eventually("the leader to lead every partition", || {
        (0..PARTITIONS).all(|i| nodes[0].replicas.partition(TOPIC, i).is_some())
    })
    .await;

    // A new session: every partition is answered.
    let all: Vec<(i32, i64)> = (0..PARTITIONS).map(|i| (i, 0)).collect();
    let first = send(leader, follower_fetch((0, 0), &all, 0)).await;
    assert_eq!(first.error_code, 0);
    assert!(first.session_id > 0);
    assert_eq!(answered(&first).len(), PARTITIONS as usize);
    let id = first.session_id;

    // Nothing changed: nothing is answered, after the long poll.
    let idle = send(leader, follower_fetch((id, 1), &[], 100)).await;
    assert_eq!((idle.error_code, idle.session_id), (0, id));
    assert_eq!(answered(&idle), vec![]);

    // A write to one partition: only it comes back, with its record.
    assert_eq!(produce_many(leader, 1, &[(7, "x")]).await, vec![(0, 0)]);
    let write = send(leader, follower_fetch((id, 2), &[], 500)).await;
    let got = answered(&write);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 7);
    assert!(got[0].2 > 0);

    // The follower says it holds the record: the high watermark moves, and
    // that alone is answered.
    let moved = send(leader, follower_fetch((id, 3), &[(7, 1)], 0)).await;
    assert_eq!(answered(&moved), vec![(7, 1, 0)]);
    let quiet = send(leader, follower_fetch((id, 4), &[], 0)).await;
    assert_eq!(answered(&quiet), vec![]);

    // An epoch out of turn, or an unknown session, is refused at the top.
    let stale = send(leader, follower_fetch((id, 4), &[], 0)).await;
    assert_eq!(
        stale.error_code,
        ResponseError::InvalidFetchSessionEpoch.code()
    );
    let unknown = send(leader, follower_fetch((id + 1000, 1), &[], 0)).await;
    assert_eq!(
        unknown.error_code,
        ResponseError::FetchSessionIdNotFound.code()
    );
    // The session itself goes on at the right epoch.
    let after = send(leader, follower_fetch((id, 5), &[], 0)).await;
    assert_eq!((after.error_code, answered(&after)), (0, vec![]));
}

/// Followers in sessions skip partitions nothing happened to, so an idle
/// partition's follower is not heard from for longer than
/// replica.lag.time.max.ms. A write after that must not drop it from the
/// ISR: each skipped round counts as a fetch that found it caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_idle_past_the_lag_time_stays_in_sync_through_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, controller, mut nodes) = two_brokers(dir.path()).await;
    create_topic(&cluster);
    nodes[0].start_replication();
    nodes[1].start_replication();
    let all: Vec<(i32, &str)> = (0..PARTITIONS).map(|i| (i, "first")).collect();
    let leader = nodes[0].address;
    for (error, _) in produce_many(leader, -1, &all).await {
        assert_eq!(error, 0);
    }

    // Idle past the lag time (3 s in these tests).
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Now a write to each partition in turn, while the leader checks for
    // lagging followers as often as it can.
    let replicas = nodes[0].replicas.clone();
    let checking = tokio::spawn(async move {
        let mut shrinks = Vec::new();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            for (partition, change) in replicas.isr_shrinks(3_000) {
                shrinks.push((partition.index, change.new_isr));
            }
            tokio::task::yield_now().await;
        }
        shrinks
    });
    for index in 0..PARTITIONS {
        assert_eq!(produce_many(leader, -1, &[(index, "second")]).await[0].0, 0);
    }
    let shrinks = checking.await.unwrap();
    assert_eq!(
        shrinks,
        vec![],
        "ISR shrinks proposed for an in-sync follower"
    );
    assert!(
        controller.calls.lock().unwrap().is_empty(),
        "no ISR change was due"
    );
    for index in 0..PARTITIONS {
        assert_eq!(nodes[1].log_of(index).0, 2);
    }
}

/// A waiting fetch re-reads every partition of its session when woken, so a
/// metadata entry that changes nothing this broker hosts must not wake it:
/// otherwise every consumer-group offset commit (a metadata record in KRaft
/// mode) costs each broker a pass over every follower's session, which at
/// 100,000 partitions is tens of thousands of partitions per commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_about_nothing_hosted_here_wakes_no_waiting_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _controller, nodes) = two_brokers(dir.path()).await;
    let topic_id = create_topic(&cluster);
    let waiting = nodes[0].replicas.appended().notified();
    tokio::pin!(waiting);
    waiting.as_mut().enable();

    let commit = MetadataRecord::Offsets(OffsetCommitRecord {
        group_id: "readers".into(),
        commit_timestamp: 1,
        topics: vec![TopicOffsets {
            topic: TOPIC.into(),
            partitions: vec![PartitionOffset {
                partition: 0,
                offset: 0,
                leader_epoch: -1,
                metadata: None,
            }],
        }],
    });
    let elsewhere = MetadataRecord::Topic(TopicRecord {
        name: "hosted-nowhere".into(),
        topic_id: Uuid::new_v4(),
    });
    cluster.lock().unwrap().commit(&[commit, elsewhere]);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), waiting.as_mut())
            .await
            .is_err(),
        "an offset commit woke the fetches waiting on this broker"
    );

    // A leadership change of a hosted partition still wakes them.
    cluster
        .lock()
        .unwrap()
        .commit(&[partition_record(topic_id, 0, 2, 1, vec![1, 2], 1)]);
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("a hosted partition's new leader did not wake the waiting fetches");
}
