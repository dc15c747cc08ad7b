//! One push queue and task per live broker, so a slow or dead broker holds
//! up nobody else (Kafka's ControllerChannelManager keeps one send thread
//! per broker the same way). A failed send is retried on a new connection
//! while the broker stays live under this controller; its queue goes when
//! it leaves.

use std::time::Duration;

use sluice_broker::kafka_client::KafkaClient;
use sluice_metadata::control_requests::ControlRequest;
use sluice_metadata::Endpoint;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::channel::send_control;

pub(super) struct BrokerChannel {
    /// The registration (czxid) this queue serves.
    pub broker_epoch: i64,
    pub address: String,
    queue: mpsc::UnboundedSender<Queued>,
    task: JoinHandle<()>,
}

/// What a broker's queue holds: pushes, and markers that report when every
/// push before them has been answered.
enum Queued {
    Push(ControlRequest),
    Marker(oneshot::Sender<()>),
}

impl BrokerChannel {
    pub fn start(broker_id: i32, broker_epoch: i64, address: String, timeout: Duration) -> Self {
        let (queue, requests) = mpsc::unbounded_channel();
        let task = tokio::spawn(deliver(broker_id, address.clone(), timeout, requests));
        Self {
            broker_epoch,
            address,
            queue,
            task,
        }
    }

    pub fn send(&self, request: ControlRequest) {
        // The task ends only when this channel is dropped.
        let _ = self.queue.send(Queued::Push(request));
    }

    /// Resolves once the broker has answered every push queued so far (an
    /// error if the queue goes first: the broker left).
    pub fn delivered(&self) -> oneshot::Receiver<()> {
        let (done, delivered) = oneshot::channel();
        let _ = self.queue.send(Queued::Marker(done));
        delivered
    }
}

impl Drop for BrokerChannel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a broker takes pushes: its first listener, as Kafka's controller
/// uses the inter-broker one.
pub(super) fn push_address(endpoints: &[Endpoint]) -> Option<String> {
    endpoints.first().map(|e| {
        if e.host.contains(':') {
            format!("[{}]:{}", e.host, e.port)
        } else {
            format!("{}:{}", e.host, e.port)
        }
    })
}

const RECONNECT_AFTER: Duration = Duration::from_millis(300);

fn kind(request: &ControlRequest) -> &'static str {
    match request {
        ControlRequest::LeaderAndIsr { .. } => "LeaderAndIsr",
        ControlRequest::UpdateMetadata { .. } => "UpdateMetadata",
        ControlRequest::StopReplica { .. } => "StopReplica",
        ControlRequest::ControlledShutdown { .. } => "ControlledShutdown",
    }
}

async fn deliver(
    broker_id: i32,
    address: String,
    timeout: Duration,
    mut requests: mpsc::UnboundedReceiver<Queued>,
) {
    let mut connection: Option<KafkaClient> = None;
    while let Some(queued) = requests.recv().await {
        let request = match queued {
            Queued::Push(request) => request,
            Queued::Marker(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let kind = kind(&request);
        loop {
            let client = match connection.as_mut() {
                Some(client) => client,
                None => {
                    let connect = KafkaClient::connect(&address, "sluice-zk-controller");
                    match tokio::time::timeout(timeout, connect).await {
                        Ok(Ok(mut client)) => {
                            client.set_request_timeout(timeout);
                            connection.insert(client)
                        }
                        Ok(Err(e)) => {
                            debug!(broker = broker_id, %address, error = %e, "cannot reach the broker yet");
                            tokio::time::sleep(RECONNECT_AFTER).await;
                            continue;
                        }
                        Err(_) => {
                            debug!(broker = broker_id, %address, "connecting to the broker timed out");
                            continue;
                        }
                    }
                }
            };
            match send_control(client, &request).await {
                Ok(response) => {
                    if response.error_code == 0 {
                        metrics::counter!("sluice_zk_controller_pushes_total", "request" => kind)
                            .increment(1);
                    } else {
                        // A refusal is final: the broker has seen a newer
                        // controller, or registered again (and a new push
                        // for its new registration follows).
                        warn!(
                            broker = broker_id,
                            request = kind,
                            error_code = response.error_code,
                            message = %response.message,
                            "the broker refused a push"
                        );
                    }
                    break;
                }
                Err(e) => {
                    warn!(broker = broker_id, request = kind, error = %e, "push failed; retrying on a new connection");
                    connection = None;
                    tokio::time::sleep(RECONNECT_AFTER).await;
                }
            }
        }
    }
}
