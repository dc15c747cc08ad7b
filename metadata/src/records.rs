//! The records of the metadata log.
//!
//! Every record is one variant of [`MetadataRecord`]. Records are encoded as
//! JSON inside a versioned envelope: a field added later carries
//! `#[serde(default)]`, so a newer node still reads entries written by an older
//! one, and an unknown envelope version is refused rather than guessed at.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The envelope version written by this code.
const BATCH_VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    Broker(BrokerRecord),
    Topic(TopicRecord),
    Partition(PartitionRecord),
    RemoveTopic(RemoveTopicRecord),
    Config(ConfigRecord),
    ProducerIds(ProducerIdsRecord),
    Group(GroupRecord),
    RemoveGroup(RemoveGroupRecord),
    Offsets(OffsetCommitRecord),
    RemoveOffsets(RemoveOffsetsRecord),
}

/// A broker announced itself (or came back with a new incarnation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub broker_id: i32,
    pub incarnation_id: Uuid,
    /// Bumped on each registration; older epochs are stale.
    pub broker_epoch: i64,
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub rack: Option<String>,
    #[serde(default)]
    pub fenced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub listener: String,
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub topic_id: Uuid,
}

/// The full state of one partition; a later record for the same partition
/// replaces the earlier one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub topic_id: Uuid,
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveTopicRecord {
    pub topic_id: Uuid,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name")]
pub enum ConfigResource {
    Topic(String),
    /// `None` is the cluster-wide default for every broker.
    Broker(Option<i32>),
}

/// Sets (`Some`) or clears (`None`) one dynamic configuration value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub resource: ConfigResource,
    pub name: String,
    pub value: Option<String>,
}

/// A block of producer ids handed to a broker for InitProducerId.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdsRecord {
    pub broker_id: i32,
    /// The first id not yet handed out, cluster-wide.
    pub next_producer_id: i64,
}

/// A consumer group's membership as its coordinator last committed it: a
/// completed generation, or the empty group left when every member has gone.
/// A later record for the same group replaces the earlier one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group_id: String,
    pub generation: i32,
    #[serde(default)]
    pub protocol_type: Option<String>,
    /// The protocol (assignor) chosen for this generation.
    #[serde(default)]
    pub protocol_name: Option<String>,
    #[serde(default)]
    pub leader: Option<String>,
    /// When the group entered its current state (ms since the epoch); an
    /// empty group's offsets expire counting from here.
    pub state_timestamp: i64,
    pub members: Vec<GroupMemberRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMemberRecord {
    pub member_id: String,
    #[serde(default)]
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// The member's metadata for the chosen protocol (its subscription).
    #[serde(with = "base64_bytes")]
    pub subscription: Vec<u8>,
    /// What the leader assigned this member.
    #[serde(with = "base64_bytes")]
    pub assignment: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveGroupRecord {
    pub group_id: String,
}

/// Offsets committed for a group at one time. Only the latest offset of
/// each partition is kept; a snapshot holds nothing older.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitRecord {
    pub group_id: String,
    /// ms since the epoch.
    pub commit_timestamp: i64,
    pub topics: Vec<TopicOffsets>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOffsets {
    pub topic: String,
    pub partitions: Vec<PartitionOffset>,
}

/// Compact on purpose: one is written per partition per commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    pub partition: i32,
    pub offset: i64,
    #[serde(default = "no_epoch", skip_serializing_if = "is_no_epoch")]
    pub leader_epoch: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

fn no_epoch() -> i32 {
    -1
}

fn is_no_epoch(epoch: &i32) -> bool {
    *epoch == -1
}

/// Removes committed offsets: OffsetDelete, or offsets past their retention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveOffsetsRecord {
    pub group_id: String,
    pub partitions: Vec<(String, i32)>,
}

/// Opaque bytes (member subscriptions and assignments) as base64 strings,
/// a third the size of JSON's array of numbers.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize)]
struct BatchOut<'a> {
    v: u8,
    records: &'a [MetadataRecord],
}

#[derive(Deserialize)]
struct BatchIn {
    v: u8,
    records: Vec<MetadataRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordDecodeError {
    #[error("metadata batch is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("metadata batch version {0} is newer than this node understands")]
    UnknownVersion(u8),
}

/// Encodes the records that make up one Raft entry.
pub fn encode_batch(records: &[MetadataRecord]) -> Vec<u8> {
    let batch = BatchOut {
        v: BATCH_VERSION,
        records,
    };
    // Serializing plain data structs with string keys cannot fail.
    serde_json::to_vec(&batch).unwrap_or_default()
}

/// Decodes one Raft entry written by [`encode_batch`].
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<MetadataRecord>, RecordDecodeError> {
    let batch: BatchIn = serde_json::from_slice(bytes)?;
    if batch.v > BATCH_VERSION {
        return Err(RecordDecodeError::UnknownVersion(batch.v));
    }
    Ok(batch.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip() {
        let records = vec![
            MetadataRecord::Topic(TopicRecord {
                name: "t".into(),
                topic_id: Uuid::new_v4(),
            }),
            MetadataRecord::Config(ConfigRecord {
                resource: ConfigResource::Broker(None),
                name: "log.retention.ms".into(),
                value: Some("1000".into()),
            }),
        ];
        let bytes = encode_batch(&records);
        assert_eq!(decode_batch(&bytes).unwrap(), records);
    }

    #[test]
    fn group_records_round_trip_and_stay_compact() {
        let records = vec![
            MetadataRecord::Group(GroupRecord {
                group_id: "g".into(),
                generation: 3,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                leader: Some("m-1".into()),
                state_timestamp: 1_700_000_000_000,
                members: vec![GroupMemberRecord {
                    member_id: "m-1".into(),
                    group_instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 45_000,
                    rebalance_timeout_ms: 300_000,
                    subscription: vec![0, 1, 255],
                    assignment: vec![],
                }],
            }),
            MetadataRecord::Offsets(OffsetCommitRecord {
                group_id: "g".into(),
                commit_timestamp: 1,
                topics: vec![TopicOffsets {
                    topic: "t".into(),
                    partitions: vec![PartitionOffset {
                        partition: 0,
                        offset: 42,
                        leader_epoch: -1,
                        metadata: None,
                    }],
                }],
            }),
        ];
        let bytes = encode_batch(&records);
        assert_eq!(decode_batch(&bytes).unwrap(), records);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#"{"partition":0,"offset":42}"#), "{text}");
        assert!(text.contains(r#""subscription":"AAH/""#), "{text}");
    }

    #[test]
    fn newer_fields_are_optional_and_unknown_versions_refused() {
        let old = br#"{"v":1,"records":[{"type":"Broker","broker_id":1,"incarnation_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","broker_epoch":3,"endpoints":[]}]}"#;
        let records = decode_batch(old).unwrap();
        assert!(matches!(&records[0], MetadataRecord::Broker(b) if b.rack.is_none() && !b.fenced));
        let newer = br#"{"v":9,"records":[]}"#;
        assert!(matches!(
            decode_batch(newer),
            Err(RecordDecodeError::UnknownVersion(9))
        ));
        assert!(decode_batch(b"\x00garbage").is_err());
    }
}
