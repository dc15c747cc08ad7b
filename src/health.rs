//! `sluice health`: is the node that these settings describe ready? It
//! reads the same settings as `sluice server` (file, SLUICE_* variables,
//! flags), so a container's health check is this command with no
//! arguments.
//!
//! - A broker is ready when it lists itself in its own Metadata answer: it
//!   is registered, and its own copy of the metadata shows it unfenced. The
//!   controller unfences a broker only once it has caught up with the
//!   metadata log, and fences it again if it falls behind.
//! - A controller is ready when the quorum has a leader and this node has
//!   replicated the log up to the high watermark the leader reported.
//!
//! A node with both roles must pass both.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::MetadataRequest;
use sluice_broker::KafkaClient;

use crate::server::parse_roles;
use crate::settings::{parse_voters, Listener, Mode, Settings};

/// Checks the node and says why it is or is not ready.
pub async fn run(settings: Settings, timeout: Duration) -> Result<()> {
    let node_id: i32 = settings.parse("node.id")?;
    let listeners = settings.listeners()?;
    let zk_mode = settings.mode()? == Mode::ZooKeeper;
    let roles = parse_roles(settings.get("process.roles"))?;
    let deadline = Instant::now() + timeout;
    if zk_mode || roles.broker {
        let listener = listeners
            .broker
            .first()
            .context("the settings give this node no broker listener")?;
        broker_ready(node_id, &local_address(listener), deadline).await?;
        println!("broker {node_id} is ready: registered, unfenced and caught up");
    }
    let voters = parse_voters(settings.get("controller.quorum.voters"))?;
    if !zk_mode && roles.controller && !voters.is_empty() {
        let addresses: Vec<String> = voters.iter().map(|v| v.address()).collect();
        controller_ready(node_id, &addresses, deadline).await?;
        println!("controller {node_id} is ready: the quorum has a leader and it is caught up");
    }
    Ok(())
}

/// Where to reach a listener from this host: a wildcard bind is reached on
/// loopback.
fn local_address(listener: &Listener) -> String {
    let host = match listener.host.as_str() {
        "0.0.0.0" | "::" | "" => "127.0.0.1",
        host => host,
    };
    format!("{host}:{}", listener.port)
}

async fn broker_ready(node_id: i32, address: &str, deadline: Instant) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    let answer = tokio::time::timeout(left, async {
        let mut client = KafkaClient::connect(address, "sluice-health").await?;
        client.set_request_timeout(left);
        client
            .send(MetadataRequest::default().with_topics(Some(Vec::new())))
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .map_err(|_| anyhow::anyhow!("broker at {address} did not answer in time"))?
    .with_context(|| format!("asking the broker at {address} for metadata"))?;
    if !answer.brokers.iter().any(|b| b.node_id.0 == node_id) {
        bail!("broker {node_id} is not ready: it does not see itself registered and unfenced yet");
    }
    Ok(())
}

/// Asks the quorum's leader (any voter may be it) how far `node_id` has
/// replicated, until it has reached the high watermark first reported.
async fn controller_ready(node_id: i32, voters: &[String], deadline: Instant) -> Result<()> {
    let mut target = None;
    loop {
        if let Some((high_watermark, own_end)) = quorum_progress(node_id, voters).await {
            let target = *target.get_or_insert(high_watermark);
            if own_end >= target {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("controller {node_id} is not ready: it has the log to {own_end}, the quorum has committed {target}");
            }
        } else if Instant::now() >= deadline {
            bail!(
                "controller {node_id} is not ready: no controller answers as the quorum's leader"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (high watermark, `node_id`'s log end) as the leader reports them.
async fn quorum_progress(node_id: i32, voters: &[String]) -> Option<(i64, i64)> {
    let answer = crate::cluster::describe_quorum(voters).await?;
    let partition = answer.topics.first()?.partitions.first()?;
    if partition.error_code != 0 || partition.leader_id.0 < 0 {
        return None;
    }
    let own_end = partition
        .current_voters
        .iter()
        .find(|v| v.replica_id.0 == node_id)
        .map_or(-1, |v| v.log_end_offset);
    Some((partition.high_watermark, own_end))
}
