//! The broker's session with the active controller: registration, the
//! heartbeats that keep it alive and unfence it once it has caught up with
//! the metadata log, and controlled shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_metadata::controller_api::{
    BoxFuture, BrokerHeartbeat, BrokerRegistrationRequest, ControllerApi, ControllerError,
    HeartbeatReply,
};
use sluice_metadata::{MetadataDelta, MetadataImage, Publisher};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::replica::ReplicaManager;

/// The last publisher of a broker: it shows the image once every publisher
/// before it (the replica manager, the group coordinator) has acted on it.
/// The lifecycle watches it, so the broker reports, and serves at, only
/// the metadata it has applied.
pub struct ImageWatch(watch::Sender<Arc<MetadataImage>>);

impl ImageWatch {
    pub fn new() -> Self {
        Self(watch::channel(MetadataImage::empty()).0)
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.0.subscribe()
    }
}

impl Default for ImageWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher for ImageWatch {
    fn publish(&self, _delta: &MetadataDelta, image: &Arc<MetadataImage>) {
        self.0.send_replace(image.clone());
    }
}

/// A broker's membership in the cluster, whatever coordinates it: KRaft's
/// registration and heartbeats ([`BrokerLifecycle`]), or a ZooKeeper
/// session with an ephemeral registration znode.
pub trait BrokerSession: Send + Sync {
    /// Joins the cluster and returns once this broker may serve: it is
    /// registered and its image shows it live, within `limit`.
    fn join(&self, limit: Duration) -> BoxFuture<'_, Result<(), ControllerError>>;
    /// Keeps the membership alive until `stop`: heartbeats, or a new
    /// registration after a session expires.
    fn run(self: Arc<Self>, stop: watch::Receiver<bool>);
    /// Moves this broker's leaderships away before it exits, within `limit`.
    fn controlled_shutdown(&self, limit: Duration) -> BoxFuture<'_, ()>;
    /// The current broker epoch (-1 before the first registration): an
    /// offset of the metadata log in KRaft, a znode's czxid in ZooKeeper.
    fn broker_epoch(&self) -> i64;
}

impl BrokerSession for BrokerLifecycle {
    fn join(&self, limit: Duration) -> BoxFuture<'_, Result<(), ControllerError>> {
        Box::pin(self.start(limit))
    }

    fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        self.spawn_heartbeats(stop);
    }

    fn controlled_shutdown(&self, limit: Duration) -> BoxFuture<'_, ()> {
        Box::pin(BrokerLifecycle::controlled_shutdown(self, limit))
    }

    fn broker_epoch(&self) -> i64 {
        BrokerLifecycle::broker_epoch(self)
    }
}

pub struct BrokerLifecycle {
    controller: Arc<dyn ControllerApi>,
    replicas: Arc<ReplicaManager>,
    registration: BrokerRegistrationRequest,
    /// The broker's metadata image, whose offset each heartbeat reports.
    image: watch::Receiver<Arc<MetadataImage>>,
    /// The newest metadata offset received, which the broker may still be
    /// applying (none when the image is made in-process).
    replayed: Option<watch::Receiver<u64>>,
    /// `broker.heartbeat.interval.ms`
    interval: Duration,
    epoch: watch::Sender<i64>,
    /// Set once controlled shutdown begins: periodic heartbeats then stop,
    /// so none of them asks to be unfenced again.
    shutting_down: AtomicBool,
}

impl BrokerLifecycle {
    pub fn new(
        controller: Arc<dyn ControllerApi>,
        replicas: Arc<ReplicaManager>,
        registration: BrokerRegistrationRequest,
        image: watch::Receiver<Arc<MetadataImage>>,
        replayed: Option<watch::Receiver<u64>>,
        interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            controller,
            replicas,
            registration,
            image,
            replayed,
            interval,
            epoch: watch::channel(-1).0,
            shutting_down: AtomicBool::new(false),
        })
    }

    pub fn broker_id(&self) -> i32 {
        self.registration.broker_id
    }

    /// The current broker epoch (-1 before the first registration).
    pub fn broker_epoch(&self) -> i64 {
        *self.epoch.borrow()
    }

    fn heartbeat_request(&self, want_shutdown: bool) -> BrokerHeartbeat {
        let applied = self.image.borrow().offset;
        let replayed = self.replayed.as_ref().map_or(0, |r| *r.borrow());
        BrokerHeartbeat {
            broker_id: self.registration.broker_id,
            broker_epoch: self.broker_epoch(),
            metadata_offset: applied,
            metadata_replayed_offset: replayed.max(applied),
            want_fence: false,
            want_shutdown,
        }
    }

    /// Registers, retrying until a controller accepts, within `limit`.
    async fn register(&self, limit: Duration) -> Result<i64, ControllerError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self
                .controller
                .register_broker(self.registration.clone())
                .await
            {
                Ok(epoch) => {
                    info!(
                        broker_id = self.broker_id(),
                        broker_epoch = epoch,
                        "broker registered"
                    );
                    self.replicas.set_broker_epoch(epoch);
                    self.epoch.send_replace(epoch);
                    return Ok(epoch);
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    debug!(error = %e, "registration not accepted yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Registers and heartbeats until the controller unfences this broker
    /// (it has caught up with the metadata log), within `limit`.
    pub async fn start(&self, limit: Duration) -> Result<(), ControllerError> {
        let deadline = tokio::time::Instant::now() + limit;
        self.register(limit).await?;
        loop {
            match self
                .controller
                .broker_heartbeat(self.heartbeat_request(false))
                .await
            {
                Ok(HeartbeatReply {
                    is_fenced: false, ..
                }) => {
                    if self.await_own_unfencing(deadline).await? {
                        info!(broker_id = self.broker_id(), "broker unfenced");
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(ControllerError::StaleBrokerEpoch { .. }) => {
                    self.register(deadline - tokio::time::Instant::now())
                        .await?;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => debug!(error = %e, "heartbeat failed while starting"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ControllerError::Timeout);
            }
            // Starting brokers check in often, to be unfenced soon after catching up.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After the controller has unfenced this broker: waits until the
    /// broker's own image shows it (with the leaderships that came with
    /// it), so it serves only then. Applying that can outlast a session
    /// (leaderships over 100,000 partitions), so it keeps heartbeating
    /// meanwhile. False if the controller fenced it again first.
    async fn await_own_unfencing(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<bool, ControllerError> {
        let id = self.broker_id();
        let epoch = self.broker_epoch();
        let mut image = self.image.clone();
        loop {
            let next_heartbeat = tokio::time::Instant::now() + self.interval;
            tokio::select! {
                shown = image.wait_for(|i| {
                    i.brokers
                        .get(&id)
                        .is_some_and(|b| !b.fenced && b.broker_epoch == epoch)
                }) => {
                    shown.map_err(|_| ControllerError::Internal("metadata stopped".into()))?;
                    return Ok(true);
                }
                _ = tokio::time::sleep_until(deadline) => return Err(ControllerError::Timeout),
                _ = tokio::time::sleep_until(next_heartbeat) => {}
            }
            match self
                .controller
                .broker_heartbeat(self.heartbeat_request(false))
                .await
            {
                Ok(reply) if reply.is_fenced => return Ok(false),
                Ok(_) => {}
                Err(ControllerError::StaleBrokerEpoch { .. }) => return Ok(false),
                Err(e) => debug!(error = %e, "heartbeat failed while applying the unfencing"),
            }
        }
    }

    /// Heartbeats every interval until `stop`; re-registers if the
    /// controller no longer knows this incarnation (its session expired).
    pub fn spawn_heartbeats(self: &Arc<Self>, mut stop: watch::Receiver<bool>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut fenced = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(this.interval) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if this.shutting_down.load(Ordering::Relaxed) {
                    return;
                }
                match this
                    .controller
                    .broker_heartbeat(this.heartbeat_request(false))
                    .await
                {
                    Ok(HeartbeatReply {
                        is_fenced: true,
                        is_caught_up,
                        ..
                    }) => {
                        if !fenced && !is_caught_up {
                            warn!(
                                metadata_offset = this.image.borrow().offset,
                                "the controller fenced this broker: its metadata is behind the log"
                            );
                        }
                        fenced = true;
                        debug!("broker is fenced; heartbeating to be unfenced");
                    }
                    Ok(_) => {
                        if fenced {
                            info!("broker unfenced");
                        }
                        fenced = false;
                    }
                    Err(ControllerError::StaleBrokerEpoch { .. }) => {
                        warn!("the controller fenced this broker's session; registering again");
                        if let Err(e) = this.register(this.interval * 5).await {
                            warn!(error = %e, "re-registration failed");
                        }
                    }
                    Err(e) => debug!(error = %e, "heartbeat failed"),
                }
            }
        });
    }

    /// Controlled shutdown: asks the controller to move this broker's
    /// leaderships away and waits until it says the broker may go, or
    /// `limit` passes.
    pub async fn controlled_shutdown(&self, limit: Duration) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            match self
                .controller
                .broker_heartbeat(self.heartbeat_request(true))
                .await
            {
                Ok(reply) if reply.should_shutdown => {
                    info!("controlled shutdown complete: leadership moved away");
                    return;
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "controlled shutdown heartbeat failed"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        warn!("controlled shutdown did not complete in time; stopping anyway");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication_tests::TestController;
    use sluice_metadata::{BrokerRecord, MetadataRecord, Uuid};

    /// The entry that unfences a broker also hands it its leaderships; at
    /// 100,000 partitions applying it outlasts a session. The broker must
    /// keep heartbeating meanwhile, or the controller fences it again.
    #[tokio::test]
    async fn a_starting_broker_heartbeats_while_it_applies_its_unfencing() {
        let dir = tempfile::tempdir().unwrap();
        let controller = Arc::new(TestController::idle());
        let replicas =
            Arc::new(ReplicaManager::new(1, dir.path().to_path_buf(), Default::default()).unwrap());
        let applied = ImageWatch::new();
        let interval = Duration::from_millis(20);
        let lifecycle = BrokerLifecycle::new(
            controller.clone(),
            replicas,
            BrokerRegistrationRequest {
                broker_id: 1,
                incarnation_id: Uuid::new_v4(),
                endpoints: Vec::new(),
                rack: None,
            },
            applied.subscribe(),
            None,
            interval,
        );
        let starting = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.start(Duration::from_secs(600)).await }
        });

        // Unfenced by the controller at its first heartbeat; its own image
        // shows that only 25 heartbeat intervals later.
        tokio::time::sleep(interval * 25).await;
        assert!(
            !starting.is_finished(),
            "serving before its image shows it unfenced"
        );
        let beats = controller.heartbeats.lock().unwrap().len();
        assert!(
            beats >= 5,
            "{beats} heartbeats in 25 intervals of {interval:?} while applying"
        );

        let mut delta = MetadataDelta::new(MetadataImage::empty());
        delta
            .replay(&MetadataRecord::Broker(BrokerRecord {
                broker_id: 1,
                incarnation_id: Uuid::new_v4(),
                broker_epoch: TestController::BROKER_EPOCH,
                endpoints: Vec::new(),
                rack: None,
                fenced: false,
            }))
            .unwrap();
        let image = delta.apply(TestController::BROKER_EPOCH as u64 + 1);
        applied.publish(&delta, &image);
        starting.await.unwrap().unwrap();
    }
}
