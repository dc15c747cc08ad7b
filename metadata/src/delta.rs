//! A batch of changes on top of a base image.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use crate::groups::GroupChanges;
use crate::image::{BrokerRegistration, MetadataImage, PartitionRegistration, TopicImage};
use crate::records::{ConfigResource, MetadataRecord};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("partition record for unknown topic id {0}")]
    UnknownTopicId(Uuid),
    #[error("topic {name} is already registered with id {existing}")]
    DuplicateTopicName { name: String, existing: Uuid },
}

/// Changes replayed on top of `base`; [`MetadataDelta::apply`] yields the next image.
///
/// A replay error leaves the delta unusable for publishing: the caller drops it
/// and keeps the base image, so no half-applied batch is ever seen.
#[derive(Debug)]
pub struct MetadataDelta {
    base: Arc<MetadataImage>,
    /// `None` marks a removed topic.
    topics: HashMap<Uuid, Option<TopicImage>>,
    /// The topic each name this delta created or removed a topic of names
    /// now (`None`: none), so a name is looked up once, not by a scan.
    names: HashMap<String, Option<Uuid>>,
    brokers: BTreeMap<i32, BrokerRegistration>,
    configs: BTreeMap<ConfigResource, BTreeMap<String, Option<String>>>,
    next_producer_id: Option<i64>,
    groups: GroupChanges,
    /// Set when this delta loads a snapshot: everything the snapshot lacks goes.
    replaces_base: bool,
}

/// What one delta means for the replicas a given broker hosts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LocalChanges {
    /// (topic id, partition) whose registration changed and that list the broker as a replica.
    pub updated: Vec<(Uuid, i32)>,
    /// (topic name, topic id, partition) no longer hosted here: topic removed.
    pub removed: Vec<(String, Uuid, i32)>,
}

impl MetadataDelta {
    pub fn new(base: Arc<MetadataImage>) -> Self {
        Self {
            base,
            topics: HashMap::new(),
            names: HashMap::new(),
            brokers: BTreeMap::new(),
            configs: BTreeMap::new(),
            next_producer_id: None,
            groups: GroupChanges::default(),
            replaces_base: false,
        }
    }

    /// A delta that turns `base` into exactly the state of a snapshot whose
    /// records are replayed next.
    pub fn for_snapshot(base: Arc<MetadataImage>) -> Self {
        let mut delta = Self::new(base);
        delta.replaces_base = true;
        delta
    }

    pub fn base(&self) -> &Arc<MetadataImage> {
        &self.base
    }

    pub fn is_empty(&self) -> bool {
        !self.replaces_base
            && self.topics.is_empty()
            && self.brokers.is_empty()
            && self.configs.is_empty()
            && self.next_producer_id.is_none()
            && self.groups.changed.is_empty()
    }

    /// Groups this delta changed, each with whether it still exists (false:
    /// removed).
    pub fn changed_groups(&self) -> impl Iterator<Item = (&str, bool)> {
        self.groups
            .changed
            .iter()
            .map(|(id, g)| (id.as_str(), g.is_some()))
    }

    fn current_topic(&self, id: &Uuid) -> Option<TopicImage> {
        match self.topics.get(id) {
            Some(changed) => changed.clone(),
            None if self.replaces_base => None,
            None => self.base.topics_by_id.get(id).map(|t| (**t).clone()),
        }
    }

    /// The topic as this delta has it, to change in place: a partition
    /// record costs one map insert, however many partitions the topic has.
    fn topic_mut(&mut self, id: &Uuid) -> Option<&mut TopicImage> {
        if !self.topics.contains_key(id) {
            let topic = self.current_topic(id)?;
            self.topics.insert(*id, Some(topic));
        }
        self.topics.get_mut(id)?.as_mut()
    }

    fn topic_id_for_name(&self, name: &str) -> Option<Uuid> {
        if let Some(named) = self.names.get(name) {
            return *named;
        }
        if self.replaces_base {
            return None;
        }
        let id = self.base.topic_ids_by_name.get(name)?;
        match self.topics.get(id) {
            Some(None) => None,
            _ => Some(*id),
        }
    }

    pub fn replay(&mut self, record: &MetadataRecord) -> Result<(), ReplayError> {
        match record {
            MetadataRecord::Broker(b) => {
                self.brokers.insert(
                    b.broker_id,
                    BrokerRegistration {
                        broker_id: b.broker_id,
                        incarnation_id: b.incarnation_id,
                        broker_epoch: b.broker_epoch,
                        endpoints: b.endpoints.clone(),
                        rack: b.rack.clone(),
                        fenced: b.fenced,
                    },
                );
            }
            MetadataRecord::Topic(t) => {
                if let Some(existing) = self.topic_id_for_name(&t.name) {
                    if existing != t.topic_id {
                        return Err(ReplayError::DuplicateTopicName {
                            name: t.name.clone(),
                            existing,
                        });
                    }
                }
                let topic = self.current_topic(&t.topic_id).unwrap_or(TopicImage {
                    name: t.name.clone(),
                    id: t.topic_id,
                    partitions: imbl::OrdMap::new(),
                });
                self.names.insert(t.name.clone(), Some(t.topic_id));
                self.topics.insert(t.topic_id, Some(topic));
            }
            MetadataRecord::Partition(p) => {
                let topic = self
                    .topic_mut(&p.topic_id)
                    .ok_or(ReplayError::UnknownTopicId(p.topic_id))?;
                topic.partitions.insert(
                    p.partition,
                    PartitionRegistration {
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                    },
                );
            }
            MetadataRecord::RemoveTopic(r) => {
                let topic = self
                    .current_topic(&r.topic_id)
                    .ok_or(ReplayError::UnknownTopicId(r.topic_id))?;
                // The topic's dynamic configs go with it.
                let base = (!self.replaces_base).then_some(&*self.base);
                self.groups.remove_topic(base, &topic.name);
                if self
                    .names
                    .get(&topic.name)
                    .is_none_or(|named| *named == Some(r.topic_id))
                {
                    self.names.insert(topic.name.clone(), None);
                }
                let resource = ConfigResource::Topic(topic.name);
                let mut names: Vec<String> = match self.base.configs.get(&resource) {
                    Some(entries) if !self.replaces_base => entries.keys().cloned().collect(),
                    _ => Vec::new(),
                };
                let pending = self.configs.entry(resource).or_default();
                names.extend(pending.keys().cloned());
                for name in names {
                    pending.insert(name, None);
                }
                self.topics.insert(r.topic_id, None);
            }
            MetadataRecord::Config(c) => {
                self.configs
                    .entry(c.resource.clone())
                    .or_default()
                    .insert(c.name.clone(), c.value.clone());
            }
            MetadataRecord::ProducerIds(p) => {
                let current = self.next_producer_id.unwrap_or(self.base.next_producer_id);
                self.next_producer_id = Some(current.max(p.next_producer_id));
            }
            MetadataRecord::Group(_)
            | MetadataRecord::RemoveGroup(_)
            | MetadataRecord::Offsets(_)
            | MetadataRecord::RemoveOffsets(_) => {
                let base = (!self.replaces_base).then_some(&*self.base);
                self.groups.replay(base, record);
            }
        }
        Ok(())
    }

    /// Replays a whole batch, stopping at the first record that does not apply.
    pub fn replay_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a MetadataRecord>,
    ) -> Result<(), ReplayError> {
        records.into_iter().try_for_each(|r| self.replay(r))
    }

    /// The changes that concern the replicas on `broker_id`.
    pub fn local_changes(&self, broker_id: i32) -> LocalChanges {
        let mut changes = LocalChanges::default();
        let hosted = |p: &PartitionRegistration| p.replicas.contains(&broker_id);
        for (id, topic) in &self.topics {
            let before = self.base.topics_by_id.get(id);
            match topic {
                Some(topic) => {
                    for (&partition, reg) in &topic.partitions {
                        let old = before.and_then(|t| t.partitions.get(&partition));
                        if hosted(reg) && old != Some(reg) {
                            changes.updated.push((*id, partition));
                        }
                    }
                }
                None => {
                    if let Some(old) = before {
                        for (&partition, reg) in &old.partitions {
                            if hosted(reg) {
                                changes.removed.push((old.name.clone(), *id, partition));
                            }
                        }
                    }
                }
            }
        }
        if self.replaces_base {
            for (id, old) in self.base.topics_by_id.iter() {
                if !self.topics.contains_key(id) {
                    for (&partition, reg) in &old.partitions {
                        if hosted(reg) {
                            changes.removed.push((old.name.clone(), *id, partition));
                        }
                    }
                }
            }
        }
        changes.updated.sort();
        changes.removed.sort();
        changes
    }

    /// Builds the next image, reusing the base's untouched parts by reference.
    pub fn apply(&self, offset: u64) -> Arc<MetadataImage> {
        let base = &self.base;
        let empty = MetadataImage::default();
        let start = if self.replaces_base { &empty } else { &**base };

        let brokers = if self.brokers.is_empty() && !self.replaces_base {
            base.brokers.clone()
        } else {
            let mut brokers = (*start.brokers).clone();
            brokers.extend(self.brokers.iter().map(|(k, v)| (*k, v.clone())));
            Arc::new(brokers)
        };

        let (topics_by_id, topic_ids_by_name) = if self.topics.is_empty() && !self.replaces_base {
            (base.topics_by_id.clone(), base.topic_ids_by_name.clone())
        } else {
            let mut by_id = start.topics_by_id.clone();
            let mut by_name = start.topic_ids_by_name.clone();
            // Every old entry goes before any new one is added: one delta
            // may remove a topic and create another under its name (a
            // ZooKeeper-mode push), in whatever order the map yields them.
            for id in self.topics.keys() {
                if let Some(old) = by_id.remove(id) {
                    if by_name.get(&old.name) == Some(id) {
                        by_name.remove(&old.name);
                    }
                }
            }
            for (id, topic) in &self.topics {
                if let Some(topic) = topic {
                    by_name.insert(topic.name.clone(), *id);
                    by_id.insert(*id, Arc::new(topic.clone()));
                }
            }
            (by_id, by_name)
        };

        let configs = if self.configs.is_empty() && !self.replaces_base {
            base.configs.clone()
        } else {
            let mut configs = (*start.configs).clone();
            for (resource, changes) in &self.configs {
                let entries = configs.entry(resource.clone()).or_default();
                for (name, value) in changes {
                    match value {
                        Some(value) => entries.insert(name.clone(), value.clone()),
                        None => entries.remove(name),
                    };
                }
                if entries.is_empty() {
                    configs.remove(resource);
                }
            }
            Arc::new(configs)
        };

        Arc::new(MetadataImage {
            offset,
            brokers,
            topics_by_id,
            topic_ids_by_name,
            configs,
            next_producer_id: self.next_producer_id.unwrap_or(start.next_producer_id),
            groups: self.groups.apply(&base.groups, self.replaces_base),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::records::*;

    #[test]
    fn a_topic_removed_and_recreated_in_one_delta_keeps_its_name() {
        // The map of changed topics yields ids in no fixed order: try many.
        for _ in 0..64 {
            let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
            let mut delta = MetadataDelta::new(MetadataImage::empty());
            delta.replay_all(&topic("t", old, 1, vec![1])).unwrap();
            let image = delta.apply(1);
            let mut delta = MetadataDelta::new(image);
            let mut records = vec![MetadataRecord::RemoveTopic(RemoveTopicRecord {
                topic_id: old,
            })];
            records.extend(topic("t", new, 1, vec![1]));
            delta.replay_all(&records).unwrap();
            let image = delta.apply(2);
            assert_eq!(image.topic("t").map(|t| t.id), Some(new));
            assert!(image.topic_by_id(&old).is_none());
        }
    }

    /// An image of `topics` topics of `partitions` partitions each.
    fn image_of(topics: usize, partitions: i32) -> Arc<MetadataImage> {
        let mut delta = MetadataDelta::new(MetadataImage::empty());
        for t in 0..topics {
            delta
                .replay_all(&topic(
                    &format!("t{t}"),
                    Uuid::new_v4(),
                    partitions,
                    vec![1],
                ))
                .unwrap();
        }
        delta.apply(1)
    }

    /// Bytes allocated to replay, apply and look at a delta that moves the
    /// leadership of the first `changed` partitions of one topic of `image`.
    fn cost_of_leader_changes(image: &Arc<MetadataImage>, changed: i32) -> usize {
        let id = image.topic("t0").unwrap().id;
        let records: Vec<MetadataRecord> = (0..changed)
            .map(|partition| {
                MetadataRecord::Partition(PartitionRecord {
                    topic_id: id,
                    partition,
                    replicas: vec![1, 2],
                    isr: vec![1, 2],
                    leader: 2,
                    leader_epoch: 1,
                    partition_epoch: 1,
                })
            })
            .collect();
        let (bytes, next) = sluice_test_alloc::bytes_allocated(|| {
            let mut delta = MetadataDelta::new(image.clone());
            delta.replay_all(&records).unwrap();
            delta.apply(2)
        });
        assert_eq!(next.topic("t0").unwrap().partitions[&0].leader, 2);
        bytes
    }

    /// Replaying a partition record must not copy its topic, nor applying a
    /// delta the map of every topic: either makes a cluster of 100,000
    /// partitions replay its log in O(partitions²).
    #[test]
    fn a_partition_change_costs_the_same_in_a_small_and_a_large_image() {
        let small = image_of(10, 100);
        let many_partitions = image_of(10, 20_000);
        let many_topics = image_of(20_000, 1);
        let base = cost_of_leader_changes(&small, 1);
        for (what, image) in [
            ("20,000 partitions in the topic", &many_partitions),
            ("20,000 topics", &many_topics),
        ] {
            let bytes = cost_of_leader_changes(image, 1);
            assert!(
                bytes < 4 * base + 64 * 1024,
                "one partition change allocates {bytes} bytes with {what}, {base} in a small image"
            );
        }
        // A hundred records into a 20,000-partition topic: not a hundred copies.
        let bytes = cost_of_leader_changes(&many_partitions, 100);
        let base = cost_of_leader_changes(&small, 100);
        assert!(
            bytes < 4 * base + 64 * 1024,
            "a hundred partition changes allocate {bytes} bytes in a 20,000-partition topic, {base} in a 100-partition one"
        );
    }

    /// A topic's records: the topic and `partitions` partitions on `replicas`.
    pub(crate) fn topic(
        name: &str,
        id: Uuid,
        partitions: i32,
        replicas: Vec<i32>,
    ) -> Vec<MetadataRecord> {
        let mut records = vec![MetadataRecord::Topic(TopicRecord {
            name: name.into(),
            topic_id: id,
        })];
        for partition in 0..partitions {
            records.push(MetadataRecord::Partition(PartitionRecord {
                topic_id: id,
                partition,
                replicas: replicas.clone(),
                isr: replicas.clone(),
                leader: replicas[0],
                leader_epoch: 0,
                partition_epoch: 0,
            }));
        }
        records
    }

    fn apply(
        base: &Arc<MetadataImage>,
        records: &[MetadataRecord],
        offset: u64,
    ) -> Arc<MetadataImage> {
        let mut delta = MetadataDelta::new(base.clone());
        delta.replay_all(records).unwrap();
        delta.apply(offset)
    }

    #[test]
    fn replays_topics_partitions_configs_and_removal() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let image = MetadataImage::empty();
        let mut records = topic("a", a, 3, vec![1]);
        records.extend(topic("b", b, 1, vec![2]));
        records.push(MetadataRecord::Config(ConfigRecord {
            resource: ConfigResource::Topic("a".into()),
            name: "retention.ms".into(),
            value: Some("10".into()),
        }));
        let image = apply(&image, &records, 5);
        assert_eq!(image.offset, 5);
        assert_eq!(image.topic("a").unwrap().partitions.len(), 3);
        assert_eq!(image.partition_count(), 4);
        assert_eq!(image.topic_config("a").unwrap()["retention.ms"], "10");

        // Removing a reuses nothing of it, keeps b by reference, and drops its configs.
        let mut delta = MetadataDelta::new(image.clone());
        delta
            .replay(&MetadataRecord::RemoveTopic(RemoveTopicRecord {
                topic_id: a,
            }))
            .unwrap();
        let changes = delta.local_changes(1);
        assert_eq!(changes.removed.len(), 3);
        assert!(changes.updated.is_empty());
        let next = delta.apply(6);
        assert!(next.topic("a").is_none());
        assert!(next.topic_config("a").is_none());
        assert!(Arc::ptr_eq(
            next.topic("b").unwrap(),
            image.topic("b").unwrap()
        ));
    }

    #[test]
    fn local_changes_only_name_changed_hosted_partitions() {
        let a = Uuid::new_v4();
        let image = apply(&MetadataImage::empty(), &topic("a", a, 2, vec![1]), 1);
        let mut delta = MetadataDelta::new(image);
        delta
            .replay(&MetadataRecord::Partition(PartitionRecord {
                topic_id: a,
                partition: 1,
                replicas: vec![1],
                isr: vec![1],
                leader: 1,
                leader_epoch: 1,
                partition_epoch: 1,
            }))
            .unwrap();
        assert_eq!(delta.local_changes(1).updated, vec![(a, 1)]);
        assert!(delta.local_changes(2).updated.is_empty());
    }

    #[test]
    fn bad_records_fail_replay() {
        let mut delta = MetadataDelta::new(MetadataImage::empty());
        let orphan = MetadataRecord::Partition(PartitionRecord {
            topic_id: Uuid::new_v4(),
            partition: 0,
            replicas: vec![1],
            isr: vec![1],
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 0,
        });
        assert!(matches!(
            delta.replay(&orphan),
            Err(ReplayError::UnknownTopicId(_))
        ));
        let mut records = topic("a", Uuid::new_v4(), 1, vec![1]);
        records.extend(topic("a", Uuid::new_v4(), 1, vec![1]));
        let mut delta = MetadataDelta::new(MetadataImage::empty());
        assert!(matches!(
            delta.replay_all(&records),
            Err(ReplayError::DuplicateTopicName { .. })
        ));
    }

    #[test]
    fn snapshot_round_trip_rebuilds_the_same_image() {
        let a = Uuid::new_v4();
        let mut records = topic("a", a, 2, vec![1]);
        records.push(MetadataRecord::Broker(BrokerRecord {
            broker_id: 1,
            incarnation_id: Uuid::new_v4(),
            broker_epoch: 7,
            endpoints: vec![Endpoint {
                listener: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            rack: None,
            fenced: false,
        }));
        records.push(MetadataRecord::ProducerIds(ProducerIdsRecord {
            broker_id: 1,
            next_producer_id: 2000,
        }));
        let image = apply(&MetadataImage::empty(), &records, 9);

        // Loading a snapshot over an unrelated image removes what it lacks.
        let stale = apply(
            &MetadataImage::empty(),
            &topic("old", Uuid::new_v4(), 1, vec![1]),
            3,
        );
        let mut delta = MetadataDelta::for_snapshot(stale);
        delta.replay_all(&image.to_records()).unwrap();
        assert_eq!(delta.local_changes(1).removed.len(), 1);
        let loaded = delta.apply(9);
        assert!(loaded.topic("old").is_none());
        assert_eq!(loaded.topics_sorted().len(), 1);
        assert_eq!(**loaded.topic("a").unwrap(), **image.topic("a").unwrap());
        assert_eq!(loaded.brokers, image.brokers);
        assert_eq!(loaded.next_producer_id, 2000);
    }
}
