//! A broker's ZooKeeper session: its membership in a ZooKeeper-mode cluster.
//!
//! The broker registers the ephemeral `/brokers/ids/<id>`; the znode's
//! creation zxid is its broker epoch. When the session ends, the broker
//! opens a new one as soon as a ZooKeeper quorum answers, stops leading
//! (another broker may lead its partitions by then) and registers again
//! with a new epoch; the controller's push then tells it what it leads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_broker::control_plane::ControlPlane;
use sluice_broker::kafka_client::KafkaClient;
use sluice_broker::lifecycle::BrokerSession;
use sluice_broker::ReplicaManager;
use sluice_metadata::control_requests::ControlRequest;
use sluice_metadata::controller_api::{BoxFuture, ControllerError};
use sluice_metadata::{Endpoint, MetadataImage};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use crate::channel::send_control;
use crate::connect::{connect, ephemeral, persistent, ConnectError, ZkConfig};
use crate::znodes::{self, BrokerZnode, ClusterIdZnode, ControllerZnode};
use crate::ZkMetadata;

/// The current session, or `None` while there is none: every ZooKeeper
/// user in a broker reads the session from here and watches it to notice
/// a new one after an expiry.
pub type Sessions = watch::Receiver<Option<zk::Client>>;

pub struct ZkBrokerSession {
    config: ZkConfig,
    node_id: i32,
    /// The listener it advertises; known once the listener is bound.
    endpoints: Mutex<Vec<Endpoint>>,
    rack: Option<String>,
    metadata: Arc<ZkMetadata>,
    replicas: Arc<ReplicaManager>,
    /// The image once publishers have acted on it (the broker's ImageWatch).
    applied: watch::Receiver<Arc<MetadataImage>>,
    clients: watch::Sender<Option<zk::Client>>,
    /// `controller.socket.timeout.ms`: how long a request to the controller may take.
    controller_timeout: Duration,
    shutting_down: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("ZooKeeper: {0}")]
    Zk(#[from] zk::Error),
    #[error(transparent)]
    Znode(#[from] znodes::ZnodeError),
}

impl ZkBrokerSession {
    /// Opens the first session; registration waits for [`BrokerSession::join`].
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        config: ZkConfig,
        node_id: i32,
        endpoints: Vec<Endpoint>,
        metadata: Arc<ZkMetadata>,
        replicas: Arc<ReplicaManager>,
        applied: watch::Receiver<Arc<MetadataImage>>,
        controller_timeout: Duration,
    ) -> Result<Arc<Self>, SessionError> {
        let client = connect(&config).await?;
        info!(
            zookeeper = %config.connect,
            session = ?client.session_id(),
            "connected to ZooKeeper"
        );
        Ok(Arc::new(Self {
            config,
            node_id,
            endpoints: Mutex::new(endpoints),
            rack: None,
            metadata,
            replicas,
            applied,
            clients: watch::channel(Some(client)).0,
            controller_timeout,
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// The endpoints the registration advertises.
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>) {
        *self.endpoints.lock().unwrap_or_else(|e| e.into_inner()) = endpoints;
    }

    pub fn sessions(&self) -> Sessions {
        self.clients.subscribe()
    }

    fn client(&self) -> Option<zk::Client> {
        self.clients.borrow().clone()
    }

    /// The cluster id in `/cluster/id`, created by the first broker to look.
    pub async fn cluster_id(&self) -> Result<String, SessionError> {
        let client = self
            .client()
            .ok_or(SessionError::Zk(zk::Error::ConnectionLoss))?;
        loop {
            match client.get_data(znodes::CLUSTER_ID).await {
                Ok((data, _)) => return Ok(ClusterIdZnode::decode(&data)?.id),
                Err(zk::Error::NoNode) => {
                    let id = base64_id(uuid::Uuid::new_v4());
                    let znode = ClusterIdZnode::new(id);
                    match client
                        .create(znodes::CLUSTER_ID, &znode.encode(), &persistent())
                        .await
                    {
                        Ok(_) | Err(zk::Error::NodeExists) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Creates this broker's ephemeral registration and returns its czxid.
    /// A registration left by this broker's previous process lives until
    /// that session expires: wait for it, as Kafka does.
    async fn register(&self, client: &zk::Client, limit: Duration) -> Result<i64, SessionError> {
        let path = znodes::broker_path(self.node_id);
        let endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let data = BrokerZnode::new(&endpoints, self.rack.clone(), znodes::now_ms()).encode();
        let deadline = tokio::time::Instant::now() + limit;
        let mut warned = false;
        loop {
            match client.create(&path, &data, &ephemeral()).await {
                Ok((stat, _)) => {
                    let epoch = stat.czxid;
                    self.metadata.set_broker_epoch(epoch);
                    self.replicas.set_broker_epoch(epoch);
                    info!(
                        broker_id = self.node_id,
                        broker_epoch = epoch,
                        "registered in ZooKeeper"
                    );
                    return Ok(epoch);
                }
                Err(zk::Error::NodeExists) => {
                    match client.check_stat(&path).await? {
                        Some(stat) if stat.ephemeral_owner == client.session_id().0 => {
                            // Our own, from a create whose answer was lost.
                            self.metadata.set_broker_epoch(stat.czxid);
                            self.replicas.set_broker_epoch(stat.czxid);
                            return Ok(stat.czxid);
                        }
                        _ => {}
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(zk::Error::NodeExists.into());
                    }
                    if !warned {
                        warn!(
                            %path,
                            "a registration of this broker id from an earlier session is still there; waiting for it to expire"
                        );
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A new session and registration after the old session was lost.
    ///
    /// The broker keeps leading until a new session opens: while no
    /// ZooKeeper quorum answers (the ensemble lost its majority, or this
    /// broker is cut off from it), the controller cannot move anything
    /// either, and Kafka's brokers serve on as well; a leader that lost its
    /// followers cannot complete an acks=all write meanwhile. Once a quorum
    /// answers, the old session is (or is about to be) expired there and
    /// the controller moves its leaderships: the broker stops leading
    /// before it registers again, so it takes nothing alone from then on.
    async fn renew(&self) {
        self.clients.send_replace(None);
        loop {
            if self.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            let attempt = async {
                let client = connect(&self.config).await?;
                self.metadata.stop_leading();
                self.register(&client, self.config.session_timeout * 2)
                    .await?;
                Ok::<_, SessionError>(client)
            };
            match attempt.await {
                Ok(client) => {
                    self.clients.send_replace(Some(client));
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "no new ZooKeeper session yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Follows the session's state until `stop`; a session that ends is
    /// replaced (see [`Self::renew`]). A session that is only disconnected
    /// is left to the client, which reconnects it while ZooKeeper keeps it.
    async fn watch_session(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let Some(client) = self.client() else {
                self.renew().await;
                continue;
            };
            let mut states = client.state_watcher();
            loop {
                let state = states.state();
                if state.is_terminated() {
                    if self.shutting_down.load(Ordering::Relaxed) {
                        return;
                    }
                    warn!(
                        state = %state,
                        "ZooKeeper session ended; this broker registers again once a ZooKeeper quorum answers"
                    );
                    break;
                }
                if state == zk::SessionState::Disconnected {
                    debug!("disconnected from ZooKeeper; the client reconnects");
                }
                tokio::select! {
                    _ = states.changed() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            drop(client);
            self.renew().await;
        }
    }

    /// The controller's Kafka address, from the image.
    fn controller_address(&self) -> Option<String> {
        let id = self.metadata.controller_id()?;
        let image = self.metadata.image();
        let broker = image.brokers.get(&id)?;
        let endpoint = broker.endpoints.first()?;
        Some(format!("{}:{}", endpoint.host, endpoint.port))
    }

    async fn ask_controlled_shutdown(&self) -> Result<usize, String> {
        let address = self
            .controller_address()
            .ok_or_else(|| "no controller is known".to_string())?;
        let mut client = KafkaClient::connect(&address, "sluice-controlled-shutdown")
            .await
            .map_err(|e| e.to_string())?;
        client.set_request_timeout(self.controller_timeout);
        let request = ControlRequest::ControlledShutdown {
            broker_id: self.node_id,
            broker_epoch: self.metadata.broker_epoch(),
        };
        let response = send_control(&mut client, &request)
            .await
            .map_err(|e| e.to_string())?;
        if response.error_code != 0 {
            return Err(format!(
                "error {}: {}",
                response.error_code, response.message
            ));
        }
        Ok(response.remaining_leaderships)
    }

    /// Removes this broker's registration (and `/controller`, when it holds
    /// it) so the cluster sees it leave now rather than after the session
    /// timeout.
    pub async fn leave(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let Some(client) = self.client() else {
            return;
        };
        let session = client.session_id().0;
        let path = znodes::broker_path(self.node_id);
        if let Ok(Some(stat)) = client.check_stat(&path).await {
            if stat.ephemeral_owner == session {
                let _ = client.delete(&path, Some(stat.version)).await;
            }
        }
        if let Ok((data, stat)) = client.get_data(znodes::CONTROLLER).await {
            let ours = ControllerZnode::decode(znodes::CONTROLLER, &data)
                .is_ok_and(|c| c.brokerid == self.node_id);
            if ours && stat.ephemeral_owner == session {
                let _ = client.delete(znodes::CONTROLLER, Some(stat.version)).await;
            }
        }
        info!("left the ZooKeeper-mode cluster");
    }
}

/// A cluster id as Kafka writes them: 16 random bytes in base64url.
fn base64_id(id: uuid::Uuid) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

impl BrokerSession for ZkBrokerSession {
    fn join(&self, limit: Duration) -> BoxFuture<'_, Result<(), ControllerError>> {
        Box::pin(async move {
            let client = self.client().ok_or_else(|| {
                ControllerError::BrokerNotAvailable("no ZooKeeper session".into())
            })?;
            let epoch = self
                .register(&client, limit)
                .await
                .map_err(|e| ControllerError::BrokerNotAvailable(e.to_string()))?;
            // Serve once the controller's push has shown this registration
            // live here, with the leaderships that came with it.
            let id = self.node_id;
            let mut image = self.applied.clone();
            tokio::time::timeout(
                limit,
                image.wait_for(|i| {
                    i.brokers
                        .get(&id)
                        .is_some_and(|b| !b.fenced && b.broker_epoch == epoch)
                }),
            )
            .await
            .map_err(|_| ControllerError::Timeout)?
            .map_err(|_| ControllerError::Internal("metadata stopped".into()))?;
            info!(
                broker_id = id,
                broker_epoch = epoch,
                "the controller knows this broker; serving"
            );
            Ok(())
        })
    }

    fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        tokio::spawn(self.watch_session(stop));
    }

    fn controlled_shutdown(&self, limit: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + limit;
            while tokio::time::Instant::now() < deadline {
                match self.ask_controlled_shutdown().await {
                    Ok(0) => {
                        info!("controlled shutdown complete: leadership moved away");
                        return;
                    }
                    Ok(remaining) => {
                        debug!(remaining, "controlled shutdown: leaderships still to move")
                    }
                    Err(e) => debug!(error = %e, "controlled shutdown request failed"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            warn!("controlled shutdown did not complete in time; stopping anyway");
        })
    }

    fn broker_epoch(&self) -> i64 {
        self.metadata.broker_epoch()
    }
}

/// The control plane a ZooKeeper-mode broker serves: its metadata takes
/// the pushes. Kept as a function so the server needs no ZooKeeper types.
pub fn control_plane(metadata: &Arc<ZkMetadata>) -> Arc<dyn ControlPlane> {
    metadata.clone()
}
