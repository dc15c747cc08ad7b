//! What a ZooKeeper-mode broker does with admin requests, ISR changes,
//! producer-id blocks and group writes: it writes znodes, as Kafka 2.x/3.x
//! brokers did, and leaves acting on them to the controller's watches.
//!
//! - CreateTopics: validated and placed on this broker's image, then one
//!   multi creates `/config/topics/<t>` and `/brokers/topics/<t>`; the
//!   controller's watch creates the partition states and pushes them.
//! - DeleteTopics: `/admin/delete_topics/<t>`; the controller does the rest.
//! - CreatePartitions: a conditional setData of the assignment znode.
//! - AlterConfigs: the config znode and a sequential change notification,
//!   in one multi; every broker's config watch applies it.
//! - AlterPartition: the leader writes the partition state znode itself,
//!   conditional on its version (the partition epoch), and notifies the
//!   controller under `/isr_change_notification`.
//! - Producer ids: blocks taken from `/latest_producer_id_block` with a
//!   conditional setData.
//!
//! Each answer comes once ZooKeeper has the write (Kafka's semantics); the
//! admin calls then wait, bounded, until this broker's image shows the
//! result, so a client that acts right away finds it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sluice_controller::{lifecycle, ops, TopicDefaults};
use sluice_metadata::controller_api::{
    BoxFuture, BrokerHeartbeat, BrokerRegistrationRequest, ConfigChange, ControllerApi,
    ControllerError, CreatedTopic, GroupWrite, GroupWriteOutcome, GroupWriter, HeartbeatReply,
    IsrChange, NewPartitions, NewTopic, PartitionState, TopicConfig, TopicRef,
};
use sluice_metadata::{
    ConfigRecord, ConfigResource, MetadataImage, MetadataRecord, PartitionRecord, Uuid,
};
use tokio::sync::watch;
use tracing::{error, info, warn};
use zookeeper_client as zk;

use crate::configs::{read_topic_config, TopicConfigHook};
use crate::connect::{persistent, pipelined, sequential};
use crate::groups::ZkGroups;
use crate::source::{PushHook, ZkMetadata};
use crate::znodes::{
    delete_topic_path, partition_state_path, topic_config_path, topic_path, ConfigChangeZnode,
    ConfigZnode, IsrChangeZnode, IsrChangedPartition, PartitionStateZnode, ProducerIdBlockZnode,
    TopicZnode, BROKER_IDS, CONFIG_CHANGE_PREFIX, ISR_CHANGE_PREFIX, PRODUCER_ID_BLOCK,
    TOPIC_CONFIGS, ZNODE_MAX_BYTES,
};

/// Who the active controller is, as the broker's own controller election sees it.
pub type ActiveControllerFn = Arc<dyn Fn() -> Option<i32> + Send + Sync>;

/// How often a wait for the image polls it.
const IMAGE_POLL: Duration = Duration::from_millis(25);

/// Attempts at a read-modify-write that lost a race with another writer.
const CONFLICT_RETRIES: usize = 5;

/// The session as the broker's session publishes it now.
pub(crate) fn current_client(
    clients: &watch::Receiver<Option<zk::Client>>,
) -> Result<zk::Client, ControllerError> {
    clients.borrow().clone().ok_or_else(|| {
        ControllerError::NotController("this broker has no ZooKeeper session".into())
    })
}

/// A ZooKeeper request bounded in time: a quorum that is gone must not
/// hold a client's request for longer than its timeout.
pub(crate) async fn bounded<T, E: From<zk::Error>>(
    timeout: Duration,
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or_else(|_| Err(E::from(zk::Error::Timeout)))
}

/// What a failed ZooKeeper request means for the client.
pub(crate) fn zk_failure(e: &zk::Error) -> ControllerError {
    match e {
        zk::Error::ConnectionLoss
        | zk::Error::SessionExpired
        | zk::Error::SessionMoved
        | zk::Error::ClientClosed
        | zk::Error::Timeout => {
            ControllerError::NotController(format!("ZooKeeper is not available: {e}"))
        }
        other => ControllerError::Internal(format!("ZooKeeper: {other}")),
    }
}

fn multi_failure(e: &zk::MultiWriteError) -> ControllerError {
    match e {
        zk::MultiWriteError::RequestFailed { source }
        | zk::MultiWriteError::OperationFailed { source, .. } => zk_failure(source),
    }
}

/// The broker's `ControllerApi` in ZooKeeper mode.
pub struct ZkControllerApi {
    clients: watch::Receiver<Option<zk::Client>>,
    metadata: Arc<ZkMetadata>,
    defaults: TopicDefaults,
    timeout: Duration,
    active_controller: OnceLock<ActiveControllerFn>,
    groups: Arc<ZkGroups>,
    configs: Arc<TopicConfigHook>,
}

impl ZkControllerApi {
    /// `clients` is the broker session's current client; `request_timeout`
    /// bounds each ZooKeeper request and each wait for the image.
    pub fn new(
        clients: watch::Receiver<Option<zk::Client>>,
        metadata: Arc<ZkMetadata>,
        defaults: TopicDefaults,
        request_timeout: Duration,
    ) -> Arc<Self> {
        let groups = ZkGroups::new(clients.clone(), metadata.clone(), request_timeout);
        let configs = Arc::new(TopicConfigHook::new(clients.clone(), request_timeout));
        Arc::new(Self {
            clients,
            metadata,
            defaults,
            timeout: request_timeout,
            active_controller: OnceLock::new(),
            groups,
            configs,
        })
    }

    /// Where `active_controller_id` looks first (the broker's controller
    /// election); without it, the controller of the newest push.
    pub fn set_active_controller(&self, active: ActiveControllerFn) {
        let _ = self.active_controller.set(active);
    }

    /// The group store behind `write_group`.
    pub fn groups(&self) -> &Arc<ZkGroups> {
        &self.groups
    }

    /// The hook to give `ZkMetadata::set_push_hook`: a new replica's topic
    /// configs, and the groups this broker starts to coordinate.
    pub fn push_hook(&self) -> Arc<dyn PushHook> {
        Arc::new(crate::configs::PushHooks(vec![
            self.configs.clone() as Arc<dyn PushHook>,
            self.groups.clone() as Arc<dyn PushHook>,
        ]))
    }

    fn client(&self) -> Result<zk::Client, ControllerError> {
        current_client(&self.clients)
    }

    /// `image` with the brokers that have no `/brokers/ids` znode any more
    /// taken as gone: replicas are placed on the brokers registered now, as
    /// Kafka's admin reads them from ZooKeeper, not on one whose session
    /// just ended while the controller has yet to push that. The image
    /// as it is when ZooKeeper cannot be read.
    async fn registered_brokers_only(&self, image: Arc<MetadataImage>) -> Arc<MetadataImage> {
        let Ok(client) = self.client() else {
            return image;
        };
        let Ok(registered) = bounded(self.timeout, client.list_children(BROKER_IDS)).await else {
            return image;
        };
        let registered: Vec<i32> = registered.iter().filter_map(|n| n.parse().ok()).collect();
        if image
            .brokers
            .values()
            .all(|b| b.fenced || registered.contains(&b.broker_id))
        {
            return image;
        }
        let mut view = (*image).clone();
        view.brokers = Arc::new(
            image
                .brokers
                .iter()
                .map(|(&id, b)| {
                    let mut b = b.clone();
                    b.fenced |= !registered.contains(&id);
                    (id, b)
                })
                .collect(),
        );
        Arc::new(view)
    }

    /// Waits, bounded by the request timeout, until the image satisfies `done`.
    async fn wait_for_image(&self, done: impl Fn(&MetadataImage) -> bool) -> bool {
        let deadline = Instant::now() + self.timeout;
        loop {
            if done(&self.metadata.image()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(IMAGE_POLL).await;
        }
    }

    async fn create_topics_now(
        &self,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Vec<Result<CreatedTopic, ControllerError>> {
        let image = self.registered_brokers_only(self.metadata.image()).await;
        let plan = ops::create_topics(&image, &self.defaults, topics);
        let mut results = plan.results;
        if validate_only {
            return results;
        }
        // The planned records, by topic.
        let mut names: HashMap<Uuid, String> = HashMap::new();
        let mut replicas: HashMap<Uuid, BTreeMap<i32, Vec<i32>>> = HashMap::new();
        let mut configs: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for record in plan.records {
            match record {
                MetadataRecord::Topic(t) => {
                    names.insert(t.topic_id, t.name);
                }
                MetadataRecord::Partition(p) => {
                    replicas
                        .entry(p.topic_id)
                        .or_default()
                        .insert(p.partition, p.replicas);
                }
                MetadataRecord::Config(ConfigRecord {
                    resource: ConfigResource::Topic(name),
                    name: key,
                    value: Some(value),
                }) => {
                    configs.entry(name).or_default().insert(key, value);
                }
                _ => {}
            }
        }
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => return results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
        };
        let mut written = Vec::new();
        for result in results.iter_mut() {
            let Ok(created) = result else { continue };
            let id = created.topic_id;
            let (Some(name), Some(assignment)) = (names.get(&id), replicas.get(&id)) else {
                *result = Err(ControllerError::Internal(
                    "the plan has no topic record".into(),
                ));
                continue;
            };
            let config = configs.remove(name).unwrap_or_default();
            match self
                .write_new_topic(&client, name, id, assignment, config)
                .await
            {
                Ok(()) => {
                    info!(topic = %name, topic_id = %id, partitions = assignment.len(), "topic written to ZooKeeper");
                    metrics::counter!("sluice_zk_topics_created_total").increment(1);
                    written.push((id, assignment.len()));
                }
                Err(e) => *result = Err(e),
            }
        }
        if !written.is_empty() {
            let shown = self
                .wait_for_image(|image| {
                    written.iter().all(|(id, count)| {
                        image.topic_by_id(id).is_some_and(|t| {
                            t.partitions.len() >= *count
                                && t.partitions.values().all(|p| p.leader >= 0)
                        })
                    })
                })
                .await;
            if !shown {
                warn!("created topics are in ZooKeeper, but the controller has not pushed their leaders yet");
            }
        }
        results
    }

    /// One multi: the topic's configs and its assignment, so a topic never
    /// exists without its configs.
    async fn write_new_topic(
        &self,
        client: &zk::Client,
        name: &str,
        topic_id: Uuid,
        assignment: &BTreeMap<i32, Vec<i32>>,
        config: BTreeMap<String, String>,
    ) -> Result<(), ControllerError> {
        let config_path = topic_config_path(name);
        // A config znode left by an earlier topic of this name is overwritten.
        let old_config = bounded(self.timeout, client.check_stat(&config_path))
            .await
            .map_err(|e| zk_failure(&e))?;
        let config_data = ConfigZnode::new(config).encode();
        let topic_data = TopicZnode::new(topic_id, assignment).encode();
        assignment_fits(name, &topic_data)?;
        let mut multi = client.new_multi_writer();
        let bad_name = |e: zk::Error| ControllerError::InvalidTopic(format!("{name}: {e}"));
        multi
            .add_create(&topic_path(name), &topic_data, &persistent())
            .map_err(bad_name)?;
        match old_config {
            Some(_) => multi.add_set_data(&config_path, &config_data, None),
            None => multi.add_create(&config_path, &config_data, &persistent()),
        }
        .map_err(bad_name)?;
        match bounded(self.timeout, multi.commit()).await {
            Ok(_) => Ok(()),
            Err(zk::MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::NodeExists,
            }) => Err(ControllerError::TopicAlreadyExists(name.to_string())),
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::NodeExists | zk::Error::NoNode,
                ..
            }) => Err(ControllerError::NotController(format!(
                "the configs of topic {name} changed while it was being created; retry"
            ))),
            Err(e) => Err(multi_failure(&e)),
        }
    }

    async fn delete_topics_now(
        &self,
        topics: Vec<TopicRef>,
    ) -> Vec<Result<(String, Uuid), ControllerError>> {
        let image = self.metadata.image();
        let mut results: Vec<Result<(String, Uuid), ControllerError>> = topics
            .into_iter()
            .map(|topic| match topic {
                TopicRef::Name(name) => image
                    .topic(&name)
                    .map(|t| (t.name.clone(), t.id))
                    .ok_or(ControllerError::UnknownTopic(name)),
                TopicRef::Id(id) => image
                    .topic_by_id(&id)
                    .map(|t| (t.name.clone(), t.id))
                    .ok_or(ControllerError::UnknownTopicId(id)),
            })
            .collect();
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => return results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
        };
        let mut marked: BTreeMap<Uuid, Result<(), ControllerError>> = BTreeMap::new();
        for result in results.iter_mut() {
            let Ok((name, id)) = result else { continue };
            if !marked.contains_key(id) {
                let outcome = match bounded(
                    self.timeout,
                    client.create(&delete_topic_path(name), &[], &persistent()),
                )
                .await
                {
                    // Already marked: the controller is on it.
                    Ok(_) | Err(zk::Error::NodeExists) => {
                        info!(topic = %name, "topic marked for deletion in ZooKeeper");
                        Ok(())
                    }
                    Err(e) => Err(zk_failure(&e)),
                };
                marked.insert(*id, outcome);
            }
            if let Some(Err(e)) = marked.get(id) {
                *result = Err(e.clone());
            }
        }
        let deleting: Vec<Uuid> = marked
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(id, _)| *id)
            .collect();
        if !deleting.is_empty()
            && !self
                .wait_for_image(|image| deleting.iter().all(|id| image.topic_by_id(id).is_none()))
                .await
        {
            warn!("topics are marked for deletion, but the controller has not removed them yet");
        }
        results
    }

    async fn create_partitions_now(
        &self,
        requests: Vec<NewPartitions>,
        validate_only: bool,
    ) -> Vec<Result<(), ControllerError>> {
        let image = self.metadata.image();
        let plan = ops::create_partitions(&image, requests.clone());
        let mut results = plan.results;
        if validate_only {
            return results;
        }
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => return results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
        };
        let mut grown = Vec::new();
        for (request, result) in requests.iter().zip(results.iter_mut()) {
            if result.is_err() {
                continue;
            }
            let Some(topic) = image.topic(&request.topic) else {
                continue;
            };
            let added: BTreeMap<i32, Vec<i32>> = plan
                .records
                .iter()
                .filter_map(|r| match r {
                    MetadataRecord::Partition(p) if p.topic_id == topic.id => {
                        Some((p.partition, p.replicas.clone()))
                    }
                    _ => None,
                })
                .collect();
            let current = topic.partitions.len();
            match self
                .add_partitions(&client, &request.topic, topic.id, current, added)
                .await
            {
                Ok(()) => grown.push((topic.id, request.count as usize)),
                Err(e) => *result = Err(e),
            }
        }
        if !grown.is_empty()
            && !self
                .wait_for_image(|image| {
                    grown.iter().all(|(id, count)| {
                        image.topic_by_id(id).is_some_and(|t| {
                            t.partitions.len() >= *count
                                && t.partitions.values().all(|p| p.leader >= 0)
                        })
                    })
                })
                .await
        {
            warn!("new partitions are in ZooKeeper, but the controller has not pushed their leaders yet");
        }
        results
    }

    /// Adds partitions to the assignment znode, conditional on the version
    /// read, so a concurrent change to the topic is never overwritten.
    async fn add_partitions(
        &self,
        client: &zk::Client,
        topic: &str,
        topic_id: Uuid,
        current: usize,
        added: BTreeMap<i32, Vec<i32>>,
    ) -> Result<(), ControllerError> {
        let path = topic_path(topic);
        let (data, stat) = match bounded(self.timeout, client.get_data(&path)).await {
            Ok(read) => read,
            Err(zk::Error::NoNode) => return Err(ControllerError::UnknownTopic(topic.to_string())),
            Err(e) => return Err(zk_failure(&e)),
        };
        let mut assignment = TopicZnode::decode(&path, &data).map_err(|e| {
            error!(error = %e, "cannot add partitions to a topic whose znode is not valid");
            ControllerError::Internal(e.to_string())
        })?;
        if assignment.topic_id != topic_id {
            return Err(ControllerError::UnknownTopic(format!(
                "{topic} was deleted and created again meanwhile"
            )));
        }
        if assignment.replicas.len() != current {
            return Err(ControllerError::InvalidPartitions(format!(
                "Topic {topic} has {} partitions in ZooKeeper, not the {current} this broker knows; retry",
                assignment.replicas.len()
            )));
        }
        assignment.replicas.extend(added);
        let data = TopicZnode::new(topic_id, &assignment.replicas).encode();
        assignment_fits(topic, &data)?;
        match bounded(
            self.timeout,
            client.set_data(&path, &data, Some(stat.version)),
        )
        .await
        {
            Ok(_) => {
                info!(%topic, partitions = assignment.replicas.len(), "partitions added in ZooKeeper");
                Ok(())
            }
            Err(zk::Error::BadVersion) => Err(ControllerError::InvalidPartitions(format!(
                "Topic {topic} changed in ZooKeeper meanwhile; retry"
            ))),
            Err(zk::Error::NoNode) => Err(ControllerError::UnknownTopic(topic.to_string())),
            Err(e) => Err(zk_failure(&e)),
        }
    }

    async fn alter_configs_now(
        &self,
        changes: Vec<(ConfigResource, Vec<ConfigChange>)>,
        validate_only: bool,
    ) -> Vec<Result<(), ControllerError>> {
        let image = self.metadata.image();
        // Broker resources are refused here, as in KRaft mode: dynamic
        // broker configs are not supported yet.
        let plan = ops::alter_configs(&image, changes.clone());
        let mut results = plan.results;
        if validate_only {
            return results;
        }
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => return results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
        };
        for ((resource, entries), result) in changes.into_iter().zip(results.iter_mut()) {
            let ConfigResource::Topic(topic) = &resource else {
                continue;
            };
            if result.is_err() {
                continue;
            }
            match self.write_topic_config(&client, topic, &entries).await {
                Ok(()) => {
                    // This broker shows its own change at once; the others
                    // apply it from the notification.
                    let records: Vec<MetadataRecord> = entries
                        .into_iter()
                        .map(|c| {
                            MetadataRecord::Config(ConfigRecord {
                                resource: resource.clone(),
                                name: c.name,
                                value: c.value,
                            })
                        })
                        .collect();
                    if let Err(e) = self.metadata.apply(&records) {
                        warn!(%topic, error = %e, "could not apply a config change locally");
                    }
                }
                Err(e) => *result = Err(e),
            }
        }
        results
    }

    /// Reads the config znodes of `topics`, after a sync so the answer
    /// holds every change ZooKeeper has committed, whichever broker made it
    /// (a server answers reads from what it has applied so far).
    async fn stored_topic_configs_now(
        &self,
        topics: Vec<String>,
    ) -> Vec<Result<TopicConfig, ControllerError>> {
        let synced = match self.client() {
            Ok(client) => bounded(self.timeout, client.sync(TOPIC_CONFIGS))
                .await
                .map(|()| client)
                .map_err(|e| zk_failure(&e)),
            Err(e) => Err(e),
        };
        let client = match synced {
            Ok(client) => client,
            Err(e) => return topics.iter().map(|_| Err(e.clone())).collect(),
        };
        let timeout = self.timeout;
        pipelined(topics, move |topic| {
            let client = client.clone();
            async move {
                read_topic_config(&client, &topic, timeout)
                    .await
                    .map(Option::unwrap_or_default)
                    .map_err(ControllerError::Internal)
            }
        })
        .await
    }

    /// Read-modify-write of `/config/topics/<t>` and a change notification,
    /// in one multi conditional on the version read.
    async fn write_topic_config(
        &self,
        client: &zk::Client,
        topic: &str,
        entries: &[ConfigChange],
    ) -> Result<(), ControllerError> {
        let path = topic_config_path(topic);
        let notice = ConfigChangeZnode::for_topic(topic).encode();
        for _ in 0..CONFLICT_RETRIES {
            let (mut config, version) = match bounded(self.timeout, client.get_data(&path)).await {
                Ok((data, stat)) => match ConfigZnode::decode(&path, &data) {
                    Ok(znode) => (znode.config, Some(stat.version)),
                    Err(e) => {
                        // Replaced by what this change makes of nothing.
                        error!(error = %e, "overwriting a topic config znode that is not valid");
                        (BTreeMap::new(), Some(stat.version))
                    }
                },
                Err(zk::Error::NoNode) => (BTreeMap::new(), None),
                Err(e) => return Err(zk_failure(&e)),
            };
            for change in entries {
                match &change.value {
                    Some(value) => config.insert(change.name.clone(), value.clone()),
                    None => config.remove(&change.name),
                };
            }
            let data = ConfigZnode::new(config).encode();
            let mut multi = client.new_multi_writer();
            let added = match version {
                Some(v) => multi.add_set_data(&path, &data, Some(v)),
                None => multi.add_create(&path, &data, &persistent()),
            }
            .and_then(|_| multi.add_create(CONFIG_CHANGE_PREFIX, &notice, &sequential()));
            added.map_err(|e| ControllerError::InvalidRequest(format!("{topic}: {e}")))?;
            match bounded(self.timeout, multi.commit()).await {
                Ok(_) => {
                    info!(%topic, "topic configs changed in ZooKeeper");
                    return Ok(());
                }
                Err(zk::MultiWriteError::OperationFailed {
                    index: 0,
                    source: zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode,
                }) => continue,
                Err(e) => return Err(multi_failure(&e)),
            }
        }
        Err(ControllerError::NotController(format!(
            "the configs of {topic} kept changing under this request; retry"
        )))
    }

    async fn allocate_producer_ids_now(
        &self,
        broker_id: i32,
        count: i64,
    ) -> Result<i64, ControllerError> {
        let count = count.max(1);
        let client = self.client()?;
        for _ in 0..CONFLICT_RETRIES * 4 {
            let read = match bounded(self.timeout, client.get_data(PRODUCER_ID_BLOCK)).await {
                Ok((data, stat)) => {
                    let end = ProducerIdBlockZnode::decode_end(&data).map_err(|e| {
                        error!(error = %e, "the producer id block znode is not valid");
                        ControllerError::Internal(e.to_string())
                    })?;
                    Some((end, stat.version))
                }
                Err(zk::Error::NoNode) => None,
                Err(e) => return Err(zk_failure(&e)),
            };
            let first = read.map_or(0, |(end, _)| end + 1);
            let last = first
                .checked_add(count - 1)
                .ok_or_else(|| ControllerError::Internal("producer ids are exhausted".into()))?;
            let data = ProducerIdBlockZnode::new(broker_id, first, last).encode();
            let written = match read {
                Some((_, version)) => bounded(
                    self.timeout,
                    client.set_data(PRODUCER_ID_BLOCK, &data, Some(version)),
                )
                .await
                .map(|_| ()),
                None => bounded(
                    self.timeout,
                    client.create(PRODUCER_ID_BLOCK, &data, &persistent()),
                )
                .await
                .map(|_| ()),
            };
            match written {
                Ok(()) => {
                    info!(broker_id, first, last, "producer id block taken");
                    return Ok(first);
                }
                // Another broker took a block meanwhile: read again.
                Err(zk::Error::BadVersion | zk::Error::NodeExists) => continue,
                Err(e) => return Err(zk_failure(&e)),
            }
        }
        Err(ControllerError::NotController(
            "other brokers kept taking producer id blocks; retry".into(),
        ))
    }

    async fn alter_partition_now(
        &self,
        broker_id: i32,
        broker_epoch: i64,
        changes: Vec<IsrChange>,
    ) -> Vec<Result<PartitionState, ControllerError>> {
        let node_id = self.metadata.node_id();
        if broker_id != node_id || broker_epoch != self.metadata.broker_epoch() {
            let e = ControllerError::StaleBrokerEpoch {
                broker_id,
                broker_epoch,
            };
            return changes.iter().map(|_| Err(e.clone())).collect();
        }
        let image = self.metadata.image();
        // The same checks as the KRaft controller's, on this broker's image.
        let plan = lifecycle::alter_partition(&image, broker_id, broker_epoch, changes.clone());
        let mut results = plan.results;
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => return results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
        };
        let controller_epoch = self.metadata.controller_epoch();
        let mut records = Vec::new();
        let mut changed = Vec::new();
        for (change, result) in changes.iter().zip(results.iter_mut()) {
            let Ok(next) = result else { continue };
            let Some(topic) = image.topic_by_id(&change.topic_id) else {
                continue;
            };
            let path = partition_state_path(&topic.name, change.partition);
            let state = PartitionStateZnode::new(
                controller_epoch,
                node_id,
                next.leader_epoch,
                next.isr.clone(),
            );
            let written = match bounded(
                self.timeout,
                client.set_data(&path, &state.encode(), Some(change.partition_epoch)),
            )
            .await
            {
                Ok(stat) => Ok(stat.version),
                // A retry of a write that did land (the answer was lost)
                // finds its own state there: that is success.
                Err(zk::Error::BadVersion) => {
                    match bounded(self.timeout, client.get_data(&path)).await {
                        Ok((data, stat))
                            if PartitionStateZnode::decode(&path, &data).is_ok_and(|found| {
                                found.leader == state.leader
                                    && found.leader_epoch == state.leader_epoch
                                    && found.isr == state.isr
                            }) =>
                        {
                            Ok(stat.version)
                        }
                        _ => Err(ControllerError::InvalidUpdateVersion(format!(
                            "the state of {}-{} changed in ZooKeeper after partition epoch {}",
                            topic.name, change.partition, change.partition_epoch
                        ))),
                    }
                }
                Err(zk::Error::NoNode) => Err(ControllerError::UnknownTopicId(change.topic_id)),
                Err(e) => Err(zk_failure(&e)),
            };
            match written {
                Ok(version) => {
                    next.partition_epoch = version;
                    let replicas = topic
                        .partitions
                        .get(&change.partition)
                        .map(|p| p.replicas.clone())
                        .unwrap_or_default();
                    records.push(MetadataRecord::Partition(PartitionRecord {
                        topic_id: change.topic_id,
                        partition: change.partition,
                        replicas,
                        isr: next.isr.clone(),
                        leader: next.leader,
                        leader_epoch: next.leader_epoch,
                        partition_epoch: version,
                    }));
                    changed.push(IsrChangedPartition {
                        topic: topic.name.clone(),
                        partition: change.partition,
                    });
                    metrics::counter!("sluice_zk_isr_writes_total", "result" => "ok").increment(1);
                }
                Err(e) => {
                    metrics::counter!("sluice_zk_isr_writes_total", "result" => "refused")
                        .increment(1);
                    *result = Err(e);
                }
            }
        }
        if !records.is_empty() {
            if let Err(e) = self.metadata.apply(&records) {
                warn!(error = %e, "could not apply an ISR change locally");
            }
            self.notify_isr_change(&client, changed).await;
        }
        results
    }

    /// Tells the controller which partitions' states this leader changed.
    async fn notify_isr_change(&self, client: &zk::Client, partitions: Vec<IsrChangedPartition>) {
        for notice in IsrChangeZnode::split(partitions) {
            self.create_isr_change_notice(client, &notice.encode())
                .await;
        }
    }

    async fn create_isr_change_notice(&self, client: &zk::Client, data: &[u8]) {
        for attempt in 1..=3 {
            match bounded(
                self.timeout,
                client.create(ISR_CHANGE_PREFIX, data, &sequential()),
            )
            .await
            {
                Ok(_) => return,
                Err(e) if attempt == 3 => {
                    error!(error = %e, "could not notify the controller of an ISR change; it learns the state at its next reload");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Refuses a topic whose assignment znode ZooKeeper would not take.
fn assignment_fits(topic: &str, data: &[u8]) -> Result<(), ControllerError> {
    if data.len() <= ZNODE_MAX_BYTES {
        return Ok(());
    }
    Err(ControllerError::InvalidPartitions(format!(
        "Topic {topic}'s partition assignment takes {} bytes in ZooKeeper, more than the \
         {ZNODE_MAX_BYTES} a znode may hold here; use fewer partitions, or KRaft mode",
        data.len()
    )))
}

fn not_in_zk_mode<T>() -> Result<T, ControllerError> {
    Err(ControllerError::InvalidRequest(
        "a ZooKeeper-mode broker registers through its ZooKeeper session, not with the controller"
            .into(),
    ))
}

impl ControllerApi for ZkControllerApi {
    fn active_controller_id(&self) -> Option<i32> {
        self.active_controller
            .get()
            .and_then(|active| active())
            .or_else(|| self.metadata.controller_id())
    }

    fn create_topics(
        &self,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<CreatedTopic, ControllerError>>> {
        Box::pin(self.create_topics_now(topics, validate_only))
    }

    fn delete_topics(
        &self,
        topics: Vec<TopicRef>,
    ) -> BoxFuture<'_, Vec<Result<(String, Uuid), ControllerError>>> {
        Box::pin(self.delete_topics_now(topics))
    }

    fn create_partitions(
        &self,
        requests: Vec<NewPartitions>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(self.create_partitions_now(requests, validate_only))
    }

    fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, Vec<ConfigChange>)>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(self.alter_configs_now(changes, validate_only))
    }

    fn stored_topic_configs(
        &self,
        topics: Vec<String>,
    ) -> BoxFuture<'_, Option<Vec<Result<TopicConfig, ControllerError>>>> {
        Box::pin(async move { Some(self.stored_topic_configs_now(topics).await) })
    }

    fn register_broker(
        &self,
        _request: BrokerRegistrationRequest,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async { not_in_zk_mode() })
    }

    fn allocate_producer_ids(
        &self,
        broker_id: i32,
        count: i64,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(self.allocate_producer_ids_now(broker_id, count))
    }

    fn broker_heartbeat(
        &self,
        _heartbeat: BrokerHeartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, ControllerError>> {
        Box::pin(async { not_in_zk_mode() })
    }

    fn alter_partition(
        &self,
        broker_id: i32,
        broker_epoch: i64,
        changes: Vec<IsrChange>,
    ) -> BoxFuture<'_, Vec<Result<PartitionState, ControllerError>>> {
        Box::pin(self.alter_partition_now(broker_id, broker_epoch, changes))
    }

    fn write_group(
        &self,
        writer: GroupWriter,
        write: GroupWrite,
    ) -> BoxFuture<'_, Result<GroupWriteOutcome, ControllerError>> {
        Box::pin(self.groups.write(writer, write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        broker_epoch, controller_api, metadata_with, partition, publish, shared,
    };
    use crate::znodes::{partition_path, ISR_CHANGES};

    /// No controller runs here: the waits for its push time out soon.
    const TIMEOUT: Duration = Duration::from_millis(300);

    /// Registration znodes for `brokers` (their sessions are not the test's).
    async fn registered(client: &zk::Client, brokers: &[i32]) {
        let paths = ["/brokers".to_string(), BROKER_IDS.to_string()];
        let ids = brokers.iter().map(|id| format!("{BROKER_IDS}/{id}"));
        for path in paths.into_iter().chain(ids) {
            match client.create(&path, b"", &persistent()).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => panic!("creating {path}: {e}"),
            }
        }
    }

    /// A topic's assignment znode, as a controller would have written it.
    async fn write_topic_znode(
        client: &zk::Client,
        name: &str,
        id: Uuid,
        replicas: BTreeMap<i32, Vec<i32>>,
    ) {
        client
            .create(
                &topic_path(name),
                &TopicZnode::new(id, &replicas).encode(),
                &persistent(),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_topic_too_large_for_a_znode_is_refused_and_the_session_lives_on() {
        let client = shared().client("/huge-topic").await;
        registered(&client, &[1]).await;
        let id = Uuid::new_v4();
        let metadata = metadata_with(1, &[1], vec![partition("grow", id, 0, 1, &[1])]).await;
        let clients = publish(client.clone());
        let api = controller_api(&clients, metadata, TIMEOUT);
        let topic = |name: &str, num_partitions: i32| NewTopic {
            name: name.into(),
            num_partitions,
            replication_factor: 1,
            ..NewTopic::default()
        };
        fn too_large<T>(result: &Result<T, ControllerError>) -> bool {
            matches!(result, Err(ControllerError::InvalidPartitions(m)) if m.contains("bytes"))
        }
        // Its assignment takes about 1.3 MB; ZooKeeper takes 1 MiB a request.
        let huge = api
            .create_topics(vec![topic("huge", 100_000)], false)
            .await
            .remove(0);
        assert!(too_large(&huge), "{huge:?}");
        assert!(client
            .check_stat("/brokers/topics/huge")
            .await
            .unwrap()
            .is_none());
        let small = api
            .create_topics(vec![topic("small", 3)], false)
            .await
            .remove(0);
        assert!(small.is_ok(), "{small:?}");

        // Growing a topic past the limit is refused the same way.
        write_topic_znode(&client, "grow", id, BTreeMap::from([(0, vec![1])])).await;
        let grow = |count: i32| NewPartitions {
            topic: "grow".into(),
            count,
            assignments: None,
        };
        let grown = api
            .create_partitions(vec![grow(100_000)], false)
            .await
            .remove(0);
        assert!(too_large(&grown), "{grown:?}");
        let grown = api.create_partitions(vec![grow(2)], false).await.remove(0);
        assert_eq!(grown, Ok(()));
    }

    #[tokio::test]
    async fn create_topics_writes_the_assignment_and_configs_once() {
        let client = shared().client("/create-topics").await;
        registered(&client, &[1, 2, 3]).await;
        let metadata = metadata_with(1, &[1, 2, 3], Vec::new()).await;
        let clients = publish(client.clone());
        let api = controller_api(&clients, metadata, TIMEOUT);
        let topic = NewTopic {
            name: "orders".into(),
            num_partitions: 3,
            replication_factor: 2,
            configs: vec![("retention.ms".into(), "1000".into())],
            ..NewTopic::default()
        };

        let checked = api.create_topics(vec![topic.clone()], true).await;
        assert!(checked[0].is_ok(), "{checked:?}");
        assert!(client
            .check_stat("/brokers/topics/orders")
            .await
            .unwrap()
            .is_none());

        let created = api
            .create_topics(vec![topic.clone()], false)
            .await
            .remove(0)
            .unwrap();
        assert_eq!(created.num_partitions, 3);
        let path = topic_path("orders");
        let (data, _) = client.get_data(&path).await.unwrap();
        let assignment = TopicZnode::decode(&path, &data).unwrap();
        assert_eq!(assignment.topic_id, created.topic_id);
        assert_eq!(assignment.replicas.len(), 3);
        assert!(assignment.replicas.values().all(|r| r.len() == 2));
        let config_path = topic_config_path("orders");
        let (data, _) = client.get_data(&config_path).await.unwrap();
        let config = ConfigZnode::decode(&config_path, &data).unwrap().config;
        assert_eq!(config.get("retention.ms").map(String::as_str), Some("1000"));

        // The image has not caught up (no controller here): ZooKeeper says no.
        let again = api.create_topics(vec![topic], false).await.remove(0);
        assert_eq!(
            again,
            Err(ControllerError::TopicAlreadyExists("orders".into()))
        );

        // Registration belongs to the session in this mode.
        let heartbeat = api
            .broker_heartbeat(BrokerHeartbeat {
                broker_id: 1,
                broker_epoch: 1,
                metadata_offset: 0,
                metadata_replayed_offset: 0,
                want_fence: false,
                want_shutdown: false,
            })
            .await;
        assert!(matches!(heartbeat, Err(ControllerError::InvalidRequest(_))));
    }

    /// A broker whose session just ended is still live in the image until
    /// the controller pushes otherwise; a topic created meanwhile must not
    /// get replicas on it (they would have no leader until it came back).
    #[tokio::test]
    async fn new_topics_go_only_to_brokers_registered_now() {
        let client = shared().client("/create-registered").await;
        registered(&client, &[1, 3]).await;
        let metadata = metadata_with(1, &[1, 2, 3], Vec::new()).await;
        let clients = publish(client.clone());
        let api = controller_api(&clients, metadata, TIMEOUT);
        let topic = NewTopic {
            name: "placed".into(),
            num_partitions: 6,
            replication_factor: 1,
            ..NewTopic::default()
        };
        api.create_topics(vec![topic], false)
            .await
            .remove(0)
            .unwrap();
        let path = topic_path("placed");
        let (data, _) = client.get_data(&path).await.unwrap();
        let assignment = TopicZnode::decode(&path, &data).unwrap();
        let placed: std::collections::BTreeSet<i32> =
            assignment.replicas.values().flatten().copied().collect();
        assert_eq!(placed, [1, 3].into(), "{assignment:?}");
    }

    #[tokio::test]
    async fn deleting_a_topic_marks_it_for_the_controller() {
        let client = shared().client("/delete-topics").await;
        let id = Uuid::new_v4();
        let metadata = metadata_with(1, &[1], vec![partition("gone", id, 0, 1, &[1])]).await;
        let clients = publish(client.clone());
        let api = controller_api(&clients, metadata, TIMEOUT);
        let results = api
            .delete_topics(vec![
                TopicRef::Id(id),
                TopicRef::Name("never".into()),
                TopicRef::Id(Uuid::nil()),
            ])
            .await;
        assert_eq!(results[0], Ok(("gone".to_string(), id)));
        assert_eq!(
            results[1],
            Err(ControllerError::UnknownTopic("never".into()))
        );
        assert_eq!(
            results[2],
            Err(ControllerError::UnknownTopicId(Uuid::nil()))
        );
        assert!(client
            .check_stat(&delete_topic_path("gone"))
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn create_partitions_extends_the_assignment_conditionally() {
        let client = shared().client("/create-partitions").await;
        let id = Uuid::new_v4();
        let metadata = metadata_with(1, &[1, 2], vec![partition("grow", id, 0, 1, &[1, 2])]).await;
        let clients = publish(client.clone());
        let api = controller_api(&clients, metadata, TIMEOUT);
        write_topic_znode(&client, "grow", id, BTreeMap::from([(0, vec![1, 2])])).await;
        let request = NewPartitions {
            topic: "grow".into(),
            count: 3,
            assignments: None,
        };
        let results = api.create_partitions(vec![request], false).await;
        assert_eq!(results, vec![Ok(())]);
        let (data, stat) = client.get_data(&topic_path("grow")).await.unwrap();
        let assignment = TopicZnode::decode("grow", &data).unwrap();
        assert_eq!(assignment.replicas.len(), 3);
        assert_eq!(assignment.replicas[&0], vec![1, 2]);
        assert_eq!(stat.version, 1);
    }

    #[tokio::test]
    async fn isr_changes_are_conditional_on_the_partition_epoch() {
        let client = shared().client("/isr").await;
        let id = Uuid::new_v4();
        let metadata = metadata_with(
            1,
            &[1, 2],
            vec![
                partition("t", id, 0, 1, &[1, 2]),
                partition("t", id, 1, 2, &[2, 1]),
            ],
        )
        .await;
        let clients = publish(client.clone());
        let api = controller_api(&clients, metadata.clone(), TIMEOUT);
        // What the controller created with the topic.
        crate::connect::mkdir(&client, &partition_path("t", 0))
            .await
            .unwrap();
        let state_path = partition_state_path("t", 0);
        client
            .create(
                &state_path,
                &PartitionStateZnode::new(1, 1, 0, vec![1, 2]).encode(),
                &persistent(),
            )
            .await
            .unwrap();
        let shrink = |partition: i32, partition_epoch: i32, new_isr: Vec<i32>| IsrChange {
            topic_id: id,
            partition,
            leader_epoch: 0,
            partition_epoch,
            new_isr,
            broker_epochs: Vec::new(),
        };

        let results = api
            .alter_partition(
                1,
                broker_epoch(1),
                vec![shrink(0, 0, vec![1]), shrink(1, 0, vec![1])],
            )
            .await;
        let committed = results[0].clone().unwrap();
        assert_eq!(committed.isr, vec![1]);
        assert_eq!(committed.partition_epoch, 1);
        assert!(
            matches!(results[1], Err(ControllerError::NotLeader(_))),
            "{results:?}"
        );
        let (data, stat) = client.get_data(&state_path).await.unwrap();
        let state = PartitionStateZnode::decode(&state_path, &data).unwrap();
        assert_eq!(
            (state.leader, state.isr.clone(), stat.version),
            (1, vec![1], 1)
        );
        let shown = metadata.image().topic("t").unwrap().partitions[&0].clone();
        assert_eq!((shown.isr, shown.partition_epoch), (vec![1], 1));
        let notices = client.list_children(ISR_CHANGES).await.unwrap();
        assert_eq!(notices.len(), 1);
        let notice_path = format!("{ISR_CHANGES}/{}", notices[0]);
        let (data, _) = client.get_data(&notice_path).await.unwrap();
        let notice = IsrChangeZnode::decode(&notice_path, &data).unwrap();
        assert_eq!(
            notice.partitions,
            vec![IsrChangedPartition {
                topic: "t".into(),
                partition: 0
            }]
        );

        // The controller rewrites the state behind this leader's back.
        client
            .set_data(
                &state_path,
                &PartitionStateZnode::new(2, 1, 0, vec![1]).encode(),
                None,
            )
            .await
            .unwrap();
        let refused = api
            .alter_partition(1, broker_epoch(1), vec![shrink(0, 1, vec![1, 2])])
            .await;
        assert!(
            matches!(refused[0], Err(ControllerError::InvalidUpdateVersion(_))),
            "{refused:?}"
        );
        // A stale registration is refused outright.
        let stale = api
            .alter_partition(1, 7, vec![shrink(0, 1, vec![1, 2])])
            .await;
        assert!(matches!(
            stale[0],
            Err(ControllerError::StaleBrokerEpoch { .. })
        ));
    }

    #[tokio::test]
    async fn producer_id_blocks_never_overlap_between_brokers() {
        let server = shared();
        let (client_a, client_b) = (server.client("/pids").await, server.client("/pids").await);
        let (clients_a, clients_b) = (publish(client_a), publish(client_b));
        let a = controller_api(
            &clients_a,
            metadata_with(1, &[1, 2], Vec::new()).await,
            TIMEOUT,
        );
        let b = controller_api(
            &clients_b,
            metadata_with(2, &[1, 2], Vec::new()).await,
            TIMEOUT,
        );
        let take = |api: Arc<ZkControllerApi>, broker: i32| async move {
            let mut firsts = Vec::new();
            for _ in 0..15 {
                firsts.push(api.allocate_producer_ids(broker, 10).await.unwrap());
            }
            firsts
        };
        let (from_a, from_b) = tokio::join!(tokio::spawn(take(a, 1)), tokio::spawn(take(b, 2)));
        let mut firsts: Vec<i64> = from_a.unwrap().into_iter().chain(from_b.unwrap()).collect();
        firsts.sort_unstable();
        assert_eq!(firsts.len(), 30);
        for pair in firsts.windows(2) {
            assert!(pair[1] - pair[0] >= 10, "blocks overlap: {firsts:?}");
        }
        assert_eq!(firsts[0], 0);
    }
}
