//! A cluster of one mode under test: started, filled with partitions, and
//! probed the way a client sees it (Metadata answers, acknowledged writes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::create_topics_request::{CreatableReplicaAssignment, CreatableTopic};
use kafka_protocol::messages::{BrokerId, CreateTopicsRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_report::Mode;

use crate::cluster::{describe_quorum, Coordination, LocalCluster, Spec, ZK_CHROOT};

/// Partitions per topic the experiment creates, as the scenario has it.
pub const TOPIC_PARTITIONS: u32 = 100;
/// Topics per CreateTopics request.
const TOPICS_PER_REQUEST: usize = 10;
/// Brokers that hold partitions; in ZooKeeper mode one more broker, hosting
/// none, is the controller, so killing it is a controller failure only.
pub const DATA_BROKERS: u16 = 3;
/// The ZooKeeper-mode broker that is the controller.
pub const CONTROLLER_BROKER: u16 = DATA_BROKERS + 1;
const TOPIC_PREFIX: &str = "compare-";

/// How often probes ask again.
const POLL: Duration = Duration::from_millis(100);

/// Where and how a bed's cluster runs.
#[derive(Clone, Debug)]
pub struct Layout {
    pub port: u16,
    /// The first broker's metrics port (controllers' from this plus 100).
    pub metrics_port: u16,
    pub zk_port: u16,
    pub replication_factor: i16,
    /// Settings both modes get (printed in the report).
    pub common: Vec<String>,
}

/// The state of one partition as one broker's Metadata answer shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub leader: i32,
    pub preferred: i32,
    pub isr: usize,
    pub replicas: usize,
}

pub type Partition = (String, i32);

pub struct Bed {
    pub mode: Mode,
    pub cluster: LocalCluster,
    pub partitions: u32,
    pub replication_factor: i16,
}

impl Bed {
    /// Starts a cluster of `mode` in `dir` and waits until it serves; in
    /// ZooKeeper mode it makes the partition-less broker the controller.
    pub async fn launch(mode: Mode, layout: &Layout, dir: &Path) -> Result<Self> {
        let coordination = match mode {
            Mode::Kraft => Coordination::KRaft { controllers: 3 },
            Mode::Zk => Coordination::ZooKeeper {
                servers: 3,
                first_port: layout.zk_port,
            },
        };
        let brokers = match mode {
            Mode::Kraft => DATA_BROKERS,
            Mode::Zk => DATA_BROKERS + 1,
        };
        let mut cluster = LocalCluster::launch(&Spec {
            coordination,
            brokers,
            dir: dir.to_path_buf(),
            port: layout.port,
            metrics_port: Some(layout.metrics_port),
            overrides: layout.common.clone(),
        })?;
        // A broker at 100,000 partitions takes about 1.5 min to close its
        // logs; killing it sooner would cut short the controlled shutdown
        // being timed, and make the next start-up a recovery.
        cluster.exit_limit = Duration::from_secs(600);
        let mut bed = Bed {
            mode,
            cluster,
            partitions: 0,
            replication_factor: layout.replication_factor,
        };
        bed.cluster.wait_serving(Duration::from_secs(180)).await?;
        bed.claim_controller().await?;
        Ok(bed)
    }

    pub fn data_brokers(&self) -> Vec<u16> {
        (1..=DATA_BROKERS).collect()
    }

    pub fn address(&self, id: u16) -> String {
        self.cluster
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.address.clone())
            .unwrap_or_default()
    }

    /// Every broker's address, but `except`.
    pub fn brokers_but(&self, except: Option<u16>) -> Vec<String> {
        self.cluster
            .nodes
            .iter()
            .filter(|n| n.role == "broker" && Some(n.id) != except)
            .map(|n| n.address.clone())
            .collect()
    }

    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap()
    }

    pub fn topics(&self) -> Vec<String> {
        (0..self.partitions.div_ceil(TOPIC_PARTITIONS))
            .map(|t| format!("{TOPIC_PREFIX}{t:05}"))
            .collect()
    }

    pub fn all_partitions(&self) -> Vec<Partition> {
        let mut all = Vec::with_capacity(self.partitions as usize);
        for (t, topic) in self.topics().into_iter().enumerate() {
            let first = t as u32 * TOPIC_PARTITIONS;
            let count = TOPIC_PARTITIONS.min(self.partitions - first);
            all.extend((0..count as i32).map(|p| (topic.clone(), p)));
        }
        all
    }

    /// Replicas of partition `index` (counted over the whole experiment),
    /// spread over the data brokers as Kafka's placement does: leaders
    /// round-robin, followers next in turn.
    fn replicas(&self, index: u32, replication_factor: i16) -> Vec<i32> {
        let brokers = DATA_BROKERS as u32;
        (0..replication_factor as u32)
            .map(|r| (1 + (index + r) % brokers) as i32)
            .collect()
    }

    /// A topic of `count` partitions placed on the data brokers, its
    /// partitions numbered from `first` in the placement.
    fn placed_topic(&self, name: &str, first: u32, count: u32, rf: i16) -> CreatableTopic {
        let assignments = (0..count)
            .map(|p| {
                CreatableReplicaAssignment::default()
                    .with_partition_index(p as i32)
                    .with_broker_ids(
                        self.replicas(first + p, rf)
                            .into_iter()
                            .map(BrokerId)
                            .collect(),
                    )
            })
            .collect();
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(assignments)
    }

    /// Creates `partitions` partitions in topics of [`TOPIC_PARTITIONS`],
    /// placed on the data brokers.
    pub async fn create_partitions(&mut self, partitions: u32) -> Result<()> {
        self.partitions = partitions;
        let topics: Vec<CreatableTopic> = self
            .topics()
            .into_iter()
            .enumerate()
            .map(|(t, name)| {
                let first = t as u32 * TOPIC_PARTITIONS;
                let count = TOPIC_PARTITIONS.min(partitions - first);
                self.placed_topic(&name, first, count, self.replication_factor)
            })
            .collect();
        let address = self.address(1);
        for chunk in topics.chunks(TOPICS_PER_REQUEST) {
            create_topics(&address, chunk.to_vec(), false).await?;
        }
        Ok(())
    }

    /// A topic on the data brokers, outside the experiment's partitions,
    /// waited for until every broker knows its leaders.
    pub async fn create_topic_on_data_brokers(&self, name: &str, partitions: u32) -> Result<()> {
        let topic = self.placed_topic(name, 0, partitions, self.replication_factor);
        create_topics(&self.address(1), vec![topic], false).await?;
        let all: Vec<Partition> = (0..partitions as i32)
            .map(|p| (name.to_string(), p))
            .collect();
        self.wait_for_leaders(
            &self.brokers_but(None),
            &all,
            None,
            Duration::from_secs(120),
        )
        .await
    }

    /// A one-partition topic on the data brokers, created as soon as a
    /// controller takes it (retrying while none does).
    pub async fn create_probe_topic(&self, name: &str, limit: Duration) -> Result<()> {
        let topic = self.placed_topic(name, 0, 1, self.replication_factor.min(2));
        let deadline = Instant::now() + limit;
        let addresses = self.brokers_but(None);
        loop {
            for address in &addresses {
                if create_topics(address, vec![topic.clone()], true)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("no controller created {name} within {limit:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every broker in `addresses` answers Metadata with a live
    /// leader for every partition in `partitions`, none of them `not`.
    pub async fn wait_for_leaders(
        &self,
        addresses: &[String],
        partitions: &[Partition],
        not: Option<i32>,
        limit: Duration,
    ) -> Result<()> {
        let topics: BTreeSet<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
        let deadline = Instant::now() + limit;
        let mut pending: Vec<&String> = addresses.iter().collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for address in pending {
                let ready = match partition_states(address, &topics).await {
                    Ok(seen) => partitions.iter().all(|key| {
                        seen.get(key)
                            .is_some_and(|s| s.leader >= 0 && Some(s.leader) != not)
                    }),
                    Err(_) => false,
                };
                if !ready {
                    still.push(address);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not show leaders for all {} partitions within {limit:?}",
                    pending
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    partitions.len()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Waits until every partition is led by its preferred replica with a
    /// full ISR, as broker 1 sees it: the cluster is back to its placement.
    pub async fn wait_balanced(&self, limit: Duration) -> Result<()> {
        let topics_owned = self.topics();
        let topics: BTreeSet<&str> = topics_owned.iter().map(String::as_str).collect();
        let address = self.address(1);
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(seen) = partition_states(&address, &topics).await {
                let balanced = seen.len() == self.partitions as usize
                    && seen
                        .values()
                        .all(|s| s.leader == s.preferred && s.isr == s.replicas);
                if balanced {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the partitions did not go back to their preferred leaders within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The partitions broker `id` leads, as broker 1 (or another) sees them.
    pub async fn led_by(&self, id: u16) -> Result<Vec<Partition>> {
        let topics_owned = self.topics();
        let topics: BTreeSet<&str> = topics_owned.iter().map(String::as_str).collect();
        let address = self
            .brokers_but(Some(id))
            .into_iter()
            .next()
            .unwrap_or_default();
        let seen = partition_states(&address, &topics).await?;
        Ok(seen
            .into_iter()
            .filter(|(_, s)| s.leader == id as i32)
            .map(|(key, _)| key)
            .collect())
    }

    /// The node acting as controller: the Raft leader in KRaft mode, the
    /// broker holding `/controller` in ZooKeeper mode, with its epoch.
    pub async fn active_controller(&self) -> Result<(u16, i64)> {
        match self.mode {
            Mode::Zk => {
                let connect = self.zookeeper_connect()?;
                let view =
                    sluice_zk::inspect::read_cluster(&connect, Duration::from_secs(10)).await?;
                let id = view.controller.context("no broker holds /controller")?;
                Ok((id as u16, view.controller_epoch.unwrap_or(0) as i64))
            }
            Mode::Kraft => {
                let addresses: Vec<String> = self
                    .cluster
                    .controller_addresses()
                    .into_iter()
                    .map(|(_, address)| address)
                    .collect();
                self.quorum_leader(&addresses)
                    .await
                    .context("no controller knows the quorum leader")
            }
        }
    }

    /// The Raft leader and its epoch as the controllers at `addresses` see it.
    pub async fn quorum_leader(&self, addresses: &[String]) -> Option<(u16, i64)> {
        let quorum = describe_quorum(addresses).await?;
        let partition = quorum.topics.first()?.partitions.first()?;
        (partition.leader_id.0 >= 0)
            .then_some((partition.leader_id.0 as u16, partition.leader_epoch as i64))
    }

    pub fn zookeeper_connect(&self) -> Result<String> {
        self.cluster
            .zookeeper_connect
            .clone()
            .context("a ZooKeeper-mode cluster has a connect string")
    }

    /// In ZooKeeper mode, makes [`CONTROLLER_BROKER`] the controller: the
    /// data brokers are paused (well within their session timeout) while
    /// `/controller` is deleted, so only it races for it. A no-op in KRaft
    /// mode.
    pub async fn claim_controller(&mut self) -> Result<()> {
        if self.mode != Mode::Zk {
            return Ok(());
        }
        let connect = self.zookeeper_connect()?;
        for _ in 0..10 {
            let view = sluice_zk::inspect::read_cluster(&connect, Duration::from_secs(10)).await?;
            if view.controller == Some(CONTROLLER_BROKER as i32) {
                return Ok(());
            }
            for id in self.data_brokers() {
                self.cluster.pause(id)?;
            }
            let moved = async {
                if view.controller.is_some() {
                    sluice_zk::inspect::delete_controller(&connect, Duration::from_secs(10))
                        .await?;
                }
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    let now =
                        sluice_zk::inspect::read_cluster(&connect, Duration::from_secs(10)).await?;
                    if now.controller.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::Ok(())
            }
            .await;
            for id in self.data_brokers() {
                self.cluster.resume(id)?;
            }
            moved?;
        }
        bail!("broker {CONTROLLER_BROKER} did not become the controller (chroot {ZK_CHROOT})")
    }

    /// Counts lines containing `marker` in each node's log, by node id.
    pub fn log_lines(&self, marker: &str) -> BTreeMap<u16, usize> {
        self.cluster
            .nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                (n.id, text.matches(marker).count())
            })
            .collect()
    }
}

/// Sends one CreateTopics request; every topic must be created (or, with
/// `existing_ok`, for a retry whose first answer was lost, exist already).
async fn create_topics(
    address: &str,
    topics: Vec<CreatableTopic>,
    existing_ok: bool,
) -> Result<()> {
    let mut client = crate::client::connect(address).await?;
    client.set_request_timeout(Duration::from_secs(300));
    let response = client
        .send(
            CreateTopicsRequest::default()
                .with_topics(topics)
                .with_timeout_ms(300_000),
        )
        .await?;
    for t in response.topics {
        let exists = t.error_code == ResponseError::TopicAlreadyExists.code();
        if t.error_code != 0 && !(existing_ok && exists) {
            bail!(
                "creating {}: error {} {:?}",
                t.name.0,
                t.error_code,
                t.error_message
            );
        }
    }
    Ok(())
}

/// Each partition of `topics` as the broker at `address` answers Metadata.
pub async fn partition_states(
    address: &str,
    topics: &BTreeSet<&str>,
) -> Result<BTreeMap<Partition, Seen>> {
    let mut client = crate::client::connect(address).await?;
    client.set_request_timeout(Duration::from_secs(30));
    let response = client
        .send(MetadataRequest::default().with_topics(None))
        .await?;
    let mut seen = BTreeMap::new();
    for topic in response.topics {
        let Some(name) = topic.name else { continue };
        if !topics.contains(name.0.as_str()) {
            continue;
        }
        for p in topic.partitions {
            seen.insert(
                (name.0.to_string(), p.partition_index),
                Seen {
                    leader: p.leader_id.0,
                    preferred: p.replica_nodes.first().map_or(-1, |b| b.0),
                    isr: p.isr_nodes.len(),
                    replicas: p.replica_nodes.len(),
                },
            );
        }
    }
    Ok(seen)
}

/// What the coordination store has done so far, from the nodes' own
/// counters: in ZooKeeper mode each server's `mntr` (reads, writes and
/// watches fired); in KRaft mode the metadata-log entries and bytes each
/// controller proposed and saw committed. By node, since a restarted node
/// counts from zero again.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    by_node: BTreeMap<String, Work>,
}

/// One node's share of the coordination work.
#[derive(Clone, Copy, Debug, Default)]
pub struct Work {
    pub reads: f64,
    pub writes: f64,
    pub watches: f64,
    pub log_bytes: f64,
}

impl Counters {
    /// The work done between `before` and `self`, over every node. A node
    /// whose counters went down restarted in between: all it counts is new.
    pub fn since(&self, before: &Counters) -> Work {
        let mut total = Work::default();
        for (node, after) in &self.by_node {
            let earlier = before.by_node.get(node).copied().unwrap_or_default();
            let restarted = after.reads < earlier.reads
                || after.writes < earlier.writes
                || after.watches < earlier.watches
                || after.log_bytes < earlier.log_bytes;
            let base = if restarted { Work::default() } else { earlier };
            total.reads += after.reads - base.reads;
            total.writes += after.writes - base.writes;
            total.watches += after.watches - base.watches;
            total.log_bytes += after.log_bytes - base.log_bytes;
        }
        total
    }
}

/// `mntr` summaries of the watches a server fired, by kind.
const WATCHES_FIRED: &[&str] = &[
    "zk_sum_node_created_watch_count",
    "zk_sum_node_deleted_watch_count",
    "zk_sum_node_changed_watch_count",
    "zk_sum_node_children_watch_count",
];

impl Bed {
    pub async fn counters(&self) -> Counters {
        let sources: Vec<String> = match self.mode {
            Mode::Zk => self
                .cluster
                .zookeeper
                .iter()
                .flat_map(|z| z.servers.iter().map(|s| s.client_address()))
                .collect(),
            Mode::Kraft => self
                .cluster
                .nodes
                .iter()
                .filter(|n| n.role == "controller")
                .filter_map(|n| n.metrics.clone())
                .collect(),
        };
        let mode = self.mode;
        let by_node = tokio::task::spawn_blocking(move || {
            sources
                .into_iter()
                .filter_map(|address| {
                    let work = match mode {
                        Mode::Zk => {
                            let server =
                                crate::zk_ensemble::mntr(&address, Duration::from_secs(5)).ok()?;
                            let get = |name: &str| server.get(name).copied().unwrap_or(0.0);
                            Work {
                                reads: get("zk_cnt_readlatency"),
                                writes: get("zk_cnt_updatelatency"),
                                watches: WATCHES_FIRED.iter().map(|n| get(n)).sum(),
                                log_bytes: 0.0,
                            }
                        }
                        Mode::Kraft => {
                            let scraped = scrape(&address).ok()?;
                            let get = |name: &str| scraped.get(name).copied().unwrap_or(0.0);
                            Work {
                                writes: get("sluice_quorum_committed_proposals_total"),
                                log_bytes: get("sluice_quorum_committed_proposal_bytes_total"),
                                ..Work::default()
                            }
                        }
                    };
                    Some((address, work))
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        Counters { by_node }
    }
}

/// A node's Prometheus metrics, summed over labels, by name.
fn scrape(address: &str) -> Result<BTreeMap<String, f64>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let mut metrics = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        if let Ok(value) = value.parse::<f64>() {
            *metrics.entry(name.to_string()).or_insert(0.0) += value;
        }
    }
    Ok(metrics)
}
