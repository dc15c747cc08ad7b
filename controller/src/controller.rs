//! The controller role of a node: the metadata quorum, the loader that turns
//! committed entries into images, and the operations brokers ask for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_metadata::controller_api::{
    BoxFuture, BrokerRegistrationRequest, ConfigChange, ControllerApi, ControllerError,
    CreatedTopic, NewPartitions, NewTopic, TopicRef,
};
use sluice_metadata::{
    encode_batch, ConfigResource, MetadataImage, MetadataLoader, Publisher, Uuid,
};
use tokio::sync::{mpsc, watch, Mutex};
use tracing::{error, info, warn};

use crate::ops::{self, OpResult, TopicDefaults};
use crate::quorum::{self, Applied, NoPeers, QuorumConfig, QuorumError, QuorumHandle};

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub defaults: TopicDefaults,
    /// How long a change may wait for its records to commit.
    pub request_timeout: Duration,
    /// Take a metadata snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metadata quorum: {0}")]
    Quorum(#[from] QuorumError),
    #[error("the metadata quorum elected no leader within {0:?}")]
    NoLeader(Duration),
}

pub struct Controller {
    config: ControllerConfig,
    quorum: QuorumHandle,
    image: watch::Receiver<Arc<MetadataImage>>,
    /// One operation at a time: each computes its records from an image that
    /// already holds every earlier operation's committed records.
    op_lock: Mutex<()>,
    /// The offset of the last committed entry that failed to replay.
    rejected: watch::Receiver<u64>,
}

impl Controller {
    /// Starts the quorum and the metadata loader; `publishers` see every image
    /// in log order. Returns once this node's quorum has a leader and the
    /// existing log has been replayed.
    pub async fn start(
        config: ControllerConfig,
        publishers: Vec<Arc<dyn Publisher>>,
    ) -> Result<Arc<Self>, StartError> {
        let quorum_config = QuorumConfig {
            node_id: config.node_id as u64,
            voters: vec![config.node_id as u64],
            data_dir: config.data_dir.clone(),
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every_entries: config.snapshot_every_entries,
        };
        let (quorum, applied) = quorum::start(quorum_config, Box::new(NoPeers))?;
        let (image_tx, image) = watch::channel(MetadataImage::empty());
        let (rejected_tx, rejected) = watch::channel(0);
        tokio::spawn(run_loader(
            MetadataLoader::new(publishers),
            applied,
            image_tx,
            rejected_tx,
            quorum.clone(),
        ));

        let controller = Arc::new(Self {
            config,
            quorum,
            image,
            op_lock: Mutex::new(()),
            rejected,
        });
        controller.await_leader_and_replay().await?;
        Ok(controller)
    }

    /// Waits until this node leads the quorum, then commits an empty batch
    /// as a barrier: once it is applied, so is everything committed before
    /// it, and the image is complete.
    async fn await_leader_and_replay(&self) -> Result<(), StartError> {
        let limit = Duration::from_secs(30);
        let mut status = self.quorum.subscribe_status();
        tokio::time::timeout(limit, status.wait_for(|s| s.is_leader))
            .await
            .map_err(|_| StartError::NoLeader(limit))?
            .map_err(|_| StartError::NoLeader(limit))?;
        let barrier = tokio::time::timeout(limit, self.quorum.propose(encode_batch(&[])))
            .await
            .map_err(|_| StartError::NoLeader(limit))??;
        let mut image = self.image.clone();
        tokio::time::timeout(limit, image.wait_for(|i| i.offset >= barrier.0))
            .await
            .map_err(|_| StartError::NoLeader(limit))?
            .map_err(|_| StartError::NoLeader(limit))?;
        info!(offset = barrier.0, "metadata log replayed");
        Ok(())
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn subscribe_image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.clone()
    }

    pub fn quorum(&self) -> &QuorumHandle {
        &self.quorum
    }

    pub async fn shutdown(&self) {
        self.quorum.clone().shutdown().await;
    }

    /// Computes an operation against the latest image and, unless it is only
    /// a validation, commits its records before returning the results.
    async fn run<T>(
        &self,
        validate_only: bool,
        op: impl FnOnce(&MetadataImage) -> OpResult<T>,
    ) -> Result<T, ControllerError> {
        let _turn = self.op_lock.lock().await;
        let image = self.image();
        let OpResult { records, results } = op(&image);
        if validate_only || records.is_empty() {
            return Ok(results);
        }
        let data = encode_batch(&records);
        let timeout = self.config.request_timeout;
        // No time limit on the proposal itself: the quorum answers every
        // proposal (committed, or failed when leadership is lost), and giving
        // up early would let the next operation plan from an image that lacks
        // a change still on its way to commit.
        let (index, _term) = self.quorum.propose(data).await.map_err(|e| match e {
            QuorumError::NotLeader { .. } => ControllerError::NotController(e.to_string()),
            other => ControllerError::Internal(other.to_string()),
        })?;
        let mut image = self.image.clone();
        tokio::time::timeout(timeout, image.wait_for(|i| i.offset >= index))
            .await
            .map_err(|_| ControllerError::Timeout)?
            .map_err(|_| ControllerError::Internal("metadata loader stopped".into()))?;
        if *self.rejected.borrow() == index {
            return Err(ControllerError::Internal(format!(
                "metadata entry {index} committed but did not apply; see the log"
            )));
        }
        Ok(results)
    }
}

/// Applies committed entries in order, and hands the quorum a snapshot of
/// the image when it asks, so its log stays bounded.
async fn run_loader(
    mut loader: MetadataLoader,
    mut applied: mpsc::UnboundedReceiver<Applied>,
    image_tx: watch::Sender<Arc<MetadataImage>>,
    rejected_tx: watch::Sender<u64>,
    quorum: QuorumHandle,
) {
    while let Some(event) = applied.recv().await {
        match event {
            Applied::Snapshot { index, data, .. } => match loader.load_snapshot(index, &data) {
                Ok(()) => info!(
                    offset = index,
                    bytes = data.len(),
                    "loaded metadata snapshot"
                ),
                Err(e) => {
                    error!(error = %e, "metadata snapshot does not load; keeping the previous image")
                }
            },
            Applied::Entries(entries) => {
                for entry in entries {
                    if entry.data.is_empty() {
                        loader.skip_entry(entry.index);
                    } else if let Err(e) = loader.load_entry(entry.index, &entry.data) {
                        // The controller validated these records before
                        // proposing them; a failure here is a bug, and the
                        // batch is left out whole rather than half applied.
                        error!(error = %e, "metadata entry does not replay; skipped");
                        rejected_tx.send_replace(entry.index);
                        loader.skip_entry(entry.index);
                    }
                }
            }
            Applied::SnapshotDue { applied_index } => {
                let image = loader.image();
                if image.offset >= applied_index {
                    let data = encode_batch(&image.to_records());
                    quorum.offer_snapshot(image.offset, data.into());
                }
                continue;
            }
        }
        let image = loader.image().clone();
        metrics::gauge!("sluice_metadata_applied_offset").set(image.offset as f64);
        metrics::gauge!("sluice_partitions").set(image.partition_count() as f64);
        if image_tx.send(image).is_err() {
            warn!("no one follows the metadata image any more; loader stops");
            return;
        }
    }
}

impl ControllerApi for Controller {
    fn active_controller_id(&self) -> Option<i32> {
        self.quorum.status().leader_id.map(|id| id as i32)
    }

    fn create_topics(
        &self,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<CreatedTopic, ControllerError>>> {
        Box::pin(async move {
            let count = topics.len();
            let defaults = self.config.defaults.clone();
            self.run(validate_only, |image| {
                ops::create_topics(image, &defaults, topics)
            })
            .await
            .unwrap_or_else(|e| vec![Err(e); count])
        })
    }

    fn delete_topics(
        &self,
        topics: Vec<TopicRef>,
    ) -> BoxFuture<'_, Vec<Result<(String, Uuid), ControllerError>>> {
        Box::pin(async move {
            let count = topics.len();
            self.run(false, |image| ops::delete_topics(image, topics))
                .await
                .unwrap_or_else(|e| vec![Err(e); count])
        })
    }

    fn create_partitions(
        &self,
        requests: Vec<NewPartitions>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async move {
            let count = requests.len();
            self.run(validate_only, |image| {
                ops::create_partitions(image, requests)
            })
            .await
            .unwrap_or_else(|e| vec![Err(e); count])
        })
    }

    fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, Vec<ConfigChange>)>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async move {
            let count = changes.len();
            self.run(validate_only, |image| ops::alter_configs(image, changes))
                .await
                .unwrap_or_else(|e| vec![Err(e); count])
        })
    }

    fn register_broker(
        &self,
        request: BrokerRegistrationRequest,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async move {
            self.run(false, |image| ops::register_broker(image, request))
                .await
        })
    }

    fn allocate_producer_ids(
        &self,
        broker_id: i32,
        count: i64,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async move {
            self.run(false, |image| {
                ops::allocate_producer_ids(image, broker_id, count)
            })
            .await
        })
    }
}
