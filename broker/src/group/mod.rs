//! The group coordinator: this broker's share of the consumer groups.
//!
//! Which broker coordinates a group follows from the metadata image (see
//! [`sluice_metadata::group_coordinator`]). The coordinator runs the classic
//! join/sync protocol in memory ([`state`]) and commits every completed
//! generation and every offset commit to the metadata log through the
//! controller before it answers. It loads a group from the image the first
//! time it is asked about it, so when a coordinator dies the next one picks
//! the group up where the log left it, and clients carry on.

pub mod state;

#[cfg(test)]
mod coordinator_tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::{
    ControllerApi, ControllerError, GroupWrite, GroupWriteOutcome, GroupWriter,
};
use sluice_metadata::{
    CommittedOffset, GroupRecord, MetadataDelta, MetadataImage, PartitionOffset, Publisher,
    TopicOffsets,
};
use sluice_storage::wall_clock_ms;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use self::state::{
    Group, GroupRules, GroupState, JoinRequest, JoinResult, JoinStep, SyncRequest, SyncResult,
    SyncStep,
};

/// Settings of the group coordinator, named as in Kafka.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms`
    pub min_session_timeout: Duration,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout: Duration,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            initial_rebalance_delay: Duration::from_millis(3000),
            min_session_timeout: Duration::from_millis(6000),
            max_session_timeout: Duration::from_millis(1_800_000),
            offset_metadata_max_bytes: 4096,
        }
    }
}

/// How often timers (sessions, join and sync deadlines) are checked.
const TICK: Duration = Duration::from_millis(100);

/// How long an offset fetch waits for this broker's image to show the
/// coordinator's own latest write.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);

/// A loaded group and the turn its metadata writes take one at a time, so
/// each generation commits on top of the one before.
struct GroupHandle {
    group: Mutex<Group>,
    write_turn: tokio::sync::Mutex<()>,
    /// Membership writes that answer no request (the group emptied, a
    /// rebalance completed on a timer) and are still on their way to the
    /// log. Until they land, the log's membership lags the one in memory.
    background_writes: watch::Sender<usize>,
}

impl GroupHandle {
    fn new(group: Group) -> Self {
        Self {
            group: Mutex::new(group),
            write_turn: tokio::sync::Mutex::new(()),
            background_writes: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits, for at most `limit`, until the log holds every membership
    /// change made so far in memory.
    async fn background_writes_landed(&self, limit: Duration) {
        let mut pending = self.background_writes.subscribe();
        let _ = tokio::time::timeout(limit, pending.wait_for(|n| *n == 0)).await;
    }
}

/// One partition of an offset commit.
#[derive(Clone, Debug)]
pub struct OffsetToCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// A member as DescribeGroups shows it.
#[derive(Clone, Debug)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Clone, Debug)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<MemberDescription>,
}

/// A group as ListGroups shows it.
#[derive(Clone, Debug)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

pub struct GroupCoordinator {
    node_id: i32,
    config: GroupConfig,
    /// Set once the broker knows how to reach the controller.
    controller: OnceLock<Arc<dyn ControllerApi>>,
    image: watch::Sender<Arc<MetadataImage>>,
    groups: Mutex<HashMap<String, Arc<GroupHandle>>>,
    /// The metadata offset of this coordinator's latest committed write.
    last_write: AtomicU64,
}

/// Controller refusals that mean this broker no longer coordinates the group.
fn lost_group(e: &ControllerError) -> bool {
    matches!(
        e,
        ControllerError::NotCoordinator(_)
            | ControllerError::IllegalGeneration(_)
            | ControllerError::StaleBrokerEpoch { .. }
    )
}

/// What a client is told when the controller could not commit a group write.
fn write_error(e: &ControllerError) -> ResponseError {
    match e {
        ControllerError::NotCoordinator(_) | ControllerError::StaleBrokerEpoch { .. } => {
            ResponseError::NotCoordinator
        }
        ControllerError::IllegalGeneration(_) => ResponseError::IllegalGeneration,
        ControllerError::UnknownMemberId(_) => ResponseError::UnknownMemberId,
        ControllerError::GroupIdNotFound(_) => ResponseError::GroupIdNotFound,
        ControllerError::NonEmptyGroup(_) => ResponseError::NonEmptyGroup,
        // The log could not take the write now; clients retry.
        _ => ResponseError::CoordinatorNotAvailable,
    }
}

impl GroupCoordinator {
    pub fn new(node_id: i32, config: GroupConfig) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            config,
            controller: OnceLock::new(),
            image: watch::Sender::new(MetadataImage::empty()),
            groups: Mutex::new(HashMap::new()),
            last_write: AtomicU64::new(0),
        })
    }

    /// Connects the coordinator to the controller and starts its timers.
    pub fn start(
        self: &Arc<Self>,
        controller: Arc<dyn ControllerApi>,
        mut stop: watch::Receiver<bool>,
    ) {
        let _ = self.controller.set(controller);
        let coordinator = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => return,
                }
                let Some(c) = coordinator.upgrade() else {
                    return;
                };
                c.tick();
            }
        });
    }

    fn rules(&self) -> GroupRules {
        GroupRules {
            initial_rebalance_delay: self.config.initial_rebalance_delay,
        }
    }

    fn current_image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Arc<GroupHandle>>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owns(&self, image: &MetadataImage, group_id: &str) -> bool {
        image.group_coordinator(group_id) == Some(self.node_id)
    }

    /// The loaded group, loading it from the image when this broker
    /// coordinates it; NOT_COORDINATOR otherwise.
    fn handle(&self, group_id: &str) -> Result<Arc<GroupHandle>, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let image = self.current_image();
        if !self.owns(&image, group_id) {
            return Err(ResponseError::NotCoordinator);
        }
        let mut groups = self.groups();
        let handle = groups.entry(group_id.to_string()).or_insert_with(|| {
            let now = Instant::now();
            let group = match image.groups.get(group_id) {
                Some(stored) => {
                    debug!(
                        group = group_id,
                        generation = stored.generation(),
                        "loaded group from the metadata image"
                    );
                    Group::load(stored, now)
                }
                None => Group::new(group_id, now, wall_clock_ms()),
            };
            Arc::new(GroupHandle::new(group))
        });
        Ok(handle.clone())
    }

    /// Runs `f` on the loaded group. A group unloaded between lookup and
    /// lock is looked up again, so `f` never sees a dead group.
    fn with_group<T>(
        &self,
        group_id: &str,
        mut f: impl FnMut(&Arc<GroupHandle>, &mut Group) -> T,
    ) -> Result<T, ResponseError> {
        for _ in 0..3 {
            let handle = self.handle(group_id)?;
            let mut group = handle.lock();
            if group.state != GroupState::Dead {
                return Ok(f(&handle, &mut group));
            }
        }
        Err(ResponseError::CoordinatorNotAvailable)
    }

    /// Drops a group from memory, answering its waiting requests with `error`.
    fn unload(&self, group_id: &str, error: ResponseError) {
        if let Some(handle) = self.groups().remove(group_id) {
            handle.lock().shut(error);
            info!(group = group_id, "unloaded group");
        }
    }

    fn writer(&self) -> Result<(Arc<dyn ControllerApi>, GroupWriter), ControllerError> {
        let controller = self
            .controller
            .get()
            .cloned()
            .ok_or_else(|| ControllerError::NotController("the broker is starting".into()))?;
        let image = self.current_image();
        let broker_epoch = image
            .brokers
            .get(&self.node_id)
            .map(|b| b.broker_epoch)
            .ok_or_else(|| {
                ControllerError::NotCoordinator("this broker is not registered".into())
            })?;
        Ok((
            controller,
            GroupWriter {
                broker_id: self.node_id,
                broker_epoch,
            },
        ))
    }

    /// Commits a group write; a write the controller refuses because this
    /// broker lost the group unloads it.
    async fn write(&self, write: GroupWrite) -> Result<GroupWriteOutcome, ControllerError> {
        let group_id = write.group_id().to_string();
        let (controller, writer) = self.writer()?;
        match controller.write_group(writer, write).await {
            Ok(outcome) => {
                self.last_write
                    .fetch_max(outcome.log_offset, Ordering::AcqRel);
                Ok(outcome)
            }
            Err(e) => {
                if lost_group(&e) {
                    info!(group = %group_id, error = %e, "the controller refused a group write; giving the group up");
                    self.unload(&group_id, ResponseError::NotCoordinator);
                }
                Err(e)
            }
        }
    }

    /// Commits the group's membership on top of the generation the log holds.
    async fn persist(
        &self,
        handle: &GroupHandle,
        record: GroupRecord,
    ) -> Result<(), ControllerError> {
        let _turn = handle.write_turn.lock().await;
        let expected_generation = {
            let group = handle.lock();
            if group.state == GroupState::Dead {
                return Err(ControllerError::NotCoordinator(
                    "the group was unloaded".into(),
                ));
            }
            group.committed_generation
        };
        let generation = record.generation;
        self.write(GroupWrite::Membership {
            expected_generation,
            group: record,
        })
        .await?;
        handle.lock().committed_generation = generation;
        metrics::counter!("sluice_group_generations_committed_total").increment(1);
        Ok(())
    }

    /// Tells the controller that a rebalance began in a group whose
    /// committed `generation` is empty, so that expiry (which sees only
    /// committed state) leaves the group's offsets to the generation being
    /// formed. Nothing when a newer generation has committed meanwhile.
    async fn note_rebalance(
        &self,
        handle: &GroupHandle,
        group_id: &str,
        generation: i32,
    ) -> Result<(), ControllerError> {
        let _turn = handle.write_turn.lock().await;
        {
            let group = handle.lock();
            if group.state == GroupState::Dead {
                return Err(ControllerError::NotCoordinator(
                    "the group was unloaded".into(),
                ));
            }
            if group.committed_generation != generation {
                return Ok(());
            }
        }
        self.write(GroupWrite::RebalanceStarted {
            group_id: group_id.to_string(),
            generation,
            at_ms: wall_clock_ms(),
        })
        .await
        .map(|_| ())
    }

    /// Commits a record that needs no answer (the group emptied).
    fn persist_later(self: &Arc<Self>, handle: Arc<GroupHandle>, record: GroupRecord) {
        // Counted before this returns, so a request answered after the
        // change can wait for it to land.
        handle.background_writes.send_modify(|n| *n += 1);
        let coordinator = self.clone();
        tokio::spawn(async move {
            let group_id = record.group_id.clone();
            if let Err(e) = coordinator.persist(&handle, record).await {
                warn!(group = %group_id, error = %e, "could not commit the group's state");
            }
            handle.background_writes.send_modify(|n| *n -= 1);
        });
    }

    fn tick(self: &Arc<Self>) {
        let rules = self.rules();
        let now = Instant::now();
        let wall = wall_clock_ms();
        let handles: Vec<(String, Arc<GroupHandle>)> = self
            .groups()
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        for (group_id, handle) in handles {
            let (record, idle) = {
                let mut group = handle.lock();
                let record = group.tick(&rules, now, wall);
                (record, group.is_idle())
            };
            if let Some(record) = record {
                self.persist_later(handle.clone(), record);
            } else if idle && handle.write_turn.try_lock().is_ok() {
                // Nothing here the image lacks: let the group go.
                let mut groups = self.groups();
                if groups
                    .get(&group_id)
                    .is_some_and(|h| Arc::ptr_eq(h, &handle))
                {
                    let mut group = handle.lock();
                    if group.is_idle() {
                        group.state = GroupState::Dead;
                        groups.remove(&group_id);
                    }
                }
            }
        }
    }

    pub fn validate_session_timeout(&self, session_timeout: Duration) -> Result<(), ResponseError> {
        if session_timeout < self.config.min_session_timeout
            || session_timeout > self.config.max_session_timeout
        {
            return Err(ResponseError::InvalidSessionTimeout);
        }
        Ok(())
    }

    pub async fn join(self: &Arc<Self>, group_id: &str, request: JoinRequest) -> JoinResult {
        let member_id = request.member_id.clone();
        if let Err(e) = self.validate_session_timeout(request.spec.session_timeout) {
            return JoinResult::error(e, &member_id);
        }
        let rules = self.rules();
        let stored = self.current_image().groups.contains_key(group_id);
        let step = self.with_group(group_id, |handle, group| {
            let was_empty = group.state == GroupState::Empty;
            let generation = group.committed_generation;
            let step = group.join(request.clone(), &rules, Instant::now(), wall_clock_ms());
            // A group the log holds, empty, starts a rebalance.
            let began = was_empty
                && group.state == GroupState::PreparingRebalance
                && (stored || generation > 0);
            (handle.clone(), step, began.then_some(generation))
        });
        match step {
            Err(e) => JoinResult::error(e, &member_id),
            Ok((_, JoinStep::Done(result), _)) => result,
            Ok((handle, JoinStep::Wait(rx), began)) => {
                if let Some(generation) = began {
                    if let Err(e) = self.note_rebalance(&handle, group_id, generation).await {
                        let error = if lost_group(&e) {
                            // The group is gone (expired, say): the client
                            // finds the coordinator again and starts anew.
                            ResponseError::NotCoordinator
                        } else {
                            write_error(&e)
                        };
                        return JoinResult::error(error, &member_id);
                    }
                }
                rx.await.unwrap_or_else(|_| {
                    JoinResult::error(ResponseError::NotCoordinator, &member_id)
                })
            }
            Ok((handle, JoinStep::Persist(record, answer), _)) => {
                match self.persist(&handle, record).await {
                    Ok(()) => answer,
                    Err(e) => JoinResult::error(write_error(&e), &member_id),
                }
            }
        }
    }

    pub async fn sync(self: &Arc<Self>, group_id: &str, request: SyncRequest) -> SyncResult {
        let step = self.with_group(group_id, |handle, group| {
            (handle.clone(), group.sync(request.clone(), Instant::now()))
        });
        let gone = || SyncResult::error(ResponseError::NotCoordinator);
        match step {
            Err(e) => SyncResult::error(e),
            Ok((_, SyncStep::Done(result))) => result,
            Ok((_, SyncStep::Wait(rx))) => rx.await.unwrap_or_else(|_| gone()),
            Ok((handle, SyncStep::Persist(record, rx))) => {
                let generation = record.generation;
                match self.persist(&handle, record).await {
                    Ok(()) => handle
                        .lock()
                        .assignment_committed(generation, wall_clock_ms()),
                    Err(e) if lost_group(&e) => {}
                    Err(e) => {
                        warn!(group = group_id, error = %e, "could not commit the group's assignment");
                        let record = handle.lock().assignment_failed(
                            generation,
                            write_error(&e),
                            &self.rules(),
                            Instant::now(),
                            wall_clock_ms(),
                        );
                        if let Some(record) = record {
                            self.persist_later(handle.clone(), record);
                        }
                    }
                }
                rx.await.unwrap_or_else(|_| gone())
            }
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        self.with_group(group_id, |_, group| {
            group.heartbeat(member_id, instance_id, generation, Instant::now())
        })?
    }

    /// Removes the named members; one result per member, in order.
    pub fn leave(
        self: &Arc<Self>,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let rules = self.rules();
        let (handle, results, records) = self.with_group(group_id, |handle, group| {
            let mut results = Vec::new();
            let mut records = Vec::new();
            for (member_id, instance_id) in members {
                match group.leaving_member(member_id, instance_id.as_deref()) {
                    Ok(id) => {
                        info!(group = group_id, member = %id, "member left the group");
                        records.extend(group.member_gone(
                            &id,
                            &rules,
                            Instant::now(),
                            wall_clock_ms(),
                        ));
                        results.push(Ok(()));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            (handle.clone(), results, records)
        })?;
        for record in records {
            self.persist_later(handle.clone(), record);
        }
        Ok(results)
    }

    /// Commits offsets for a group member (or, with generation -1, for a
    /// client outside group management); one result per partition, in order.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: Vec<OffsetToCommit>,
    ) -> Vec<Result<(), ResponseError>> {
        let all = |e: ResponseError| offsets.iter().map(|_| Err(e)).collect::<Vec<_>>();
        // The controller checks the committer against the membership in the
        // log: let that catch up with what members were told (a LeaveGroup
        // already answered, say) before checking here.
        match self.handle(group_id) {
            Ok(handle) => handle.background_writes_landed(READ_YOUR_WRITES_WAIT).await,
            Err(e) => return all(e),
        }
        let image = self.current_image();
        let stored = image.groups.contains_key(group_id);
        let checked = self.with_group(group_id, |_, group| {
            if !stored && group.members.is_empty() && group.generation == 0 && generation >= 0 {
                // No such group: the commit is from a generation long gone.
                return Err(ResponseError::IllegalGeneration);
            }
            group.check_commit(member_id, instance_id, generation, Instant::now())
        });
        if let Err(e) = checked.and_then(|r| r) {
            return all(e);
        }
        let mut results: Vec<Result<(), ResponseError>> = Vec::with_capacity(offsets.len());
        let mut to_commit: Vec<TopicOffsets> = Vec::new();
        for o in &offsets {
            let exists = image
                .topic(&o.topic)
                .is_some_and(|t| t.partitions.contains_key(&o.partition));
            if !exists {
                results.push(Err(ResponseError::UnknownTopicOrPartition));
                continue;
            }
            if o.metadata
                .as_ref()
                .is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes)
            {
                results.push(Err(ResponseError::OffsetMetadataTooLarge));
                continue;
            }
            results.push(Ok(()));
            let partition = PartitionOffset {
                partition: o.partition,
                offset: o.offset,
                leader_epoch: o.leader_epoch,
                metadata: o.metadata.clone().filter(|m| !m.is_empty()),
            };
            match to_commit.iter_mut().find(|t| t.topic == o.topic) {
                Some(t) => t.partitions.push(partition),
                None => to_commit.push(TopicOffsets {
                    topic: o.topic.clone(),
                    partitions: vec![partition],
                }),
            }
        }
        if to_commit.is_empty() {
            return results;
        }
        let write = GroupWrite::CommitOffsets {
            group_id: group_id.to_string(),
            generation,
            member_id: member_id.to_string(),
            offsets: to_commit,
        };
        let started = Instant::now();
        let committed = self.write(write).await;
        metrics::histogram!("sluice_group_offset_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        match committed {
            Ok(outcome) => {
                if !member_id.is_empty() {
                    let _ = self
                        .with_group(group_id, |_, group| group.touch(member_id, Instant::now()));
                }
                metrics::counter!("sluice_group_offsets_committed_total")
                    .increment(results.iter().filter(|r| r.is_ok()).count() as u64);
                for (o, result) in offsets.iter().zip(results.iter_mut()) {
                    if outcome
                        .unknown_partitions
                        .iter()
                        .any(|(t, p)| *t == o.topic && *p == o.partition)
                    {
                        *result = Err(ResponseError::UnknownTopicOrPartition);
                    }
                }
                results
            }
            Err(e) => {
                let error = write_error(&e);
                results.into_iter().map(|r| r.and(Err(error))).collect()
            }
        }
    }

    /// Waits until this broker's image holds every write this coordinator
    /// has committed, so a client reads what it just wrote.
    async fn caught_up_image(&self) -> Result<Arc<MetadataImage>, ResponseError> {
        let target = self.last_write.load(Ordering::Acquire);
        let mut images = self.image.subscribe();
        let waited = tokio::time::timeout(
            READ_YOUR_WRITES_WAIT,
            images.wait_for(|image| image.offset >= target),
        )
        .await;
        match waited {
            Ok(Ok(image)) => Ok(image.clone()),
            _ => Err(ResponseError::CoordinatorLoadInProgress),
        }
    }

    /// The committed offsets of a group: the partitions asked for, or all
    /// (`None`). A partition with no commit has `None`.
    pub async fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<(String, i32, Option<CommittedOffset>)>, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        if !self.owns(&self.current_image(), group_id) {
            return Err(ResponseError::NotCoordinator);
        }
        let image = self.caught_up_image().await?;
        let group = image.groups.get(group_id);
        let mut out = Vec::new();
        match partitions {
            Some(requested) => {
                for (topic, partitions) in requested {
                    for partition in partitions {
                        let committed = group.and_then(|g| g.offset(&topic, partition)).cloned();
                        out.push((topic.clone(), partition, committed));
                    }
                }
            }
            None => {
                if let Some(group) = group {
                    for (topic, partitions) in &group.offsets {
                        for (&partition, committed) in partitions.iter() {
                            out.push((topic.clone(), partition, Some(committed.clone())));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The groups this broker coordinates.
    pub fn list_groups(&self) -> Vec<ListedGroup> {
        let image = self.current_image();
        let mut listed: HashMap<String, ListedGroup> = HashMap::new();
        for (group_id, stored) in image.groups.iter() {
            if !self.owns(&image, group_id) {
                continue;
            }
            let membership = stored.membership.as_ref();
            listed.insert(
                group_id.clone(),
                ListedGroup {
                    group_id: group_id.clone(),
                    protocol_type: membership
                        .and_then(|m| m.protocol_type.clone())
                        .unwrap_or_default(),
                    state: if stored.has_no_members() {
                        GroupState::Empty
                    } else {
                        GroupState::Stable
                    },
                },
            );
        }
        for (group_id, handle) in self.groups().iter() {
            let group = handle.lock();
            if group.state == GroupState::Dead
                || (group.is_idle() && !image.groups.contains_key(group_id))
            {
                continue;
            }
            listed.insert(
                group_id.clone(),
                ListedGroup {
                    group_id: group_id.clone(),
                    protocol_type: group.protocol_type.clone().unwrap_or_default(),
                    state: group.state,
                },
            );
        }
        let mut listed: Vec<ListedGroup> = listed.into_values().collect();
        listed.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        listed
    }

    /// `None` for a group that does not exist.
    pub fn describe(&self, group_id: &str) -> Result<Option<GroupDescription>, ResponseError> {
        let image = self.current_image();
        if !self.owns(&image, group_id) {
            return Err(ResponseError::NotCoordinator);
        }
        let loaded = self.groups().contains_key(group_id);
        if !loaded && !image.groups.contains_key(group_id) {
            return Ok(None);
        }
        self.with_group(group_id, |_, group| {
            if group.is_idle() && !image.groups.contains_key(group_id) {
                return None;
            }
            let stable = group.state == GroupState::Stable;
            let protocol = group.protocol_name.clone().unwrap_or_default();
            Some(GroupDescription {
                state: group.state,
                protocol_type: group.protocol_type.clone().unwrap_or_default(),
                protocol_name: if stable {
                    protocol.clone()
                } else {
                    String::new()
                },
                members: group
                    .members
                    .values()
                    .map(|m| MemberDescription {
                        member_id: m.id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.spec.client_id.clone(),
                        client_host: m.spec.client_host.clone(),
                        // As in Kafka: metadata and assignments only once stable.
                        metadata: if stable {
                            m.spec
                                .protocols
                                .iter()
                                .find(|(name, _)| *name == protocol)
                                .map(|(_, meta)| meta.clone())
                                .unwrap_or_default()
                        } else {
                            Bytes::new()
                        },
                        assignment: if stable {
                            m.assignment.clone()
                        } else {
                            Bytes::new()
                        },
                    })
                    .collect(),
            })
        })
    }

    pub async fn delete_group(&self, group_id: &str) -> Result<(), ResponseError> {
        let image = self.current_image();
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        if !self.owns(&image, group_id) {
            return Err(ResponseError::NotCoordinator);
        }
        if let Some(handle) = self.groups().get(group_id).cloned() {
            let group = handle.lock();
            if !group.members.is_empty() || group.state != GroupState::Empty {
                return Err(ResponseError::NonEmptyGroup);
            }
        }
        if !image.groups.contains_key(group_id) {
            return Err(ResponseError::GroupIdNotFound);
        }
        self.write(GroupWrite::DeleteGroup {
            group_id: group_id.to_string(),
        })
        .await
        .map_err(|e| write_error(&e))?;
        self.unload(group_id, ResponseError::GroupIdNotFound);
        Ok(())
    }

    /// Deletes committed offsets; partitions of topics the group's members
    /// subscribe to are refused. Returns one result per partition.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let image = self.current_image();
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        if !self.owns(&image, group_id) {
            return Err(ResponseError::NotCoordinator);
        }
        if !image.groups.contains_key(group_id) {
            return Err(ResponseError::GroupIdNotFound);
        }
        let subscribed = self.with_group(group_id, |_, group| {
            if group.members.is_empty() {
                return Ok(Vec::new());
            }
            if group.protocol_type.as_deref() != Some("consumer") {
                return Err(ResponseError::NonEmptyGroup);
            }
            Ok(group
                .members
                .values()
                .flat_map(|m| subscribed_topics(m.spec.protocols.first().map(|(_, meta)| meta)))
                .collect::<Vec<String>>())
        })??;
        let results: Vec<Result<(), ResponseError>> = partitions
            .iter()
            .map(|(topic, _)| {
                if subscribed.contains(topic) {
                    Err(ResponseError::GroupSubscribedToTopic)
                } else {
                    Ok(())
                }
            })
            .collect();
        let to_delete: Vec<(String, i32)> = partitions
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(p, _)| p.clone())
            .collect();
        if !to_delete.is_empty() {
            self.write(GroupWrite::DeleteOffsets {
                group_id: group_id.to_string(),
                partitions: to_delete,
            })
            .await
            .map_err(|e| write_error(&e))?;
        }
        Ok(results)
    }
}

/// The topics in a consumer-protocol subscription; nothing when it does
/// not decode (another protocol's metadata is opaque to the coordinator).
fn subscribed_topics(metadata: Option<&Bytes>) -> Vec<String> {
    use bytes::Buf;
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let Some(mut buf) = metadata.cloned() else {
        return Vec::new();
    };
    if buf.remaining() < 2 {
        return Vec::new();
    }
    // The version prefix; a newer one is read as the newest we know.
    let version = buf.get_i16().clamp(0, 3);
    ConsumerProtocolSubscription::decode(&mut buf, version)
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

impl Publisher for GroupCoordinator {
    fn publish(&self, delta: &MetadataDelta, image: &Arc<MetadataImage>) {
        self.image.send_replace(image.clone());
        // Groups whose coordinator changed, or that the log removed while
        // they sat empty here, leave memory.
        let brokers_changed = !Arc::ptr_eq(&delta.base().brokers, &image.brokers);
        let removed: Vec<String> = delta
            .changed_groups()
            .filter(|(_, exists)| !exists)
            .map(|(id, _)| id.to_string())
            .collect();
        if !brokers_changed && removed.is_empty() {
            return;
        }
        let loaded: Vec<String> = self.groups().keys().cloned().collect();
        for group_id in loaded {
            if brokers_changed && !self.owns(image, &group_id) {
                info!(group = %group_id, "another broker coordinates this group now");
                self.unload(&group_id, ResponseError::NotCoordinator);
            } else if removed.contains(&group_id) {
                let empty = self
                    .groups()
                    .get(&group_id)
                    .is_some_and(|h| h.lock().members.is_empty());
                if empty {
                    self.unload(&group_id, ResponseError::UnknownMemberId);
                }
            }
        }
    }
}
