//! Where ZooKeeper mode keeps the cluster, and in what format: the znode
//! layout and JSON of Kafka 2.x/3.x, so the paths read the same as Kafka's
//! and a `zkCli.sh` session shows what an operator of Kafka would expect.
//!
//! Every parser refuses garbage with a [`ZnodeError`] naming the path: a
//! corrupt znode is logged and skipped by its reader, never a crash.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_metadata::Endpoint;
use uuid::Uuid;

pub const BROKER_IDS: &str = "/brokers/ids";
pub const TOPICS: &str = "/brokers/topics";
pub const CONTROLLER: &str = "/controller";
pub const CONTROLLER_EPOCH: &str = "/controller_epoch";
pub const DELETE_TOPICS: &str = "/admin/delete_topics";
pub const TOPIC_CONFIGS: &str = "/config/topics";
pub const CONFIG_CHANGES: &str = "/config/changes";
/// Prefix of the sequential znodes under [`CONFIG_CHANGES`].
pub const CONFIG_CHANGE_PREFIX: &str = "/config/changes/config_change_";
pub const ISR_CHANGES: &str = "/isr_change_notification";
/// Prefix of the sequential znodes under [`ISR_CHANGES`].
pub const ISR_CHANGE_PREFIX: &str = "/isr_change_notification/isr_change_";
pub const CLUSTER_ID: &str = "/cluster/id";
pub const PRODUCER_ID_BLOCK: &str = "/latest_producer_id_block";
pub const CONSUMERS: &str = "/consumers";

/// The persistent znodes every other path hangs under, created at start.
pub const PERSISTENT_PATHS: &[&str] = &[
    "/brokers",
    BROKER_IDS,
    TOPICS,
    "/admin",
    DELETE_TOPICS,
    "/config",
    TOPIC_CONFIGS,
    CONFIG_CHANGES,
    ISR_CHANGES,
    "/cluster",
    CONSUMERS,
];

pub fn broker_path(broker_id: i32) -> String {
    format!("{BROKER_IDS}/{broker_id}")
}

pub fn topic_path(topic: &str) -> String {
    format!("{TOPICS}/{topic}")
}

pub fn partitions_path(topic: &str) -> String {
    format!("{TOPICS}/{topic}/partitions")
}

pub fn partition_path(topic: &str, partition: i32) -> String {
    format!("{TOPICS}/{topic}/partitions/{partition}")
}

pub fn partition_state_path(topic: &str, partition: i32) -> String {
    format!("{TOPICS}/{topic}/partitions/{partition}/state")
}

pub fn delete_topic_path(topic: &str) -> String {
    format!("{DELETE_TOPICS}/{topic}")
}

pub fn topic_config_path(topic: &str) -> String {
    format!("{TOPIC_CONFIGS}/{topic}")
}

pub fn group_path(group: &str) -> String {
    format!("{CONSUMERS}/{group}")
}

pub fn group_offsets_path(group: &str) -> String {
    format!("{CONSUMERS}/{group}/offsets")
}

pub fn group_topic_offsets_path(group: &str, topic: &str) -> String {
    format!("{CONSUMERS}/{group}/offsets/{topic}")
}

pub fn group_offset_path(group: &str, topic: &str, partition: i32) -> String {
    format!("{CONSUMERS}/{group}/offsets/{topic}/{partition}")
}

#[derive(Debug, thiserror::Error)]
#[error("znode {path} is not valid: {reason}")]
pub struct ZnodeError {
    pub path: String,
    pub reason: String,
}

impl ZnodeError {
    pub fn new(path: &str, reason: impl ToString) -> Self {
        Self {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }
}

fn parse<T: DeserializeOwned>(path: &str, data: &[u8]) -> Result<T, ZnodeError> {
    serde_json::from_slice(data).map_err(|e| ZnodeError::new(path, e))
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data with string keys always serializes.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `/brokers/ids/<id>`: a live broker's endpoints (Kafka's version 5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerZnode {
    pub version: i32,
    pub host: String,
    pub port: u16,
    /// `LISTENER://host:port` for each listener.
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub listener_security_protocol_map: BTreeMap<String, String>,
    #[serde(default = "no_jmx")]
    pub jmx_port: i32,
    /// ms since the epoch, as a string (as Kafka writes it).
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub rack: Option<String>,
}

fn no_jmx() -> i32 {
    -1
}

impl BrokerZnode {
    pub fn new(endpoints: &[Endpoint], rack: Option<String>, now_ms: i64) -> Self {
        let first = endpoints.first();
        Self {
            version: 5,
            host: first.map(|e| e.host.clone()).unwrap_or_default(),
            port: first.map_or(0, |e| e.port),
            endpoints: endpoints
                .iter()
                .map(|e| format!("{}://{}:{}", e.listener, e.host, e.port))
                .collect(),
            listener_security_protocol_map: endpoints
                .iter()
                .map(|e| (e.listener.clone(), "PLAINTEXT".to_string()))
                .collect(),
            jmx_port: -1,
            timestamp: now_ms.to_string(),
            rack,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(path: &str, data: &[u8]) -> Result<Self, ZnodeError> {
        parse(path, data)
    }

    /// The endpoints as the metadata model holds them.
    pub fn parsed_endpoints(&self, path: &str) -> Result<Vec<Endpoint>, ZnodeError> {
        self.endpoints
            .iter()
            .map(|text| {
                let (listener, address) = text
                    .split_once("://")
                    .ok_or_else(|| ZnodeError::new(path, format!("endpoint {text:?}")))?;
                let (host, port) = address
                    .rsplit_once(':')
                    .ok_or_else(|| ZnodeError::new(path, format!("endpoint {text:?}")))?;
                let port = port
                    .parse()
                    .map_err(|_| ZnodeError::new(path, format!("endpoint {text:?}")))?;
                Ok(Endpoint {
                    listener: listener.to_string(),
                    host: host.trim_matches(['[', ']']).to_string(),
                    port,
                })
            })
            .collect()
    }
}

/// `/brokers/topics/<t>`: a topic's id and replica assignment (Kafka's version 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicZnode {
    pub version: i32,
    /// The topic id, base64url without padding, as Kafka writes it.
    #[serde(default)]
    pub topic_id: Option<String>,
    /// Replicas by partition index (a string key, as JSON objects need).
    pub partitions: BTreeMap<String, Vec<i32>>,
    #[serde(default)]
    pub adding_replicas: BTreeMap<String, Vec<i32>>,
    #[serde(default)]
    pub removing_replicas: BTreeMap<String, Vec<i32>>,
}

/// A topic as [`TopicZnode::decode`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicAssignment {
    pub topic_id: Uuid,
    pub replicas: BTreeMap<i32, Vec<i32>>,
}

impl TopicZnode {
    pub fn new(topic_id: Uuid, replicas: &BTreeMap<i32, Vec<i32>>) -> Self {
        Self {
            version: 3,
            topic_id: Some(URL_SAFE_NO_PAD.encode(topic_id.as_bytes())),
            partitions: replicas
                .iter()
                .map(|(p, r)| (p.to_string(), r.clone()))
                .collect(),
            adding_replicas: BTreeMap::new(),
            removing_replicas: BTreeMap::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Reads an assignment; a topic written without an id (by an older
    /// tool) is refused, since Sluice deletes partition data by topic id.
    pub fn decode(path: &str, data: &[u8]) -> Result<TopicAssignment, ZnodeError> {
        let znode: TopicZnode = parse(path, data)?;
        let id_text = znode
            .topic_id
            .ok_or_else(|| ZnodeError::new(path, "no topic_id"))?;
        let id_bytes = URL_SAFE_NO_PAD
            .decode(id_text.trim_end_matches('='))
            .map_err(|e| ZnodeError::new(path, format!("topic_id: {e}")))?;
        let topic_id = Uuid::from_slice(&id_bytes)
            .map_err(|e| ZnodeError::new(path, format!("topic_id: {e}")))?;
        let mut replicas = BTreeMap::new();
        for (index, list) in znode.partitions {
            let index: i32 = index
                .parse()
                .ok()
                .filter(|i| *i >= 0)
                .ok_or_else(|| ZnodeError::new(path, format!("partition {index:?}")))?;
            if list.is_empty() {
                return Err(ZnodeError::new(
                    path,
                    format!("partition {index} has no replicas"),
                ));
            }
            replicas.insert(index, list);
        }
        if replicas.is_empty() {
            return Err(ZnodeError::new(path, "no partitions"));
        }
        // Partitions are numbered from 0 without gaps.
        if replicas.keys().copied().ne(0..replicas.len() as i32) {
            return Err(ZnodeError::new(path, "partition indexes have gaps"));
        }
        Ok(TopicAssignment { topic_id, replicas })
    }
}

/// `/brokers/topics/<t>/partitions/<p>/state`: leadership and ISR. The
/// znode's data version is the partition epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStateZnode {
    pub controller_epoch: i32,
    pub leader: i32,
    pub version: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
}

impl PartitionStateZnode {
    pub fn new(controller_epoch: i32, leader: i32, leader_epoch: i32, isr: Vec<i32>) -> Self {
        Self {
            controller_epoch,
            leader,
            version: 1,
            leader_epoch,
            isr,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(path: &str, data: &[u8]) -> Result<Self, ZnodeError> {
        parse(path, data)
    }
}

/// `/controller`: the broker that won the election (ephemeral).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerZnode {
    pub version: i32,
    pub brokerid: i32,
    #[serde(default)]
    pub timestamp: String,
}

impl ControllerZnode {
    pub fn new(broker_id: i32, now_ms: i64) -> Self {
        Self {
            version: 1,
            brokerid: broker_id,
            timestamp: now_ms.to_string(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(path: &str, data: &[u8]) -> Result<Self, ZnodeError> {
        parse(path, data)
    }
}

/// `/controller_epoch` holds the epoch as a plain number.
pub fn decode_controller_epoch(data: &[u8]) -> Result<i32, ZnodeError> {
    std::str::from_utf8(data)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| ZnodeError::new(CONTROLLER_EPOCH, "not a number"))
}

pub fn encode_controller_epoch(epoch: i32) -> Vec<u8> {
    epoch.to_string().into_bytes()
}

/// `/cluster/id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdZnode {
    pub version: String,
    pub id: String,
}

impl ClusterIdZnode {
    pub fn new(id: String) -> Self {
        Self {
            version: "1".into(),
            id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(data: &[u8]) -> Result<Self, ZnodeError> {
        parse(CLUSTER_ID, data)
    }
}

/// `/config/topics/<t>`: a topic's dynamic configs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigZnode {
    pub version: i32,
    pub config: BTreeMap<String, String>,
}

impl ConfigZnode {
    pub fn new(config: BTreeMap<String, String>) -> Self {
        Self { version: 1, config }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(path: &str, data: &[u8]) -> Result<Self, ZnodeError> {
        parse(path, data)
    }
}

/// `/config/changes/config_change_<n>`: which entity's configs changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChangeZnode {
    pub version: i32,
    /// `topics/<t>`
    pub entity_path: String,
}

impl ConfigChangeZnode {
    pub fn for_topic(topic: &str) -> Self {
        Self {
            version: 2,
            entity_path: format!("topics/{topic}"),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(path: &str, data: &[u8]) -> Result<Self, ZnodeError> {
        parse(path, data)
    }

    /// The topic whose configs changed, when the entity is a topic.
    pub fn topic(&self) -> Option<&str> {
        self.entity_path.strip_prefix("topics/")
    }
}

/// One partition named in an ISR change notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChangedPartition {
    pub topic: String,
    pub partition: i32,
}

/// `/isr_change_notification/isr_change_<n>`: partitions whose ISR a leader changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChangeZnode {
    pub version: i32,
    pub partitions: Vec<IsrChangedPartition>,
}

/// The most a znode's data may take here: ZooKeeper refuses a request over
/// `jute.maxbuffer` (1 MiB by default) by dropping the connection, so a
/// write that large must never be sent. The rest of the MiB is headroom for
/// the path and the request's framing.
pub const ZNODE_MAX_BYTES: usize = 1_000_000;

/// The most an ISR change notification may take: half of the largest
/// request a ZooKeeper server accepts by default (`jute.maxbuffer`, 1 MiB).
/// A larger one is refused by closing the connection, and a client that
/// sends it again on reconnecting never gets through.
pub const ISR_CHANGE_MAX_BYTES: usize = 512 * 1024;

impl IsrChangeZnode {
    pub fn new(partitions: Vec<IsrChangedPartition>) -> Self {
        Self {
            version: 1,
            partitions,
        }
    }

    /// Notifications naming `partitions` in order, each encoding to at most
    /// [`ISR_CHANGE_MAX_BYTES`]: a leader that changed the ISRs of tens of
    /// thousands of partitions at once needs several.
    pub fn split(partitions: Vec<IsrChangedPartition>) -> Vec<Self> {
        let envelope = Self::new(Vec::new()).encode().len();
        let mut notices = Vec::new();
        let mut current = Vec::new();
        let mut size = envelope;
        for partition in partitions {
            // The entry and the comma before it.
            let entry = to_json(&partition).len() + 1;
            if !current.is_empty() && size + entry > ISR_CHANGE_MAX_BYTES {
                notices.push(Self::new(std::mem::take(&mut current)));
                size = envelope;
            }
            size += entry;
            current.push(partition);
        }
        if !current.is_empty() {
            notices.push(Self::new(current));
        }
        notices
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(path: &str, data: &[u8]) -> Result<Self, ZnodeError> {
        parse(path, data)
    }
}

/// `/latest_producer_id_block`: the last block of producer ids handed out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdBlockZnode {
    pub version: i32,
    pub broker: i32,
    /// Inclusive bounds, as decimal strings (as Kafka writes them).
    pub block_start: String,
    pub block_end: String,
}

impl ProducerIdBlockZnode {
    pub fn new(broker: i32, start: i64, end_inclusive: i64) -> Self {
        Self {
            version: 1,
            broker,
            block_start: start.to_string(),
            block_end: end_inclusive.to_string(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        to_json(self)
    }

    /// The block's inclusive end.
    pub fn decode_end(data: &[u8]) -> Result<i64, ZnodeError> {
        let znode: ProducerIdBlockZnode = parse(PRODUCER_ID_BLOCK, data)?;
        znode
            .block_end
            .parse()
            .map_err(|_| ZnodeError::new(PRODUCER_ID_BLOCK, "block_end is not a number"))
    }
}

/// The current time in ms since the epoch, for znode timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_assignments_round_trip_in_kafkas_format() {
        let id = Uuid::new_v4();
        let replicas = BTreeMap::from([(0, vec![1, 2]), (1, vec![2, 3])]);
        let data = TopicZnode::new(id, &replicas).encode();
        let text = String::from_utf8(data.clone()).unwrap();
        assert!(
            text.contains(r#""partitions":{"0":[1,2],"1":[2,3]}"#),
            "{text}"
        );
        assert!(text.contains(r#""version":3"#), "{text}");
        let read = TopicZnode::decode("/brokers/topics/t", &data).unwrap();
        assert_eq!(read.topic_id, id);
        assert_eq!(read.replicas, replicas);
    }

    /// One leader changing the ISRs of 100,000 partitions at once (a
    /// broker back after a failure, at 100,000 partitions) once asked
    /// ZooKeeper for a 2.8 MB node and lost its session over and over.
    #[test]
    fn isr_change_notifications_fit_a_zookeeper_request() {
        let partitions: Vec<IsrChangedPartition> = (0..100_000)
            .map(|i| IsrChangedPartition {
                topic: format!("{}-{:05}", "t".repeat(200), i / 100),
                partition: i % 100,
            })
            .collect();
        let notices = IsrChangeZnode::split(partitions.clone());
        assert!(notices.len() > 1);
        for notice in &notices {
            let data = notice.encode();
            assert!(data.len() <= ISR_CHANGE_MAX_BYTES, "{} bytes", data.len());
            let read = IsrChangeZnode::decode("/isr_change_notification/isr_change_1", &data);
            assert_eq!(&read.unwrap(), notice);
        }
        let named: Vec<IsrChangedPartition> =
            notices.into_iter().flat_map(|n| n.partitions).collect();
        assert_eq!(named, partitions);
        assert_eq!(IsrChangeZnode::split(Vec::new()), Vec::new());
    }

    #[test]
    fn garbage_topic_znodes_are_refused_with_their_path() {
        for bad in [
            &b"{not json"[..],
            br#"{"version":3,"partitions":{"0":[1]}}"#,
            br#"{"version":3,"topic_id":"!!","partitions":{"0":[1]}}"#,
            br#"{"version":3,"topic_id":"AAAAAAAAAAAAAAAAAAAAAA","partitions":{"x":[1]}}"#,
            br#"{"version":3,"topic_id":"AAAAAAAAAAAAAAAAAAAAAA","partitions":{"1":[1]}}"#,
            br#"{"version":3,"topic_id":"AAAAAAAAAAAAAAAAAAAAAA","partitions":{"0":[]}}"#,
        ] {
            let e = TopicZnode::decode("/brokers/topics/t", bad).unwrap_err();
            assert_eq!(e.path, "/brokers/topics/t");
        }
    }

    #[test]
    fn broker_endpoints_parse() {
        let endpoints = vec![Endpoint {
            listener: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9092,
        }];
        let znode = BrokerZnode::new(&endpoints, None, 1);
        let read = BrokerZnode::decode("/brokers/ids/1", &znode.encode()).unwrap();
        assert_eq!(read.parsed_endpoints("/brokers/ids/1").unwrap(), endpoints);
        assert_eq!(read.endpoints, vec!["PLAINTEXT://127.0.0.1:9092"]);
    }

    #[test]
    fn controller_epoch_is_a_plain_number() {
        assert_eq!(
            decode_controller_epoch(&encode_controller_epoch(7)).unwrap(),
            7
        );
        assert!(decode_controller_epoch(b"seven").is_err());
    }
}
