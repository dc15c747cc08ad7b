//! The coordinator against a controller that commits group writes when a
//! test lets it, and checks offset commits as the real ones do: against
//! the membership the log holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::{
    BoxFuture, BrokerHeartbeat, BrokerRegistrationRequest, ConfigChange, ControllerApi,
    ControllerError, CreatedTopic, GroupWrite, GroupWriteOutcome, GroupWriter, HeartbeatReply,
    IsrChange, NewPartitions, NewTopic, PartitionState, TopicRef,
};
use sluice_metadata::{
    BrokerRecord, ConfigResource, GroupRecord, MetadataDelta, MetadataImage, MetadataRecord,
    PartitionRecord, TopicRecord, Uuid,
};
use tokio::sync::Semaphore;

use super::state::{JoinRequest, MemberSpec, SyncRequest};
use super::{GroupConfig, GroupCoordinator, OffsetToCommit};

const NODE: i32 = 1;
const TOPIC: &str = "t";
const GROUP: &str = "g";

/// Commits membership at once, or, while `hold` is set, one write per
/// permit the test adds to `gate`.
struct GatedController {
    membership: Mutex<Option<GroupRecord>>,
    hold: AtomicBool,
    gate: Semaphore,
}

fn not_here<T>() -> Result<T, ControllerError> {
    Err(ControllerError::Internal("not in this test".into()))
}

impl ControllerApi for GatedController {
    fn active_controller_id(&self) -> Option<i32> {
        None
    }
    fn create_topics(
        &self,
        _: Vec<NewTopic>,
        _: bool,
    ) -> BoxFuture<'_, Vec<Result<CreatedTopic, ControllerError>>> {
        Box::pin(async { vec![not_here()] })
    }
    fn delete_topics(
        &self,
        _: Vec<TopicRef>,
    ) -> BoxFuture<'_, Vec<Result<(String, Uuid), ControllerError>>> {
        Box::pin(async { vec![not_here()] })
    }
    fn create_partitions(
        &self,
        _: Vec<NewPartitions>,
        _: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async { vec![not_here()] })
    }
    fn alter_configs(
        &self,
        _: Vec<(ConfigResource, Vec<ConfigChange>)>,
        _: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async { vec![not_here()] })
    }
    fn register_broker(
        &self,
        _: BrokerRegistrationRequest,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async { not_here() })
    }
    fn allocate_producer_ids(&self, _: i32, _: i64) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async { not_here() })
    }
    fn broker_heartbeat(
        &self,
        _: BrokerHeartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, ControllerError>> {
        Box::pin(async { not_here() })
    }
    fn alter_partition(
        &self,
        _: i32,
        _: i64,
        _: Vec<IsrChange>,
    ) -> BoxFuture<'_, Vec<Result<PartitionState, ControllerError>>> {
        Box::pin(async { vec![not_here()] })
    }
    fn write_group(
        &self,
        _: GroupWriter,
        write: GroupWrite,
    ) -> BoxFuture<'_, Result<GroupWriteOutcome, ControllerError>> {
        Box::pin(async move {
            match write {
                GroupWrite::Membership { group, .. } => {
                    if self.hold.load(Ordering::SeqCst) {
                        self.gate.acquire().await.expect("gate open").forget();
                    }
                    *self.membership.lock().unwrap() = Some(group);
                }
                GroupWrite::CommitOffsets { generation, .. } if generation < 0 => {
                    let members = self
                        .membership
                        .lock()
                        .unwrap()
                        .as_ref()
                        .map_or(0, |g| g.members.len());
                    if members > 0 {
                        return Err(ControllerError::UnknownMemberId(
                            "the group has members".into(),
                        ));
                    }
                }
                _ => {}
            }
            Ok(GroupWriteOutcome {
                log_offset: 0,
                unknown_partitions: Vec::new(),
            })
        })
    }
}

/// Broker `NODE`, registered and unfenced, and one topic of one partition.
fn image() -> Arc<MetadataImage> {
    let topic_id = Uuid::new_v4();
    let mut delta = MetadataDelta::new(MetadataImage::empty());
    delta
        .replay_all(&[
            MetadataRecord::Broker(BrokerRecord {
                broker_id: NODE,
                incarnation_id: Uuid::new_v4(),
                broker_epoch: 7,
                endpoints: vec![],
                rack: None,
                fenced: false,
            }),
            MetadataRecord::Topic(TopicRecord {
                name: TOPIC.into(),
                topic_id,
            }),
            MetadataRecord::Partition(PartitionRecord {
                topic_id,
                partition: 0,
                replicas: vec![NODE],
                isr: vec![NODE],
                leader: NODE,
                leader_epoch: 0,
                partition_epoch: 0,
            }),
        ])
        .unwrap();
    delta.apply(1)
}

fn join_request(member_id: &str) -> JoinRequest {
    JoinRequest {
        member_id: member_id.into(),
        instance_id: None,
        spec: MemberSpec {
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"s"))],
        },
        require_known_member_id: false,
        supports_skip_assignment: false,
    }
}

fn simple_commit(offset: i64) -> Vec<OffsetToCommit> {
    vec![OffsetToCommit {
        topic: TOPIC.into(),
        partition: 0,
        offset,
        leader_epoch: -1,
        metadata: None,
    }]
}

#[tokio::test]
async fn a_commit_after_the_last_member_left_waits_for_the_empty_group_to_commit() {
    let controller = Arc::new(GatedController {
        membership: Mutex::new(None),
        hold: AtomicBool::new(false),
        gate: Semaphore::new(0),
    });
    let coordinator = GroupCoordinator::new(
        NODE,
        GroupConfig {
            initial_rebalance_delay: Duration::ZERO,
            ..GroupConfig::default()
        },
    );
    coordinator.image.send_replace(image());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    coordinator.start(controller.clone(), stop);

    // One member joins and syncs: generation 1 with one member is committed.
    let joined = coordinator.join(GROUP, join_request("")).await;
    assert_eq!(joined.error, None);
    let member = joined.member_id.clone();
    let synced = coordinator
        .sync(
            GROUP,
            SyncRequest {
                member_id: member.clone(),
                instance_id: None,
                generation: joined.generation,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(member.clone(), Bytes::from_static(b"a"))],
            },
        )
        .await;
    assert_eq!(synced.error, None);
    assert_eq!(
        controller
            .membership
            .lock()
            .unwrap()
            .as_ref()
            .map(|g| g.members.len()),
        Some(1)
    );

    // The member leaves. The empty group's write is under way (held), so
    // the log still lists the member.
    controller.hold.store(true, Ordering::SeqCst);
    let left = coordinator.leave(GROUP, &[(member.clone(), None)]).unwrap();
    assert_eq!(left, vec![Ok(())]);

    // A client outside group management commits now, as an admin tool
    // does. It must be checked against the emptied group, not the log's
    // older membership.
    let committing = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            coordinator
                .commit_offsets(GROUP, -1, "", None, simple_commit(11))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    controller.gate.add_permits(1);
    let committed = committing.await.unwrap();
    assert_eq!(committed, vec![Ok::<(), ResponseError>(())]);
}
