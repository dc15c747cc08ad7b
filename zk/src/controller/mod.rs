//! The ZooKeeper-mode controller, as Kafka 2.x/3.x ran it.
//!
//! Every broker runs a [`ZkController`]; they race for the ephemeral
//! `/controller` znode and only the winner acts. The winner bumps
//! `/controller_epoch` in the same multi-op that creates `/controller`,
//! conditional on the version it read, and from then on guards every write
//! with a check of that version: a deposed controller cannot write.
//!
//! On winning, the controller reads the whole cluster back from ZooKeeper
//! (the O(partitions) reload that ZK-mode failover pays for), elects
//! leaders for partitions without a live one, and pushes the cluster to
//! every broker. Then it follows one-shot watches on `/brokers/ids`,
//! `/brokers/topics` (and each topic), `/admin/delete_topics` and
//! `/isr_change_notification`, handling their events one at a time in one
//! loop, as Kafka's ControllerEventManager does.
//!
//! - [`election`]: the race for `/controller`.
//! - [`context`]: the controller's view of the cluster and its planning.
//! - [`active`]: what the winner does.
//! - [`channels`]: one push queue per broker.

mod active;
mod channels;
mod context;
mod election;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use zookeeper_client as zk;

use crate::source::{ShutdownRequests, ZkMetadata};
use crate::znodes::{decode_controller_epoch, CONTROLLER_EPOCH};
use active::{Active, Outcome};
use election::Elected;

/// The controller's settings (Kafka's names).
#[derive(Clone, Debug)]
pub struct ZkControllerConfig {
    /// `controller.socket.timeout.ms`: how long a push may take (30 s in Kafka).
    pub controller_socket_timeout: Duration,
    /// `unclean.leader.election.enable`, the broker-wide default a topic's
    /// own config overrides.
    pub unclean_leader_election: bool,
    /// `auto.leader.rebalance.enable`: move leadership back to each
    /// partition's preferred replica once it is in sync again.
    pub auto_leader_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`
    pub leader_imbalance_check_interval: Duration,
    /// Becomes true when the node stops.
    pub stop: watch::Receiver<bool>,
}

impl ZkControllerConfig {
    pub fn new(stop: watch::Receiver<bool>) -> Self {
        Self {
            controller_socket_timeout: Duration::from_secs(30),
            unclean_leader_election: false,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval: Duration::from_secs(300),
            stop,
        }
    }
}

/// A broker's ControlledShutdown, passed to the controller's event loop.
struct ShutdownRequest {
    broker_id: i32,
    broker_epoch: i64,
    reply: oneshot::Sender<Result<usize, (ResponseError, String)>>,
}

/// What the running controller task shares with its handle.
struct Shared {
    node_id: i32,
    /// The broker `/controller` names, as last read.
    active_id: watch::Sender<Option<i32>>,
    /// The controller epoch as last read (this node's own while it acts).
    epoch: AtomicI32,
    /// Whether this node is acting as the controller (`/controller` may
    /// name this node from an earlier session that has not expired yet).
    acting: AtomicBool,
}

impl Shared {
    fn set_active(&self, id: Option<i32>) {
        self.active_id.send_if_modified(|current| {
            let changed = *current != id;
            *current = id;
            changed
        });
    }
}

/// One broker's controller: campaigns for `/controller`, and acts while it holds it.
pub struct ZkController {
    shared: Arc<Shared>,
    requests: mpsc::UnboundedSender<ShutdownRequest>,
}

impl ZkController {
    /// Starts the controller task for broker `node_id`. `clients` carries the
    /// broker's current ZooKeeper session (a new value: a new session, after
    /// which the controller resigns and races again). The controller serves
    /// ControlledShutdown requests that reach `metadata`.
    pub fn start(
        node_id: i32,
        clients: watch::Receiver<Option<zk::Client>>,
        metadata: Arc<ZkMetadata>,
        config: ZkControllerConfig,
    ) -> Arc<ZkController> {
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node_id,
            active_id: watch::channel(None).0,
            epoch: AtomicI32::new(0),
            acting: AtomicBool::new(false),
        });
        let controller = Arc::new(ZkController {
            shared: shared.clone(),
            requests,
        });
        metadata.set_shutdown_requests(controller.clone());
        let runner = Runner {
            shared,
            signals: Signals {
                stop: config.stop.clone(),
                clients,
                requests: requests_rx,
            },
            config,
        };
        tokio::spawn(runner.run());
        controller
    }

    /// The broker that holds `/controller`, as this node last read it.
    pub fn active_controller_id(&self) -> Option<i32> {
        *self.shared.active_id.borrow()
    }

    /// Follows [`Self::active_controller_id`].
    pub fn subscribe_active_controller(&self) -> watch::Receiver<Option<i32>> {
        self.shared.active_id.subscribe()
    }

    /// Whether this node is the active controller.
    pub fn is_active(&self) -> bool {
        self.shared.acting.load(Ordering::Relaxed)
    }

    /// The controller epoch as last read (this node's own while it is active).
    pub fn controller_epoch(&self) -> i32 {
        self.shared.epoch.load(Ordering::Relaxed)
    }
}

impl ShutdownRequests for ZkController {
    fn controlled_shutdown(
        &self,
        broker_id: i32,
        broker_epoch: i64,
    ) -> BoxFuture<'_, Result<usize, (ResponseError, String)>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let not_controller = || {
                (
                    ResponseError::NotController,
                    format!("broker {} is not the controller", self.shared.node_id),
                )
            };
            self.requests
                .send(ShutdownRequest {
                    broker_id,
                    broker_epoch,
                    reply,
                })
                .map_err(|_| not_controller())?;
            answer.await.map_err(|_| not_controller())?
        })
    }
}

/// What the controller task waits on besides ZooKeeper.
struct Signals {
    stop: watch::Receiver<bool>,
    clients: watch::Receiver<Option<zk::Client>>,
    requests: mpsc::UnboundedReceiver<ShutdownRequest>,
}

/// Why a wait ended.
enum Wake {
    Stop,
    NewSession,
    /// The watched znode changed, or the wait timed out.
    Retry,
}

impl Signals {
    /// Waits for `watcher` (or `timeout`), answering ControlledShutdown
    /// requests with NOT_CONTROLLER meanwhile.
    async fn idle(
        &mut self,
        watcher: Option<zk::OneshotWatcher>,
        timeout: Option<Duration>,
    ) -> Wake {
        let watched = async move {
            match watcher {
                Some(w) => {
                    w.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        let timer = async move {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(watched, timer);
        loop {
            tokio::select! {
                _ = stopped(&mut self.stop) => return Wake::Stop,
                _ = changed(&mut self.clients) => return Wake::NewSession,
                Some(request) = self.requests.recv() => {
                    let _ = request.reply.send(Err((
                        ResponseError::NotController,
                        "this broker is not the controller".into(),
                    )));
                }
                _ = &mut watched => return Wake::Retry,
                _ = &mut timer => return Wake::Retry,
            }
        }
    }
}

/// Resolves once `stop` is true (never, if its sender is gone while false).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves on the next new session (never, if the publisher is gone).
async fn changed(clients: &mut watch::Receiver<Option<zk::Client>>) {
    if clients.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How long to wait after a ZooKeeper error before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

struct Runner {
    shared: Arc<Shared>,
    signals: Signals,
    config: ZkControllerConfig,
}

impl Runner {
    async fn run(mut self) {
        loop {
            if *self.signals.stop.borrow() {
                break;
            }
            let client = self.signals.clients.borrow_and_update().clone();
            let wake = match client {
                Some(client) => self.session(client).await,
                None => self.signals.idle(None, None).await,
            };
            if matches!(wake, Wake::Stop) {
                break;
            }
        }
        self.shared.set_active(None);
        info!(node = self.shared.node_id, "controller stopped");
    }

    /// Campaigns and acts on one ZooKeeper session until it is replaced or the node stops.
    async fn session(&mut self, client: zk::Client) -> Wake {
        let node_id = self.shared.node_id;
        loop {
            if client.state().is_terminated() {
                // Nothing to do on this session any more: wait for the next.
                return self.signals.idle(None, None).await;
            }
            match election::elect(&client, node_id).await {
                Ok(Elected::Won {
                    epoch,
                    epoch_version,
                }) => {
                    self.shared.epoch.store(epoch, Ordering::Relaxed);
                    self.shared.set_active(Some(node_id));
                    self.shared.acting.store(true, Ordering::Relaxed);
                    info!(
                        node = node_id,
                        controller_epoch = epoch,
                        "won the controller election"
                    );
                    let active =
                        Active::new(client.clone(), node_id, epoch, epoch_version, &self.config);
                    let outcome = active.run(&mut self.signals).await;
                    self.shared.acting.store(false, Ordering::Relaxed);
                    self.shared.set_active(None);
                    match outcome {
                        Outcome::Stop => {
                            election::resign(&client, node_id).await;
                            return Wake::Stop;
                        }
                        Outcome::NewSession => return Wake::NewSession,
                        Outcome::Deposed => {
                            warn!(
                                node = node_id,
                                controller_epoch = epoch,
                                "deposed: another controller epoch is current"
                            );
                        }
                        Outcome::Failed(e) => {
                            warn!(node = node_id, error = %e, "controller stopped acting after a ZooKeeper error; running again");
                            if let w @ (Wake::Stop | Wake::NewSession) =
                                self.signals.idle(None, Some(RETRY_AFTER)).await
                            {
                                return w;
                            }
                        }
                    }
                }
                Ok(Elected::Lost {
                    controller_id,
                    watcher,
                }) => {
                    self.shared.set_active(controller_id);
                    if let Ok((data, _)) = client.get_data(CONTROLLER_EPOCH).await {
                        if let Ok(epoch) = decode_controller_epoch(&data) {
                            self.shared.epoch.store(epoch, Ordering::Relaxed);
                        }
                    }
                    match self.signals.idle(Some(watcher), None).await {
                        Wake::Retry => {}
                        other => return other,
                    }
                }
                Err(e) => {
                    warn!(node = node_id, error = %e, "could not run for controller");
                    match self.signals.idle(None, Some(RETRY_AFTER)).await {
                        Wake::Retry => {}
                        other => return other,
                    }
                }
            }
        }
    }
}
