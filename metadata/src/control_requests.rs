//! What a ZooKeeper-mode controller tells brokers, and what brokers ask of it.
//!
//! Kafka's ZooKeeper-mode controller pushed LeaderAndIsr, UpdateMetadata and
//! StopReplica requests to every broker, and brokers asked it for a
//! ControlledShutdown. kafka-protocol no longer carries those messages, so
//! Sluice sends the same fields as JSON inside an Envelope request on the
//! broker's Kafka listener (as broker→controller group writes do in KRaft
//! mode). A broker applies each push as metadata records, through the same
//! image and delta path KRaft uses: replica management, fetchers and
//! handlers never know which mode they run in.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::image::MetadataImage;
use crate::records::{
    BrokerRecord, Endpoint, MetadataRecord, PartitionRecord, RemoveTopicRecord, TopicRecord,
};

/// Who sent a push, and to which registration of the receiving broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushHeader {
    pub controller_id: i32,
    /// The sender's controller epoch: a broker refuses a push from an
    /// older epoch than one it has already accepted.
    pub controller_epoch: i32,
    /// The receiver's broker epoch as the controller knows it (-1: any): a
    /// push meant for an earlier registration is refused.
    pub broker_epoch: i64,
}

/// One partition's state, as the partition state znode holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub topic: String,
    pub topic_id: Uuid,
    pub partition: i32,
    /// The controller epoch that last wrote the partition's leadership.
    pub controller_epoch: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
    /// The state znode's data version: the partition epoch.
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
}

/// A live broker, as its `/brokers/ids/<id>` znode describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveBroker {
    pub broker_id: i32,
    /// The registration znode's creation zxid.
    pub broker_epoch: i64,
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub rack: Option<String>,
}

/// A topic whose replicas the receiver must stop and delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedTopic {
    pub topic: String,
    pub topic_id: Uuid,
    pub partitions: Vec<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ControlRequest {
    /// Leadership and ISR of partitions the receiver hosts.
    LeaderAndIsr {
        header: PushHeader,
        partitions: Vec<PartitionState>,
    },
    /// The cluster as metadata requests show it. `full` lists every live
    /// broker and every partition: anything the receiver knows beyond it is
    /// gone. Otherwise it lists the live brokers and the partitions that changed.
    UpdateMetadata {
        header: PushHeader,
        full: bool,
        live_brokers: Vec<LiveBroker>,
        partitions: Vec<PartitionState>,
    },
    /// Replicas of deleted topics: stop serving them and delete their data.
    StopReplica {
        header: PushHeader,
        topics: Vec<StoppedTopic>,
    },
    /// A broker asks the controller to move its leaderships away before it
    /// exits; the reply says how many it still leads.
    ControlledShutdown { broker_id: i32, broker_epoch: i64 },
}

/// The answer to a [`ControlRequest`]: a Kafka error code (0: done), and for
/// ControlledShutdown the partitions the broker still leads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    pub error_code: i16,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub remaining_leaderships: usize,
}

impl ControlRequest {
    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The push header; `None` for a broker's own request.
    pub fn header(&self) -> Option<&PushHeader> {
        match self {
            ControlRequest::LeaderAndIsr { header, .. }
            | ControlRequest::UpdateMetadata { header, .. }
            | ControlRequest::StopReplica { header, .. } => Some(header),
            ControlRequest::ControlledShutdown { .. } => None,
        }
    }

    /// The metadata records that bring `image` to what this push says.
    pub fn to_records(&self, image: &MetadataImage) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        match self {
            ControlRequest::LeaderAndIsr { partitions, .. } => {
                partition_records(image, partitions, &mut records);
            }
            ControlRequest::UpdateMetadata {
                full,
                live_brokers,
                partitions,
                ..
            } => {
                for broker in live_brokers {
                    let same = image.brokers.get(&broker.broker_id).is_some_and(|known| {
                        !known.fenced
                            && known.broker_epoch == broker.broker_epoch
                            && known.endpoints == broker.endpoints
                    });
                    if !same {
                        records.push(MetadataRecord::Broker(BrokerRecord {
                            broker_id: broker.broker_id,
                            incarnation_id: Uuid::nil(),
                            broker_epoch: broker.broker_epoch,
                            endpoints: broker.endpoints.clone(),
                            rack: broker.rack.clone(),
                            fenced: false,
                        }));
                    }
                }
                // A broker missing from the live set has lost its session:
                // it stays known, fenced, as KRaft keeps fenced brokers.
                for known in image.brokers.values() {
                    let live = live_brokers.iter().any(|b| b.broker_id == known.broker_id);
                    if !live && !known.fenced {
                        records.push(MetadataRecord::Broker(BrokerRecord {
                            broker_id: known.broker_id,
                            incarnation_id: known.incarnation_id,
                            broker_epoch: known.broker_epoch,
                            endpoints: known.endpoints.clone(),
                            rack: known.rack.clone(),
                            fenced: true,
                        }));
                    }
                }
                if *full {
                    for topic in image.topics_by_id.values() {
                        if !partitions.iter().any(|p| p.topic_id == topic.id) {
                            records.push(MetadataRecord::RemoveTopic(RemoveTopicRecord {
                                topic_id: topic.id,
                            }));
                        }
                    }
                }
                partition_records(image, partitions, &mut records);
            }
            ControlRequest::StopReplica { topics, .. } => {
                for topic in topics {
                    if image.topic_by_id(&topic.topic_id).is_some() {
                        records.push(MetadataRecord::RemoveTopic(RemoveTopicRecord {
                            topic_id: topic.topic_id,
                        }));
                    }
                }
            }
            ControlRequest::ControlledShutdown { .. } => {}
        }
        records
    }
}

impl ControlResponse {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Topic and partition records for the states that differ from `image`.
/// A topic the image knows under another id (deleted and re-created under
/// the same name) is removed first.
fn partition_records(
    image: &MetadataImage,
    partitions: &[PartitionState],
    records: &mut Vec<MetadataRecord>,
) {
    let mut announced: Vec<Uuid> = Vec::new();
    for state in partitions {
        let known = image.topic_by_id(&state.topic_id);
        if known.is_none() && !announced.contains(&state.topic_id) {
            if let Some(old) = image.topic_ids_by_name.get(&state.topic) {
                if !announced.contains(old) {
                    records.push(MetadataRecord::RemoveTopic(RemoveTopicRecord {
                        topic_id: *old,
                    }));
                }
            }
            records.push(MetadataRecord::Topic(TopicRecord {
                name: state.topic.clone(),
                topic_id: state.topic_id,
            }));
            announced.push(state.topic_id);
        }
        let unchanged = known
            .and_then(|t| t.partitions.get(&state.partition))
            .is_some_and(|p| {
                p.leader == state.leader
                    && p.leader_epoch == state.leader_epoch
                    && p.isr == state.isr
                    && p.partition_epoch == state.partition_epoch
                    && p.replicas == state.replicas
            });
        if !unchanged {
            records.push(MetadataRecord::Partition(PartitionRecord {
                topic_id: state.topic_id,
                partition: state.partition,
                replicas: state.replicas.clone(),
                isr: state.isr.clone(),
                leader: state.leader,
                leader_epoch: state.leader_epoch,
                partition_epoch: state.partition_epoch,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::MetadataDelta;
    use std::sync::Arc;

    fn header() -> PushHeader {
        PushHeader {
            controller_id: 1,
            controller_epoch: 3,
            broker_epoch: -1,
        }
    }

    fn state(topic: &str, id: Uuid, partition: i32, leader: i32) -> PartitionState {
        PartitionState {
            topic: topic.into(),
            topic_id: id,
            partition,
            controller_epoch: 3,
            leader,
            leader_epoch: 1,
            isr: vec![1, 2],
            partition_epoch: 1,
            replicas: vec![1, 2],
        }
    }

    fn apply(image: &Arc<MetadataImage>, request: &ControlRequest) -> Arc<MetadataImage> {
        let mut delta = MetadataDelta::new(image.clone());
        delta.replay_all(&request.to_records(image)).unwrap();
        delta.apply(image.offset + 1)
    }

    #[test]
    fn pushes_round_trip_and_build_the_image() {
        let id = Uuid::new_v4();
        let push = ControlRequest::UpdateMetadata {
            header: header(),
            full: true,
            live_brokers: vec![LiveBroker {
                broker_id: 1,
                broker_epoch: 77,
                endpoints: vec![Endpoint {
                    listener: "PLAINTEXT".into(),
                    host: "127.0.0.1".into(),
                    port: 9092,
                }],
                rack: None,
            }],
            partitions: vec![state("t", id, 0, 1), state("t", id, 1, 2)],
        };
        let decoded = ControlRequest::decode(&push.encode()).unwrap();
        assert_eq!(decoded, push);
        let image = apply(&MetadataImage::empty(), &push);
        assert_eq!(image.topic("t").unwrap().partitions.len(), 2);
        assert_eq!(image.brokers[&1].broker_epoch, 77);

        // The same push again changes nothing.
        assert!(push.to_records(&image).is_empty());

        // A full push without the broker and topic fences and removes them.
        let empty = ControlRequest::UpdateMetadata {
            header: header(),
            full: true,
            live_brokers: vec![],
            partitions: vec![],
        };
        let image = apply(&image, &empty);
        assert!(image.topic("t").is_none());
        assert!(image.brokers[&1].fenced);
    }

    #[test]
    fn a_topic_recreated_under_its_name_replaces_the_old_one() {
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        let first = ControlRequest::LeaderAndIsr {
            header: header(),
            partitions: vec![state("t", old, 0, 1)],
        };
        let image = apply(&MetadataImage::empty(), &first);
        let second = ControlRequest::LeaderAndIsr {
            header: header(),
            partitions: vec![state("t", new, 0, 1)],
        };
        let image = apply(&image, &second);
        assert_eq!(image.topic("t").unwrap().id, new);
        assert!(image.topic_by_id(&old).is_none());

        let stop = ControlRequest::StopReplica {
            header: header(),
            topics: vec![StoppedTopic {
                topic: "t".into(),
                topic_id: new,
                partitions: vec![0],
            }],
        };
        let image = apply(&image, &stop);
        assert!(image.topic("t").is_none());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(ControlRequest::decode(b"{\"type\":\"LeaderAndIsr\"}").is_err());
        assert!(ControlRequest::decode(b"\xff\x00").is_err());
    }
}
