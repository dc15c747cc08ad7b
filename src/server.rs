//! `sluice server`: one process in combined mode (controller and broker).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use sluice_broker::{server, Broker, BrokerConfig, ReplicaManager};
use sluice_controller::{Controller, ControllerConfig, TopicDefaults};
use sluice_metadata::controller_api::{BrokerRegistrationRequest, ControllerApi};
use sluice_metadata::{Endpoint, Publisher, Uuid};
use sluice_storage::LogConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::settings::{parse_listener, Settings};

pub async fn run(settings: Settings) -> Result<()> {
    let roles = settings.get("process.roles").replace(' ', "");
    if roles != "broker,controller" && roles != "controller,broker" {
        bail!("process.roles={roles}: this version runs combined nodes only (broker,controller)");
    }
    let node_id: i32 = settings.parse("node.id")?;
    let log_dir = PathBuf::from(
        settings
            .get("log.dirs")
            .split(',')
            .next()
            .unwrap_or("./sluice-data"),
    );
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let cluster_id = load_or_create_identity(&log_dir, node_id)?;

    let metadata_dir = match settings.get("metadata.log.dir") {
        "" => log_dir.join("__cluster_metadata"),
        dir => PathBuf::from(dir),
    };
    install_metrics(settings.get("metrics.listen"))?;

    let listener = parse_listener(settings.get("listeners"))?;
    let advertised = match settings.get("advertised.listeners") {
        "" => listener.clone(),
        text => parse_listener(text)?,
    };
    let log_defaults = LogConfig {
        segment_bytes: settings.parse("log.segment.bytes")?,
        segment_ms: settings.parse("log.roll.ms")?,
        retention_ms: settings.retention_ms()?,
        retention_bytes: settings.parse("log.retention.bytes")?,
        max_message_bytes: settings.parse("message.max.bytes")?,
        index_interval_bytes: settings.parse("log.index.interval.bytes")?,
    };
    let bind: SocketAddr = format!("{}:{}", listener.host, listener.port)
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(listener.host.as_str(), listener.port))
                .ok()
                .and_then(|mut a| a.next())
                .context("cannot resolve the listener's host")
        })?;
    let mut broker_config = BrokerConfig::for_dev(log_dir.clone(), bind);
    broker_config.node_id = node_id;
    broker_config.cluster_id = cluster_id;
    broker_config.advertised_host = if advertised.host == "0.0.0.0" {
        "127.0.0.1".into()
    } else {
        advertised.host.clone()
    };
    broker_config.advertised_port = advertised.port;
    broker_config.auto_create_topics = settings.parse("auto.create.topics.enable")?;
    broker_config.num_partitions = settings.parse("num.partitions")?;
    broker_config.default_replication_factor = settings.parse("default.replication.factor")?;
    broker_config.min_insync_replicas = settings.parse("min.insync.replicas")?;
    broker_config.log = log_defaults.clone();
    broker_config.socket_request_max_bytes = settings.parse("socket.request.max.bytes")?;
    broker_config.max_connections = settings.parse("max.connections")?;
    broker_config.retention_check_interval =
        Duration::from_millis(settings.parse("log.retention.check.interval.ms")?);
    broker_config.checkpoint_interval =
        Duration::from_millis(settings.parse("replica.high.watermark.checkpoint.interval.ms")?);
    broker_config.settings = settings.described();
    // Topics see the retention in force, whichever of Kafka's spellings set it.
    let retention_set = [
        "log.retention.ms",
        "log.retention.minutes",
        "log.retention.hours",
    ]
    .iter()
    .any(|k| {
        broker_config
            .settings
            .get(*k)
            .is_some_and(|(_, explicit)| *explicit)
    });
    broker_config.settings.insert(
        "log.retention.ms".into(),
        (log_defaults.retention_ms.to_string(), retention_set),
    );

    let replicas = Arc::new(ReplicaManager::new(node_id, log_dir.clone(), log_defaults)?);
    let controller = Controller::start(
        ControllerConfig {
            node_id,
            data_dir: metadata_dir,
            defaults: TopicDefaults {
                num_partitions: broker_config.num_partitions,
                replication_factor: broker_config.default_replication_factor,
            },
            request_timeout: Duration::from_secs(30),
            snapshot_every_entries: settings.parse("metadata.snapshot.max.records")?,
        },
        vec![replicas.clone() as Arc<dyn Publisher>],
    )
    .await?;
    replicas.remove_strays();

    let socket = TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the Kafka listener on {bind}"))?;
    let bound = socket.local_addr()?;
    let broker_config_port = if advertised.port == 0 {
        bound.port()
    } else {
        advertised.port
    };
    let epoch = controller
        .register_broker(BrokerRegistrationRequest {
            broker_id: node_id,
            incarnation_id: Uuid::new_v4(),
            endpoints: vec![Endpoint {
                listener: advertised.name.clone(),
                host: broker_config.advertised_host.clone(),
                port: broker_config_port,
            }],
            rack: None,
        })
        .await
        .context("registering the broker with the controller")?;
    info!(node_id, broker_epoch = epoch, "broker registered");

    let (stop_tx, stop_rx) = watch::channel(false);
    let broker = Arc::new(Broker::new(
        broker_config.clone(),
        replicas.clone(),
        controller.clone() as Arc<dyn ControllerApi>,
        bound.port(),
    ));
    let server_task = tokio::spawn(server::run(socket, broker, stop_rx.clone()));
    spawn_housekeeping(replicas.clone(), &broker_config, stop_rx);
    spawn_quorum_metrics(&controller);

    // Tests and scripts wait for this line.
    println!(
        "Sluice is serving Kafka on {}:{} (node {node_id}, data in {})",
        broker_config.advertised_host,
        broker_config_port,
        log_dir.display()
    );

    wait_for_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server_task).await;
    replicas.close_all();
    controller.shutdown().await;
    info!("stopped cleanly");
    Ok(())
}

/// Reads `meta.properties`, or writes it on first start: the cluster id and
/// the node id this directory belongs to.
fn load_or_create_identity(log_dir: &Path, node_id: i32) -> Result<String> {
    let path = log_dir.join("meta.properties");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .map(str::trim)
                .map(str::to_string)
        };
        let stored_node = get("node.id").and_then(|n| n.parse::<i32>().ok());
        if stored_node != Some(node_id) {
            bail!(
                "{} belongs to node {:?}, not node {node_id}",
                path.display(),
                stored_node
            );
        }
        return get("cluster.id").with_context(|| format!("{} has no cluster.id", path.display()));
    }
    // Kafka cluster ids are base64url-encoded UUIDs; a plain UUID string is
    // accepted by every client and easier to read.
    let cluster_id = Uuid::new_v4().simple().to_string();
    let text = format!("version=1\ncluster.id={cluster_id}\nnode.id={node_id}\n");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(cluster_id)
}

fn install_metrics(listen: &str) -> Result<()> {
    if listen.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("metrics.listen = {listen:?}"))?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("sluice_request_duration_seconds".into()),
            &[
                0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0,
            ],
        )?
        .install()
        .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
    info!(%addr, "metrics at http://{addr}/metrics");
    Ok(())
}

fn spawn_housekeeping(
    replicas: Arc<ReplicaManager>,
    config: &BrokerConfig,
    stop: watch::Receiver<bool>,
) {
    let r = replicas.clone();
    spawn_periodic(
        "retention",
        config.retention_check_interval,
        stop.clone(),
        move || r.enforce_retention(),
    );
    spawn_periodic("checkpoint", config.checkpoint_interval, stop, move || {
        replicas.checkpoint()
    });
}

/// Runs blocking `work` every `period` on the blocking pool until `stop`.
fn spawn_periodic(
    name: &'static str,
    period: Duration,
    mut stop: watch::Receiver<bool>,
    work: impl Fn() + Send + Sync + 'static,
) {
    let work = Arc::new(work);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let work = work.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || work()).await {
                warn!(task = name, error = %e, "housekeeping task failed");
            }
        }
    });
}

fn spawn_quorum_metrics(controller: &Arc<Controller>) {
    let mut status = controller.quorum().subscribe_status();
    tokio::spawn(async move {
        loop {
            {
                let s = status.borrow_and_update();
                metrics::gauge!("sluice_raft_commit_index").set(s.commit_index as f64);
                metrics::gauge!("sluice_raft_term").set(s.term as f64);
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
