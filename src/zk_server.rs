//! `sluice server` with `zookeeper.connect` set: a ZooKeeper-mode broker.
//!
//! The data plane is the KRaft broker's, unchanged: replica manager,
//! fetchers, group coordinator and request handlers, fed by the same
//! metadata image. What differs is behind the control-plane seam: the image
//! comes from the ZooKeeper-mode controller's pushes, membership is a
//! ZooKeeper session, admin and group writes go to znodes, and one broker
//! wins `/controller` and runs the controller.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_broker::lifecycle::{BrokerSession, ImageWatch};
use sluice_broker::{Broker, GroupCoordinator, ReplicaManager};
use sluice_metadata::controller_api::ControllerApi;
use sluice_metadata::Publisher;
use sluice_zk::admin::ZkControllerApi;
use sluice_zk::controller::{ZkController, ZkControllerConfig};
use sluice_zk::{start_config_watch, ZkBrokerSession, ZkMetadata};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::server::{
    bind_broker, group_config, install_metrics, load_or_create_identity, log_config, log_dir,
    raise_open_file_limit, serve_listeners, serving_on, spawn_housekeeping, topic_defaults,
    wait_for_signal, BoundBroker,
};
use crate::settings::Settings;

pub async fn run(settings: Settings) -> Result<()> {
    raise_open_file_limit();
    let node_id: i32 = settings.parse("node.id")?;
    let log_dir = log_dir(&settings);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    install_metrics(settings.get("metrics.listen"))?;
    let listeners = settings.listeners()?.broker;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // The data plane, exactly as in KRaft mode.
    let replicas = Arc::new(ReplicaManager::new(
        node_id,
        log_dir.clone(),
        log_config(&settings)?,
    )?);
    let groups = GroupCoordinator::new(node_id, group_config(&settings)?);
    let applied = Arc::new(ImageWatch::new());
    let metadata = ZkMetadata::new(
        node_id,
        vec![
            replicas.clone() as Arc<dyn Publisher>,
            groups.clone() as Arc<dyn Publisher>,
            applied.clone() as Arc<dyn Publisher>,
        ],
    )?;

    // The listener is bound before joining: the controller's pushes arrive on it.
    let zk = settings.zookeeper()?;
    let controller_timeout = settings.controller_socket_timeout()?;
    // The cluster id comes from ZooKeeper, so the session opens before
    // anything is written under this node's identity.
    let placeholder_endpoints = Vec::new();
    let session = ZkBrokerSession::connect(
        zk.clone(),
        node_id,
        placeholder_endpoints,
        metadata.clone(),
        replicas.clone(),
        applied.subscribe(),
        controller_timeout,
    )
    .await
    .context("connecting to ZooKeeper (zookeeper.connect)")?;
    let cluster_id = session
        .cluster_id()
        .await
        .context("reading the cluster id from ZooKeeper")?;
    load_or_create_identity(&log_dir, node_id, Some(cluster_id.clone()))?;

    let BoundBroker {
        sockets,
        bound,
        endpoints,
        config: broker_config,
    } = bind_broker(&settings, node_id, &cluster_id, &log_dir, &listeners).await?;
    session.set_endpoints(endpoints.clone());

    let mut controller_config = ZkControllerConfig::new(stop_rx.clone());
    controller_config.controller_socket_timeout = controller_timeout;
    controller_config.unclean_leader_election = settings.parse("unclean.leader.election.enable")?;
    controller_config.auto_leader_rebalance = settings.parse("auto.leader.rebalance.enable")?;
    controller_config.leader_imbalance_check_interval =
        Duration::from_secs(settings.parse("leader.imbalance.check.interval.seconds")?);
    let controller = ZkController::start(
        node_id,
        session.sessions(),
        metadata.clone(),
        controller_config,
    );
    let zk_api = ZkControllerApi::new(
        session.sessions(),
        metadata.clone(),
        topic_defaults(&settings)?,
        controller_timeout,
    );
    let active = controller.clone();
    zk_api.set_active_controller(Arc::new(move || active.active_controller_id()));
    metadata.set_push_hook(zk_api.push_hook());
    tasks.push(spawn_offset_expiry(
        zk_api.groups().clone(),
        Duration::from_secs(60 * settings.parse::<u64>("offsets.retention.minutes")?),
        Duration::from_millis(settings.parse("offsets.retention.check.interval.ms")?),
        stop_rx.clone(),
    ));
    tasks.push(start_config_watch(
        session.sessions(),
        metadata.clone(),
        stop_rx.clone(),
    ));
    let api: Arc<dyn ControllerApi> = zk_api;

    groups.start(api.clone(), stop_rx.clone());
    let broker = Arc::new(Broker::new(
        broker_config.clone(),
        replicas.clone(),
        api,
        groups,
        bound.port(),
    ));
    broker.set_control_plane(metadata.clone());
    broker.hold_clients();
    tasks.extend(serve_listeners(sockets, &broker, &stop_rx));

    session
        .join(Duration::from_secs(600))
        .await
        .context("joining the ZooKeeper-mode cluster")?;
    broker.admit_clients();
    session.clone().run(stop_rx.clone());
    if let Err(e) = broker.reserve_producer_ids().await {
        warn!(error = %e, "could not take a block of producer ids at start; idempotent producers will ask later");
    }
    sluice_broker::fetcher::start_replication(&broker, stop_rx.clone());
    spawn_housekeeping(replicas.clone(), &broker_config, stop_rx.clone());
    // Tests and scripts wait for this line.
    println!(
        "Sluice is serving Kafka on {} (node {node_id}, ZooKeeper mode, data in {})",
        serving_on(&endpoints),
        log_dir.display()
    );

    wait_for_signal().await;
    info!("shutting down");
    if settings.parse("controlled.shutdown.enable")? {
        session.controlled_shutdown(Duration::from_secs(30)).await;
    }
    session.leave().await;
    let _ = stop_tx.send(true);
    for task in tasks.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    replicas.close_all();
    info!("stopped cleanly");
    Ok(())
}

/// Every `offsets.retention.check.interval.ms`, removes the expired offsets
/// and empty groups this broker coordinates (in KRaft mode the controller
/// does this on the log).
fn spawn_offset_expiry(
    groups: Arc<sluice_zk::groups::ZkGroups>,
    retention: Duration,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.changed() => return,
            }
            groups.expire(retention, interval).await;
        }
    })
}
