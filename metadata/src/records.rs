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
