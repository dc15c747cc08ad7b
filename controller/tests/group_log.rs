//! Offset commits through the controller: concurrent commits share Raft
//! entries, and however often a group commits, the metadata log stays
//! bounded because snapshots keep only the latest offset per partition.

use std::sync::Arc;

mod common;

use common::{register, standalone_controller};
use sluice_controller::quorum::RAFT_LOG_DIR;
use sluice_controller::Controller;
use sluice_metadata::controller_api::{
    BrokerHeartbeat, ControllerApi, GroupWrite, GroupWriter, MetadataLogSource, NewTopic,
};
use sluice_metadata::{decode_batch, MetadataRecord, PartitionOffset, TopicOffsets};
use sluice_storage::raft_store::RaftLogStore;

const PARTITIONS: i32 = 4;

/// A standalone controller with one unfenced broker and a topic.
async fn controller_with_topic(dir: &std::path::Path) -> (Arc<Controller>, GroupWriter) {
    let controller = standalone_controller(dir, PARTITIONS, |config| {
        config.snapshot_every_entries = 200;
    })
    .await;
    let broker_epoch = register(&controller, 1).await;
    let reply = controller
        .broker_heartbeat(BrokerHeartbeat {
            broker_id: 1,
            broker_epoch,
            metadata_offset: u64::MAX / 2,
            metadata_replayed_offset: 0,
            want_fence: false,
            want_shutdown: false,
        })
        .await
        .unwrap();
    assert!(!reply.is_fenced);
    let created = controller
        .create_topics(
            vec![NewTopic {
                name: "t".into(),
                num_partitions: -1,
                replication_factor: -1,
                ..NewTopic::default()
            }],
            false,
        )
        .await;
    created[0].as_ref().unwrap();
    let writer = GroupWriter {
        broker_id: 1,
        broker_epoch,
    };
    (controller, writer)
}

fn commit(group: &str, offset: i64) -> GroupWrite {
    GroupWrite::CommitOffsets {
        group_id: group.into(),
        generation: -1,
        member_id: String::new(),
        offsets: vec![TopicOffsets {
            topic: "t".into(),
            partitions: (0..PARTITIONS)
                .map(|partition| PartitionOffset {
                    partition,
                    offset,
                    leader_epoch: -1,
                    metadata: None,
                })
                .collect(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_commits_leave_a_bounded_log_and_concurrent_ones_share_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (controller, writer) = controller_with_topic(dir.path()).await;

    // One group committing 2,000 times in a row: one entry each.
    for offset in 1..=2000 {
        let outcome = controller
            .write_group(writer, commit("g", offset))
            .await
            .unwrap();
        assert!(outcome.unknown_partitions.is_empty());
    }
    let status = controller.quorum().status();
    assert!(
        status.snapshot_index >= 1800,
        "no recent snapshot: {status:?}"
    );
    // The snapshot holds one offset per partition, the latest; the log
    // behind it is compacted away (checked below, once the store is closed).
    let (_, snapshot) = controller.snapshot();
    let records = decode_batch(&snapshot).unwrap();
    let offsets: Vec<(i32, i64)> = records
        .iter()
        .filter_map(|r| match r {
            MetadataRecord::Offsets(o) => Some(o),
            _ => None,
        })
        .flat_map(|o| {
            o.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| (p.partition, p.offset)))
        })
        .collect();
    assert_eq!(
        offsets,
        (0..PARTITIONS).map(|p| (p, 2000)).collect::<Vec<_>>()
    );

    // 200 groups committing at once share far fewer entries.
    let before = controller.quorum().status().commit_index;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let c = controller.clone();
            tokio::spawn(async move {
                c.write_group(writer, commit(&format!("group-{i}"), 7))
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("commit");
    }
    let entries = controller.quorum().status().commit_index - before;
    assert!(
        entries < 100,
        "200 concurrent commits took {entries} entries"
    );
    let image = controller.image();
    assert_eq!(image.groups.len(), 201);
    assert_eq!(image.groups["group-5"].offset("t", 3).unwrap().offset, 7);
    let snapshot_index = controller.quorum().status().snapshot_index;
    controller.shutdown().await;
    drop(controller);

    let store = RaftLogStore::open(dir.path().join(RAFT_LOG_DIR)).unwrap();
    use raft::Storage;
    let first = store.first_index().unwrap();
    let last = store.last_index().unwrap();
    assert_eq!(
        first,
        snapshot_index + 1,
        "the log was not compacted behind the snapshot"
    );
    assert!(last - first < 400, "{} entries kept", last - first + 1);
}
