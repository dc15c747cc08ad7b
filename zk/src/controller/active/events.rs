//! The watch events and controlled shutdown, handled one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kafka_protocol::ResponseError;
use sluice_metadata::control_requests::{ControlRequest, StoppedTopic};
use sluice_metadata::{BrokerRecord, MetadataRecord, RemoveTopicRecord};
use tracing::{info, warn};
use zookeeper_client as zk;

use super::{ActError, Active, Event, Op, BATCH, MAX_ATTEMPTS};
use crate::connect::pipelined;
use crate::controller::ShutdownRequest;
use crate::znodes::{
    delete_topic_path, partitions_path, topic_config_path, topic_path, IsrChangeZnode, BROKER_IDS,
    DELETE_TOPICS, ISR_CHANGES, TOPICS,
};

/// How long a ControlledShutdown answer waits for the brokers to take the
/// leadership changes it made.
const DELIVERY_WAIT: Duration = Duration::from_secs(5);

impl Active {
    // ---- events ----

    /// `/brokers/ids` changed: brokers went (session expired) or came.
    pub(super) async fn brokers_changed(&mut self) -> Result<(), ActError> {
        let ids = self.watch_children(BROKER_IDS, Event::Brokers).await?;
        let registered: BTreeMap<i32, BrokerRecord> = self
            .read_brokers(ids)
            .await?
            .into_iter()
            .map(|b| (b.broker_id, b))
            .collect();
        let known: BTreeMap<i32, i64> = self
            .ctx
            .image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| (b.broker_id, b.broker_epoch))
            .collect();
        // A broker registered under a new epoch went and came back.
        let gone: Vec<i32> = known
            .iter()
            .filter(|(id, epoch)| registered.get(id).is_none_or(|b| b.broker_epoch != **epoch))
            .map(|(id, _)| *id)
            .collect();
        let joined: Vec<BrokerRecord> = registered
            .values()
            .filter(|b| known.get(&b.broker_id) != Some(&b.broker_epoch))
            .cloned()
            .collect();
        if gone.is_empty() && joined.is_empty() {
            return Ok(());
        }
        info!(?gone, joined = ?joined.iter().map(|b| b.broker_id).collect::<Vec<_>>(), "brokers changed");
        for &id in &gone {
            if let Some(b) = self.ctx.image.brokers.get(&id).cloned() {
                self.ctx.set_broker(BrokerRecord {
                    broker_id: id,
                    incarnation_id: b.incarnation_id,
                    broker_epoch: b.broker_epoch,
                    endpoints: b.endpoints,
                    rack: b.rack,
                    fenced: true,
                });
            }
            self.ctx.shutting_down.remove(&id);
        }
        // Leadership moves away from the brokers that went first; then the
        // brokers that came may lead partitions left without a leader.
        let mut changed = self.settle().await?;
        for broker in &joined {
            self.ctx.set_broker(broker.clone());
            self.ctx.shutting_down.remove(&broker.broker_id);
        }
        self.sync_channels();
        changed.extend(self.settle().await?);
        changed.sort();
        changed.dedup();
        let joined_ids: BTreeSet<i32> = joined.iter().map(|b| b.broker_id).collect();
        for &id in &joined_ids {
            self.push_full(id);
        }
        if changed.is_empty() {
            // The live brokers changed, even if no partition did.
            self.update_metadata(Vec::new(), &joined_ids);
        }
        self.push_changes(&changed, &joined_ids);
        Ok(())
    }

    /// `/brokers/topics` changed: topics were created (or went).
    pub(super) async fn topics_changed(&mut self) -> Result<(), ActError> {
        let names = self.watch_children(TOPICS, Event::Topics).await?;
        let listed: BTreeSet<String> = names.iter().cloned().collect();
        let vanished: Vec<String> = self
            .ctx
            .assignments
            .keys()
            .filter(|t| !listed.contains(*t))
            .cloned()
            .collect();
        for topic in vanished {
            warn!(
                topic,
                "topic znode removed other than through /admin/delete_topics"
            );
            self.forget_topic(&topic);
        }
        self.bad_topics.retain(|t| listed.contains(t));
        let new: Vec<String> = names
            .into_iter()
            .filter(|t| !self.ctx.assignments.contains_key(t) && !self.bad_topics.contains(t))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let read = self.read_topics(new).await?;
        let mut changed = Vec::new();
        for (topic, assignment) in read {
            let partitions: Vec<i32> = assignment.replicas.keys().copied().collect();
            self.ctx.assignments.insert(topic.clone(), assignment);
            changed.extend(self.create_states(&topic, &partitions).await?);
        }
        self.push_changes(&changed, &BTreeSet::new());
        Ok(())
    }

    /// A topic's assignment changed: CreatePartitions added partitions.
    pub(super) async fn topic_changed(&mut self, topic: &str) -> Result<(), ActError> {
        let (data, _, watcher) = match self.client.get_and_watch_data(&topic_path(topic)).await {
            Ok(read) => read,
            // Deleted: the children watch on /brokers/topics handles it.
            Err(zk::Error::NoNode) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.arm(Event::Topic(topic.to_string()), watcher);
        let Some(assignment) = self.parse_topic(topic, &data) else {
            return Ok(());
        };
        if let Some(known) = self.ctx.assignments.get(topic) {
            if known.topic_id != assignment.topic_id {
                warn!(
                    topic,
                    "topic znode now holds another topic id; taking the new topic"
                );
                self.forget_topic(topic);
            } else {
                for (p, replicas) in &known.replicas {
                    if assignment.replicas.get(p) != Some(replicas) {
                        warn!(
                            topic,
                            partition = p,
                            "replica reassignment is not supported; ignored"
                        );
                    }
                }
            }
        }
        let mut assignment = assignment;
        // Existing partitions keep the replicas the controller acts on.
        if let Some(known) = self.ctx.assignments.get(topic) {
            for (p, replicas) in &known.replicas {
                assignment.replicas.insert(*p, replicas.clone());
            }
        }
        self.ctx.assignments.insert(topic.to_string(), assignment);
        let missing = self.missing_partitions(topic);
        if missing.is_empty() {
            return Ok(());
        }
        let created = self.create_states(topic, &missing).await?;
        self.push_changes(&created, &BTreeSet::new());
        Ok(())
    }

    /// Drops a topic from the context and tells every broker to stop its replicas.
    pub(super) fn forget_topic(&mut self, topic: &str) {
        self.ctx.assignments.remove(topic);
        let Some(known) = self.ctx.image.topic(topic).cloned() else {
            return;
        };
        let stopped = StoppedTopic {
            topic: known.name.clone(),
            topic_id: known.id,
            partitions: known.partitions.keys().copied().collect(),
        };
        for broker in self.ctx.live_broker_ids() {
            self.send(
                broker,
                ControlRequest::StopReplica {
                    header: self.header(broker),
                    topics: vec![stopped.clone()],
                },
            );
        }
        self.ctx
            .apply(&[MetadataRecord::RemoveTopic(RemoveTopicRecord {
                topic_id: known.id,
            })]);
        self.ctx.state_epochs.retain(|(id, _), _| *id != known.id);
    }

    /// `/admin/delete_topics` changed: topics to delete.
    pub(super) async fn deletions_requested(&mut self) -> Result<(), ActError> {
        let markers = self
            .watch_children(DELETE_TOPICS, Event::DeleteTopics)
            .await?;
        for topic in markers {
            self.delete_topic(&topic).await?;
        }
        Ok(())
    }

    /// StopReplica to every live broker, then the topic's znodes go:
    /// partitions (children first), the assignment, its config, the marker.
    pub(super) async fn delete_topic(&mut self, topic: &str) -> Result<(), ActError> {
        info!(topic, "deleting topic");
        self.forget_topic(topic);
        self.bad_topics.remove(topic);
        for _ in 0..MAX_ATTEMPTS {
            let partitions: Vec<String> =
                match self.client.list_children(&partitions_path(topic)).await {
                    Ok(children) => children,
                    Err(zk::Error::NoNode) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
            let client = self.client.clone();
            let dirs: Vec<String> = partitions
                .iter()
                .map(|p| format!("{}/{p}", partitions_path(topic)))
                .collect();
            let listings = pipelined(dirs.clone(), move |dir| {
                let client = client.clone();
                async move { client.list_children(&dir).await }
            })
            .await;
            let mut partition_ops = Vec::new();
            for (dir, children) in dirs.iter().zip(listings) {
                let mut ops = Vec::new();
                match children {
                    Ok(children) => {
                        ops.extend(children.iter().map(|c| Op::Delete(format!("{dir}/{c}"))))
                    }
                    Err(zk::Error::NoNode) => continue,
                    Err(e) => return Err(e.into()),
                }
                ops.push(Op::Delete(dir.clone()));
                partition_ops.push(ops);
            }
            let mut lost_race = false;
            for chunk in partition_ops.chunks(BATCH) {
                let ops: Vec<Op> = chunk.iter().flatten().cloned().collect();
                if self.write(&ops).await?.is_err() {
                    lost_race = true;
                    break;
                }
            }
            if lost_race {
                continue;
            }
            let mut last = Vec::new();
            for path in [
                partitions_path(topic),
                topic_path(topic),
                topic_config_path(topic),
            ] {
                if self.client.check_stat(&path).await?.is_some() {
                    last.push(Op::Delete(path));
                }
            }
            last.push(Op::Delete(delete_topic_path(topic)));
            if self.write(&last).await?.is_ok() {
                info!(topic, "topic deleted");
                return Ok(());
            }
        }
        warn!(
            topic,
            "could not delete the topic's znodes; will try again on the next change"
        );
        Ok(())
    }

    /// `/isr_change_notification` changed: leaders changed ISRs. Reads the
    /// named states and tells every broker.
    pub(super) async fn isr_changed(&mut self) -> Result<(), ActError> {
        let names = self.watch_children(ISR_CHANGES, Event::IsrChanges).await?;
        if names.is_empty() {
            return Ok(());
        }
        let paths: Vec<String> = names.iter().map(|n| format!("{ISR_CHANGES}/{n}")).collect();
        let mut partitions = BTreeSet::new();
        for (path, read) in self.read_many(paths).await {
            let data = match read {
                Ok((data, _)) => data,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(e.into()),
            };
            match IsrChangeZnode::decode(&path, &data) {
                Ok(znode) => {
                    partitions.extend(znode.partitions.into_iter().map(|p| (p.topic, p.partition)))
                }
                Err(e) => {
                    warn!(path = %path, error = %e, "ISR change notification is not valid; removed")
                }
            }
        }
        let known: Vec<(String, i32)> = partitions
            .into_iter()
            .filter(|(t, p)| {
                self.ctx
                    .image
                    .topic(t)
                    .is_some_and(|topic| topic.partitions.contains_key(p))
            })
            .collect();
        let refreshed = self.refresh(&known).await?;
        self.update_metadata(self.ctx.states(&refreshed), &BTreeSet::new());
        self.remove_notifications(&names).await?;
        let changed = self.settle().await?;
        self.push_changes(&changed, &BTreeSet::new());
        Ok(())
    }

    pub(super) async fn remove_notifications(&self, names: &[String]) -> Result<(), ActError> {
        for chunk in names.chunks(BATCH) {
            let ops: Vec<Op> = chunk
                .iter()
                .map(|n| Op::Delete(format!("{ISR_CHANGES}/{n}")))
                .collect();
            if self.write(&ops).await?.is_err() {
                // Some went meanwhile: one by one, so the rest still go.
                for op in ops {
                    let _ = self.write(&[op]).await?;
                }
            }
        }
        Ok(())
    }

    // ---- controlled shutdown ----

    pub(super) async fn serve_shutdown(
        &mut self,
        request: ShutdownRequest,
    ) -> Result<(), ActError> {
        let ShutdownRequest {
            broker_id,
            broker_epoch,
            reply,
        } = request;
        match self.controlled_shutdown(broker_id, broker_epoch).await {
            Ok(answer) => {
                // Answer once the brokers have the new leaders and ISRs, so
                // that when the broker exits the rest of the cluster already
                // routes around it. A broker that does not answer in time
                // holds the shutdown up no longer than DELIVERY_WAIT.
                let delivered: Vec<_> = self.channels.values().map(|c| c.delivered()).collect();
                let wait = DELIVERY_WAIT.min(self.socket_timeout / 2);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(wait, async {
                        for done in delivered {
                            let _ = done.await;
                        }
                    })
                    .await;
                    let _ = reply.send(answer);
                });
                Ok(())
            }
            Err(e) => {
                let _ = reply.send(Err((
                    ResponseError::NotController,
                    "the controller stopped acting; ask again".into(),
                )));
                Err(e)
            }
        }
    }

    pub(super) async fn controlled_shutdown(
        &mut self,
        broker_id: i32,
        broker_epoch: i64,
    ) -> Result<Result<usize, (ResponseError, String)>, ActError> {
        match self.ctx.broker_epoch(broker_id) {
            None => {
                return Ok(Err((
                    ResponseError::BrokerNotAvailable,
                    format!("broker {broker_id} is not registered"),
                )))
            }
            Some(epoch) if broker_epoch != -1 && epoch != broker_epoch => {
                return Ok(Err((
                    ResponseError::StaleBrokerEpoch,
                    format!(
                        "broker {broker_id} is registered with epoch {epoch}, not {broker_epoch}"
                    ),
                )))
            }
            Some(_) => {}
        }
        info!(broker = broker_id, "controlled shutdown");
        self.ctx.shutting_down.insert(broker_id);
        let changed = self.settle().await?;
        self.push_changes(&changed, &BTreeSet::new());
        let remaining = self
            .ctx
            .image
            .topics_by_id
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.leader == broker_id)
            .count();
        Ok(Ok(remaining))
    }
}
