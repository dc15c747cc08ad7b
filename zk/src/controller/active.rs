//! What the controller does while it holds `/controller`: reload the
//! cluster, then handle watch events and controlled shutdowns one at a
//! time, writing ZooKeeper only through multi-ops guarded by the epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use sluice_metadata::{
    BrokerRecord, MetadataRecord, PartitionRecord, RemoveTopicRecord, TopicRecord, Uuid,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use zookeeper_client as zk;

use super::channels::BrokerChannel;
use super::context::Context;
use super::{changed, stopped, ShutdownRequest, Signals, ZkControllerConfig};
use crate::connect::{persistent, pipelined};
use crate::znodes::{
    broker_path, partition_state_path, topic_path, BrokerZnode, PartitionStateZnode,
    TopicAssignment, TopicZnode, BROKER_IDS, CONTROLLER, CONTROLLER_EPOCH, DELETE_TOPICS,
    ISR_CHANGES, TOPICS,
};

mod events;
mod states;

/// Partitions per multi-op: far below ZooKeeper's 1 MB request limit.
const BATCH: usize = 100;
/// Rounds of re-reading and re-planning after conditional writes lost a race.
const MAX_ATTEMPTS: usize = 10;

pub(super) enum Outcome {
    Stop,
    NewSession,
    /// The epoch check failed, or `/controller` is no longer this session's.
    Deposed,
    Failed(zk::Error),
}

#[derive(Debug)]
pub(super) enum ActError {
    Deposed,
    Zk(zk::Error),
}

impl From<zk::Error> for ActError {
    fn from(e: zk::Error) -> Self {
        ActError::Zk(e)
    }
}

/// A watch that fired: what to read again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Event {
    Controller,
    Brokers,
    Topics,
    Topic(String),
    DeleteTopics,
    IsrChanges,
}

/// One write inside an epoch-guarded multi-op.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Create(String, Vec<u8>),
    /// Conditional on the znode's data version.
    Set(String, Vec<u8>, i32),
    Delete(String),
}

/// Commits `ops` in one multi-op that first checks `/controller_epoch` is
/// still at `epoch_version`. The outer error ends this controller's term;
/// the inner one is a lost race on one of `ops` (a version or existence
/// check), after which the caller reads again.
pub(super) async fn guarded_write(
    client: &zk::Client,
    epoch_version: i32,
    ops: &[Op],
) -> Result<Result<Vec<zk::MultiWriteResult>, zk::Error>, ActError> {
    let mut multi = client.new_multi_writer();
    multi.add_check_version(CONTROLLER_EPOCH, epoch_version)?;
    for op in ops {
        match op {
            Op::Create(path, data) => multi.add_create(path, data, &persistent())?,
            Op::Set(path, data, version) => multi.add_set_data(path, data, Some(*version))?,
            Op::Delete(path) => multi.add_delete(path, None)?,
        }
    }
    match multi.commit().await {
        Ok(mut results) => {
            results.remove(0);
            Ok(Ok(results))
        }
        Err(zk::MultiWriteError::OperationFailed { index: 0, source }) => {
            warn!(error = %source, "the controller epoch moved: this controller is deposed");
            metrics::counter!("sluice_zk_controller_deposed_total").increment(1);
            Err(ActError::Deposed)
        }
        Err(zk::MultiWriteError::OperationFailed {
            source:
                e @ (zk::Error::BadVersion
                | zk::Error::NoNode
                | zk::Error::NodeExists
                | zk::Error::NotEmpty),
            ..
        }) => Ok(Err(e)),
        Err(e) => Err(ActError::Zk(e.into())),
    }
}

pub(super) struct Active {
    client: zk::Client,
    node_id: i32,
    epoch: i32,
    epoch_version: i32,
    unclean_default: bool,
    socket_timeout: Duration,
    /// How often leadership is moved back to preferred replicas (None: never).
    rebalance_every: Option<Duration>,
    ctx: Context,
    channels: HashMap<i32, BrokerChannel>,
    /// Topics whose assignment znode does not parse (logged once each).
    bad_topics: BTreeSet<String>,
    events: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    watches: JoinSet<()>,
    /// Events with a watch set and not yet fired.
    armed: HashSet<Event>,
}

enum Next {
    Stop,
    NewSession,
    Request(ShutdownRequest),
    Event(Event),
    Rebalance,
}

type ReadResult = Result<(Vec<u8>, zk::Stat), zk::Error>;

impl Active {
    pub fn new(
        client: zk::Client,
        node_id: i32,
        epoch: i32,
        epoch_version: i32,
        config: &ZkControllerConfig,
    ) -> Self {
        let (events, events_rx) = mpsc::unbounded_channel();
        Self {
            client,
            node_id,
            epoch,
            epoch_version,
            unclean_default: config.unclean_leader_election,
            socket_timeout: config.controller_socket_timeout,
            rebalance_every: config
                .auto_leader_rebalance
                .then_some(config.leader_imbalance_check_interval),
            ctx: Context::default(),
            channels: HashMap::new(),
            bad_topics: BTreeSet::new(),
            events,
            events_rx,
            watches: JoinSet::new(),
            armed: HashSet::new(),
        }
    }

    pub async fn run(mut self, signals: &mut Signals) -> Outcome {
        metrics::gauge!("sluice_zk_controller_active").set(1.0);
        metrics::gauge!("sluice_zk_controller_epoch").set(self.epoch as f64);
        let outcome = self.act(signals).await;
        metrics::gauge!("sluice_zk_controller_active").set(0.0);
        outcome
    }

    async fn act(&mut self, signals: &mut Signals) -> Outcome {
        let reloaded = tokio::select! {
            r = self.reload() => r,
            _ = stopped(&mut signals.stop) => return Outcome::Stop,
            _ = changed(&mut signals.clients) => return Outcome::NewSession,
        };
        if let Err(e) = reloaded {
            return outcome(e);
        }
        let mut session = self.client.state_watcher();
        // The first check comes one interval after taking over, as Kafka's.
        let mut rebalance = self.rebalance_every.map(|every| {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            if self.client.state().is_terminated() {
                // An expired session must not act: everything it would
                // write is refused anyway, and its pushes stop here.
                return Outcome::Failed(zk::Error::SessionExpired);
            }
            let next = tokio::select! {
                _ = stopped(&mut signals.stop) => Next::Stop,
                _ = changed(&mut signals.clients) => Next::NewSession,
                _ = session.changed() => continue,
                Some(request) = signals.requests.recv() => Next::Request(request),
                Some(event) = self.events_rx.recv() => Next::Event(event),
                _ = next_tick(&mut rebalance) => Next::Rebalance,
            };
            let result = match next {
                Next::Stop => return Outcome::Stop,
                Next::NewSession => return Outcome::NewSession,
                Next::Request(request) => self.serve_shutdown(request).await,
                Next::Rebalance => self.rebalance_leaders().await,
                Next::Event(event) => {
                    self.armed.remove(&event);
                    self.handle(event).await
                }
            };
            if let Err(e) = result {
                return outcome(e);
            }
        }
    }

    async fn handle(&mut self, event: Event) -> Result<(), ActError> {
        match event {
            Event::Controller => self.check_controller().await,
            Event::Brokers => self.brokers_changed().await,
            Event::Topics => self.topics_changed().await,
            Event::Topic(topic) => self.topic_changed(&topic).await,
            Event::DeleteTopics => self.deletions_requested().await,
            Event::IsrChanges => self.isr_changed().await,
        }
    }

    // ---- watches and reads ----

    /// Waits for `watcher` on a task of its own and queues `event` when it fires.
    fn arm(&mut self, event: Event, watcher: zk::OneshotWatcher) {
        while self.watches.try_join_next().is_some() {}
        if !self.armed.insert(event.clone()) {
            // Already waiting for this znode: the earlier watch still fires.
            return;
        }
        let events = self.events.clone();
        self.watches.spawn(async move {
            watcher.changed().await;
            let _ = events.send(event);
        });
    }

    async fn watch_children(&mut self, path: &str, event: Event) -> Result<Vec<String>, ActError> {
        let (mut children, watcher) = self.client.list_and_watch_children(path).await?;
        self.arm(event, watcher);
        children.sort();
        Ok(children)
    }

    /// Reads znodes with at most [`crate::connect::MAX_IN_FLIGHT`] reads in flight.
    async fn read_many(&self, paths: Vec<String>) -> Vec<(String, ReadResult)> {
        let client = self.client.clone();
        pipelined(paths, move |path| {
            let read = client.get_data(&path);
            async move { (path, read.await) }
        })
        .await
    }

    /// This session must still hold `/controller`; watches it.
    async fn check_controller(&mut self) -> Result<(), ActError> {
        match self.client.get_and_watch_data(CONTROLLER).await {
            Ok((_, stat, watcher)) if stat.ephemeral_owner == self.client.session_id().0 => {
                self.arm(Event::Controller, watcher);
                Ok(())
            }
            Ok(_) | Err(zk::Error::NoNode) => {
                warn!(
                    node = self.node_id,
                    "/controller is no longer this broker's"
                );
                Err(ActError::Deposed)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The registered brokers (garbage registrations are logged and skipped).
    async fn read_brokers(&self, ids: Vec<String>) -> Result<Vec<BrokerRecord>, ActError> {
        let mut paths = Vec::new();
        for id in ids {
            match id.parse::<i32>() {
                Ok(id) => paths.push(broker_path(id)),
                Err(_) => warn!(path = %format!("{BROKER_IDS}/{id}"), "not a broker id; skipped"),
            }
        }
        let mut brokers = Vec::new();
        for (path, read) in self.read_many(paths).await {
            let (data, stat) = match read {
                Ok(read) => read,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(e.into()),
            };
            let parsed = BrokerZnode::decode(&path, &data)
                .and_then(|znode| Ok((znode.parsed_endpoints(&path)?, znode.rack)));
            let broker_id = path
                .rsplit('/')
                .next()
                .and_then(|id| id.parse().ok())
                .unwrap_or(-1);
            match parsed {
                Ok((endpoints, rack)) => brokers.push(BrokerRecord {
                    broker_id,
                    incarnation_id: Uuid::nil(),
                    broker_epoch: stat.czxid,
                    endpoints,
                    rack,
                    fenced: false,
                }),
                Err(e) => {
                    warn!(path = %path, error = %e, "broker registration is not valid; skipped")
                }
            }
        }
        Ok(brokers)
    }

    /// Reads topics' assignments and watches each for changes.
    async fn read_topics(
        &mut self,
        names: Vec<String>,
    ) -> Result<BTreeMap<String, TopicAssignment>, ActError> {
        let client = self.client.clone();
        let reads = pipelined(names, move |name| {
            let client = client.clone();
            async move {
                let read = client.get_and_watch_data(&topic_path(&name)).await;
                (name, read)
            }
        })
        .await;
        let mut topics = BTreeMap::new();
        for (name, read) in reads {
            let (data, _, watcher) = match read {
                Ok(read) => read,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(e.into()),
            };
            self.arm(Event::Topic(name.clone()), watcher);
            if let Some(assignment) = self.parse_topic(&name, &data) {
                topics.insert(name, assignment);
            }
        }
        Ok(topics)
    }

    fn parse_topic(&mut self, name: &str, data: &[u8]) -> Option<TopicAssignment> {
        let path = topic_path(name);
        match TopicZnode::decode(&path, data) {
            Ok(assignment) => {
                self.bad_topics.remove(name);
                Some(assignment)
            }
            Err(e) => {
                if self.bad_topics.insert(name.to_string()) {
                    metrics::counter!("sluice_zk_controller_bad_znodes_total").increment(1);
                }
                error!(path = %path, error = %e, "topic znode is not valid; the topic is skipped");
                None
            }
        }
    }

    /// Records that bring a partition's state, as read from its znode, into the context.
    fn state_records(
        &self,
        topic: &str,
        assignment: &TopicAssignment,
        partition: i32,
        data: &[u8],
        version: i32,
        announced: &mut BTreeSet<String>,
    ) -> Option<(MetadataRecord, i32)> {
        let path = partition_state_path(topic, partition);
        let replicas = assignment.replicas.get(&partition)?;
        let state = match PartitionStateZnode::decode(&path, data) {
            Ok(state) => state,
            Err(e) => {
                metrics::counter!("sluice_zk_controller_bad_znodes_total").increment(1);
                error!(path = %path, error = %e, "partition state is not valid; the partition is skipped");
                return None;
            }
        };
        let _ = announced.insert(topic.to_string());
        Some((
            MetadataRecord::Partition(PartitionRecord {
                topic_id: assignment.topic_id,
                partition,
                replicas: replicas.clone(),
                isr: state.isr,
                leader: state.leader,
                leader_epoch: state.leader_epoch,
                partition_epoch: version,
            }),
            state.controller_epoch,
        ))
    }

    /// A topic record when the context does not know the topic under this id
    /// yet (after removing another topic that had its name).
    fn topic_records(&self, topic: &str, topic_id: Uuid) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        match self.ctx.image.topic_ids_by_name.get(topic) {
            Some(&known) if known == topic_id => return records,
            Some(&old) => records.push(MetadataRecord::RemoveTopic(RemoveTopicRecord {
                topic_id: old,
            })),
            None => {}
        }
        records.push(MetadataRecord::Topic(TopicRecord {
            name: topic.to_string(),
            topic_id,
        }));
        records
    }

    /// Reads the given partitions' state znodes into the context (after a
    /// lost race, or an ISR change notification). Returns those read.
    async fn refresh(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<(Uuid, i32)>, ActError> {
        let paths = partitions
            .iter()
            .map(|(t, p)| partition_state_path(t, *p))
            .collect();
        let reads = self.read_many(paths).await;
        let mut records = Vec::new();
        let mut epochs = Vec::new();
        let mut refreshed = Vec::new();
        let mut announced = BTreeSet::new();
        for ((topic, partition), (_, read)) in partitions.iter().zip(reads) {
            let (data, stat) = match read {
                Ok(read) => read,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(assignment) = self.ctx.assignments.get(topic) else {
                continue;
            };
            if !announced.contains(topic) {
                records.extend(self.topic_records(topic, assignment.topic_id));
            }
            if let Some((record, epoch)) = self.state_records(
                topic,
                assignment,
                *partition,
                &data,
                stat.version,
                &mut announced,
            ) {
                records.push(record);
                epochs.push(((assignment.topic_id, *partition), epoch));
                refreshed.push((assignment.topic_id, *partition));
            }
        }
        self.ctx.apply(&records);
        self.ctx.state_epochs.extend(epochs);
        Ok(refreshed)
    }

    async fn write(
        &self,
        ops: &[Op],
    ) -> Result<Result<Vec<zk::MultiWriteResult>, zk::Error>, ActError> {
        guarded_write(&self.client, self.epoch_version, ops).await
    }

    // ---- the reload ----

    /// Reads the whole cluster back, then makes it consistent and pushes it
    /// to every broker. Watches are set by the reads, before anything is
    /// acted on, so no change made meanwhile is missed.
    async fn reload(&mut self) -> Result<(), ActError> {
        let started = Instant::now();
        self.check_controller().await?;
        let ids = self.watch_children(BROKER_IDS, Event::Brokers).await?;
        let brokers = self.read_brokers(ids).await?;
        let topic_names = self.watch_children(TOPICS, Event::Topics).await?;
        let deletions = self
            .watch_children(DELETE_TOPICS, Event::DeleteTopics)
            .await?;
        let notifications = self.watch_children(ISR_CHANGES, Event::IsrChanges).await?;
        let assignments = self.read_topics(topic_names).await?;

        let keys: Vec<(String, i32)> = assignments
            .iter()
            .flat_map(|(t, a)| a.replicas.keys().map(move |&p| (t.clone(), p)))
            .collect();
        let reads = self
            .read_many(
                keys.iter()
                    .map(|(t, p)| partition_state_path(t, *p))
                    .collect(),
            )
            .await;
        let mut records: Vec<MetadataRecord> = brokers
            .iter()
            .cloned()
            .map(MetadataRecord::Broker)
            .collect();
        let mut announced = BTreeSet::new();
        let mut state_epochs = HashMap::new();
        for ((topic, partition), (_, read)) in keys.iter().zip(reads) {
            let (data, stat) = match read {
                Ok(read) => read,
                // Created below.
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(e.into()),
            };
            let assignment = &assignments[topic];
            if !announced.contains(topic) {
                records.push(MetadataRecord::Topic(TopicRecord {
                    name: topic.clone(),
                    topic_id: assignment.topic_id,
                }));
            }
            if let Some((record, epoch)) = self.state_records(
                topic,
                assignment,
                *partition,
                &data,
                stat.version,
                &mut announced,
            ) {
                records.push(record);
                state_epochs.insert((assignment.topic_id, *partition), epoch);
            }
        }
        self.ctx = Context {
            state_epochs,
            assignments,
            ..Context::default()
        };
        self.ctx.apply(&records);
        let elapsed = started.elapsed();
        metrics::histogram!("sluice_zk_controller_reload_seconds").record(elapsed.as_secs_f64());
        info!(
            node = self.node_id,
            controller_epoch = self.epoch,
            brokers = brokers.len(),
            topics = self.ctx.assignments.len(),
            partitions = self.ctx.image.partition_count(),
            ms = elapsed.as_millis() as u64,
            "controller reloaded the cluster from ZooKeeper"
        );

        for topic in &deletions {
            self.delete_topic(topic).await?;
        }
        // The states were just read, so the notifications say nothing new.
        self.remove_notifications(&notifications).await?;
        let topics: Vec<String> = self.ctx.assignments.keys().cloned().collect();
        for topic in topics {
            let missing = self.missing_partitions(&topic);
            if !missing.is_empty() {
                self.create_states(&topic, &missing).await?;
            }
        }
        self.settle().await?;
        self.sync_channels();
        for broker in self.ctx.live_broker_ids() {
            self.push_full(broker);
        }
        Ok(())
    }

    /// Partitions of `topic`'s assignment the context has no state for.
    fn missing_partitions(&self, topic: &str) -> Vec<i32> {
        let Some(assignment) = self.ctx.assignments.get(topic) else {
            return Vec::new();
        };
        let known = self
            .ctx
            .image
            .topic_by_id(&assignment.topic_id)
            .filter(|t| t.name == topic);
        assignment
            .replicas
            .keys()
            .copied()
            .filter(|p| !known.is_some_and(|t| t.partitions.contains_key(p)))
            .collect()
    }
}

fn outcome(e: ActError) -> Outcome {
    match e {
        ActError::Deposed => Outcome::Deposed,
        ActError::Zk(e) => Outcome::Failed(e),
    }
}

/// The next tick of `ticks`, or never.
async fn next_tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}
