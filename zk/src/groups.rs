//! Consumer groups' durable state in ZooKeeper, as the seed design and old
//! Kafka kept it:
//! - `/consumers/<group>`: the committed membership (the GroupRecord as
//!   JSON; empty for a group that only has offsets);
//! - `/consumers/<group>/offsets/<topic>/<partition>`: a committed offset.
//!
//! The coordinator (placed over the live brokers, as in KRaft mode) plans
//! each write with the same pure planner the KRaft controller uses, commits
//! it as ONE multi-op whose first operation is a conditional setData of the
//! group znode at the version this broker last read or wrote, and only then
//! applies the same records to its own image. Every write bumps that
//! version, so two brokers that both think they coordinate a group cannot
//! both move it on: the second one's multi fails, it reloads the group from
//! ZooKeeper and gives it up to the coordinator's reload.
//!
//! Loading: a [`PushHook`] reads the groups this broker starts to
//! coordinate when a push changes the live brokers (or on the first push,
//! or when this broker registered again), and drops the groups it no longer
//! coordinates from its image.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_controller::group_ops;
use sluice_controller::ops::OpResult;
use sluice_metadata::controller_api::{
    BoxFuture, ControllerError, GroupWrite, GroupWriteOutcome, GroupWriter,
};
use sluice_metadata::{
    offset_records, CommittedOffset, GroupImage, GroupRecord, MetadataImage, MetadataRecord,
    PartitionOffset, RemoveGroupRecord,
};
use tokio::sync::watch;
use tracing::{error, info, warn};
use zookeeper_client as zk;

use crate::admin::{bounded, current_client, zk_failure};
use crate::connect::{persistent, pipelined};
use crate::source::{PushHook, ZkMetadata};
use crate::znodes::{
    group_offset_path, group_offsets_path, group_path, group_topic_offsets_path, now_ms,
    ZnodeError, CONSUMERS,
};

/// `/consumers/<group>/offsets/<topic>/<partition>`: one committed offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetZnode {
    pub version: i32,
    pub offset: i64,
    #[serde(default = "no_epoch")]
    pub leader_epoch: i32,
    #[serde(default)]
    pub metadata: Option<String>,
    pub commit_timestamp: i64,
}

fn no_epoch() -> i32 {
    -1
}

impl OffsetZnode {
    fn new(offset: &PartitionOffset, commit_timestamp: i64) -> Self {
        Self {
            version: 1,
            offset: offset.offset,
            leader_epoch: offset.leader_epoch,
            metadata: offset.metadata.clone(),
            commit_timestamp,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(path: &str, data: &[u8]) -> Result<Self, ZnodeError> {
        serde_json::from_slice(data).map_err(|e| ZnodeError::new(path, e))
    }
}

/// The group znode's data: the membership, or nothing.
pub fn encode_membership(membership: Option<&GroupRecord>) -> Vec<u8> {
    membership
        .map(|m| serde_json::to_vec(m).unwrap_or_default())
        .unwrap_or_default()
}

pub fn decode_membership(
    path: &str,
    group_id: &str,
    data: &[u8],
) -> Result<Option<GroupRecord>, ZnodeError> {
    if data.is_empty() {
        return Ok(None);
    }
    let record: GroupRecord = serde_json::from_slice(data).map_err(|e| ZnodeError::new(path, e))?;
    if record.group_id != group_id {
        return Err(ZnodeError::new(
            path,
            format!("holds group {:?}", record.group_id),
        ));
    }
    Ok(Some(record))
}

/// A group id as a znode name: characters ZooKeeper refuses or that would
/// nest paths (`/`, control characters, `.` and `..` as whole names) are
/// percent-encoded, as is `%` itself. Ordinary ids read as they are.
pub fn group_znode_name(group_id: &str) -> String {
    if group_id.is_empty() || group_id == "." || group_id == ".." {
        return group_id
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
            + "%";
    }
    let mut name = String::with_capacity(group_id.len());
    for c in group_id.chars() {
        let plain =
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '+' | '=' | ',');
        if plain {
            name.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                name.push_str(&format!("%{b:02X}"));
            }
        }
    }
    name
}

/// The inverse of [`group_znode_name`]; `None` for a name it never makes.
pub fn group_id_of(name: &str) -> Option<String> {
    let (body, special) = match name.strip_suffix('%') {
        Some(body) => (body, true),
        None => (name, false),
    };
    let mut bytes = Vec::with_capacity(body.len());
    let mut rest = body.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            let text = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(text, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let id = String::from_utf8(bytes).ok()?;
    (group_znode_name(&id) == name || (special && id.is_empty())).then_some(id)
}

/// What this broker knows is in ZooKeeper for a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Stored {
    /// Not read yet, or a write's outcome is unknown: read before writing.
    #[default]
    Unknown,
    /// No group znode.
    Absent,
    Present {
        /// The group znode's data version.
        version: i32,
        has_offsets_dir: bool,
        /// The offset znodes that exist, by topic (a topic's znode exists
        /// when its key does).
        offsets: BTreeMap<String, BTreeSet<i32>>,
    },
}

#[derive(Default)]
struct Slot {
    stored: Stored,
}

/// A group as read from ZooKeeper.
#[derive(Clone, Debug)]
pub struct LoadedGroup {
    pub group_id: String,
    pub version: i32,
    pub has_offsets_dir: bool,
    pub membership: Option<GroupRecord>,
    /// Every offset znode; `None` where its data is not valid (logged).
    pub offsets: BTreeMap<String, BTreeMap<i32, Option<CommittedOffset>>>,
}

impl LoadedGroup {
    fn stored(&self) -> Stored {
        Stored::Present {
            version: self.version,
            has_offsets_dir: self.has_offsets_dir,
            offsets: self
                .offsets
                .iter()
                .map(|(t, ps)| (t.clone(), ps.keys().copied().collect()))
                .collect(),
        }
    }

    /// The records that put this group into an image, dropping offsets of
    /// topics `image` does not have (a deleted topic's offsets go with it).
    pub fn records(&self, image: &MetadataImage) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        if let Some(membership) = &self.membership {
            records.push(MetadataRecord::Group(membership.clone()));
        }
        let offsets = self
            .offsets
            .iter()
            .filter(|(topic, _)| image.topic(topic).is_some())
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .filter_map(move |(&partition, committed)| {
                        committed.as_ref().map(|c| (topic.as_str(), partition, c))
                    })
            });
        offset_records(&self.group_id, offsets, &mut records);
        records
    }

    /// Whether `group` in an image already shows exactly this.
    fn matches(&self, group: Option<&GroupImage>, image: &MetadataImage) -> bool {
        let mine: Vec<(&str, i32, &CommittedOffset)> = self
            .offsets
            .iter()
            .filter(|(t, _)| image.topic(t).is_some())
            .flat_map(|(t, ps)| {
                ps.iter()
                    .filter_map(move |(p, c)| c.as_ref().map(|c| (t.as_str(), *p, c)))
            })
            .collect();
        let Some(group) = group else {
            return self.membership.is_none() && mine.is_empty();
        };
        let theirs: Vec<(&str, i32, &CommittedOffset)> = group
            .offsets
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, c)| (t.as_str(), *p, c)))
            .collect();
        group.membership.as_deref() == self.membership.as_ref() && mine == theirs
    }
}

/// Reads one group: `Ok(None)` when it has no znode. Garbage contents are
/// logged with their path and read as missing.
pub async fn read_group(
    client: &zk::Client,
    group_id: &str,
    timeout: Duration,
) -> Result<Option<LoadedGroup>, zk::Error> {
    let name = group_znode_name(group_id);
    let path = group_path(&name);
    let (data, stat) = match bounded(timeout, client.get_data(&path)).await {
        Ok(read) => read,
        Err(zk::Error::NoNode) => return Ok(None),
        Err(e) => return Err(e),
    };
    let membership = match decode_membership(&path, group_id, &data) {
        Ok(membership) => membership,
        Err(e) => {
            error!(error = %e, "skipping a group membership znode that is not valid");
            None
        }
    };
    let offsets_path = group_offsets_path(&name);
    let (topics, has_offsets_dir) =
        match bounded(timeout, client.list_children(&offsets_path)).await {
            Ok(topics) => (topics, true),
            Err(zk::Error::NoNode) => (Vec::new(), false),
            Err(e) => return Err(e),
        };
    let listed = pipelined(topics, |topic| {
        let client = client.clone();
        let path = group_topic_offsets_path(&name, &topic);
        async move {
            let children = bounded(timeout, client.list_children(&path)).await;
            (topic, children)
        }
    })
    .await;
    let mut reads = Vec::new();
    let mut offsets: BTreeMap<String, BTreeMap<i32, Option<CommittedOffset>>> = BTreeMap::new();
    for (topic, children) in listed {
        let children = match children {
            Ok(children) => children,
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(e),
        };
        offsets.entry(topic.clone()).or_default();
        for child in children {
            match child.parse::<i32>() {
                Ok(partition) if partition >= 0 => reads.push((topic.clone(), partition)),
                _ => error!(
                    path = %format!("{}/{child}", group_topic_offsets_path(&name, &topic)),
                    "skipping an offset znode whose name is not a partition"
                ),
            }
        }
    }
    let read = pipelined(reads, |(topic, partition)| {
        let client = client.clone();
        let path = group_offset_path(&name, &topic, partition);
        async move {
            let data = bounded(timeout, client.get_data(&path)).await;
            (topic, partition, path, data)
        }
    })
    .await;
    for (topic, partition, path, data) in read {
        let committed = match data {
            Ok((data, _)) => match OffsetZnode::decode(&path, &data) {
                Ok(z) => Some(CommittedOffset {
                    offset: z.offset,
                    leader_epoch: z.leader_epoch,
                    metadata: z.metadata,
                    commit_timestamp: z.commit_timestamp,
                }),
                Err(e) => {
                    error!(error = %e, "skipping an offset znode that is not valid");
                    None
                }
            },
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(e),
        };
        offsets
            .entry(topic)
            .or_default()
            .insert(partition, committed);
    }
    Ok(Some(LoadedGroup {
        group_id: group_id.to_string(),
        version: stat.version,
        has_offsets_dir,
        membership,
        offsets,
    }))
}

/// One operation of a group write's multi.
#[derive(Debug)]
enum Op {
    Create(String, Vec<u8>),
    Set(String, Vec<u8>, Option<i32>),
    Delete(String, Option<i32>),
}

/// Turns planned records into znode operations on what is stored; returns
/// them with what is stored after they succeed. The group znode is
/// touched first and at most once, conditional on its version.
fn plan_ops(
    group_id: &str,
    records: &[MetadataRecord],
    stored: &Stored,
    image: &MetadataImage,
) -> (Vec<Op>, Stored) {
    let name = group_znode_name(group_id);
    let group = group_path(&name);
    let offsets_dir = group_offsets_path(&name);
    let mut ops = Vec::new();
    let removes_group = records
        .iter()
        .any(|r| matches!(r, MetadataRecord::RemoveGroup(_)));
    if removes_group {
        if let Stored::Present {
            version,
            has_offsets_dir,
            offsets,
        } = stored
        {
            for (topic, partitions) in offsets {
                for &p in partitions {
                    ops.push(Op::Delete(group_offset_path(&name, topic, p), None));
                }
                ops.push(Op::Delete(group_topic_offsets_path(&name, topic), None));
            }
            if *has_offsets_dir {
                ops.push(Op::Delete(offsets_dir, None));
            }
            ops.push(Op::Delete(group, Some(*version)));
        }
        return (ops, Stored::Absent);
    }
    let membership = records.iter().rev().find_map(|r| match r {
        MetadataRecord::Group(g) => Some(g),
        _ => None,
    });
    // The data the group znode keeps: the new membership, or the current one.
    let data = match membership {
        Some(m) => encode_membership(Some(m)),
        None => encode_membership(
            image
                .groups
                .get(group_id)
                .and_then(|g| g.membership.as_deref()),
        ),
    };
    let (version, mut has_offsets_dir, mut offsets) = match stored {
        Stored::Present {
            version,
            has_offsets_dir,
            offsets,
        } => {
            ops.push(Op::Set(group.clone(), data, Some(*version)));
            (version + 1, *has_offsets_dir, offsets.clone())
        }
        Stored::Absent | Stored::Unknown => {
            ops.push(Op::Create(group.clone(), data));
            ops.push(Op::Create(offsets_dir.clone(), Vec::new()));
            (0, true, BTreeMap::new())
        }
    };
    for record in records {
        match record {
            MetadataRecord::Offsets(commit) => {
                for topic in &commit.topics {
                    if !has_offsets_dir {
                        ops.push(Op::Create(offsets_dir.clone(), Vec::new()));
                        has_offsets_dir = true;
                    }
                    if !offsets.contains_key(&topic.topic) {
                        ops.push(Op::Create(
                            group_topic_offsets_path(&name, &topic.topic),
                            Vec::new(),
                        ));
                    }
                    let existing = offsets.entry(topic.topic.clone()).or_default();
                    for p in &topic.partitions {
                        let path = group_offset_path(&name, &topic.topic, p.partition);
                        let data = OffsetZnode::new(p, commit.commit_timestamp).encode();
                        if existing.insert(p.partition) {
                            ops.push(Op::Create(path, data));
                        } else {
                            ops.push(Op::Set(path, data, None));
                        }
                    }
                }
            }
            MetadataRecord::RemoveOffsets(removal) => {
                for (topic, partition) in &removal.partitions {
                    if let Some(existing) = offsets.get_mut(topic) {
                        if existing.remove(partition) {
                            ops.push(Op::Delete(
                                group_offset_path(&name, topic, *partition),
                                None,
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (
        ops,
        Stored::Present {
            version,
            has_offsets_dir,
            offsets,
        },
    )
}

/// Groups' durable state in ZooKeeper, for the group coordinator.
pub struct ZkGroups {
    clients: watch::Receiver<Option<zk::Client>>,
    metadata: Arc<ZkMetadata>,
    timeout: Duration,
    /// One slot per group this broker has read or written; its lock
    /// serializes the group's writes, so each starts from the last.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl ZkGroups {
    pub fn new(
        clients: watch::Receiver<Option<zk::Client>>,
        metadata: Arc<ZkMetadata>,
        timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            clients,
            metadata,
            timeout,
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Slot>>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, group_id: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots()
            .entry(group_id.to_string())
            .or_default()
            .clone()
    }

    /// Commits a group write: to ZooKeeper first, then to this broker's image.
    pub async fn write(
        &self,
        writer: GroupWriter,
        write: GroupWrite,
    ) -> Result<GroupWriteOutcome, ControllerError> {
        let node_id = self.metadata.node_id();
        if writer.broker_id != node_id || writer.broker_epoch != self.metadata.broker_epoch() {
            return Err(ControllerError::StaleBrokerEpoch {
                broker_id: writer.broker_id,
                broker_epoch: writer.broker_epoch,
            });
        }
        let group_id = write.group_id().to_string();
        let client = current_client(&self.clients)?;
        let slot = self.slot(&group_id);
        let mut slot = slot.lock().await;
        if slot.stored == Stored::Unknown {
            // What ZooKeeper holds must be what the image shows before a
            // write planned on the image goes on top of it.
            let loaded = read_group(&client, &group_id, self.timeout)
                .await
                .map_err(|e| zk_failure(&e))?;
            let image = self.metadata.image();
            let shown = image.groups.get(&group_id).map(|g| &**g);
            match loaded {
                None if shown.is_none() => slot.stored = Stored::Absent,
                Some(loaded) if loaded.matches(shown, &image) => slot.stored = loaded.stored(),
                other => {
                    slot.stored = self.refresh(&group_id, other, &image);
                    return Err(ControllerError::NotCoordinator(format!(
                        "group {group_id} changed in ZooKeeper; reloading it"
                    )));
                }
            }
        }
        let image = self.metadata.image();
        let OpResult { records, results } = group_ops::write_group(&image, writer, write, now_ms());
        let mut outcome = results?;
        if records.is_empty() {
            outcome.log_offset = image.offset;
            return Ok(outcome);
        }
        let (ops, next) = plan_ops(&group_id, &records, &slot.stored, &image);
        if !ops.is_empty() {
            let mut multi = client.new_multi_writer();
            for op in &ops {
                let added = match op {
                    Op::Create(path, data) => multi.add_create(path, data, &persistent()),
                    Op::Set(path, data, version) => multi.add_set_data(path, data, *version),
                    Op::Delete(path, version) => multi.add_delete(path, *version),
                };
                added.map_err(|e| {
                    ControllerError::InvalidRequest(format!("group {group_id}: {e}"))
                })?;
            }
            match bounded(self.timeout, multi.commit()).await {
                Ok(_) => {}
                Err(zk::MultiWriteError::OperationFailed {
                    index,
                    source:
                        source @ (zk::Error::BadVersion
                        | zk::Error::NodeExists
                        | zk::Error::NoNode
                        | zk::Error::NotEmpty),
                }) => {
                    metrics::counter!("sluice_zk_group_writes_total", "result" => "conflict")
                        .increment(1);
                    warn!(group = %group_id, %index, error = %source, "group write refused by ZooKeeper: another coordinator changed the group; reloading it");
                    slot.stored = Stored::Unknown;
                    if let Ok(loaded) = read_group(&client, &group_id, self.timeout).await {
                        slot.stored = self.refresh(&group_id, loaded, &self.metadata.image());
                    }
                    return Err(ControllerError::NotCoordinator(format!(
                        "group {group_id} was changed in ZooKeeper by another coordinator"
                    )));
                }
                Err(e) => {
                    // The write may have landed: read before the next one.
                    slot.stored = Stored::Unknown;
                    metrics::counter!("sluice_zk_group_writes_total", "result" => "failed")
                        .increment(1);
                    return Err(match e {
                        zk::MultiWriteError::RequestFailed { source }
                        | zk::MultiWriteError::OperationFailed { source, .. } => {
                            zk_failure(&source)
                        }
                    });
                }
            }
        }
        slot.stored = next;
        metrics::counter!("sluice_zk_group_writes_total", "result" => "ok").increment(1);
        outcome.log_offset = self.metadata.apply(&records).map_err(|e| {
            ControllerError::Internal(format!("group {group_id} written, but not applied: {e}"))
        })?;
        Ok(outcome)
    }

    /// `offsets.retention.minutes`: removes from ZooKeeper the offsets of
    /// the groups this broker coordinates that are past `retention`, and
    /// the groups left with nothing (after `grace` empty), as KRaft's
    /// controller removes them from the log. Each group is judged again on
    /// the state its write lands on. Returns (offsets, groups) removed.
    pub async fn expire(&self, retention: Duration, grace: Duration) -> (usize, usize) {
        let image = self.metadata.image();
        let node_id = self.metadata.node_id();
        let writer = GroupWriter {
            broker_id: node_id,
            broker_epoch: self.metadata.broker_epoch(),
        };
        let (retention_ms, grace_ms) = (retention.as_millis() as i64, grace.as_millis() as i64);
        let now_ms = now_ms();
        let (mut offsets, mut groups) = (0, 0);
        for group in image.groups.values() {
            if image.group_coordinator(&group.group_id) != Some(node_id) {
                continue;
            }
            let Some(expiry) = group_ops::expire_group(group, now_ms, retention_ms, grace_ms)
            else {
                continue;
            };
            let write = GroupWrite::ExpireOffsets {
                group_id: group.group_id.clone(),
                now_ms,
                retention_ms,
                grace_ms,
            };
            match self.write(writer, write).await {
                Ok(_) => {
                    offsets += expiry.offsets;
                    groups += usize::from(expiry.removes_group);
                }
                Err(e) => {
                    warn!(group = %group.group_id, error = %e, "offset expiry skipped; tried again at the next check")
                }
            }
        }
        if offsets > 0 || groups > 0 {
            info!(
                offsets,
                groups, "expired committed offsets and empty groups"
            );
        }
        (offsets, groups)
    }

    /// Replaces the group in this broker's image with what ZooKeeper holds.
    fn refresh(
        &self,
        group_id: &str,
        loaded: Option<LoadedGroup>,
        image: &MetadataImage,
    ) -> Stored {
        let mut records = vec![MetadataRecord::RemoveGroup(RemoveGroupRecord {
            group_id: group_id.to_string(),
        })];
        let stored = match &loaded {
            Some(group) => {
                records.extend(group.records(image));
                group.stored()
            }
            None => Stored::Absent,
        };
        if let Err(e) = self.metadata.apply(&records) {
            warn!(group = %group_id, error = %e, "could not reload a group into the image");
            return Stored::Unknown;
        }
        stored
    }

    /// The records a push needs for groups: those this broker starts to
    /// coordinate, read from ZooKeeper, and removals of those it stops
    /// coordinating.
    async fn group_records(
        &self,
        before: &MetadataImage,
        after: &MetadataImage,
    ) -> Vec<MetadataRecord> {
        let node_id = self.metadata.node_id();
        let own_epoch = |image: &MetadataImage| {
            image
                .brokers
                .get(&node_id)
                .filter(|b| !b.fenced)
                .map(|b| b.broker_epoch)
        };
        let live = |image: &MetadataImage| -> Vec<i32> {
            image
                .brokers
                .values()
                .filter(|b| !b.fenced)
                .map(|b| b.broker_id)
                .collect()
        };
        let registered_again = own_epoch(before) != own_epoch(after);
        if !registered_again && live(before) == live(after) {
            return Vec::new();
        }
        let mut records = Vec::new();
        for group_id in before.groups.keys() {
            if after.group_coordinator(group_id) != Some(node_id) {
                records.push(MetadataRecord::RemoveGroup(RemoveGroupRecord {
                    group_id: group_id.clone(),
                }));
                self.slots().remove(group_id);
            }
        }
        if own_epoch(after).is_none() {
            return records;
        }
        let Some(client) = self.clients.borrow().clone() else {
            error!("no ZooKeeper session: the groups this broker now coordinates are not loaded");
            return records;
        };
        let names = match bounded(self.timeout, client.list_children(CONSUMERS)).await {
            Ok(names) => names,
            Err(e) => {
                error!(error = %e, "could not list the groups in ZooKeeper; the groups this broker now coordinates are not loaded");
                return records;
            }
        };
        let gained: Vec<String> = names
            .iter()
            .filter_map(|name| {
                let id = group_id_of(name);
                if id.is_none() {
                    error!(path = %group_path(name), "skipping a group znode whose name is not a group id");
                }
                id
            })
            .filter(|g| {
                after.group_coordinator(g) == Some(node_id)
                    && (registered_again || before.group_coordinator(g) != Some(node_id))
            })
            .collect();
        let timeout = self.timeout;
        let loaded = pipelined(gained, |group_id| {
            let client = client.clone();
            async move {
                let read = read_group(&client, &group_id, timeout).await;
                (group_id, read)
            }
        })
        .await;
        let mut count = 0;
        for (group_id, read) in loaded {
            let slot = self.slot(&group_id);
            // A write in progress holds the slot; it finds out on its own.
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            match read {
                Ok(Some(group)) => {
                    if before.groups.contains_key(&group_id) {
                        records.push(MetadataRecord::RemoveGroup(RemoveGroupRecord {
                            group_id: group_id.clone(),
                        }));
                    }
                    records.extend(group.records(after));
                    slot.stored = group.stored();
                    count += 1;
                }
                Ok(None) => slot.stored = Stored::Absent,
                Err(e) => {
                    error!(group = %group_id, error = %e, "could not load a group from ZooKeeper");
                    slot.stored = Stored::Unknown;
                }
            }
        }
        if count > 0 {
            info!(
                groups = count,
                "loaded the groups this broker now coordinates from ZooKeeper"
            );
        }
        records
    }
}

impl PushHook for ZkGroups {
    fn extra_records<'a>(
        &'a self,
        before: &'a Arc<MetadataImage>,
        after: &'a Arc<MetadataImage>,
    ) -> BoxFuture<'a, Vec<MetadataRecord>> {
        Box::pin(self.group_records(before, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        broker_epoch, metadata_with, new_metadata, partition, publish, push, shared, CapturedLogs,
    };
    use sluice_metadata::control_requests::PartitionState;
    use sluice_metadata::{BrokerRegistration, GroupMemberRecord, TopicOffsets, Uuid};

    #[test]
    fn group_ids_map_to_znode_names_and_back() {
        for id in [
            "orders",
            "my.group-1_x",
            "a/b",
            "%",
            ".",
            "..",
            "",
            "grüße",
            "sp ace",
        ] {
            let name = group_znode_name(id);
            assert!(!name.contains('/'), "{name}");
            assert!(
                name != "." && name != ".." && !name.is_empty(),
                "{id:?} -> {name:?}"
            );
            assert_eq!(group_id_of(&name).as_deref(), Some(id), "{name}");
        }
        assert_eq!(group_znode_name("orders"), "orders");
        assert_eq!(group_id_of("bad%zz"), None);
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn topic_t(id: Uuid) -> Vec<PartitionState> {
        vec![
            partition("t", id, 0, 1, &[1]),
            partition("t", id, 1, 1, &[1]),
        ]
    }

    fn writer(node_id: i32) -> GroupWriter {
        GroupWriter {
            broker_id: node_id,
            broker_epoch: broker_epoch(node_id),
        }
    }

    fn generation(group: &str, generation: i32, members: &[&str]) -> GroupRecord {
        GroupRecord {
            group_id: group.into(),
            generation,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            leader: members.first().map(|m| m.to_string()),
            state_timestamp: 1,
            members: members
                .iter()
                .map(|m| GroupMemberRecord {
                    member_id: m.to_string(),
                    group_instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 10_000,
                    rebalance_timeout_ms: 10_000,
                    subscription: vec![1, 2],
                    assignment: vec![3],
                })
                .collect(),
        }
    }

    fn commit(
        group: &str,
        generation: i32,
        member: &str,
        offsets: &[(&str, i32, i64)],
    ) -> GroupWrite {
        let mut topics: Vec<TopicOffsets> = Vec::new();
        for &(topic, partition, offset) in offsets {
            let entry = PartitionOffset {
                partition,
                offset,
                leader_epoch: 0,
                metadata: Some("m".into()),
            };
            match topics.iter_mut().find(|t| t.topic == topic) {
                Some(t) => t.partitions.push(entry),
                None => topics.push(TopicOffsets {
                    topic: topic.into(),
                    partitions: vec![entry],
                }),
            }
        }
        GroupWrite::CommitOffsets {
            group_id: group.into(),
            generation,
            member_id: member.into(),
            offsets: topics,
        }
    }

    fn offset_in(metadata: &ZkMetadata, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let image = metadata.image();
        image
            .groups
            .get(group)?
            .offset(topic, partition)
            .map(|c| c.offset)
    }

    async fn stored_offset(
        client: &zk::Client,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Option<i64> {
        let path = group_offset_path(group, topic, partition);
        let (data, _) = client.get_data(&path).await.ok()?;
        Some(OffsetZnode::decode(&path, &data).unwrap().offset)
    }

    /// A broker whose group hook is in place before its first push.
    async fn loading_broker(
        clients: &watch::Sender<Option<zk::Client>>,
        node_id: i32,
        brokers: &[i32],
        partitions: Vec<PartitionState>,
    ) -> (Arc<ZkMetadata>, Arc<ZkGroups>) {
        let metadata = new_metadata(node_id);
        let groups = ZkGroups::new(clients.subscribe(), metadata.clone(), TIMEOUT);
        metadata.set_push_hook(groups.clone());
        push(&metadata, brokers, partitions, true).await;
        (metadata, groups)
    }

    #[tokio::test]
    async fn group_writes_go_to_zookeeper_then_to_the_image() {
        let client = shared().client("/group-writes").await;
        let clients = publish(client.clone());
        let metadata = metadata_with(1, &[1], topic_t(Uuid::new_v4())).await;
        let groups = ZkGroups::new(clients.subscribe(), metadata.clone(), TIMEOUT);

        let record = generation("g", 1, &["m1"]);
        let outcome = groups
            .write(
                writer(1),
                GroupWrite::Membership {
                    expected_generation: 0,
                    group: record.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(outcome.log_offset, metadata.image().offset);
        let (data, stat) = client.get_data("/consumers/g").await.unwrap();
        assert_eq!(
            decode_membership("/consumers/g", "g", &data).unwrap(),
            Some(record)
        );
        assert_eq!(stat.version, 0);

        let outcome = groups
            .write(
                writer(1),
                commit("g", 1, "m1", &[("t", 0, 42), ("t", 1, 7), ("nope", 0, 1)]),
            )
            .await
            .unwrap();
        assert_eq!(outcome.unknown_partitions, vec![("nope".to_string(), 0)]);
        assert_eq!(stored_offset(&client, "g", "t", 0).await, Some(42));
        assert_eq!(offset_in(&metadata, "g", "t", 0), Some(42));
        assert!(client
            .check_stat("/consumers/g/offsets/nope")
            .await
            .unwrap()
            .is_none());

        groups
            .write(writer(1), commit("g", 1, "m1", &[("t", 0, 43)]))
            .await
            .unwrap();
        assert_eq!(stored_offset(&client, "g", "t", 0).await, Some(43));
        assert_eq!(offset_in(&metadata, "g", "t", 0), Some(43));

        // A stale generation is refused by the planner, before ZooKeeper.
        let stale = groups
            .write(writer(1), commit("g", 0, "m1", &[("t", 0, 1)]))
            .await;
        assert!(
            matches!(stale, Err(ControllerError::IllegalGeneration(_))),
            "{stale:?}"
        );

        groups
            .write(
                writer(1),
                GroupWrite::DeleteOffsets {
                    group_id: "g".into(),
                    partitions: vec![("t".into(), 1)],
                },
            )
            .await
            .unwrap();
        assert_eq!(stored_offset(&client, "g", "t", 1).await, None);
        assert_eq!(offset_in(&metadata, "g", "t", 1), None);

        groups
            .write(
                writer(1),
                GroupWrite::Membership {
                    expected_generation: 1,
                    group: generation("g", 2, &[]),
                },
            )
            .await
            .unwrap();
        groups
            .write(
                writer(1),
                GroupWrite::DeleteGroup {
                    group_id: "g".into(),
                },
            )
            .await
            .unwrap();
        assert!(client.check_stat("/consumers/g").await.unwrap().is_none());
        assert!(metadata.image().groups.get("g").is_none());

        // Offsets committed outside group management create the group.
        groups
            .write(writer(1), commit("simple", -1, "", &[("t", 1, 5)]))
            .await
            .unwrap();
        assert_eq!(stored_offset(&client, "simple", "t", 1).await, Some(5));
    }

    #[tokio::test]
    async fn a_coordinator_with_a_stale_version_is_refused() {
        let server = shared();
        let (clients_a, clients_b) = (
            publish(server.client("/group-race").await),
            publish(server.client("/group-race").await),
        );
        let id = Uuid::new_v4();
        // Each broker believes it alone is live, so each coordinates the group.
        let metadata_a = metadata_with(1, &[1], topic_t(id)).await;
        let groups_a = ZkGroups::new(clients_a.subscribe(), metadata_a.clone(), TIMEOUT);
        groups_a
            .write(
                writer(1),
                GroupWrite::Membership {
                    expected_generation: 0,
                    group: generation("g", 1, &["m1"]),
                },
            )
            .await
            .unwrap();
        let (metadata_b, groups_b) = loading_broker(&clients_b, 2, &[2], topic_t(id)).await;
        assert_eq!(metadata_b.image().groups["g"].generation(), 1);

        // A moves the group on; B's view is now one version behind.
        groups_a
            .write(writer(1), commit("g", 1, "m1", &[("t", 0, 10)]))
            .await
            .unwrap();
        let refused = groups_b
            .write(writer(2), commit("g", 1, "m1", &[("t", 0, 99)]))
            .await;
        assert!(
            matches!(refused, Err(ControllerError::NotCoordinator(_))),
            "{refused:?}"
        );
        let client = clients_a.borrow().clone().unwrap();
        assert_eq!(stored_offset(&client, "g", "t", 0).await, Some(10));
        // B reloaded the group from ZooKeeper for its coordinator's reload.
        assert_eq!(offset_in(&metadata_b, "g", "t", 0), Some(10));

        // B writes on top of what it reloaded; now A is the stale one.
        groups_b
            .write(writer(2), commit("g", 1, "m1", &[("t", 0, 11)]))
            .await
            .unwrap();
        let refused = groups_a
            .write(writer(1), commit("g", 1, "m1", &[("t", 0, 12)]))
            .await;
        assert!(
            matches!(refused, Err(ControllerError::NotCoordinator(_))),
            "{refused:?}"
        );
        assert_eq!(stored_offset(&client, "g", "t", 0).await, Some(11));

        // A new group created by two coordinators at once: one wins.
        let create = |generation_record| GroupWrite::Membership {
            expected_generation: 0,
            group: generation_record,
        };
        groups_a
            .write(writer(1), create(generation("h", 1, &["a"])))
            .await
            .unwrap();
        let refused = groups_b
            .write(writer(2), create(generation("h", 1, &["b"])))
            .await;
        assert!(
            matches!(refused, Err(ControllerError::NotCoordinator(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn the_coordinator_loads_its_groups_when_the_live_brokers_change() {
        let server = shared();
        let clients = publish(server.client("/group-load").await);
        let id = Uuid::new_v4();
        let writer_metadata = metadata_with(1, &[1], topic_t(id)).await;
        let groups = ZkGroups::new(clients.subscribe(), writer_metadata, TIMEOUT);
        // A group that moves to broker 4 once it is live.
        let registration = |broker_id| BrokerRegistration {
            broker_id,
            incarnation_id: Uuid::nil(),
            broker_epoch: 0,
            endpoints: Vec::new(),
            rack: None,
            fenced: false,
        };
        let both = [registration(3), registration(4)];
        let moving = (0..100)
            .map(|i| format!("group-{i}"))
            .find(|g| sluice_metadata::group_coordinator(both.iter(), g) == Some(4))
            .unwrap();
        for group in ["stays", moving.as_str()] {
            groups
                .write(
                    writer(1),
                    GroupWrite::Membership {
                        expected_generation: 0,
                        group: generation(group, 1, &["m1"]),
                    },
                )
                .await
                .unwrap();
            groups
                .write(
                    writer(1),
                    commit(group, 1, "m1", &[("t", 0, 5), ("t", 1, 6)]),
                )
                .await
                .unwrap();
        }

        let (metadata, _groups) = loading_broker(&clients, 3, &[3], topic_t(id)).await;
        let image = metadata.image();
        for group in ["stays", moving.as_str()] {
            let loaded = &image.groups[group];
            assert_eq!(
                loaded.membership.as_deref(),
                Some(&generation(group, 1, &["m1"]))
            );
            assert_eq!(loaded.offset("t", 1).map(|c| c.offset), Some(6));
        }

        // Broker 4 joins: the moving group leaves broker 3's image.
        push(&metadata, &[3, 4], Vec::new(), false).await;
        let image = metadata.image();
        assert!(image.groups.get(moving.as_str()).is_none());
        if image.group_coordinator("stays") == Some(3) {
            assert!(image.groups.get("stays").is_some());
        }
    }

    #[tokio::test]
    async fn garbage_group_znodes_are_logged_and_skipped() {
        let logs = CapturedLogs::start();
        let client = shared().client("/group-garbage").await;
        let clients = publish(client.clone());
        let id = Uuid::new_v4();
        let options = persistent();
        client
            .create("/consumers/bad", b"{not json", &options)
            .await
            .unwrap();
        client
            .create("/consumers/good", b"", &options)
            .await
            .unwrap();
        for path in ["/consumers/good/offsets", "/consumers/good/offsets/t"] {
            client.create(path, b"", &options).await.unwrap();
        }
        client
            .create("/consumers/good/offsets/t/0", b"garbage", &options)
            .await
            .unwrap();
        let fine = OffsetZnode {
            version: 1,
            offset: 9,
            leader_epoch: 0,
            metadata: None,
            commit_timestamp: 1,
        };
        client
            .create("/consumers/good/offsets/t/1", &fine.encode(), &options)
            .await
            .unwrap();

        let (metadata, groups) = loading_broker(&clients, 1, &[1], topic_t(id)).await;
        let image = metadata.image();
        assert!(image
            .groups
            .get("bad")
            .is_none_or(|g| g.membership.is_none()));
        let good = &image.groups["good"];
        assert_eq!(good.offset("t", 0), None);
        assert_eq!(good.offset("t", 1).map(|c| c.offset), Some(9));
        let text = logs.text();
        assert!(text.contains("/consumers/bad"), "{text}");
        assert!(text.contains("/consumers/good/offsets/t/0"), "{text}");

        // The garbage offset is overwritten by the next commit.
        groups
            .write(writer(1), commit("good", -1, "", &[("t", 0, 3)]))
            .await
            .unwrap();
        assert_eq!(stored_offset(&client, "good", "t", 0).await, Some(3));
    }
}
