//! The broker's settings, named as in Apache Kafka where Kafka has the setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sluice_storage::LogConfig;

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub cluster_id: String,
    /// Where the Kafka listener binds (`listeners`).
    pub listen: SocketAddr,
    /// Host and port clients are told to use (`advertised.listeners`); port 0
    /// means the port actually bound.
    pub advertised_host: String,
    pub advertised_port: u16,
    /// `log.dirs` (one directory).
    pub log_dir: PathBuf,
    /// `auto.create.topics.enable`
    pub auto_create_topics: bool,
    /// `num.partitions`, used for auto-created topics.
    pub num_partitions: i32,
    /// `default.replication.factor`
    pub default_replication_factor: i16,
    /// `min.insync.replicas`
    pub min_insync_replicas: i32,
    /// Log settings every topic starts from (`log.segment.bytes`, `log.retention.ms`, ...).
    pub log: LogConfig,
    /// `socket.request.max.bytes`: larger frames close the connection.
    pub socket_request_max_bytes: usize,
    /// `max.connections`
    pub max_connections: usize,
    /// `log.retention.check.interval.ms`
    pub retention_check_interval: Duration,
    /// `replica.high.watermark.checkpoint.interval.ms`
    pub checkpoint_interval: Duration,
    /// Every broker setting in force, for DescribeConfigs: name -> (value, set explicitly).
    pub settings: BTreeMap<String, (String, bool)>,
}

impl BrokerConfig {
    /// A development broker on 127.0.0.1 with Kafka's defaults.
    pub fn for_dev(log_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            node_id: 1,
            cluster_id: "sluice-dev".into(),
            listen,
            advertised_host: listen.ip().to_string(),
            advertised_port: listen.port(),
            log_dir,
            auto_create_topics: true,
            num_partitions: 1,
            default_replication_factor: 1,
            min_insync_replicas: 1,
            log: LogConfig::default(),
            socket_request_max_bytes: 104_857_600,
            max_connections: 10_000,
            retention_check_interval: Duration::from_secs(300),
            checkpoint_interval: Duration::from_secs(5),
            settings: BTreeMap::new(),
        }
    }
}
