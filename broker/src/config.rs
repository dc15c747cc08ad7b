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
    /// `queued.max.request.bytes`: the memory requests and fetched data in
    /// flight may hold together; -1 for no bound (Kafka's default, not ours).
    pub queued_max_request_bytes: i64,
    /// `fetch.max.bytes`: the most one fetch response carries, whatever the
    /// client asks (the first batch excepted, as in Kafka).
    pub fetch_max_bytes: i32,
    /// `log.retention.check.interval.ms`
    pub retention_check_interval: Duration,
    /// `log.cleaner.enable`: run the log cleaner for compacted topics.
    pub log_cleaner_enable: bool,
    /// `log.cleaner.backoff.ms`: pause between cleaner passes.
    pub log_cleaner_backoff: Duration,
    /// `replica.high.watermark.checkpoint.interval.ms`
    pub checkpoint_interval: Duration,
    /// `log.flush.scheduler.interval.ms`: how often `flush.ms` is checked.
    pub flush_check_interval: Duration,
    /// `replica.lag.time.max.ms`: a follower that has not caught up for this
    /// long leaves the ISR; the leader checks every half of it.
    pub replica_lag_time_max: Duration,
    /// `replica.fetch.wait.max.ms`: how long a follower's fetch may wait at the leader.
    pub replica_fetch_wait_max: Duration,
    /// `replica.fetch.min.bytes`
    pub replica_fetch_min_bytes: i32,
    /// `replica.fetch.max.bytes`: per partition in one follower fetch.
    pub replica_fetch_max_bytes: i32,
    /// `replica.fetch.response.max.bytes`: the whole follower fetch response.
    pub replica_fetch_response_max_bytes: i32,
    /// `replica.fetch.backoff.ms`: the pause after a fetch error.
    pub replica_fetch_backoff: Duration,
    /// `replica.socket.timeout.ms`: how long a follower waits for the leader's answer.
    pub replica_socket_timeout: Duration,
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
            queued_max_request_bytes: 268_435_456,
            fetch_max_bytes: 57_671_680,
            retention_check_interval: Duration::from_secs(300),
            log_cleaner_enable: true,
            log_cleaner_backoff: Duration::from_millis(15_000),
            checkpoint_interval: Duration::from_secs(5),
            flush_check_interval: Duration::from_secs(1),
            replica_lag_time_max: Duration::from_millis(30_000),
            replica_fetch_wait_max: Duration::from_millis(500),
            replica_fetch_min_bytes: 1,
            replica_fetch_max_bytes: 1_048_576,
            replica_fetch_response_max_bytes: 10_485_760,
            replica_fetch_backoff: Duration::from_millis(1_000),
            replica_socket_timeout: Duration::from_millis(30_000),
            settings: BTreeMap::new(),
        }
    }
}
