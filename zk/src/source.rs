//! A ZooKeeper-mode broker's metadata: the controller's pushes, and the
//! writes this broker made to ZooKeeper itself (ISR changes, group state,
//! topic configs it read on a change notification), applied as records
//! through the same loader, image and publishers as KRaft's log follower.
//!
//! The image's offset counts applied changes on this broker: it orders them
//! for the publishers and lets a group coordinator wait until a write it
//! made shows ("visible at"), as it waits on a log offset in KRaft mode.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kafka_protocol::ResponseError;
use sluice_broker::control_plane::ControlPlane;
use sluice_metadata::control_requests::{ControlRequest, ControlResponse};
use sluice_metadata::controller_api::BoxFuture;
use sluice_metadata::{
    MetadataDelta, MetadataImage, MetadataLoader, MetadataRecord, PartitionRecord, Publisher,
    ReplayError, NO_LEADER,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

struct State {
    loader: MetadataLoader,
    /// The offset of the last change applied.
    offset: u64,
    /// The highest controller epoch a push was accepted from.
    controller_epoch: i32,
    /// Whether a full UpdateMetadata has arrived: publishers see nothing before.
    had_full_push: bool,
    /// The controller that sent the newest accepted push.
    controller_id: Option<i32>,
}

/// Adds records to a push before it is applied: the group state of groups
/// this broker starts to coordinate because the live brokers changed.
pub trait PushHook: Send + Sync {
    /// `before` is the image now, `after` the image the push makes.
    fn extra_records<'a>(
        &'a self,
        before: &'a Arc<MetadataImage>,
        after: &'a Arc<MetadataImage>,
    ) -> BoxFuture<'a, Vec<MetadataRecord>>;
}

/// The active controller's side of ControlledShutdown; it runs on the
/// broker that won `/controller`.
pub trait ShutdownRequests: Send + Sync {
    /// Moves `broker_id`'s leaderships away; returns how many it still has.
    fn controlled_shutdown(
        &self,
        broker_id: i32,
        broker_epoch: i64,
    ) -> BoxFuture<'_, Result<usize, (ResponseError, String)>>;
}

pub struct ZkMetadata {
    node_id: i32,
    state: Mutex<State>,
    /// This broker's current registration (-1: none), set by its session.
    broker_epoch: watch::Sender<i64>,
    push_hook: OnceLock<Arc<dyn PushHook>>,
    shutdowns: OnceLock<Arc<dyn ShutdownRequests>>,
    /// Serializes pushes, so their hook's reads and their application keep order.
    push_lock: tokio::sync::Mutex<()>,
}

impl ZkMetadata {
    /// Publishers run on a thread of their own, as the KRaft follower's do.
    pub fn new(node_id: i32, publishers: Vec<Arc<dyn Publisher>>) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            node_id,
            state: Mutex::new(State {
                loader: MetadataLoader::with_publisher_thread(publishers)?,
                offset: 0,
                controller_epoch: 0,
                had_full_push: false,
                controller_id: None,
            }),
            broker_epoch: watch::channel(-1).0,
            push_hook: OnceLock::new(),
            shutdowns: OnceLock::new(),
            push_lock: tokio::sync::Mutex::new(()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    pub fn set_push_hook(&self, hook: Arc<dyn PushHook>) {
        let _ = self.push_hook.set(hook);
    }

    pub fn set_shutdown_requests(&self, handler: Arc<dyn ShutdownRequests>) {
        let _ = self.shutdowns.set(handler);
    }

    /// The image as applied so far (publishers may still be acting on it).
    pub fn image(&self) -> Arc<MetadataImage> {
        self.lock().loader.image().clone()
    }

    /// The controller as the newest accepted push names it.
    pub fn controller_id(&self) -> Option<i32> {
        self.lock().controller_id
    }

    /// Whether publishers have been given the image (a full UpdateMetadata arrived).
    pub fn is_caught_up(&self) -> bool {
        self.lock().loader.is_caught_up()
    }

    /// The highest controller epoch this broker has accepted a push from.
    pub fn controller_epoch(&self) -> i32 {
        self.lock().controller_epoch
    }

    pub fn broker_epoch(&self) -> i64 {
        *self.broker_epoch.borrow()
    }

    pub fn set_broker_epoch(&self, epoch: i64) {
        self.broker_epoch.send_replace(epoch);
    }

    pub fn subscribe_broker_epoch(&self) -> watch::Receiver<i64> {
        self.broker_epoch.subscribe()
    }

    /// Applies a change this broker made in ZooKeeper itself; returns the
    /// offset an image shows it at.
    pub fn apply(&self, records: &[MetadataRecord]) -> Result<u64, ReplayError> {
        let mut state = self.lock();
        Self::apply_locked(&mut state, records)
    }

    fn apply_locked(state: &mut State, records: &[MetadataRecord]) -> Result<u64, ReplayError> {
        let records = without_older_partition_states(state.loader.image(), records);
        if records.is_empty() {
            return Ok(state.offset);
        }
        let offset = state.offset + 1;
        state.loader.load_records(offset, &records)?;
        state.offset = offset;
        Ok(offset)
    }

    /// Stops leading: this broker's ZooKeeper session is gone, so another
    /// broker may be leading its partitions already. Locally, its
    /// partitions lose their leader until a controller's push says who
    /// leads now; nothing it takes alone can be acknowledged meanwhile.
    pub fn stop_leading(&self) {
        let mut state = self.lock();
        let image = state.loader.image().clone();
        let mut records = Vec::new();
        for topic in image.topics_by_id.values() {
            for (&index, p) in &topic.partitions {
                if p.leader == self.node_id {
                    records.push(MetadataRecord::Partition(PartitionRecord {
                        topic_id: topic.id,
                        partition: index,
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        leader: NO_LEADER,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                    }));
                }
            }
        }
        if records.is_empty() {
            return;
        }
        let count = records.len();
        match Self::apply_locked(&mut state, &records) {
            Ok(_) => warn!(
                partitions = count,
                "ZooKeeper session lost: this broker stopped leading its partitions"
            ),
            Err(e) => {
                warn!(error = %e, "could not stop leading after the ZooKeeper session was lost")
            }
        }
    }

    /// Checks a push's epochs: refused when a newer controller has already
    /// spoken, or when it was meant for an earlier registration of this broker.
    fn check_header(&self, request: &ControlRequest) -> Result<(), ControlResponse> {
        let Some(header) = request.header() else {
            return Ok(());
        };
        let known = self.controller_epoch();
        if header.controller_epoch < known {
            return Err(refusal(
                ResponseError::StaleControllerEpoch,
                format!(
                    "controller {} sent epoch {}, older than {known}",
                    header.controller_id, header.controller_epoch
                ),
            ));
        }
        // Only a push for an EARLIER registration is stale. A later epoch is
        // this broker's registration whose create answer has not arrived
        // yet: the controller can see the znode (and push) first.
        let mine = self.broker_epoch();
        if header.broker_epoch != -1 && header.broker_epoch < mine {
            return Err(refusal(
                ResponseError::StaleBrokerEpoch,
                format!(
                    "push for broker epoch {}, but this broker is registered with {mine}",
                    header.broker_epoch
                ),
            ));
        }
        Ok(())
    }

    async fn accept_push(&self, request: ControlRequest) -> ControlResponse {
        let _serial = self.push_lock.lock().await;
        if let Err(refused) = self.check_header(&request) {
            return refused;
        }
        let before = self.image();
        let mut records = request.to_records(&before);
        if let Some(hook) = self.push_hook.get() {
            let mut delta = MetadataDelta::new(before.clone());
            if delta.replay_all(&records).is_ok() {
                let after = delta.apply(before.offset + 1);
                records.extend(hook.extra_records(&before, &after).await);
            }
        }
        let mut state = self.lock();
        // Checked again: another push may have raised the epoch meanwhile.
        let Some(header) = request.header() else {
            return ControlResponse::default();
        };
        if header.controller_epoch < state.controller_epoch {
            return refusal(
                ResponseError::StaleControllerEpoch,
                format!("controller epoch {} is stale", header.controller_epoch),
            );
        }
        if header.controller_epoch > state.controller_epoch {
            info!(
                controller = header.controller_id,
                controller_epoch = header.controller_epoch,
                "following a new controller"
            );
        }
        state.controller_epoch = header.controller_epoch;
        state.controller_id = Some(header.controller_id);
        match Self::apply_locked(&mut state, &records) {
            Ok(offset) => {
                if matches!(request, ControlRequest::UpdateMetadata { full: true, .. })
                    && !state.had_full_push
                {
                    state.had_full_push = true;
                    state.loader.set_committed_offset(offset);
                }
                ControlResponse::default()
            }
            Err(e) => refusal(
                ResponseError::InvalidRequest,
                format!("the push does not apply to this broker's metadata: {e}"),
            ),
        }
    }
}

/// `records` less the partition states older than the image's. The
/// partition epoch is the state znode's version, which only grows, while
/// the pushes and this broker's own ISR writes that carry it can arrive in
/// either order (an ISR write awaited across a controller's push, a push
/// sent before the write it now trails).
fn without_older_partition_states<'a>(
    image: &MetadataImage,
    records: &'a [MetadataRecord],
) -> std::borrow::Cow<'a, [MetadataRecord]> {
    let older = |record: &MetadataRecord| match record {
        MetadataRecord::Partition(p) => image
            .topic_by_id(&p.topic_id)
            .and_then(|t| t.partitions.get(&p.partition))
            .is_some_and(|current| current.partition_epoch > p.partition_epoch),
        _ => false,
    };
    if !records.iter().any(older) {
        return std::borrow::Cow::Borrowed(records);
    }
    let kept: Vec<MetadataRecord> = records.iter().filter(|r| !older(r)).cloned().collect();
    debug!(
        skipped = records.len() - kept.len(),
        "partition states older than this broker's were not applied"
    );
    std::borrow::Cow::Owned(kept)
}

fn refusal(error: ResponseError, message: String) -> ControlResponse {
    warn!(%message, "controller push refused");
    ControlResponse {
        error_code: error.code(),
        message,
        remaining_leaderships: 0,
    }
}

impl ControlPlane for ZkMetadata {
    fn handle(&self, request: ControlRequest) -> BoxFuture<'_, ControlResponse> {
        Box::pin(async move {
            match request {
                ControlRequest::ControlledShutdown {
                    broker_id,
                    broker_epoch,
                } => match self.shutdowns.get() {
                    Some(handler) => {
                        match handler.controlled_shutdown(broker_id, broker_epoch).await {
                            Ok(remaining) => ControlResponse {
                                error_code: 0,
                                message: String::new(),
                                remaining_leaderships: remaining,
                            },
                            Err((error, message)) => ControlResponse {
                                error_code: error.code(),
                                message,
                                remaining_leaderships: 0,
                            },
                        }
                    }
                    None => ControlResponse {
                        error_code: ResponseError::NotController.code(),
                        message: format!("broker {} is not the controller", self.node_id),
                        remaining_leaderships: 0,
                    },
                },
                push => self.accept_push(push).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_metadata::control_requests::{PartitionState, PushHeader};
    use sluice_metadata::Uuid;

    fn push(controller_epoch: i32, broker_epoch: i64) -> ControlRequest {
        ControlRequest::UpdateMetadata {
            header: PushHeader {
                controller_id: 2,
                controller_epoch,
                broker_epoch,
            },
            full: true,
            live_brokers: Vec::new(),
            partitions: Vec::new(),
        }
    }

    /// The controller may see a broker's registration znode, and push to
    /// it, before the broker has the answer to its create: that push is
    /// for its own new registration and is taken. A push for an earlier
    /// registration, or from an earlier controller, is refused.
    #[tokio::test]
    async fn broker_and_controller_epochs_of_pushes() {
        let metadata = ZkMetadata::new(1, Vec::new()).unwrap();
        let before_registered = metadata.handle(push(1, 100)).await;
        assert_eq!(before_registered.error_code, 0, "{before_registered:?}");
        metadata.set_broker_epoch(100);
        let still_in_flight = metadata.handle(push(1, 200)).await;
        assert_eq!(still_in_flight.error_code, 0, "{still_in_flight:?}");
        metadata.set_broker_epoch(200);
        let earlier = metadata.handle(push(1, 100)).await;
        assert_eq!(earlier.error_code, ResponseError::StaleBrokerEpoch.code());
        let old_controller = metadata.handle(push(0, 200)).await;
        assert_eq!(
            old_controller.error_code,
            ResponseError::StaleControllerEpoch.code()
        );
        assert_eq!(metadata.handle(push(1, -1)).await.error_code, 0);
    }

    fn partition_state(leader: i32, leader_epoch: i32, partition_epoch: i32) -> PartitionState {
        PartitionState {
            topic: "t".into(),
            topic_id: Uuid::from_u128(7),
            partition: 0,
            controller_epoch: 1,
            leader,
            leader_epoch,
            isr: vec![1, 2],
            partition_epoch,
            replicas: vec![1, 2],
        }
    }

    fn leader_of_t0(metadata: &ZkMetadata) -> (i32, i32, i32) {
        let image = metadata.image();
        let p = &image.topic("t").unwrap().partitions[&0];
        (p.leader, p.leader_epoch, p.partition_epoch)
    }

    /// A leader's ISR write can land in ZooKeeper before a controller's
    /// leader change and be applied here after the controller's push of
    /// it. The znode version orders them: the older state is not applied,
    /// nor is a push delayed past a newer local write.
    #[tokio::test]
    async fn an_older_partition_state_never_replaces_a_newer_one() {
        let metadata = ZkMetadata::new(2, Vec::new()).unwrap();
        let pushed = |state: PartitionState| ControlRequest::UpdateMetadata {
            header: PushHeader {
                controller_id: 1,
                controller_epoch: 1,
                broker_epoch: -1,
            },
            full: true,
            live_brokers: Vec::new(),
            partitions: vec![state],
        };
        let answer = metadata.handle(pushed(partition_state(2, 1, 3))).await;
        assert_eq!(answer.error_code, 0, "{answer:?}");
        // The same version again applies: here, after the session was lost,
        // the controller names this broker leader still.
        metadata.stop_leading();
        assert_eq!(leader_of_t0(&metadata), (NO_LEADER, 1, 3));
        let answer = metadata.handle(pushed(partition_state(2, 1, 3))).await;
        assert_eq!(answer.error_code, 0, "{answer:?}");
        assert_eq!(leader_of_t0(&metadata), (2, 1, 3));
        // The controller moved leadership to broker 1 (znode version 5)...
        let answer = metadata.handle(pushed(partition_state(1, 2, 5))).await;
        assert_eq!(answer.error_code, 0, "{answer:?}");
        assert_eq!(leader_of_t0(&metadata), (1, 2, 5));
        // ...after broker 2's own ISR write (version 4) landed there.
        let stale = partition_state(2, 1, 4);
        let record = MetadataRecord::Partition(PartitionRecord {
            topic_id: stale.topic_id,
            partition: 0,
            replicas: stale.replicas,
            isr: vec![2],
            leader: stale.leader,
            leader_epoch: stale.leader_epoch,
            partition_epoch: stale.partition_epoch,
        });
        metadata.apply(&[record]).unwrap();
        assert_eq!(leader_of_t0(&metadata), (1, 2, 5));
        // A push that was on its way before the newest state is ignored too.
        let answer = metadata.handle(pushed(partition_state(2, 1, 3))).await;
        assert_eq!(answer.error_code, 0, "{answer:?}");
        assert_eq!(leader_of_t0(&metadata), (1, 2, 5));
    }
}
