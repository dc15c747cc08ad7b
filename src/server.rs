//! `sluice server`: one node, running the broker role, the controller role
//! or both (`process.roles`). With no `controller.quorum.voters` it is a
//! standalone combined node: its own single-voter quorum, no controller
//! listener. In a quorum, controllers talk Raft over their controller
//! listeners and every broker follows the metadata log from them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use sluice_broker::controller_client::{follow_metadata_log, RemoteController};
use sluice_broker::controller_service::{ControllerService, StreamAcceptor};
use sluice_broker::lifecycle::{BrokerLifecycle, ImageWatch};
use sluice_broker::local_controller::LocalController;
use sluice_broker::{server, Broker, BrokerConfig, GroupConfig, GroupCoordinator, ReplicaManager};
use sluice_controller::quorum::serve_peer_stream;
use sluice_controller::{Controller, ControllerConfig, TopicDefaults};
use sluice_metadata::controller_api::{
    BrokerRegistrationRequest, ControllerApi, MetadataLogSource,
};
use sluice_metadata::{Endpoint, Publisher, Uuid};
use sluice_storage::LogConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::settings::{parse_listeners, parse_voters, Listener, Listeners, Mode, Settings, Voter};

/// The roles a node runs (`process.roles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Roles {
    pub broker: bool,
    pub controller: bool,
}

pub(crate) fn parse_roles(text: &str) -> Result<Roles> {
    let mut roles = Roles {
        broker: false,
        controller: false,
    };
    for role in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        match role {
            "broker" => roles.broker = true,
            "controller" => roles.controller = true,
            other => bail!("process.roles: unknown role {other:?} (broker, controller)"),
        }
    }
    if !roles.broker && !roles.controller {
        bail!("process.roles must name broker, controller or both");
    }
    Ok(roles)
}

/// The cluster id of a quorum: the same on every node without any
/// formatting step, because it is derived from the voter list they share.
fn cluster_id_for(voters: &[Voter]) -> String {
    let mut text: Vec<String> = voters
        .iter()
        .map(|v| format!("{}@{}", v.id, v.address()))
        .collect();
    text.sort();
    Uuid::new_v5(&Uuid::NAMESPACE_OID, text.join(",").as_bytes())
        .simple()
        .to_string()
}

pub async fn run(settings: Settings) -> Result<()> {
    if settings.mode()? == Mode::ZooKeeper {
        return crate::zk_server::run(settings).await;
    }
    raise_open_file_limit();
    let roles = parse_roles(settings.get("process.roles"))?;
    let node_id: i32 = settings.parse("node.id")?;
    let voters = parse_voters(settings.get("controller.quorum.voters"))?;
    let standalone = voters.is_empty();
    if standalone && !(roles.broker && roles.controller) {
        bail!(
            "a node with process.roles={} needs controller.quorum.voters",
            settings.get("process.roles")
        );
    }
    if roles.controller && !standalone && !voters.iter().any(|v| v.id == node_id) {
        bail!("node {node_id} runs a controller but is not in controller.quorum.voters");
    }
    let log_dir = log_dir(&settings);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let wanted_cluster_id = (!standalone).then(|| cluster_id_for(&voters));
    let cluster_id = load_or_create_identity(&log_dir, node_id, wanted_cluster_id)?;
    let metadata_dir = match settings.get("metadata.log.dir") {
        "" => log_dir.join("__cluster_metadata"),
        dir => PathBuf::from(dir),
    };
    install_metrics(settings.get("metrics.listen"))?;

    let Listeners {
        broker: broker_listeners,
        controller: controller_listener,
    } = settings.listeners()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // The broker's partitions; the controller's loader or the metadata
    // follower publishes each image to them.
    let replicas = if roles.broker {
        let log_defaults = log_config(&settings)?;
        Some(Arc::new(ReplicaManager::new(
            node_id,
            log_dir.clone(),
            log_defaults,
        )?))
    } else {
        None
    };

    // The consumer groups this broker coordinates; it sees every image too.
    let groups = if roles.broker {
        Some(GroupCoordinator::new(node_id, group_config(&settings)?))
    } else {
        None
    };
    let broker_publishers: Vec<Arc<dyn Publisher>> = match (&replicas, &groups) {
        (Some(r), Some(g)) => vec![
            r.clone() as Arc<dyn Publisher>,
            g.clone() as Arc<dyn Publisher>,
        ],
        _ => Vec::new(),
    };

    // Standalone, the broker sees the local controller's image once its
    // replica manager and group coordinator have acted on it.
    let standalone_image = Arc::new(ImageWatch::new());
    let controller = if roles.controller {
        // In a quorum, a combined node's broker follows the log like any
        // other broker; standalone, it reads the local controller's image.
        let publishers = if standalone {
            let mut publishers = broker_publishers.clone();
            publishers.push(standalone_image.clone());
            publishers
        } else {
            Vec::new()
        };
        let controller = Controller::start(
            controller_config(&settings, node_id, &metadata_dir, &voters)?,
            publishers,
        )?;
        if let Some(listener) = &controller_listener {
            let socket = TcpListener::bind(bind_address(listener)?)
                .await
                .with_context(|| {
                    format!(
                        "binding the controller listener on {}:{}",
                        listener.host, listener.port
                    )
                })?;
            let voter_endpoints = voters
                .iter()
                .map(|v| (v.id, v.host.clone(), v.port))
                .collect();
            let quorum = controller.quorum().clone();
            let raft_streams: StreamAcceptor =
                Arc::new(move |reader, _peer| Box::pin(serve_peer_stream(reader, quorum.clone())));
            let mut service = ControllerService::new(
                node_id,
                cluster_id.clone(),
                controller.clone() as Arc<dyn ControllerApi>,
                controller.clone() as Arc<dyn MetadataLogSource>,
                raft_streams,
                voter_endpoints,
            );
            service.max_request_bytes = settings.parse("socket.request.max.bytes")?;
            tasks.push(tokio::spawn(server::run(
                socket,
                listener.name.clone(),
                Arc::new(service),
                stop_rx.clone(),
            )));
        } else if !standalone {
            bail!("node {node_id} runs a controller in a quorum but has no controller listener (listeners with a name in controller.listener.names)");
        }
        spawn_quorum_metrics(&controller);
        Some(controller)
    } else {
        None
    };

    if let Some(controller) = &controller {
        let limit = if standalone {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(600)
        };
        controller.wait_ready(limit).await?;
    }

    let mut lifecycle = None;
    if let Some(replicas) = &replicas {
        if broker_listeners.is_empty() {
            bail!("a broker needs a listener that is not a controller listener");
        }
        let BoundBroker {
            sockets,
            bound,
            endpoints,
            config: broker_config,
        } = bind_broker(&settings, node_id, &cluster_id, &log_dir, &broker_listeners).await?;

        let (controller_api, image, replayed): (Arc<dyn ControllerApi>, _, _) =
            match (&controller, standalone) {
                (Some(c), true) => (
                    Arc::new(LocalController::new(
                        c.clone(),
                        c.subscribe_image(),
                        standalone_image.subscribe(),
                    )) as Arc<dyn ControllerApi>,
                    standalone_image.subscribe(),
                    None,
                ),
                _ => {
                    let addresses: Vec<(i32, String)> =
                        voters.iter().map(|v| (v.id, v.address())).collect();
                    let remote = RemoteController::new(
                        cluster_id.clone(),
                        addresses.clone(),
                        Duration::from_secs(30),
                    );
                    let followed = follow_metadata_log(
                        node_id,
                        addresses,
                        broker_publishers.clone(),
                        stop_rx.clone(),
                    );
                    (
                        Arc::new(remote) as Arc<dyn ControllerApi>,
                        followed.applied,
                        Some(followed.replayed),
                    )
                }
            };
        let groups = groups.clone().context("a broker has a group coordinator")?;
        groups.start(controller_api.clone(), stop_rx.clone());
        let broker = Arc::new(Broker::new(
            broker_config.clone(),
            replicas.clone(),
            controller_api.clone(),
            groups,
            bound.port(),
        ));
        let registration = BrokerRegistrationRequest {
            broker_id: node_id,
            incarnation_id: Uuid::new_v4(),
            endpoints: endpoints.clone(),
            rack: None,
        };
        let broker_lifecycle = BrokerLifecycle::new(
            controller_api,
            replicas.clone(),
            registration,
            image,
            replayed,
            Duration::from_millis(settings.parse("broker.heartbeat.interval.ms")?),
        );
        broker_lifecycle
            .start(Duration::from_secs(if standalone { 30 } else { 600 }))
            .await
            .context("joining the cluster")?;
        broker_lifecycle.spawn_heartbeats(stop_rx.clone());
        sluice_broker::fetcher::start_replication(&broker, stop_rx.clone());
        tasks.extend(serve_listeners(sockets, &broker, &stop_rx));
        spawn_housekeeping(replicas.clone(), &broker_config, stop_rx.clone());
        lifecycle = Some(broker_lifecycle);
        // Tests and scripts wait for this line.
        println!(
            "Sluice is serving Kafka on {} (node {node_id}, data in {})",
            serving_on(&endpoints),
            log_dir.display()
        );
    } else if let Some(listener) = &controller_listener {
        println!(
            "Sluice controller {node_id} is serving the metadata quorum on {}:{} (data in {})",
            listener.host,
            listener.port,
            log_dir.display()
        );
    }

    wait_for_signal().await;
    info!("shutting down");
    if let Some(lifecycle) = &lifecycle {
        if settings.parse("controlled.shutdown.enable")? {
            lifecycle.controlled_shutdown(Duration::from_secs(30)).await;
        }
    }
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(replicas) = &replicas {
        replicas.close_all();
    }
    if let Some(controller) = &controller {
        controller.shutdown().await;
    }
    info!("stopped cleanly");
    Ok(())
}

/// A broker's Kafka listeners, bound, with the config and the endpoints
/// they advertise (the inter-broker listener's first).
pub(crate) struct BoundBroker {
    /// Each listener's name and socket.
    pub sockets: Vec<(String, TcpListener)>,
    /// Where the inter-broker listener is bound.
    pub bound: SocketAddr,
    pub endpoints: Vec<Endpoint>,
    pub config: BrokerConfig,
}

/// Binds each of the broker's `listeners` (the inter-broker one first) and
/// works out what each advertises: its entry in `advertised.listeners`
/// (matched by name), else its own address; port 0 advertises the port
/// bound, and host 0.0.0.0 advertises 127.0.0.1.
pub(crate) async fn bind_broker(
    settings: &Settings,
    node_id: i32,
    cluster_id: &str,
    log_dir: &Path,
    listeners: &[Listener],
) -> Result<BoundBroker> {
    let advertised_listeners = parse_listeners(settings.get("advertised.listeners"))?;
    let mut sockets = Vec::new();
    let mut endpoints = Vec::new();
    let mut bound_addresses = Vec::new();
    for listener in listeners {
        let advertised = advertised_listeners
            .iter()
            .find(|l| l.name == listener.name)
            .unwrap_or(listener);
        let bind = bind_address(listener)?;
        let socket = TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding the Kafka listener {} on {bind}", listener.name))?;
        let bound = socket.local_addr()?;
        endpoints.push(Endpoint {
            listener: listener.name.clone(),
            host: if advertised.host == "0.0.0.0" {
                "127.0.0.1".into()
            } else {
                advertised.host.clone()
            },
            port: if advertised.port == 0 {
                bound.port()
            } else {
                advertised.port
            },
        });
        sockets.push((listener.name.clone(), socket));
        bound_addresses.push(bound);
    }
    let (Some(first), Some(&bound)) = (endpoints.first(), bound_addresses.first()) else {
        bail!("a broker needs a listener that is not a controller listener");
    };
    let mut config = broker_config(settings, node_id, cluster_id, log_dir, bound)?;
    config.advertised_host = first.host.clone();
    config.advertised_port = first.port;
    Ok(BoundBroker {
        sockets,
        bound,
        endpoints,
        config,
    })
}

/// Serves each bound broker listener until `stop` turns true.
pub(crate) fn serve_listeners(
    sockets: Vec<(String, TcpListener)>,
    broker: &Arc<Broker>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    sockets
        .into_iter()
        .map(|(name, socket)| tokio::spawn(server::run(socket, name, broker.clone(), stop.clone())))
        .collect()
}

/// The advertised endpoints for the start-up line: the first as
/// "host:port" (tests and scripts read it), the others by name after it.
pub(crate) fn serving_on(endpoints: &[Endpoint]) -> String {
    let mut text = String::new();
    for (i, e) in endpoints.iter().enumerate() {
        if i == 0 {
            text = format!("{}:{}", e.host, e.port);
        } else {
            text.push_str(&format!(" and {} on {}:{}", e.listener, e.host, e.port));
        }
    }
    text
}

fn bind_address(listener: &Listener) -> Result<SocketAddr> {
    format!("{}:{}", listener.host, listener.port)
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(listener.host.as_str(), listener.port))
                .ok()
                .and_then(|mut a| a.next())
                .context("cannot resolve the listener's host")
        })
}

/// The first of `log.dirs`: where the node keeps its data.
pub(crate) fn log_dir(settings: &Settings) -> PathBuf {
    PathBuf::from(
        settings
            .get("log.dirs")
            .split(',')
            .next()
            .unwrap_or("./sluice-data"),
    )
}

pub(crate) fn log_config(settings: &Settings) -> Result<LogConfig> {
    let policy = settings.get("log.cleanup.policy");
    let (cleanup_delete, cleanup_compact) = sluice_broker::replica::cleanup_policy(policy)
        .with_context(|| {
            format!("setting log.cleanup.policy = {policy:?}: expected delete, compact or both")
        })?;
    Ok(LogConfig {
        segment_bytes: settings.parse("log.segment.bytes")?,
        segment_ms: settings.parse("log.roll.ms")?,
        retention_ms: settings.retention_ms()?,
        retention_bytes: settings.parse("log.retention.bytes")?,
        max_message_bytes: settings.parse("message.max.bytes")?,
        index_interval_bytes: settings.parse("log.index.interval.bytes")?,
        flush_messages: settings.parse("log.flush.interval.messages")?,
        flush_ms: settings.flush_ms()?,
        cleanup_delete,
        cleanup_compact,
        delete_retention_ms: settings.parse("log.cleaner.delete.retention.ms")?,
        min_cleanable_dirty_ratio: settings.parse("log.cleaner.min.cleanable.ratio")?,
        min_compaction_lag_ms: settings.parse("log.cleaner.min.compaction.lag.ms")?,
        max_compaction_lag_ms: settings.parse("log.cleaner.max.compaction.lag.ms")?,
    })
}

fn controller_config(
    settings: &Settings,
    node_id: i32,
    metadata_dir: &Path,
    voters: &[Voter],
) -> Result<ControllerConfig> {
    let mut config = ControllerConfig::standalone(
        node_id,
        metadata_dir.to_path_buf(),
        topic_defaults(settings)?,
    );
    config.voters = voters.iter().map(|v| (v.id, v.address())).collect();
    config.snapshot_every_entries = settings.parse("metadata.snapshot.max.records")?;
    config.snapshot_interval =
        Duration::from_millis(settings.parse("metadata.log.max.snapshot.interval.ms")?);
    config.election_timeout =
        Duration::from_millis(settings.parse("controller.quorum.election.timeout.ms")?);
    config.broker_session_timeout =
        Duration::from_millis(settings.parse("broker.session.timeout.ms")?);
    config.unclean_leader_election = settings.parse("unclean.leader.election.enable")?;
    config.auto_leader_rebalance = settings.parse("auto.leader.rebalance.enable")?;
    config.leader_imbalance_check_interval =
        Duration::from_secs(settings.parse("leader.imbalance.check.interval.seconds")?);
    config.offsets_retention =
        Duration::from_secs(60 * settings.parse::<u64>("offsets.retention.minutes")?);
    config.offsets_retention_check_interval =
        Duration::from_millis(settings.parse("offsets.retention.check.interval.ms")?);
    Ok(config)
}

/// What a topic created without counts gets.
pub(crate) fn topic_defaults(settings: &Settings) -> Result<TopicDefaults> {
    Ok(TopicDefaults {
        num_partitions: settings.parse("num.partitions")?,
        replication_factor: settings.parse("default.replication.factor")?,
    })
}

pub(crate) fn group_config(settings: &Settings) -> Result<GroupConfig> {
    Ok(GroupConfig {
        initial_rebalance_delay: Duration::from_millis(
            settings.parse("group.initial.rebalance.delay.ms")?,
        ),
        min_session_timeout: Duration::from_millis(settings.parse("group.min.session.timeout.ms")?),
        max_session_timeout: Duration::from_millis(settings.parse("group.max.session.timeout.ms")?),
        offset_metadata_max_bytes: settings.parse("offset.metadata.max.bytes")?,
    })
}

fn broker_config(
    settings: &Settings,
    node_id: i32,
    cluster_id: &str,
    log_dir: &Path,
    bind: SocketAddr,
) -> Result<BrokerConfig> {
    let log_defaults = log_config(settings)?;
    let mut config = BrokerConfig::for_dev(log_dir.to_path_buf(), bind);
    config.node_id = node_id;
    config.cluster_id = cluster_id.to_string();
    config.auto_create_topics = settings.parse("auto.create.topics.enable")?;
    config.num_partitions = settings.parse("num.partitions")?;
    config.default_replication_factor = settings.parse("default.replication.factor")?;
    config.min_insync_replicas = settings.parse("min.insync.replicas")?;
    config.log = log_defaults.clone();
    config.socket_request_max_bytes = settings.parse("socket.request.max.bytes")?;
    config.max_connections = settings.parse("max.connections")?;
    config.queued_max_request_bytes = settings.parse("queued.max.request.bytes")?;
    if config.queued_max_request_bytes == 0 || config.queued_max_request_bytes < -1 {
        bail!("queued.max.request.bytes must be positive, or -1 for no bound");
    }
    config.fetch_max_bytes = settings.parse("fetch.max.bytes")?;
    if config.fetch_max_bytes < 1 {
        bail!("fetch.max.bytes must be positive");
    }
    config.retention_check_interval =
        Duration::from_millis(settings.parse("log.retention.check.interval.ms")?);
    config.log_cleaner_enable = settings.parse("log.cleaner.enable")?;
    config.log_cleaner_backoff = Duration::from_millis(settings.parse("log.cleaner.backoff.ms")?);
    config.checkpoint_interval =
        Duration::from_millis(settings.parse("replica.high.watermark.checkpoint.interval.ms")?);
    // Kafka's default is Long.MAX ("never"); a timer needs a period it can add
    // to the clock.
    config.flush_check_interval = Duration::from_millis(
        settings
            .parse::<u64>("log.flush.scheduler.interval.ms")?
            .clamp(1, 365 * 24 * 3_600_000),
    );
    config.replica_lag_time_max = Duration::from_millis(settings.parse("replica.lag.time.max.ms")?);
    config.replica_fetch_wait_max =
        Duration::from_millis(settings.parse("replica.fetch.wait.max.ms")?);
    config.replica_fetch_min_bytes = settings.parse("replica.fetch.min.bytes")?;
    config.replica_socket_timeout =
        Duration::from_millis(settings.parse("replica.socket.timeout.ms")?);
    config.replica_fetch_max_bytes = settings.parse("replica.fetch.max.bytes")?;
    config.replica_fetch_response_max_bytes = settings.parse("replica.fetch.response.max.bytes")?;
    config.replica_fetch_backoff =
        Duration::from_millis(settings.parse("replica.fetch.backoff.ms")?);
    config.settings = settings.described();
    // Topics see the retention in force, whichever of Kafka's spellings set it.
    let retention_set = [
        "log.retention.ms",
        "log.retention.minutes",
        "log.retention.hours",
    ]
    .iter()
    .any(|k| {
        config
            .settings
            .get(*k)
            .is_some_and(|(_, explicit)| *explicit)
    });
    config.settings.insert(
        "log.retention.ms".into(),
        (log_defaults.retention_ms.to_string(), retention_set),
    );
    Ok(config)
}

/// Reads `meta.properties`, or writes it on first start: the cluster id and
/// the node id this directory belongs to.
pub(crate) fn load_or_create_identity(
    log_dir: &Path,
    node_id: i32,
    wanted_cluster_id: Option<String>,
) -> Result<String> {
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
        let stored =
            get("cluster.id").with_context(|| format!("{} has no cluster.id", path.display()))?;
        if let Some(wanted) = wanted_cluster_id.filter(|w| *w != stored) {
            bail!(
                "{} belongs to cluster {stored}, but controller.quorum.voters describes cluster {wanted}",
                path.display()
            );
        }
        return Ok(stored);
    }
    // Kafka cluster ids are base64url-encoded UUIDs; a plain UUID string is
    // accepted by every client and easier to read.
    let cluster_id = wanted_cluster_id.unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    let text = format!("version=1\ncluster.id={cluster_id}\nnode.id={node_id}\n");
    // Durable before anything is written under this identity: a marker that
    // comes back empty after a power loss would stop the node from starting.
    sluice_storage::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(cluster_id)
}

/// Raises the soft limit on open files to the hard limit, as Kafka's
/// packaging does, and gives three quarters of it to segment and index
/// files: more of those than that are closed while idle and opened again
/// on use (see `sluice_storage::open_files`), so a broker may host more
/// partitions than it may open files. The rest is for connections.
pub(crate) fn raise_open_file_limit() {
    let limit = raised_open_file_limit();
    let files = limit.map_or(1024, |l| l - l / 4) as usize;
    sluice_storage::open_files::set_budget(files);
    info!(limit, segment_files = files, "open-file limit");
}

fn raised_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
            return None;
        }
        let soft = limit.rlim_cur;
        if soft >= limit.rlim_max {
            return Some(soft);
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            warn!(soft, error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
            return Some(soft);
        }
        info!(
            from = soft,
            to = limit.rlim_max,
            "raised the open-file limit"
        );
        Some(limit.rlim_max)
    }
}

pub(crate) fn install_metrics(listen: &str) -> Result<()> {
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

pub(crate) fn spawn_housekeeping(
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
    let r = replicas.clone();
    spawn_periodic(
        "flush",
        config.flush_check_interval,
        stop.clone(),
        move || r.flush_due_logs(),
    );
    if config.log_cleaner_enable {
        // Compaction reads and writes whole segments: on the blocking pool,
        // with each partition's lock held only to plan and to swap.
        let r = replicas.clone();
        spawn_periodic(
            "cleaner",
            config.log_cleaner_backoff,
            stop.clone(),
            move || r.clean_logs(),
        );
    }
    spawn_periodic("checkpoint", config.checkpoint_interval, stop, move || {
        replicas.checkpoint();
        replicas.retry_offline();
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

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        // Started with SIGINT ignored (by `sluice cluster up`, or nohup):
        // leave it so, and stop on SIGTERM alone.
        let ctrl_c = async {
            if interrupt_ignored() {
                std::future::pending::<()>().await;
            }
            let _ = tokio::signal::ctrl_c().await;
        };
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Whether this process's SIGINT disposition is "ignore" (as inherited
/// across exec), before anything here installs a handler for it.
#[cfg(unix)]
fn interrupt_ignored() -> bool {
    use std::sync::OnceLock;
    static IGNORED: OnceLock<bool> = OnceLock::new();
    *IGNORED.get_or_init(|| {
        // SAFETY: sigaction(2) with a null new action only reads the
        // current one into `current`, a zeroed, owned struct.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGINT, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
        }
    })
}
