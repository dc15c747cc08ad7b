//! The immutable view of the cluster at one offset of the metadata log.
//!
//! Images are shared behind `Arc`; a [`crate::MetadataDelta`] builds the next
//! image and reuses every untouched topic by reference. Topics and their
//! partitions sit in persistent maps, so a change to one partition costs
//! O(log n), not a copy of the topic or of the topic map: a cluster of
//! 100,000 partitions replays its log in time proportional to its records.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::groups::{group_coordinator, GroupMap};
use crate::records::{
    BrokerRecord, ConfigRecord, ConfigResource, Endpoint, MetadataRecord, PartitionRecord,
    ProducerIdsRecord, TopicRecord,
};

#[derive(Clone, Debug, Default)]
pub struct MetadataImage {
    /// Index of the last metadata log entry reflected here (0: none).
    pub offset: u64,
    pub brokers: Arc<BTreeMap<i32, BrokerRegistration>>,
    pub topics_by_id: imbl::HashMap<Uuid, Arc<TopicImage>>,
    pub topic_ids_by_name: imbl::HashMap<String, Uuid>,
    pub configs: Arc<BTreeMap<ConfigResource, BTreeMap<String, String>>>,
    /// The first producer id not yet handed out.
    pub next_producer_id: i64,
    /// Consumer groups by id: membership and committed offsets.
    pub groups: GroupMap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerRegistration {
    pub broker_id: i32,
    pub incarnation_id: Uuid,
    pub broker_epoch: i64,
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    pub fenced: bool,
}

impl BrokerRegistration {
    /// Where clients of the listener named `listener` reach this broker.
    pub fn endpoint(&self, listener: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.listener == listener)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    pub partitions: imbl::OrdMap<i32, PartitionRegistration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRegistration {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

impl MetadataImage {
    pub fn empty() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicImage>> {
        let id = self.topic_ids_by_name.get(name)?;
        self.topics_by_id.get(id)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicImage>> {
        self.topics_by_id.get(id)
    }

    /// Topics sorted by name, for stable listings.
    pub fn topics_sorted(&self) -> Vec<&Arc<TopicImage>> {
        let mut topics: Vec<_> = self.topics_by_id.values().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    pub fn partition_count(&self) -> usize {
        self.topics_by_id.values().map(|t| t.partitions.len()).sum()
    }

    pub fn topic_config(&self, topic: &str) -> Option<&BTreeMap<String, String>> {
        self.configs.get(&ConfigResource::Topic(topic.to_string()))
    }

    /// The broker that coordinates `group_id`, if any broker is unfenced.
    pub fn group_coordinator(&self, group_id: &str) -> Option<i32> {
        group_coordinator(self.brokers.values(), group_id)
    }

    /// The records that rebuild this image from nothing: the content of a snapshot.
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for broker in self.brokers.values() {
            records.push(MetadataRecord::Broker(BrokerRecord {
                broker_id: broker.broker_id,
                incarnation_id: broker.incarnation_id,
                broker_epoch: broker.broker_epoch,
                endpoints: broker.endpoints.clone(),
                rack: broker.rack.clone(),
                fenced: broker.fenced,
            }));
        }
        for topic in self.topics_sorted() {
            records.push(MetadataRecord::Topic(TopicRecord {
                name: topic.name.clone(),
                topic_id: topic.id,
            }));
            for (&partition, p) in &topic.partitions {
                records.push(MetadataRecord::Partition(PartitionRecord {
                    topic_id: topic.id,
                    partition,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                }));
            }
        }
        for (resource, entries) in self.configs.iter() {
            for (name, value) in entries {
                records.push(MetadataRecord::Config(ConfigRecord {
                    resource: resource.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                }));
            }
        }
        if self.next_producer_id > 0 {
            records.push(MetadataRecord::ProducerIds(ProducerIdsRecord {
                broker_id: -1,
                next_producer_id: self.next_producer_id,
            }));
        }
        for group in self.groups.values() {
            group.to_records(&mut records);
        }
        records
    }
}
