//! A standalone node's controller as its own broker sees it.
//!
//! The broker acts on metadata on a publisher thread of its own, a moment
//! after the controller has applied it. Within one process a client expects
//! a topic it has just created (or deleted, or reconfigured) to be there when
//! the answer comes, so admin changes answer once this broker has applied
//! everything the controller had when the change committed.

use std::sync::Arc;
use std::time::Duration;

use sluice_metadata::controller_api::{
    BoxFuture, BrokerHeartbeat, BrokerRegistrationRequest, ConfigChange, ControllerApi,
    ControllerError, CreatedTopic, GroupWrite, GroupWriteOutcome, GroupWriter, HeartbeatReply,
    IsrChange, NewPartitions, NewTopic, PartitionState, QuorumDescription, TopicRef,
};
use sluice_metadata::{ConfigResource, MetadataImage, Uuid};
use tokio::sync::watch;

/// How long an admin answer waits for the broker to apply its change; past
/// this the answer goes anyway (the change is committed).
const APPLY_WAIT: Duration = Duration::from_secs(10);

pub struct LocalController {
    controller: Arc<dyn ControllerApi>,
    /// The controller's own image: where the log stands.
    committed: watch::Receiver<Arc<MetadataImage>>,
    /// The image this node's broker has applied.
    applied: watch::Receiver<Arc<MetadataImage>>,
}

impl LocalController {
    pub fn new(
        controller: Arc<dyn ControllerApi>,
        committed: watch::Receiver<Arc<MetadataImage>>,
        applied: watch::Receiver<Arc<MetadataImage>>,
    ) -> Self {
        Self {
            controller,
            committed,
            applied,
        }
    }

    async fn applied<T>(&self, answer: T) -> T {
        let target = self.committed.borrow().offset;
        let mut applied = self.applied.clone();
        let _ = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|i| i.offset >= target)).await;
        answer
    }
}

impl ControllerApi for LocalController {
    fn active_controller_id(&self) -> Option<i32> {
        self.controller.active_controller_id()
    }

    fn describe_quorum(&self) -> Result<QuorumDescription, ControllerError> {
        self.controller.describe_quorum()
    }

    fn create_topics(
        &self,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<CreatedTopic, ControllerError>>> {
        Box::pin(async move {
            let answer = self.controller.create_topics(topics, validate_only).await;
            self.applied(answer).await
        })
    }

    fn delete_topics(
        &self,
        topics: Vec<TopicRef>,
    ) -> BoxFuture<'_, Vec<Result<(String, Uuid), ControllerError>>> {
        Box::pin(async move {
            let answer = self.controller.delete_topics(topics).await;
            self.applied(answer).await
        })
    }

    fn create_partitions(
        &self,
        requests: Vec<NewPartitions>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async move {
            let answer = self
                .controller
                .create_partitions(requests, validate_only)
                .await;
            self.applied(answer).await
        })
    }

    fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, Vec<ConfigChange>)>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async move {
            let answer = self.controller.alter_configs(changes, validate_only).await;
            self.applied(answer).await
        })
    }

    fn register_broker(
        &self,
        request: BrokerRegistrationRequest,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        self.controller.register_broker(request)
    }

    fn allocate_producer_ids(
        &self,
        broker_id: i32,
        count: i64,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        self.controller.allocate_producer_ids(broker_id, count)
    }

    fn broker_heartbeat(
        &self,
        heartbeat: BrokerHeartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, ControllerError>> {
        self.controller.broker_heartbeat(heartbeat)
    }

    fn alter_partition(
        &self,
        broker_id: i32,
        broker_epoch: i64,
        changes: Vec<IsrChange>,
    ) -> BoxFuture<'_, Vec<Result<PartitionState, ControllerError>>> {
        self.controller
            .alter_partition(broker_id, broker_epoch, changes)
    }

    fn write_group(
        &self,
        writer: GroupWriter,
        write: GroupWrite,
    ) -> BoxFuture<'_, Result<GroupWriteOutcome, ControllerError>> {
        self.controller.write_group(writer, write)
    }
}
