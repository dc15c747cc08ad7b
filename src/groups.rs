//! `sluice groups ...`: consumer group administration over the Kafka
//! protocol, after Kafka's kafka-consumer-groups.sh — list, describe
//! (members, assignments, committed offsets and lag), delete and
//! reset-offsets — against any Kafka-compatible cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes};
use clap::{ArgGroup, Args, Subcommand};
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use kafka_protocol::ResponseError;

use crate::client::KafkaClient;
use crate::table::Table;
use crate::topics::{check, name};
use sluice_broker::ClientError;

/// How long to keep retrying while a group's coordinator moves or loads.
const RETRY_FOR: Duration = Duration::from_secs(15);
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
const CLIENT_ID: &str = "sluice-cli";
/// ListOffsets timestamps with a special meaning.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List the groups of every broker in the cluster.
    List {
        /// Only groups in this state (Stable, Empty, PreparingRebalance, ...); repeatable.
        #[arg(long = "state")]
        states: Vec<String>,
    },
    /// Show a group's state, members and assignments, committed offsets and lag.
    Describe {
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Delete groups and their committed offsets (only groups without active members).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Plan new committed offsets for a group, and commit them with --execute.
    ResetOffsets(ResetArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("scope").required(true).args(["topics", "all_topics"])))]
#[command(group(
    ArgGroup::new("scenario")
        .required(true)
        .args(["to_earliest", "to_latest", "to_offset", "shift_by", "to_datetime"])
))]
pub struct ResetArgs {
    /// The group whose offsets to reset.
    #[arg(long, short)]
    group: String,
    /// A topic, or some of its partitions as TOPIC:0,1,2; repeatable.
    #[arg(long = "topic", short, value_name = "TOPIC[:P1,P2...]")]
    topics: Vec<String>,
    /// Every topic the group has committed offsets for.
    #[arg(long)]
    all_topics: bool,
    /// The log start offset of each partition.
    #[arg(long)]
    to_earliest: bool,
    /// The log end offset of each partition.
    #[arg(long)]
    to_latest: bool,
    /// This offset (kept within the partition's earliest and latest).
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
    /// The committed offset moved by N (negative: back), kept within range.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
    /// The first offset whose timestamp is at or after this time:
    /// YYYY-MM-DDTHH:MM:SS[.sss][Z|+HH:MM] (UTC when no zone is given), or
    /// milliseconds since the epoch.
    #[arg(long, value_name = "DATETIME")]
    to_datetime: Option<String>,
    /// Commit the new offsets (without it, only show them).
    #[arg(long)]
    execute: bool,
    /// Only show the new offsets (the default).
    #[arg(long, conflicts_with = "execute")]
    dry_run: bool,
}

pub async fn run(bootstrap: &str, command: GroupsCommand) -> Result<()> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    match command {
        GroupsCommand::List { states } => list(&mut cluster, &states).await,
        GroupsCommand::Describe { groups } => {
            let mut failed = 0;
            for (i, group) in groups.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                if let Err(e) = describe(&mut cluster, group).await {
                    eprintln!("Error: {e:#}");
                    failed += 1;
                }
            }
            if failed > 0 {
                bail!(
                    "{failed} of {} group(s) could not be described",
                    groups.len()
                );
            }
            Ok(())
        }
        GroupsCommand::Delete { groups } => delete(&mut cluster, &groups).await,
        GroupsCommand::ResetOffsets(args) => reset_offsets(&mut cluster, args).await,
    }
}

pub(crate) type Partition = (String, i32);

fn group_id(text: &str) -> GroupId {
    GroupId(StrBytes::from_string(text.to_string()))
}

fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?}"),
        None => "no error".to_string(),
    }
}

fn is_coordinator_error(code: i16) -> bool {
    [
        ResponseError::NotCoordinator,
        ResponseError::CoordinatorNotAvailable,
        ResponseError::CoordinatorLoadInProgress,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// Connections to the cluster: the bootstrap server, and each broker by id
/// as it is needed.
pub(crate) struct Cluster {
    bootstrap: KafkaClient,
    /// Broker id -> host:port, from Metadata and FindCoordinator answers.
    brokers: BTreeMap<i32, String>,
    connections: HashMap<i32, KafkaClient>,
    /// Group -> coordinator id, until the coordinator says it is not.
    coordinators: HashMap<String, i32>,
}

impl Cluster {
    /// Connects to the first of the comma-separated bootstrap servers that answers.
    pub(crate) async fn connect(bootstrap: &str) -> Result<Self> {
        let mut errors = Vec::new();
        for address in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match KafkaClient::connect(address, CLIENT_ID).await {
                Ok(client) => {
                    return Ok(Self {
                        bootstrap: client,
                        brokers: BTreeMap::new(),
                        connections: HashMap::new(),
                        coordinators: HashMap::new(),
                    })
                }
                Err(e) => errors.push(format!("{address}: {e}")),
            }
        }
        if errors.is_empty() {
            bail!("no bootstrap server given");
        }
        bail!("no bootstrap server answered: {}", errors.join("; "))
    }

    /// Metadata for `topics` (None: every topic; empty: brokers only),
    /// remembering where each broker is.
    async fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let topics = topics.map(|names| {
            names
                .iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(name(n))))
                .collect()
        });
        let response = self
            .bootstrap
            .send(
                MetadataRequest::default()
                    .with_topics(topics)
                    .with_allow_auto_topic_creation(false),
            )
            .await
            .with_context(|| format!("fetching metadata from {}", self.bootstrap.address()))?;
        for b in &response.brokers {
            self.brokers
                .insert(b.node_id.0, format!("{}:{}", b.host, b.port));
        }
        Ok(response)
    }

    fn address(&self, id: i32) -> String {
        self.brokers
            .get(&id)
            .cloned()
            .unwrap_or_else(|| "unknown address".to_string())
    }

    /// The connection to broker `id`, opened when first needed.
    async fn broker(&mut self, id: i32) -> Result<&mut KafkaClient> {
        if !self.brokers.contains_key(&id) {
            self.metadata(Some(&[])).await?;
        }
        let address = self
            .brokers
            .get(&id)
            .with_context(|| format!("broker {id} is not in the cluster metadata"))?
            .clone();
        Ok(match self.connections.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                KafkaClient::connect(&address, CLIENT_ID)
                    .await
                    .with_context(|| format!("connecting to broker {id} at {address}"))?,
            ),
        })
    }

    /// Asks the bootstrap server once for `group`'s coordinator: its id, or
    /// the retriable error that stands in the way.
    async fn find_coordinator_once(&mut self, group: &str) -> Result<Result<i32, String>> {
        if let Some(&id) = self.coordinators.get(group) {
            return Ok(Ok(id));
        }
        let version = self
            .bootstrap
            .version_for::<FindCoordinatorRequest>(i16::MAX)?;
        let key = StrBytes::from_string(group.to_string());
        let request = if version >= 4 {
            FindCoordinatorRequest::default()
                .with_key_type(0)
                .with_coordinator_keys(vec![key])
        } else {
            FindCoordinatorRequest::default()
                .with_key_type(0)
                .with_key(key)
        };
        let response: FindCoordinatorResponse = self
            .bootstrap
            .send_version(request, version)
            .await
            .with_context(|| format!("finding the coordinator of group {group}"))?;
        let (code, message, node, host, port) = if version >= 4 {
            let c = response
                .coordinators
                .iter()
                .find(|c| c.key.as_str() == group)
                .or(response.coordinators.first())
                .with_context(|| {
                    format!("finding the coordinator of group {group}: the answer names none")
                })?;
            (
                c.error_code,
                c.error_message.clone(),
                c.node_id,
                c.host.clone(),
                c.port,
            )
        } else {
            (
                response.error_code,
                response.error_message.clone(),
                response.node_id,
                response.host.clone(),
                response.port,
            )
        };
        if is_coordinator_error(code) {
            return Ok(Err(error_name(code)));
        }
        check(
            code,
            message.as_ref(),
            &format!("finding the coordinator of group {group}"),
        )?;
        let BrokerId(id) = node;
        self.brokers.insert(id, format!("{host}:{port}"));
        self.coordinators.insert(group.to_string(), id);
        Ok(Ok(id))
    }

    /// Sends the request `build` makes for a version (at most `max`) to
    /// `group`'s coordinator, finding it again and retrying for a while when
    /// `error_of` the answer says it moved or is loading. Returns the answer
    /// and the version it was sent at.
    async fn coordinator_call<R: Request>(
        &mut self,
        group: &str,
        max: i16,
        build: impl Fn(i16) -> R,
        error_of: impl Fn(&R::Response, i16) -> i16,
    ) -> Result<(R::Response, i16, i32)> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let reason = match self.find_coordinator_once(group).await? {
                Err(reason) => format!("FindCoordinator: {reason}"),
                Ok(id) => {
                    let answer = async {
                        let client = self.broker(id).await?;
                        let version = client.version_for::<R>(max)?;
                        let response = client.send_version(build(version), version).await?;
                        anyhow::Ok((response, version))
                    }
                    .await;
                    match answer {
                        Ok((response, version)) => {
                            let code = error_of(&response, version);
                            if !is_coordinator_error(code) {
                                return Ok((response, version, id));
                            }
                            self.coordinators.remove(group);
                            format!("broker {id}: {}", error_name(code))
                        }
                        Err(e) => {
                            if let Some(
                                ClientError::Unsupported(_) | ClientError::NoCommonVersion(_),
                            ) = e.downcast_ref()
                            {
                                return Err(e.context(format!("broker {id}")));
                            }
                            self.connections.remove(&id);
                            self.coordinators.remove(group);
                            format!("broker {id}: {e:#}")
                        }
                    }
                }
            };
            if Instant::now() >= deadline {
                bail!(
                    "the coordinator of group {group} is not available ({reason}); \
                     retried for {} s",
                    RETRY_FOR.as_secs()
                );
            }
            tracing::debug!(group, %reason, "retrying with the group coordinator");
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    /// DescribeGroups for one group, from its coordinator.
    async fn describe_group(&mut self, group: &str) -> Result<(DescribedGroup, i32)> {
        let (response, _, coordinator) = self
            .coordinator_call(
                group,
                i16::MAX,
                |_| DescribeGroupsRequest::default().with_groups(vec![group_id(group)]),
                |r: &kafka_protocol::messages::DescribeGroupsResponse, _| {
                    r.groups.first().map_or(0, |g| g.error_code)
                },
            )
            .await
            .with_context(|| format!("describing group {group}"))?;
        let described = response
            .groups
            .into_iter()
            .find(|g| g.group_id.0.as_str() == group)
            .with_context(|| format!("describing group {group}: the answer does not name it"))?;
        Ok((described, coordinator))
    }

    /// The group's committed offsets (OffsetFetch of every topic).
    async fn committed(&mut self, group: &str) -> Result<BTreeMap<Partition, i64>> {
        let (response, version, _) = self
            .coordinator_call(
                group,
                i16::MAX,
                |version| {
                    if version >= 8 {
                        OffsetFetchRequest::default().with_groups(vec![
                            OffsetFetchRequestGroup::default()
                                .with_group_id(group_id(group))
                                .with_topics(None),
                        ])
                    } else {
                        OffsetFetchRequest::default()
                            .with_group_id(group_id(group))
                            .with_topics(None)
                    }
                },
                |r: &kafka_protocol::messages::OffsetFetchResponse, version| {
                    if version >= 8 {
                        r.groups.first().map_or(0, |g| g.error_code)
                    } else {
                        r.error_code
                    }
                },
            )
            .await
            .with_context(|| format!("fetching the committed offsets of group {group}"))?;
        if version < 2 {
            bail!("fetching the committed offsets of group {group}: the coordinator speaks only OffsetFetch v{version}, which cannot fetch every topic");
        }
        let mut offsets = BTreeMap::new();
        let mut add = |topic: String, partition: i32, offset: i64, code: i16| -> Result<()> {
            check(
                code,
                None,
                &format!("committed offset of {topic}-{partition} in group {group}"),
            )?;
            if offset >= 0 {
                offsets.insert((topic, partition), offset);
            }
            Ok(())
        };
        if version >= 8 {
            for g in &response.groups {
                if g.group_id.0.as_str() != group {
                    continue;
                }
                if g.error_code == ResponseError::GroupIdNotFound.code() {
                    continue;
                }
                check(
                    g.error_code,
                    None,
                    &format!("committed offsets of group {group}"),
                )?;
                for t in &g.topics {
                    for p in &t.partitions {
                        add(
                            t.name.0.to_string(),
                            p.partition_index,
                            p.committed_offset,
                            p.error_code,
                        )?;
                    }
                }
            }
        } else {
            if response.error_code != ResponseError::GroupIdNotFound.code() {
                check(
                    response.error_code,
                    None,
                    &format!("committed offsets of group {group}"),
                )?;
            }
            for t in &response.topics {
                for p in &t.partitions {
                    add(
                        t.name.0.to_string(),
                        p.partition_index,
                        p.committed_offset,
                        p.error_code,
                    )?;
                }
            }
        }
        Ok(offsets)
    }

    /// The partitions of `topics` (all of each), failing on unknown topics.
    async fn partitions_of(&mut self, topics: &[String]) -> Result<BTreeMap<String, Vec<i32>>> {
        let metadata = self.metadata(Some(topics)).await?;
        let mut out = BTreeMap::new();
        for t in &metadata.topics {
            let topic = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            check(t.error_code, None, &format!("topic {topic}"))?;
            let mut partitions: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
            partitions.sort_unstable();
            out.insert(topic, partitions);
        }
        for topic in topics {
            if !out.contains_key(topic) {
                bail!("topic {topic}: UnknownTopicOrPartition: the cluster does not know it");
            }
        }
        Ok(out)
    }

    /// ListOffsets (`timestamp`: LATEST, EARLIEST or milliseconds) for each
    /// partition, from its leader; an error text for a partition that did
    /// not answer in time. An offset of -1 means no record at or after the
    /// timestamp.
    async fn offsets(
        &mut self,
        partitions: &BTreeSet<Partition>,
        timestamp: i64,
    ) -> Result<BTreeMap<Partition, Result<i64, String>>> {
        let mut results = BTreeMap::new();
        let mut pending: BTreeMap<Partition, String> = partitions
            .iter()
            .map(|p| (p.clone(), "no answer".to_string()))
            .collect();
        let deadline = Instant::now() + RETRY_FOR;
        while !pending.is_empty() {
            let topics: Vec<String> = pending
                .keys()
                .map(|(t, _)| t.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let metadata = self.metadata(Some(&topics)).await?;
            let mut by_leader: BTreeMap<i32, Vec<Partition>> = BTreeMap::new();
            for t in &metadata.topics {
                let topic = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                let keys: Vec<Partition> = pending
                    .keys()
                    .filter(|(pt, _)| *pt == topic)
                    .cloned()
                    .collect();
                for key in keys {
                    let outcome = match ResponseError::try_from_code(t.error_code) {
                        Some(ResponseError::LeaderNotAvailable) => Err("LeaderNotAvailable".into()),
                        // A missing topic or partition will not appear by waiting.
                        Some(e) => Ok(Err(format!("{e:?}: {e}"))),
                        None => match t.partitions.iter().find(|p| p.partition_index == key.1) {
                            None => Ok(Err("UnknownTopicOrPartition: no such partition".into())),
                            Some(p) if p.leader_id.0 < 0 => Err("no leader".into()),
                            Some(p) => {
                                by_leader
                                    .entry(p.leader_id.0)
                                    .or_default()
                                    .push(key.clone());
                                continue;
                            }
                        },
                    };
                    match outcome {
                        Ok(result) => {
                            pending.remove(&key);
                            results.insert(key, result);
                        }
                        Err(reason) => {
                            pending.insert(key, reason);
                        }
                    }
                }
            }
            for (leader, keys) in by_leader {
                let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
                for (t, p) in &keys {
                    topics.entry(t.as_str()).or_default().push(
                        ListOffsetsPartition::default()
                            .with_partition_index(*p)
                            .with_timestamp(timestamp),
                    );
                }
                let request = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(t, ps)| {
                                ListOffsetsTopic::default()
                                    .with_name(name(t))
                                    .with_partitions(ps)
                            })
                            .collect(),
                    );
                let answer =
                    async { anyhow::Ok(self.broker(leader).await?.send(request).await?) }.await;
                let response = match answer {
                    Ok(r) => r,
                    Err(e) => {
                        self.connections.remove(&leader);
                        for k in &keys {
                            if let Some(reason) = pending.get_mut(k) {
                                *reason = format!("leader {leader}: {e:#}");
                            }
                        }
                        continue;
                    }
                };
                for t in &response.topics {
                    for p in &t.partitions {
                        let key = (t.name.0.to_string(), p.partition_index);
                        if !pending.contains_key(&key) {
                            continue;
                        }
                        match ResponseError::try_from_code(p.error_code) {
                            None => {
                                pending.remove(&key);
                                results.insert(key, Ok(p.offset));
                            }
                            Some(e) if e.is_retriable() => {
                                pending.insert(key, format!("leader {leader}: {e:?}"));
                            }
                            Some(e) => {
                                pending.remove(&key);
                                results.insert(key, Err(format!("{e:?}: {e}")));
                            }
                        }
                    }
                }
            }
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
        for (key, reason) in pending {
            results.insert(key, Err(reason));
        }
        Ok(results)
    }
}

/// ListGroups on every broker: each lists the groups it coordinates.
async fn list(cluster: &mut Cluster, states: &[String]) -> Result<()> {
    let metadata = cluster.metadata(Some(&[])).await?;
    let brokers: Vec<i32> = metadata.brokers.iter().map(|b| b.node_id.0).collect();
    if brokers.is_empty() {
        bail!("the cluster metadata names no brokers");
    }
    let wanted: BTreeSet<String> = states.iter().map(|s| s.to_lowercase()).collect();
    // group -> (state, protocol type, coordinator)
    let mut groups: BTreeMap<String, (String, String, i32)> = BTreeMap::new();
    let mut failures = Vec::new();
    for id in brokers {
        match list_on(cluster, id).await {
            Ok(listed) => {
                for (group, state, protocol_type) in listed {
                    groups.entry(group).or_insert((state, protocol_type, id));
                }
            }
            Err(e) => failures.push(format!("broker {id} ({}): {e:#}", cluster.address(id))),
        }
    }
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE", "COORDINATOR"]);
    for (group, (state, protocol_type, id)) in groups {
        if !wanted.is_empty() && !wanted.contains(&state.to_lowercase()) {
            continue;
        }
        let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
        table.row(vec![
            group,
            dash(state),
            dash(protocol_type),
            id.to_string(),
        ]);
    }
    print!("{}", table.render());
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("Error: {f}");
        }
        bail!(
            "{} broker(s) could not list their groups; the list above may be incomplete",
            failures.len()
        );
    }
    Ok(())
}

/// (group, state, protocol type) of each group broker `id` coordinates.
async fn list_on(cluster: &mut Cluster, id: i32) -> Result<Vec<(String, String, String)>> {
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        // States are filtered here, not by the broker, so that any version
        // and any spelling of a state work the same.
        let client = cluster.broker(id).await?;
        let response = match client.send(ListGroupsRequest::default()).await {
            Ok(r) => r,
            Err(e) => {
                cluster.connections.remove(&id);
                return Err(e.into());
            }
        };
        if is_coordinator_error(response.error_code) && Instant::now() < deadline {
            tokio::time::sleep(RETRY_BACKOFF).await;
            continue;
        }
        check(response.error_code, None, "ListGroups")?;
        return Ok(response
            .groups
            .iter()
            .map(|g| {
                (
                    g.group_id.0.to_string(),
                    g.group_state.to_string(),
                    g.protocol_type.to_string(),
                )
            })
            .collect());
    }
}

/// A group member as DescribeGroups shows it, with its assignment decoded.
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    host: String,
    /// topic -> partitions; None when the assignment is not the consumer protocol's.
    assignment: Option<BTreeMap<String, Vec<i32>>>,
}

/// Decodes a consumer protocol assignment: an int16 version, then the
/// ConsumerProtocolAssignment of that version (a newer one is read as the
/// newest this codec knows, as Kafka's clients do).
fn decode_assignment(bytes: &Bytes) -> Result<BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    if bytes.is_empty() {
        return Ok(out);
    }
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        bail!("an assignment of {} byte(s) is too short", bytes.len());
    }
    let version = buf.get_i16();
    if version < 0 {
        bail!("the assignment has version {version}");
    }
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version.min(3))
        .context("decoding the consumer protocol assignment")?;
    for tp in assignment.assigned_partitions {
        let partitions = out.entry(tp.topic.0.to_string()).or_default();
        partitions.extend(tp.partitions);
        partitions.sort_unstable();
    }
    Ok(out)
}

fn format_assignment(assignment: &Option<BTreeMap<String, Vec<i32>>>) -> String {
    match assignment {
        None => "?".to_string(),
        Some(a) if a.is_empty() => "-".to_string(),
        Some(a) => a
            .iter()
            .map(|(t, ps)| {
                let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
                format!("{t}({})", ps.join(","))
            })
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn group_missing(described: &DescribedGroup) -> bool {
    described.error_code == ResponseError::GroupIdNotFound.code()
        || (described.error_code == 0 && described.group_state.as_str() == "Dead")
}

async fn describe(cluster: &mut Cluster, group: &str) -> Result<()> {
    let (described, coordinator) = cluster.describe_group(group).await?;
    if group_missing(&described) {
        bail!("consumer group '{group}' does not exist (GroupIdNotFound)");
    }
    check(
        described.error_code,
        described.error_message.as_ref(),
        &format!("describing group {group}"),
    )?;
    let consumer =
        described.protocol_type.as_str() == "consumer" || described.protocol_type.is_empty();
    let mut members = Vec::new();
    for m in &described.members {
        let assignment = if consumer {
            match decode_assignment(&m.member_assignment) {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("Warning: member {}: {e:#}", m.member_id);
                    None
                }
            }
        } else {
            None
        };
        members.push(Member {
            id: m.member_id.to_string(),
            instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: m.client_id.to_string(),
            host: m.client_host.to_string(),
            assignment,
        });
    }
    members.sort_by(|a, b| a.id.cmp(&b.id));
    let committed = cluster.committed(group).await?;

    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut summary = Table::new(&[
        "GROUP",
        "COORDINATOR (ID)",
        "ASSIGNMENT-STRATEGY",
        "STATE",
        "#MEMBERS",
        "PROTOCOL-TYPE",
    ]);
    summary.row(vec![
        group.to_string(),
        format!("{} ({coordinator})", cluster.address(coordinator)),
        dash(described.protocol_data.as_str()),
        dash(described.group_state.as_str()),
        members.len().to_string(),
        dash(described.protocol_type.as_str()),
    ]);
    print!("{}", summary.render());
    println!();

    // Partition -> index of the member that owns it.
    let mut owners: BTreeMap<Partition, usize> = BTreeMap::new();
    if members.is_empty() {
        println!("Consumer group '{group}' has no active members.");
    } else {
        let mut table = Table::new(&[
            "GROUP",
            "CONSUMER-ID",
            "INSTANCE-ID",
            "HOST",
            "CLIENT-ID",
            "#PARTITIONS",
            "ASSIGNMENT",
        ]);
        for (i, m) in members.iter().enumerate() {
            let count = m.assignment.as_ref().map_or("?".to_string(), |a| {
                a.values().map(Vec::len).sum::<usize>().to_string()
            });
            for (t, ps) in m.assignment.iter().flatten() {
                for p in ps {
                    owners.insert((t.clone(), *p), i);
                }
            }
            table.row(vec![
                group.to_string(),
                m.id.clone(),
                m.instance_id.clone().unwrap_or_else(|| "-".to_string()),
                dash(&m.host),
                dash(&m.client_id),
                count,
                format_assignment(&m.assignment),
            ]);
        }
        print!("{}", table.render());
    }
    println!();

    let partitions: BTreeSet<Partition> = committed.keys().chain(owners.keys()).cloned().collect();
    if partitions.is_empty() {
        println!("Consumer group '{group}' has no committed offsets and no assigned partitions.");
        return Ok(());
    }
    let ends = cluster.offsets(&partitions, LATEST).await?;
    let mut table = Table::new(&[
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ]);
    let mut unknown_ends = Vec::new();
    for key in &partitions {
        let current = committed.get(key).copied();
        let end = match ends.get(key) {
            Some(Ok(end)) => Some(*end),
            Some(Err(e)) => {
                unknown_ends.push(format!("{}-{}: {e}", key.0, key.1));
                None
            }
            None => None,
        };
        let lag = match (current, end) {
            (Some(c), Some(e)) => (e - c).to_string(),
            _ => "-".to_string(),
        };
        let owner = owners.get(key).map(|&i| &members[i]);
        table.row(vec![
            group.to_string(),
            key.0.clone(),
            key.1.to_string(),
            current.map_or("-".to_string(), |c| c.to_string()),
            end.map_or("-".to_string(), |e| e.to_string()),
            lag,
            owner.map_or("-".to_string(), |m| m.id.clone()),
            owner.map_or("-".to_string(), |m| dash(&m.host)),
            owner.map_or("-".to_string(), |m| dash(&m.client_id)),
        ]);
    }
    print!("{}", table.render());
    for e in unknown_ends {
        eprintln!("Warning: no log end offset for {e}");
    }
    Ok(())
}

async fn delete(cluster: &mut Cluster, groups: &[String]) -> Result<()> {
    let mut failed = 0;
    for group in groups {
        let outcome = cluster
            .coordinator_call(
                group,
                i16::MAX,
                |_| DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]),
                |r: &kafka_protocol::messages::DeleteGroupsResponse, _| {
                    r.results.first().map_or(0, |g| g.error_code)
                },
            )
            .await
            .and_then(|(response, _, _)| {
                let result = response
                    .results
                    .iter()
                    .find(|r| r.group_id.0.as_str() == group.as_str())
                    .context("the answer does not name the group")?;
                Ok(result.error_code)
            });
        match outcome {
            Ok(0) => println!("Deleted consumer group '{group}'."),
            Ok(code) if code == ResponseError::NonEmptyGroup.code() => {
                eprintln!(
                    "Error: cannot delete consumer group '{group}': it has active members \
                     (NonEmptyGroup); stop its consumers first."
                );
                failed += 1;
            }
            Ok(code) if code == ResponseError::GroupIdNotFound.code() => {
                eprintln!(
                    "Error: cannot delete consumer group '{group}': it does not exist \
                     (GroupIdNotFound)."
                );
                failed += 1;
            }
            Ok(code) => {
                if let Err(e) = check(code, None, &format!("deleting consumer group '{group}'")) {
                    eprintln!("Error: {e}");
                }
                failed += 1;
            }
            Err(e) => {
                eprintln!("Error: deleting consumer group '{group}': {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} group(s) were not deleted", groups.len());
    }
    Ok(())
}

/// `TOPIC` or `TOPIC:0,1,2`.
fn parse_topic_spec(spec: &str) -> Result<(String, Option<Vec<i32>>)> {
    match spec.split_once(':') {
        None => Ok((spec.to_string(), None)),
        Some((topic, list)) => {
            let partitions = list
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<i32>()
                        .ok()
                        .filter(|p| *p >= 0)
                        .with_context(|| format!("--topic {spec}: {p:?} is not a partition number"))
                })
                .collect::<Result<Vec<_>>>()?;
            if topic.is_empty() {
                bail!("--topic {spec}: no topic name");
            }
            Ok((topic.to_string(), Some(partitions)))
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.sss][Z|±HH:MM]`
/// (UTC without a zone), or of a plain number of milliseconds.
fn parse_datetime(text: &str) -> Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || format!("--to-datetime {text:?}: expected YYYY-MM-DDTHH:MM:SS[.sss][Z|+HH:MM]");
    let (date, time) = text.split_once(['T', ' ']).with_context(bad)?;
    let numbers = |s: &str, sep: char, count: usize| -> Option<Vec<i64>> {
        let parts: Vec<i64> = s
            .split(sep)
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        (parts.len() == count).then_some(parts)
    };
    let d = numbers(date, '-', 3).with_context(bad)?;
    let (time, offset_minutes) = if let Some(t) = time.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (t, zone) = time.split_at(i);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let zone = zone[1..].replace(':', "");
        if zone.len() != 4 {
            bail!(bad());
        }
        let hours: i64 = zone[..2].parse().ok().with_context(bad)?;
        let minutes: i64 = zone[2..].parse().ok().with_context(bad)?;
        (t, sign * (hours * 60 + minutes))
    } else {
        (time, 0)
    };
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) => (hms, f),
        None => (time, ""),
    };
    let t = numbers(hms, ':', 3).with_context(bad)?;
    let millis = if fraction.is_empty() {
        0
    } else {
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            bail!(bad());
        }
        format!("{:0<3}", &fraction[..fraction.len().min(3)])
            .parse::<i64>()
            .ok()
            .with_context(bad)?
    };
    let valid = (1..=12).contains(&d[1])
        && (1..=31).contains(&d[2])
        && (0..24).contains(&t[0])
        && (0..60).contains(&t[1])
        && (0..=60).contains(&t[2]);
    if !valid {
        bail!(bad());
    }
    let days = days_from_civil(d[0], d[1], d[2]);
    let seconds = days * 86_400 + t[0] * 3_600 + t[1] * 60 + t[2] - offset_minutes * 60;
    Ok(seconds * 1_000 + millis)
}

async fn reset_offsets(cluster: &mut Cluster, args: ResetArgs) -> Result<()> {
    let group = args.group.as_str();
    let (described, _) = cluster.describe_group(group).await?;
    let exists = !group_missing(&described);
    if exists {
        check(
            described.error_code,
            described.error_message.as_ref(),
            &format!("describing group {group}"),
        )?;
    }
    let active = exists
        && (!described.members.is_empty()
            || !matches!(described.group_state.as_str(), "Empty" | "Dead" | ""));
    if active {
        let why = format!(
            "consumer group '{group}' is {} with {} active member(s); offsets can only be \
             reset while the group has no active members (stop its consumers first)",
            described.group_state,
            described.members.len()
        );
        if args.execute {
            bail!("cannot reset offsets: {why}");
        }
        eprintln!("Warning: {why}. Showing the plan only.");
    }

    let committed = cluster.committed(group).await?;

    // The partitions to reset.
    let mut targets: BTreeSet<Partition> = BTreeSet::new();
    if args.all_topics {
        targets.extend(committed.keys().cloned());
        if targets.is_empty() {
            bail!("consumer group '{group}' has no committed offsets: name topics with --topic");
        }
    } else {
        let specs = args
            .topics
            .iter()
            .map(|s| parse_topic_spec(s))
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<String> = specs
            .iter()
            .map(|(t, _)| t.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let known = cluster.partitions_of(&names).await?;
        for (topic, chosen) in specs {
            let all = known.get(&topic).cloned().unwrap_or_default();
            match chosen {
                None => targets.extend(all.iter().map(|p| (topic.clone(), *p))),
                Some(chosen) => {
                    for p in chosen {
                        if !all.contains(&p) {
                            bail!("topic {topic} has no partition {p} (it has {})", all.len());
                        }
                        targets.insert((topic.clone(), p));
                    }
                }
            }
        }
    }

    let earliest = cluster.offsets(&targets, EARLIEST).await?;
    let latest = cluster.offsets(&targets, LATEST).await?;
    let at_time = match &args.to_datetime {
        Some(text) => Some(cluster.offsets(&targets, parse_datetime(text)?).await?),
        None => None,
    };
    let lookup =
        |map: &BTreeMap<Partition, Result<i64, String>>, key: &Partition, what: &str| match map
            .get(key)
        {
            Some(Ok(o)) => Ok(*o),
            Some(Err(e)) => Err(anyhow::anyhow!("{what} offset of {}-{}: {e}", key.0, key.1)),
            None => Err(anyhow::anyhow!("no {what} offset of {}-{}", key.0, key.1)),
        };
    let mut plan: BTreeMap<Partition, i64> = BTreeMap::new();
    for key in &targets {
        let low = lookup(&earliest, key, "earliest")?;
        let high = lookup(&latest, key, "latest")?;
        let clamp = |o: i64| o.clamp(low, high.max(low));
        let new = if args.to_earliest {
            low
        } else if args.to_latest {
            high
        } else if let Some(offset) = args.to_offset {
            if offset < 0 {
                bail!("--to-offset {offset}: offsets are not negative");
            }
            clamp(offset)
        } else if let Some(shift) = args.shift_by {
            let current = committed.get(key).with_context(|| {
                format!(
                    "cannot shift the offset of {}-{}: group '{group}' has no committed offset for it",
                    key.0, key.1
                )
            })?;
            clamp(current.saturating_add(shift))
        } else if let Some(found) = &at_time {
            match lookup(found, key, "timestamp")? {
                -1 => high, // no record at or after the time
                o => o,
            }
        } else {
            bail!("no reset scenario given");
        };
        plan.insert(key.clone(), new);
    }

    let mut table = Table::new(&[
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "NEW-OFFSET",
    ]);
    for (key, new) in &plan {
        table.row(vec![
            group.to_string(),
            key.0.clone(),
            key.1.to_string(),
            committed
                .get(key)
                .map_or("-".to_string(), |c| c.to_string()),
            new.to_string(),
        ]);
    }
    print!("{}", table.render());

    if !args.execute {
        println!("Dry run: nothing committed. Add --execute to commit these offsets.");
        return Ok(());
    }
    let errors = commit_as_admin(cluster, group, &plan).await?;
    if errors.is_empty() {
        println!(
            "Committed new offsets for {} partition(s) of group '{group}'.",
            plan.len()
        );
        return Ok(());
    }
    let refused_for_members = [
        ResponseError::UnknownMemberId,
        ResponseError::IllegalGeneration,
        ResponseError::RebalanceInProgress,
        ResponseError::FencedInstanceId,
        ResponseError::StaleMemberEpoch,
    ];
    for (code, partitions) in &errors {
        let name = error_name(*code);
        let why = if refused_for_members.iter().any(|e| e.code() == *code) {
            format!(
                "the coordinator refused the commit ({name}): group '{group}' has active \
                 members; stop its consumers first"
            )
        } else {
            match ResponseError::try_from_code(*code) {
                Some(e) => format!("{name}: {e}"),
                None => name,
            }
        };
        eprintln!("Error: {why} [{}]", partitions.join(", "));
    }
    bail!(
        "offsets of {} partition(s) of group '{group}' were not committed",
        errors.values().map(Vec::len).sum::<usize>()
    )
}

/// Commits `offsets` for `group` from outside any generation (generation -1,
/// no member id), as an admin tool does; the coordinator accepts that only
/// while the group has no members. Returns the partitions it refused, by
/// error code.
pub(crate) async fn commit_as_admin(
    cluster: &mut Cluster,
    group: &str,
    offsets: &BTreeMap<Partition, i64>,
) -> Result<BTreeMap<i16, Vec<String>>> {
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((t, p), offset) in offsets {
        topics.entry(t.as_str()).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*offset),
        );
    }
    let topics: Vec<OffsetCommitRequestTopic> = topics
        .into_iter()
        .map(|(t, ps)| {
            OffsetCommitRequestTopic::default()
                .with_name(name(t))
                .with_partitions(ps)
        })
        .collect();
    let (response, _, _) = cluster
        .coordinator_call(
            group,
            i16::MAX,
            |_| {
                OffsetCommitRequest::default()
                    .with_group_id(group_id(group))
                    .with_generation_id_or_member_epoch(-1)
                    .with_member_id(StrBytes::default())
                    .with_topics(topics.clone())
            },
            |r: &kafka_protocol::messages::OffsetCommitResponse, _| {
                r.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| p.error_code)
                    .find(|c| is_coordinator_error(*c))
                    .unwrap_or(0)
            },
        )
        .await
        .with_context(|| format!("committing offsets for group {group}"))?;
    let mut errors: BTreeMap<i16, Vec<String>> = BTreeMap::new();
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                errors
                    .entry(p.error_code)
                    .or_default()
                    .push(format!("{}-{}", t.name.0, p.partition_index));
            }
        }
    }
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_datetime("1970-01-01T00:00:01.5").unwrap(), 1_500);
        assert_eq!(
            parse_datetime("2024-02-29T12:34:56.789Z").unwrap(),
            1_709_210_096_789
        );
        assert_eq!(
            parse_datetime("2024-02-29T14:34:56.789+02:00").unwrap(),
            1_709_210_096_789
        );
        assert_eq!(
            parse_datetime("2024-02-29T07:34:56.789-0500").unwrap(),
            1_709_210_096_789
        );
        assert_eq!(parse_datetime("1234").unwrap(), 1234);
        assert!(parse_datetime("yesterday").is_err());
        assert!(parse_datetime("2024-13-01T00:00:00").is_err());
    }

    #[test]
    fn topic_specs() {
        assert_eq!(parse_topic_spec("t").unwrap(), ("t".into(), None));
        assert_eq!(
            parse_topic_spec("t:0,2").unwrap(),
            ("t".into(), Some(vec![0, 2]))
        );
        assert!(parse_topic_spec("t:x").is_err());
        assert!(parse_topic_spec(":1").is_err());
    }

    #[test]
    fn assignments_decode() {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(name("b"))
                .with_partitions(vec![2, 0]),
            TopicPartition::default()
                .with_topic(name("a"))
                .with_partitions(vec![1]),
        ]);
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&1i16.to_be_bytes());
        assignment.encode(&mut buf, 1).unwrap();
        let decoded = decode_assignment(&buf.freeze()).unwrap();
        assert_eq!(format_assignment(&Some(decoded)), "a(1),b(0,2)");
        assert!(decode_assignment(&Bytes::new()).unwrap().is_empty());
        assert!(decode_assignment(&Bytes::from_static(&[0])).is_err());
        assert!(decode_assignment(&Bytes::from_static(&[0, 0, 0, 0, 0, 9])).is_err());
    }
}
