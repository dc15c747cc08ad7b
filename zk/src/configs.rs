//! Topic configs on every ZooKeeper-mode broker, as Kafka 2.x/3.x kept
//! them: the values in `/config/topics/<t>`, and a sequential notification
//! under `/config/changes` for each change. Every broker loads the config
//! znodes at start, then watches the notifications (a one-shot child watch,
//! re-armed by each read) and applies what changed to its image.
//!
//! A replica created by a push opens its log with the topic's configs:
//! [`TopicConfigHook`] reads the config znode of each topic a push brings,
//! as Kafka's log manager read it when it created a log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sluice_metadata::controller_api::BoxFuture;
use sluice_metadata::{ConfigRecord, ConfigResource, MetadataImage, MetadataRecord};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use zookeeper_client as zk;

use crate::admin::bounded;
use crate::connect::pipelined;
use crate::source::{PushHook, ZkMetadata};
use crate::znodes::{
    now_ms, topic_config_path, ConfigChangeZnode, ConfigZnode, CONFIG_CHANGES, TOPIC_CONFIGS,
};

/// Bounds each ZooKeeper read of the config watch.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long change notifications are kept (Kafka: 15 minutes).
const NOTIFICATION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// How often, and how many times, a changed topic this broker does not
/// know yet is looked for again.
const PENDING_RECHECK: Duration = Duration::from_millis(500);
const PENDING_CHECKS: u32 = 120;

/// Several hooks run in turn on each push, their records concatenated.
pub struct PushHooks(pub Vec<Arc<dyn PushHook>>);

impl PushHook for PushHooks {
    fn extra_records<'a>(
        &'a self,
        before: &'a Arc<MetadataImage>,
        after: &'a Arc<MetadataImage>,
    ) -> BoxFuture<'a, Vec<MetadataRecord>> {
        Box::pin(async move {
            let mut records = Vec::new();
            for hook in &self.0 {
                records.extend(hook.extra_records(before, after).await);
            }
            records
        })
    }
}

/// Reads a topic's config znode: `Ok(None)` when there is none, `Err`
/// with the failure (a garbage znode is logged here and reads as `Err`).
pub(crate) async fn read_topic_config(
    client: &zk::Client,
    topic: &str,
    timeout: Duration,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let path = topic_config_path(topic);
    match bounded(timeout, client.get_data(&path)).await {
        Ok((data, _)) => match ConfigZnode::decode(&path, &data) {
            Ok(znode) => Ok(Some(znode.config)),
            Err(e) => {
                error!(error = %e, "skipping a topic config znode that is not valid");
                Err(e.to_string())
            }
        },
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(format!("reading {path}: {e}")),
    }
}

/// The records that bring `topic`'s configs in `image` to `wanted`.
fn config_difference(
    image: &MetadataImage,
    topic: &str,
    wanted: &BTreeMap<String, String>,
) -> Vec<MetadataRecord> {
    let resource = ConfigResource::Topic(topic.to_string());
    let empty = BTreeMap::new();
    let current = image.topic_config(topic).unwrap_or(&empty);
    let mut records = Vec::new();
    for (name, value) in wanted {
        if current.get(name) != Some(value) {
            records.push(MetadataRecord::Config(ConfigRecord {
                resource: resource.clone(),
                name: name.clone(),
                value: Some(value.clone()),
            }));
        }
    }
    for name in current.keys() {
        if !wanted.contains_key(name) {
            records.push(MetadataRecord::Config(ConfigRecord {
                resource: resource.clone(),
                name: name.clone(),
                value: None,
            }));
        }
    }
    records
}

/// Reads the configs of `topics` (pipelined) and returns the records that
/// bring `image` to them. Topics whose znode cannot be read are skipped.
async fn topic_config_records(
    client: &zk::Client,
    image: &MetadataImage,
    topics: Vec<String>,
    timeout: Duration,
) -> Vec<MetadataRecord> {
    let read = pipelined(topics, |topic| {
        let client = client.clone();
        async move {
            let config = read_topic_config(&client, &topic, timeout).await;
            (topic, config)
        }
    })
    .await;
    let mut records = Vec::new();
    for (topic, config) in read {
        match config {
            Ok(config) => records.extend(config_difference(
                image,
                &topic,
                &config.unwrap_or_default(),
            )),
            Err(e) => warn!(%topic, error = %e, "topic configs not loaded"),
        }
    }
    records
}

/// Adds the configs of topics a push brings, so their replicas open with them.
pub struct TopicConfigHook {
    clients: watch::Receiver<Option<zk::Client>>,
    timeout: Duration,
}

impl TopicConfigHook {
    pub fn new(clients: watch::Receiver<Option<zk::Client>>, timeout: Duration) -> Self {
        Self { clients, timeout }
    }
}

impl PushHook for TopicConfigHook {
    fn extra_records<'a>(
        &'a self,
        before: &'a Arc<MetadataImage>,
        after: &'a Arc<MetadataImage>,
    ) -> BoxFuture<'a, Vec<MetadataRecord>> {
        Box::pin(async move {
            let new_topics: Vec<String> = after
                .topics_by_id
                .values()
                .filter(|t| before.topic_by_id(&t.id).is_none())
                .map(|t| t.name.clone())
                .collect();
            if new_topics.is_empty() {
                return Vec::new();
            }
            let Some(client) = self.clients.borrow().clone() else {
                warn!(topics = new_topics.len(), "no ZooKeeper session: new replicas open without their topic configs until the next change notification");
                return Vec::new();
            };
            topic_config_records(&client, after, new_topics, self.timeout).await
        })
    }
}

/// Loads every topic config into the image, then follows change
/// notifications until `stop` turns true. Starts over, with a full load,
/// on each new session (notifications may have been missed meanwhile).
pub fn start_config_watch(
    clients: watch::Receiver<Option<zk::Client>>,
    metadata: Arc<ZkMetadata>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run_config_watch(clients, metadata, stop))
}

enum Ended {
    Stopped,
    NewSession,
}

async fn run_config_watch(
    mut clients: watch::Receiver<Option<zk::Client>>,
    metadata: Arc<ZkMetadata>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let client = clients.borrow_and_update().clone();
        let Some(client) = client else {
            tokio::select! {
                changed = clients.changed() => if changed.is_err() { return },
                changed = stop.changed() => if changed.is_err() { return },
            }
            continue;
        };
        match follow_changes(&client, &metadata, &mut clients, &mut stop).await {
            Ok(Ended::Stopped) => return,
            Ok(Ended::NewSession) => {}
            Err(e) => {
                warn!(error = %e, "config change watch interrupted; starting over");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    changed = clients.changed() => if changed.is_err() { return },
                    changed = stop.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

/// The sequence number of a `config_change_<n>` child.
fn sequence(child: &str) -> Option<i64> {
    child.strip_prefix("config_change_")?.parse().ok()
}

async fn load_all(client: &zk::Client, metadata: &ZkMetadata) -> Result<usize, zk::Error> {
    let topics = bounded(READ_TIMEOUT, client.list_children(TOPIC_CONFIGS)).await?;
    let image = metadata.image();
    let known: Vec<String> = topics
        .into_iter()
        .filter(|t| image.topic(t).is_some())
        .collect();
    let records = topic_config_records(client, &image, known, READ_TIMEOUT).await;
    let count = records.len();
    if let Err(e) = metadata.apply(&records) {
        warn!(error = %e, "could not apply topic configs");
    }
    Ok(count)
}

async fn follow_changes(
    client: &zk::Client,
    metadata: &ZkMetadata,
    clients: &mut watch::Receiver<Option<zk::Client>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, zk::Error> {
    // Notifications there now are covered by the full load that follows.
    let existing = bounded(READ_TIMEOUT, client.list_children(CONFIG_CHANGES)).await?;
    let mut last_seen = existing
        .iter()
        .filter_map(|c| sequence(c))
        .max()
        .unwrap_or(-1);
    let loaded = load_all(client, metadata).await?;
    info!(changes = loaded, "topic configs loaded from ZooKeeper");
    // Changed topics this broker does not know yet: a push may be bringing
    // them, with configs its hook read before this change. Read again once
    // they show, for a while.
    let mut waiting: HashMap<String, u32> = HashMap::new();
    let mut watcher: Option<Pin<Box<dyn Future<Output = zk::WatchedEvent> + Send>>> = None;
    loop {
        let mut changed = HashSet::new();
        if watcher.is_none() {
            let (children, new_watcher) =
                bounded(READ_TIMEOUT, client.list_and_watch_children(CONFIG_CHANGES)).await?;
            watcher = Some(Box::pin(new_watcher.changed()));
            let mut fresh: Vec<(i64, String)> = children
                .iter()
                .filter_map(|c| sequence(c).map(|s| (s, c.clone())))
                .filter(|(s, _)| *s > last_seen)
                .collect();
            fresh.sort();
            for (seq, child) in fresh {
                if let Some(topic) = changed_topic(client, &child).await? {
                    changed.insert(topic);
                }
                last_seen = seq;
            }
            purge_old_notifications(client, children).await;
        }
        let image = metadata.image();
        let mut ready: Vec<String> = Vec::new();
        for topic in changed {
            if image.topic(&topic).is_some() {
                ready.push(topic);
            } else {
                waiting.insert(topic, 0);
            }
        }
        waiting.retain(|topic, checks| {
            if image.topic(topic).is_some() {
                ready.push(topic.clone());
                return false;
            }
            *checks += 1;
            *checks <= PENDING_CHECKS
        });
        if !ready.is_empty() {
            let records = topic_config_records(client, &image, ready, READ_TIMEOUT).await;
            if !records.is_empty() {
                metrics::counter!("sluice_zk_config_changes_applied_total")
                    .increment(records.len() as u64);
                if let Err(e) = metadata.apply(&records) {
                    warn!(error = %e, "could not apply a topic config change");
                }
            }
        }
        let recheck = async {
            if waiting.is_empty() {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(PENDING_RECHECK).await
            }
        };
        let Some(fired) = watcher.as_mut() else {
            continue;
        };
        tokio::select! {
            _ = fired => watcher = None,
            _ = recheck => {}
            changed = clients.changed() => {
                if changed.is_err() {
                    return Ok(Ended::Stopped);
                }
                return Ok(Ended::NewSession);
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return Ok(Ended::Stopped);
                }
            }
        }
    }
}

/// The topic a notification names, if it names one.
async fn changed_topic(client: &zk::Client, child: &str) -> Result<Option<String>, zk::Error> {
    let path = format!("{CONFIG_CHANGES}/{child}");
    match bounded(READ_TIMEOUT, client.get_data(&path)).await {
        Ok((data, _)) => match ConfigChangeZnode::decode(&path, &data) {
            Ok(change) => {
                if change.topic().is_none() {
                    debug!(entity = %change.entity_path, "config change for an entity brokers keep no configs of");
                }
                Ok(change.topic().map(str::to_string))
            }
            Err(e) => {
                error!(error = %e, "skipping a config change notification that is not valid");
                Ok(None)
            }
        },
        // Purged already: the full load at start covered it.
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes notifications older than [`NOTIFICATION_LIFETIME`], oldest
/// first, as Kafka's brokers did: every broker has long read them. Any
/// broker may do it; one that finds a notification gone moves on.
async fn purge_old_notifications(client: &zk::Client, children: Vec<String>) {
    let mut by_age: Vec<(i64, String)> = children
        .into_iter()
        .filter_map(|c| sequence(&c).map(|s| (s, c)))
        .collect();
    by_age.sort();
    let cutoff = now_ms() - NOTIFICATION_LIFETIME.as_millis() as i64;
    for (_, child) in by_age {
        let path = format!("{CONFIG_CHANGES}/{child}");
        match bounded(READ_TIMEOUT, client.check_stat(&path)).await {
            Ok(Some(stat)) if stat.ctime < cutoff => {
                let _ = bounded(READ_TIMEOUT, client.delete(&path, None)).await;
            }
            Ok(None) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::persistent;
    use crate::test_support::{
        controller_api, eventually, metadata_with, new_metadata, partition, publish, push, shared,
        CapturedLogs,
    };
    use sluice_metadata::controller_api::{ConfigChange, ControllerApi};
    use sluice_metadata::Uuid;

    /// Stops a config watch and waits until it has.
    async fn stop_watch(stop: watch::Sender<bool>, watch: JoinHandle<()>) {
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("the watch stops")
            .unwrap();
    }

    fn value(metadata: &ZkMetadata, topic: &str, name: &str) -> Option<String> {
        metadata.image().topic_config(topic)?.get(name).cloned()
    }

    /// An alter_configs request that sets (or, with `None`, removes) one
    /// config of a topic.
    fn set_config(
        topic: &str,
        name: &str,
        value: Option<&str>,
    ) -> Vec<(ConfigResource, Vec<ConfigChange>)> {
        vec![(
            ConfigResource::Topic(topic.into()),
            vec![ConfigChange {
                name: name.into(),
                value: value.map(str::to_string),
            }],
        )]
    }

    #[tokio::test]
    async fn config_changes_reach_every_broker() {
        let server = shared();
        let id = Uuid::new_v4();
        let topics = || vec![partition("t", id, 0, 1, &[1, 2])];
        let (a, b) = (
            metadata_with(1, &[1, 2], topics()).await,
            metadata_with(2, &[1, 2], topics()).await,
        );
        let clients_a = publish(server.client("/configs").await);
        let clients_b = publish(server.client("/configs").await);
        let (stop, stopped) = watch::channel(false);
        let watch_b = start_config_watch(clients_b.subscribe(), b.clone(), stopped);
        let api = controller_api(&clients_a, a.clone(), Duration::from_secs(2));
        let set = |value: Option<&str>| set_config("t", "retention.ms", value);

        assert_eq!(
            api.alter_configs(set(Some("5000")), false).await,
            vec![Ok(())]
        );
        assert_eq!(value(&a, "t", "retention.ms").as_deref(), Some("5000"));
        eventually!(
            "the change on broker 2",
            value(&b, "t", "retention.ms").filter(|v| v == "5000")
        );

        assert_eq!(api.alter_configs(set(None), false).await, vec![Ok(())]);
        eventually!(
            "the removal on broker 2",
            value(&b, "t", "retention.ms").is_none().then_some(())
        );

        // Broker resources are refused, as in KRaft mode.
        let broker = api
            .alter_configs(vec![(ConfigResource::Broker(Some(1)), Vec::new())], false)
            .await;
        assert!(broker[0].is_err());

        stop_watch(stop, watch_b).await;
    }

    #[tokio::test]
    async fn a_broker_reads_a_change_it_has_no_notification_of_yet() {
        let server = shared();
        let id = Uuid::new_v4();
        let topics = || vec![partition("fresh", id, 0, 1, &[1, 2])];
        let (a, b) = (
            metadata_with(1, &[1, 2], topics()).await,
            metadata_with(2, &[1, 2], topics()).await,
        );
        // Broker 2 follows no notifications: its image stays as it was.
        let clients_a = publish(server.client("/config-fresh").await);
        let clients_b = publish(server.client("/config-fresh").await);
        let api_a = controller_api(&clients_a, a, Duration::from_secs(2));
        let api_b = controller_api(&clients_b, b.clone(), Duration::from_secs(2));
        let stored = |topics: &[&str]| {
            api_b.stored_topic_configs(topics.iter().map(|t| t.to_string()).collect())
        };
        assert_eq!(stored(&["fresh"]).await, Some(vec![Ok(BTreeMap::new())]));

        let set = set_config("fresh", "retention.ms", Some("7000"));
        assert_eq!(api_a.alter_configs(set, false).await, vec![Ok(())]);
        assert_eq!(value(&b, "fresh", "retention.ms"), None);
        let wanted = BTreeMap::from([("retention.ms".to_string(), "7000".to_string())]);
        assert_eq!(
            stored(&["fresh", "never-configured"]).await,
            Some(vec![Ok(wanted), Ok(BTreeMap::new())])
        );

        // Without a session the read fails rather than answer from the image.
        clients_b.send_replace(None);
        let failed = stored(&["fresh"])
            .await
            .expect("ZooKeeper mode reads the store");
        assert!(failed[0].is_err(), "{failed:?}");
    }

    #[tokio::test]
    async fn a_change_for_a_topic_not_pushed_yet_applies_once_it_is() {
        let server = shared();
        let id = Uuid::new_v4();
        let a = metadata_with(1, &[1, 2], vec![partition("late", id, 0, 1, &[1, 2])]).await;
        // Broker 2 has not been told about the topic yet, and has no hook.
        let b = metadata_with(2, &[1, 2], Vec::new()).await;
        let clients_a = publish(server.client("/config-late").await);
        let clients_b = publish(server.client("/config-late").await);
        let (stop, stopped) = watch::channel(false);
        let watch_b = start_config_watch(clients_b.subscribe(), b.clone(), stopped);
        let api = controller_api(&clients_a, a, Duration::from_secs(2));
        // Let the watch load and arm first, so the change arrives as a notification.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let change = set_config("late", "segment.ms", Some("60000"));
        assert_eq!(api.alter_configs(change, false).await, vec![Ok(())]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(value(&b, "late", "segment.ms").is_none());
        push(
            &b,
            &[1, 2],
            vec![partition("late", id, 0, 1, &[1, 2])],
            false,
        )
        .await;
        eventually!(
            "the change once the topic is known",
            value(&b, "late", "segment.ms").filter(|v| v == "60000")
        );
        stop_watch(stop, watch_b).await;
    }

    #[tokio::test]
    async fn a_new_replica_opens_with_its_topic_configs() {
        let client = shared().client("/config-hook").await;
        let config = ConfigZnode::new(BTreeMap::from([(
            "cleanup.policy".into(),
            "compact".into(),
        )]));
        client
            .create(
                &topic_config_path("compacted"),
                &config.encode(),
                &persistent(),
            )
            .await
            .unwrap();
        let clients = publish(client);
        let metadata = new_metadata(1);
        metadata.set_push_hook(Arc::new(TopicConfigHook::new(
            clients.subscribe(),
            Duration::from_secs(2),
        )));
        let id = Uuid::new_v4();
        push(
            &metadata,
            &[1],
            vec![partition("compacted", id, 0, 1, &[1])],
            true,
        )
        .await;
        assert_eq!(
            value(&metadata, "compacted", "cleanup.policy").as_deref(),
            Some("compact")
        );
    }

    #[tokio::test]
    async fn a_garbage_config_znode_is_logged_and_skipped() {
        let logs = CapturedLogs::start();
        let client = shared().client("/config-garbage").await;
        client
            .create(&topic_config_path("bad"), b"{not json", &persistent())
            .await
            .unwrap();
        let good = ConfigZnode::new(BTreeMap::from([("retention.ms".into(), "7".into())]));
        client
            .create(&topic_config_path("good"), &good.encode(), &persistent())
            .await
            .unwrap();
        let metadata = metadata_with(
            1,
            &[1],
            vec![
                partition("bad", Uuid::new_v4(), 0, 1, &[1]),
                partition("good", Uuid::new_v4(), 0, 1, &[1]),
            ],
        )
        .await;
        let clients = publish(client);
        let (stop, stopped) = watch::channel(false);
        let watch = start_config_watch(clients.subscribe(), metadata.clone(), stopped);
        eventually!(
            "the good topic's configs",
            value(&metadata, "good", "retention.ms").filter(|v| v == "7")
        );
        assert!(metadata.image().topic_config("bad").is_none());
        let text = logs.text();
        assert!(
            text.contains("/config/topics/bad") && text.contains("ERROR"),
            "{text}"
        );
        stop_watch(stop, watch).await;
    }
}
