//! One consumer group as its coordinator holds it in memory: the classic
//! group protocol's states, members and join/sync barrier.
//!
//! Everything here is synchronous and takes the current time as an
//! argument, so the rules can be read (and tested) without the network.
//! Answers to requests that wait at the barrier go out through the
//! `oneshot` senders the members hold; what must be committed to the
//! metadata log is returned to the caller as a [`GroupRecord`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use sluice_metadata::{GroupImage, GroupMemberRecord, GroupRecord};
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// No members (a new group, or every member left).
    Empty,
    /// Waiting for members to (re)join before a new generation.
    PreparingRebalance,
    /// The generation is formed; waiting for the leader's assignment.
    CompletingRebalance,
    Stable,
    /// Unloaded: deleted, or coordinated elsewhere now.
    Dead,
}

impl GroupState {
    /// The name clients see in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// The answer to a JoinGroup.
#[derive(Clone, Debug, Default)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: every member and its metadata.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// The leader need not compute an assignment (a static leader rejoined).
    pub skip_assignment: bool,
}

impl JoinResult {
    pub fn error(error: ResponseError, member_id: &str) -> Self {
        Self {
            error: Some(error),
            generation: -1,
            member_id: member_id.to_string(),
            ..Self::default()
        }
    }
}

/// The answer to a SyncGroup.
#[derive(Clone, Debug, Default)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(error: ResponseError) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }
}

/// What a member says of itself in JoinGroup; each rejoin replaces it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberSpec {
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub spec: MemberSpec,
    pub assignment: Bytes,
    /// A JoinGroup waiting at the barrier.
    join: Option<oneshot::Sender<JoinResult>>,
    /// A SyncGroup waiting for the leader's assignment.
    sync: Option<oneshot::Sender<SyncResult>>,
    /// Sent SyncGroup for the current generation.
    synced: bool,
    last_heartbeat: Instant,
    /// Order of joining; the earliest remaining member leads.
    joined_seq: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.spec
            .protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn supports(&self, protocol: &str) -> bool {
        self.spec.protocols.iter().any(|(name, _)| name == protocol)
    }

    fn answer_join(&mut self, result: JoinResult) {
        if let Some(waiter) = self.join.take() {
            let _ = waiter.send(result);
        }
    }

    fn answer_sync(&mut self, result: SyncResult) {
        if let Some(waiter) = self.sync.take() {
            let _ = waiter.send(result);
        }
    }
}

/// What a JoinGroup asks.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub spec: MemberSpec,
    /// JoinGroup v4+: a new member first gets its id, then joins with it.
    pub require_known_member_id: bool,
    /// JoinGroup v9+: a static leader may be told to skip the assignment.
    pub supports_skip_assignment: bool,
}

/// How a JoinGroup proceeds.
pub enum JoinStep {
    /// Answered now.
    Done(JoinResult),
    /// Waits at the barrier.
    Wait(oneshot::Receiver<JoinResult>),
    /// A static member replaced its earlier incarnation without a
    /// rebalance: commit the group, then answer.
    Persist(GroupRecord, JoinResult),
}

/// What a SyncGroup asks.
#[derive(Clone, Debug, Default)]
pub struct SyncRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    /// Checked against the group's when given (SyncGroup v5+).
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment: member id -> its share.
    pub assignments: Vec<(String, Bytes)>,
}

pub enum SyncStep {
    Done(SyncResult),
    Wait(oneshot::Receiver<SyncResult>),
    /// The leader's assignment completed the generation: commit it; the
    /// answer (the leader's included) comes through the receiver.
    Persist(GroupRecord, oneshot::Receiver<SyncResult>),
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    /// The generation the metadata log holds; a new one commits on top of it.
    pub committed_generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Instance id -> member id, for static members.
    static_members: HashMap<String, String>,
    /// Member ids handed out by MEMBER_ID_REQUIRED, until they join or expire.
    pending: HashMap<String, Instant>,
    /// When the join phase ends even if members are missing.
    rebalance_deadline: Instant,
    /// A new group waits this long for more members before the first
    /// generation (`group.initial.rebalance.delay.ms`), extended per joiner.
    initial_delay_until: Option<Instant>,
    /// When the sync phase gives up on members that never sent SyncGroup.
    sync_deadline: Instant,
    /// When the group entered its state (ms since the epoch).
    pub state_timestamp: i64,
    next_seq: u64,
}

/// Settings the rules depend on.
#[derive(Clone, Debug)]
pub struct GroupRules {
    pub initial_rebalance_delay: Duration,
}

pub fn new_member_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl Group {
    pub fn new(id: &str, now: Instant, wall_ms: i64) -> Self {
        Self {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            committed_generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: now,
            initial_delay_until: None,
            sync_deadline: now,
            state_timestamp: wall_ms,
            next_seq: 0,
        }
    }

    /// The group as the metadata log last recorded it; members get a full
    /// session from `now`, since their heartbeats went to the old coordinator.
    pub fn load(image: &GroupImage, now: Instant) -> Self {
        let mut group = Self::new(&image.group_id, now, 0);
        let Some(record) = &image.membership else {
            return group;
        };
        group.generation = record.generation;
        group.committed_generation = record.generation;
        group.protocol_type = record.protocol_type.clone();
        group.protocol_name = record.protocol_name.clone();
        group.leader = record.leader.clone();
        group.state_timestamp = record.state_timestamp;
        let protocol = record.protocol_name.clone().unwrap_or_default();
        for m in &record.members {
            group.next_seq += 1;
            if let Some(instance) = &m.group_instance_id {
                group
                    .static_members
                    .insert(instance.clone(), m.member_id.clone());
            }
            group.members.insert(
                m.member_id.clone(),
                Member {
                    id: m.member_id.clone(),
                    instance_id: m.group_instance_id.clone(),
                    spec: MemberSpec {
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        session_timeout: Duration::from_millis(m.session_timeout_ms.max(0) as u64),
                        rebalance_timeout: Duration::from_millis(
                            m.rebalance_timeout_ms.max(0) as u64
                        ),
                        protocol_type: record.protocol_type.clone().unwrap_or_default(),
                        protocols: vec![(protocol.clone(), Bytes::from(m.subscription.clone()))],
                    },
                    assignment: Bytes::from(m.assignment.clone()),
                    join: None,
                    sync: None,
                    synced: true,
                    last_heartbeat: now,
                    joined_seq: group.next_seq,
                },
            );
        }
        group.state = if group.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        group
    }

    /// The record of the group as it stands, for the metadata log.
    pub fn to_record(&self) -> GroupRecord {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        GroupRecord {
            group_id: self.id.clone(),
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_timestamp,
            members: self
                .members
                .values()
                .map(|m| GroupMemberRecord {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.spec.client_id.clone(),
                    client_host: m.spec.client_host.clone(),
                    session_timeout_ms: m.spec.session_timeout.as_millis() as i32,
                    rebalance_timeout_ms: m.spec.rebalance_timeout.as_millis() as i32,
                    subscription: m.metadata_for(&protocol).to_vec(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
        }
    }

    /// No member, pending member or waiting request: nothing here that the
    /// metadata log does not also hold.
    pub fn is_idle(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending.is_empty()
            && self.generation == self.committed_generation
    }

    /// Answers every waiting request with `error`; the group is unloaded.
    pub fn shut(&mut self, error: ResponseError) {
        for member in self.members.values_mut() {
            let id = member.id.clone();
            member.answer_join(JoinResult::error(error, &id));
            member.answer_sync(SyncResult::error(error));
        }
        self.state = GroupState::Dead;
    }

    fn set_state(&mut self, state: GroupState, wall_ms: i64) {
        if self.state != state {
            self.state = state;
            self.state_timestamp = wall_ms;
        }
    }

    /// The member a request names, checking a static member's identity:
    /// an instance id now held by another member id is fenced.
    pub fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<&Member, ResponseError> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(current) if current != member_id => {
                    return Err(ResponseError::FencedInstanceId)
                }
                _ => {}
            }
        }
        self.members
            .get(member_id)
            .ok_or(ResponseError::UnknownMemberId)
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .spec
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| self.members.values().all(|m| m.supports(name)))
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .spec
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(&name))
            {
                *votes.entry(name).or_default() += 1;
            }
        }
        // Most votes wins; among equals, the first member's preference.
        candidates
            .iter()
            .max_by_key(|name| {
                let position = candidates.iter().position(|c| c == *name).unwrap_or(0);
                (
                    votes.get(*name).copied().unwrap_or(0),
                    usize::MAX - position,
                )
            })
            .map(|name| (*name).clone())
    }

    /// A joiner's protocols fit the group when the type matches and at
    /// least one protocol is supported by every current member.
    fn accepts_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols
            .iter()
            .any(|(name, _)| self.members.values().all(|m| m.supports(name)))
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.spec.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    pub fn join(
        &mut self,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
        wall_ms: i64,
    ) -> JoinStep {
        if self.state == GroupState::Dead {
            return JoinStep::Done(JoinResult::error(
                ResponseError::CoordinatorNotAvailable,
                &request.member_id,
            ));
        }
        if !self.accepts_protocols(&request.spec.protocol_type, &request.spec.protocols) {
            return JoinStep::Done(JoinResult::error(
                ResponseError::InconsistentGroupProtocol,
                &request.member_id,
            ));
        }
        if request.member_id.is_empty() {
            self.join_unknown_member(request, rules, now, wall_ms)
        } else {
            self.join_known_member(request, rules, now, wall_ms)
        }
    }

    fn join_unknown_member(
        &mut self,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
        wall_ms: i64,
    ) -> JoinStep {
        if let Some(instance) = request.instance_id.clone() {
            let member_id = new_member_id(&instance);
            if let Some(old_id) = self.static_members.get(&instance).cloned() {
                return self
                    .replace_static_member(&old_id, member_id, request, rules, now, wall_ms);
            }
            self.static_members.insert(instance, member_id.clone());
            return self.add_member_and_wait(member_id, request, rules, now, wall_ms);
        }
        let member_id = new_member_id(&request.spec.client_id);
        if request.require_known_member_id {
            // The client must come back with this id; until then it holds
            // a place the barrier waits for.
            self.pending
                .insert(member_id.clone(), now + request.spec.session_timeout);
            return JoinStep::Done(JoinResult::error(
                ResponseError::MemberIdRequired,
                &member_id,
            ));
        }
        self.add_member_and_wait(member_id, request, rules, now, wall_ms)
    }

    fn join_known_member(
        &mut self,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
        wall_ms: i64,
    ) -> JoinStep {
        let member_id = request.member_id.clone();
        if self.pending.remove(&member_id).is_some() {
            return self.add_member_and_wait(member_id, request, rules, now, wall_ms);
        }
        if let Err(e) = self.check_member(&member_id, request.instance_id.as_deref()) {
            return JoinStep::Done(JoinResult::error(e, &member_id));
        }
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        let member = match self.members.get_mut(&member_id) {
            Some(member) => member,
            None => {
                return JoinStep::Done(JoinResult::error(
                    ResponseError::UnknownMemberId,
                    &member_id,
                ))
            }
        };
        let unchanged = member.spec.protocols == request.spec.protocols;
        member.last_heartbeat = now;
        match self.state {
            GroupState::PreparingRebalance => {
                member.spec = request.spec.clone();
                let (tx, rx) = oneshot::channel();
                member.join = Some(tx);
                self.try_complete_join(now, wall_ms);
                JoinStep::Wait(rx)
            }
            // A member that missed its JoinGroup answer asks again.
            GroupState::CompletingRebalance if unchanged => {
                JoinStep::Done(self.current_join_result(&member_id, is_leader, false))
            }
            GroupState::Stable if unchanged && !is_leader => {
                JoinStep::Done(self.current_join_result(&member_id, false, false))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.spec = request.spec.clone();
                let (tx, rx) = oneshot::channel();
                member.join = Some(tx);
                self.prepare_rebalance(rules, now, wall_ms);
                self.try_complete_join(now, wall_ms);
                JoinStep::Wait(rx)
            }
            GroupState::Empty | GroupState::Dead => JoinStep::Done(JoinResult::error(
                ResponseError::UnknownMemberId,
                &member_id,
            )),
        }
    }

    fn add_member_and_wait(
        &mut self,
        member_id: String,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
        wall_ms: i64,
    ) -> JoinStep {
        self.next_seq += 1;
        let (tx, rx) = oneshot::channel();
        let member = Member {
            id: member_id.clone(),
            instance_id: request.instance_id.clone(),
            spec: request.spec.clone(),
            assignment: Bytes::new(),
            join: Some(tx),
            sync: None,
            synced: false,
            last_heartbeat: now,
            joined_seq: self.next_seq,
        };
        if self.members.is_empty() {
            self.protocol_type = Some(request.spec.protocol_type.clone());
        }
        self.members.insert(member_id, member);
        match self.state {
            GroupState::PreparingRebalance => {
                // Each joiner during a new group's initial delay extends it,
                // within the rebalance timeout.
                if let Some(until) = self.initial_delay_until {
                    let extended = (until.max(now) + rules.initial_rebalance_delay)
                        .min(self.rebalance_deadline);
                    self.initial_delay_until = Some(extended);
                }
                self.rebalance_deadline = self
                    .rebalance_deadline
                    .max(now + request.spec.rebalance_timeout);
                self.try_complete_join(now, wall_ms);
            }
            _ => {
                self.prepare_rebalance(rules, now, wall_ms);
                self.try_complete_join(now, wall_ms);
            }
        }
        JoinStep::Wait(rx)
    }

    fn replace_static_member(
        &mut self,
        old_id: &str,
        new_id: String,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
        wall_ms: i64,
    ) -> JoinStep {
        let Some(mut member) = self.members.remove(old_id) else {
            self.static_members
                .remove(request.instance_id.as_deref().unwrap_or_default());
            return self.join_unknown_member(request, rules, now, wall_ms);
        };
        // The old incarnation's waiting requests learn it was replaced.
        member.answer_join(JoinResult::error(ResponseError::FencedInstanceId, old_id));
        member.answer_sync(SyncResult::error(ResponseError::FencedInstanceId));
        member.id = new_id.clone();
        member.last_heartbeat = now;
        let protocols_changed = member.spec.protocols != request.spec.protocols;
        member.spec = request.spec.clone();
        if let Some(instance) = &member.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.clone());
        }
        self.members.insert(new_id.clone(), member);
        match self.state {
            GroupState::Stable
                if !protocols_changed || self.select_protocol() == self.protocol_name =>
            {
                let is_leader = self.leader.as_deref() == Some(new_id.as_str());
                let skip = is_leader && request.supports_skip_assignment;
                let answer = self.current_join_result(&new_id, is_leader, skip);
                JoinStep::Persist(self.to_record(), answer)
            }
            GroupState::PreparingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(&new_id) {
                    m.join = Some(tx);
                }
                self.try_complete_join(now, wall_ms);
                JoinStep::Wait(rx)
            }
            _ => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(&new_id) {
                    m.join = Some(tx);
                }
                self.prepare_rebalance(rules, now, wall_ms);
                self.try_complete_join(now, wall_ms);
                JoinStep::Wait(rx)
            }
        }
    }

    fn current_join_result(&self, member_id: &str, with_members: bool, skip: bool) -> JoinResult {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if with_members {
                self.members
                    .values()
                    .map(|m| {
                        (
                            m.id.clone(),
                            m.instance_id.clone(),
                            m.metadata_for(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
            skip_assignment: skip,
        }
    }

    /// Starts (or restarts) the join phase; the caller then tries to end it
    /// ([`Self::try_complete_join`]), which may already be possible.
    fn prepare_rebalance(&mut self, rules: &GroupRules, now: Instant, wall_ms: i64) {
        if self.state == GroupState::CompletingRebalance {
            // The assignment being worked out is for members that are changing.
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                member.answer_sync(SyncResult::error(ResponseError::RebalanceInProgress));
            }
        }
        let was_empty = self.state == GroupState::Empty;
        self.set_state(GroupState::PreparingRebalance, wall_ms);
        self.rebalance_deadline = now + self.max_rebalance_timeout();
        self.initial_delay_until = (was_empty && !rules.initial_rebalance_delay.is_zero())
            .then(|| (now + rules.initial_rebalance_delay).min(self.rebalance_deadline));
    }

    /// Ends the join phase when every member has rejoined and no new
    /// member is still on its way, or when the deadline has passed.
    /// Returns a record to commit when the group ends up empty.
    pub fn try_complete_join(&mut self, now: Instant, wall_ms: i64) -> Option<GroupRecord> {
        if self.state != GroupState::PreparingRebalance {
            return None;
        }
        if let Some(until) = self.initial_delay_until {
            if now < until {
                return None;
            }
            self.initial_delay_until = None;
        }
        let all_joined = self.members.values().all(|m| m.join.is_some()) && self.pending.is_empty();
        if !all_joined && now < self.rebalance_deadline {
            return None;
        }
        self.complete_join(now, wall_ms)
    }

    fn complete_join(&mut self, now: Instant, wall_ms: i64) -> Option<GroupRecord> {
        // Members that did not rejoin in time are out.
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            self.remove_member(&id);
        }
        self.pending.clear();
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol_name = None;
            self.leader = None;
            self.set_state(GroupState::Empty, wall_ms);
            return Some(self.to_record());
        }
        self.protocol_name = self.select_protocol();
        let leader_stays = self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l));
        if !leader_stays {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.joined_seq)
                .map(|m| m.id.clone());
        }
        self.set_state(GroupState::CompletingRebalance, wall_ms);
        self.sync_deadline = now + self.max_rebalance_timeout();
        let leader = self.leader.clone().unwrap_or_default();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.current_join_result(&id, id == leader, false);
            if let Some(member) = self.members.get_mut(&id) {
                member.last_heartbeat = now;
                member.synced = false;
                member.assignment = Bytes::new();
                member.answer_join(result);
            }
        }
        None
    }

    fn remove_member(&mut self, member_id: &str) {
        if let Some(mut member) = self.members.remove(member_id) {
            member.answer_join(JoinResult::error(ResponseError::UnknownMemberId, member_id));
            member.answer_sync(SyncResult::error(ResponseError::UnknownMemberId));
            if let Some(instance) = &member.instance_id {
                if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                    self.static_members.remove(instance);
                }
            }
        }
    }

    /// Removes a member that left or timed out and rebalances the rest.
    /// Returns a record to commit when the group ends up empty.
    pub fn member_gone(
        &mut self,
        member_id: &str,
        rules: &GroupRules,
        now: Instant,
        wall_ms: i64,
    ) -> Option<GroupRecord> {
        if self.pending.remove(member_id).is_some() {
            return self.try_complete_join(now, wall_ms);
        }
        if !self.members.contains_key(member_id) {
            return None;
        }
        self.remove_member(member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(rules, now, wall_ms);
                self.try_complete_join(now, wall_ms)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now, wall_ms),
            GroupState::Empty | GroupState::Dead => None,
        }
    }

    /// The member a LeaveGroup names: by instance id when it has one.
    pub fn leaving_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<String, ResponseError> {
        if let Some(instance) = instance_id {
            let current = self
                .static_members
                .get(instance)
                .ok_or(ResponseError::UnknownMemberId)?;
            if !member_id.is_empty() && current != member_id {
                return Err(ResponseError::FencedInstanceId);
            }
            return Ok(current.clone());
        }
        if self.members.contains_key(member_id) || self.pending.contains_key(member_id) {
            Ok(member_id.to_string())
        } else {
            Err(ResponseError::UnknownMemberId)
        }
    }

    pub fn sync(&mut self, request: SyncRequest, now: Instant) -> SyncStep {
        let SyncRequest {
            member_id,
            instance_id,
            generation,
            protocol_type,
            protocol_name,
            assignments,
        } = request;
        let member_id = member_id.as_str();
        let instance_id = instance_id.as_deref();
        let (protocol_type, protocol_name) = (protocol_type.as_deref(), protocol_name.as_deref());
        if self.state == GroupState::Dead {
            return SyncStep::Done(SyncResult::error(ResponseError::CoordinatorNotAvailable));
        }
        if let Err(e) = self.check_member(member_id, instance_id) {
            return SyncStep::Done(SyncResult::error(e));
        }
        if generation != self.generation {
            return SyncStep::Done(SyncResult::error(ResponseError::IllegalGeneration));
        }
        let mismatched = |ours: &Option<String>, theirs: Option<&str>| {
            theirs.is_some_and(|t| ours.as_deref() != Some(t))
        };
        if mismatched(&self.protocol_type, protocol_type)
            || mismatched(&self.protocol_name, protocol_name)
        {
            return SyncStep::Done(SyncResult::error(ResponseError::InconsistentGroupProtocol));
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                SyncStep::Done(SyncResult::error(ResponseError::UnknownMemberId))
            }
            GroupState::PreparingRebalance => {
                SyncStep::Done(SyncResult::error(ResponseError::RebalanceInProgress))
            }
            GroupState::Stable => {
                let assignment = self
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                SyncStep::Done(self.sync_result(assignment))
            }
            GroupState::CompletingRebalance => {
                let is_leader = self.leader.as_deref() == Some(member_id);
                let (tx, rx) = oneshot::channel();
                if let Some(member) = self.members.get_mut(member_id) {
                    member.sync = Some(tx);
                    member.synced = true;
                    member.last_heartbeat = now;
                }
                if !is_leader {
                    return SyncStep::Wait(rx);
                }
                let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
                for member in self.members.values_mut() {
                    member.assignment = assignments.remove(&member.id).unwrap_or_default();
                }
                SyncStep::Persist(self.to_record(), rx)
            }
        }
    }

    fn sync_result(&self, assignment: Bytes) -> SyncResult {
        SyncResult {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    /// The leader's assignment for `generation` is committed: the group is
    /// stable and every waiting member gets its share.
    pub fn assignment_committed(&mut self, generation: i32, wall_ms: i64) {
        self.committed_generation = self.committed_generation.max(generation);
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            return;
        }
        self.set_state(GroupState::Stable, wall_ms);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.sync_result(
                self.members
                    .get(&id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default(),
            );
            if let Some(member) = self.members.get_mut(&id) {
                member.answer_sync(result);
            }
        }
    }

    /// Committing the assignment failed: waiting members learn why and the
    /// group rebalances.
    pub fn assignment_failed(
        &mut self,
        generation: i32,
        error: ResponseError,
        rules: &GroupRules,
        now: Instant,
        wall_ms: i64,
    ) -> Option<GroupRecord> {
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            return None;
        }
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
            member.answer_sync(SyncResult::error(error));
        }
        self.prepare_rebalance(rules, now, wall_ms);
        self.try_complete_join(now, wall_ms)
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        self.check_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        let state = self.state;
        let member = self
            .members
            .get_mut(member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        match state {
            GroupState::Empty | GroupState::Dead => Err(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => {
                member.last_heartbeat = now;
                Err(ResponseError::RebalanceInProgress)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.last_heartbeat = now;
                Ok(())
            }
        }
    }

    /// Counts a member's completed request as a sign of life: a commit that
    /// waited on the metadata log also held back the member's heartbeats,
    /// which share its connection.
    pub fn touch(&mut self, member_id: &str, now: Instant) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_heartbeat = now;
        }
    }

    /// Checks an offset commit against the group: `Ok` when it may go to
    /// the metadata log. A member's commit also counts as a heartbeat.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && member_id.is_empty() && instance_id.is_none() {
            // Only a group without members takes commits from outside it.
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        self.check_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        match self.state {
            GroupState::CompletingRebalance => Err(ResponseError::RebalanceInProgress),
            // During PreparingRebalance commits are still taken: the member
            // learns of the rebalance from its next heartbeat.
            _ => {
                if let Some(member) = self.members.get_mut(member_id) {
                    member.last_heartbeat = now;
                }
                Ok(())
            }
        }
    }

    /// Time-based transitions: members whose session lapsed, pending
    /// members that never joined, the end of the join or sync phase.
    /// Returns a record to commit when the group ends up empty.
    pub fn tick(&mut self, rules: &GroupRules, now: Instant, wall_ms: i64) -> Option<GroupRecord> {
        let mut record = None;
        let expired_pending: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired_pending {
            self.pending.remove(&id);
        }
        // A member waiting at a barrier is alive; the phase deadlines deal with it.
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join.is_none() && m.sync.is_none())
            .filter(|m| m.last_heartbeat + m.spec.session_timeout <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            record = self.member_gone(&id, rules, now, wall_ms).or(record);
        }
        if self.state == GroupState::CompletingRebalance && now >= self.sync_deadline {
            let laggards: Vec<String> = self
                .members
                .values()
                .filter(|m| !m.synced)
                .map(|m| m.id.clone())
                .collect();
            for id in laggards {
                tracing::info!(group = %self.id, member = %id, "member did not sync in time");
                record = self.member_gone(&id, rules, now, wall_ms).or(record);
            }
        }
        record.or_else(|| self.try_complete_join(now, wall_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: GroupRules = GroupRules {
        initial_rebalance_delay: Duration::ZERO,
    };

    fn request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            instance_id: None,
            spec: MemberSpec {
                client_id: "client".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout: Duration::from_secs(10),
                rebalance_timeout: Duration::from_secs(30),
                protocol_type: "consumer".into(),
                protocols: protocols
                    .iter()
                    .map(|p| (p.to_string(), Bytes::from(p.to_string())))
                    .collect(),
            },
            require_known_member_id: true,
            supports_skip_assignment: false,
        }
    }

    fn sync_request(
        member: &str,
        instance: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncRequest {
        SyncRequest {
            member_id: member.into(),
            instance_id: instance.map(str::to_string),
            generation,
            assignments,
            ..SyncRequest::default()
        }
    }

    fn wait(step: JoinStep) -> oneshot::Receiver<JoinResult> {
        match step {
            JoinStep::Wait(rx) => rx,
            _ => panic!("expected the join to wait"),
        }
    }

    /// A member joins the v4+ way: first for an id, then with it.
    fn join_new(
        group: &mut Group,
        now: Instant,
        protocols: &[&str],
    ) -> oneshot::Receiver<JoinResult> {
        let JoinStep::Done(first) = group.join(request("", protocols), &RULES, now, 0) else {
            panic!("expected MEMBER_ID_REQUIRED");
        };
        assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
        wait(group.join(request(&first.member_id, protocols), &RULES, now, 0))
    }

    fn take(rx: &mut oneshot::Receiver<JoinResult>) -> JoinResult {
        rx.try_recv().expect("join answered")
    }

    #[test]
    fn members_join_then_the_leader_assigns_and_the_group_is_stable() {
        let now = Instant::now();
        let mut group = Group::new("g", now, 0);
        let mut a = join_new(&mut group, now, &["range", "roundrobin"]);
        // One member, all joined: generation 1 forms at once.
        let a1 = take(&mut a);
        assert_eq!(
            (a1.generation, a1.leader.clone()),
            (1, a1.member_id.clone())
        );
        assert_eq!(a1.protocol_name.as_deref(), Some("range"));
        assert_eq!(group.state, GroupState::CompletingRebalance);

        let SyncStep::Persist(record, mut synced) = group.sync(
            sync_request(
                &a1.member_id,
                None,
                1,
                vec![(a1.member_id.clone(), Bytes::from_static(b"all"))],
            ),
            now,
        ) else {
            panic!("the leader's sync commits the generation");
        };
        assert_eq!(record.generation, 1);
        assert_eq!(record.members[0].assignment, b"all");
        group.assignment_committed(1, 0);
        assert_eq!(group.state, GroupState::Stable);
        assert_eq!(
            synced.try_recv().unwrap().assignment,
            Bytes::from_static(b"all")
        );

        // A second member: the first learns of the rebalance by heartbeat.
        let mut b = join_new(&mut group, now, &["roundrobin"]);
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(
            group.heartbeat(&a1.member_id, None, 1, now),
            Err(ResponseError::RebalanceInProgress)
        );
        assert!(b.try_recv().is_err());
        let mut a = wait(group.join(
            request(&a1.member_id, &["range", "roundrobin"]),
            &RULES,
            now,
            0,
        ));
        let (a2, b2) = (take(&mut a), take(&mut b));
        assert_eq!(a2.generation, 2);
        assert_eq!(a2.protocol_name.as_deref(), Some("roundrobin"));
        assert_eq!(a2.members.len(), 2, "the leader sees every member");
        assert!(b2.members.is_empty());
        assert_eq!(b2.leader, a1.member_id);
        // A follower's early sync waits for the leader's.
        let SyncStep::Wait(mut waiting) =
            group.sync(sync_request(&b2.member_id, None, 2, vec![]), now)
        else {
            panic!("a follower waits for the leader");
        };
        assert!(waiting.try_recv().is_err());
        assert!(matches!(
            group.sync(sync_request(&b2.member_id, None, 1, vec![]), now),
            SyncStep::Done(SyncResult {
                error: Some(ResponseError::IllegalGeneration),
                ..
            })
        ));
    }

    #[test]
    fn the_join_phase_ends_at_its_deadline_without_missing_members() {
        let now = Instant::now();
        let mut group = Group::new("g", now, 0);
        let mut a = join_new(&mut group, now, &["range"]);
        let a1 = take(&mut a);
        group.sync(sync_request(&a1.member_id, None, 1, vec![]), now);
        group.assignment_committed(1, 0);
        let mut b = join_new(&mut group, now, &["range"]);
        // a never rejoins; its session does not lapse within the phase.
        assert!(group
            .tick(&RULES, now + Duration::from_secs(5), 0)
            .is_none());
        assert!(b.try_recv().is_err());
        group.tick(&RULES, now + Duration::from_secs(31), 0);
        let b2 = take(&mut b);
        assert_eq!(b2.generation, 2);
        assert_eq!(b2.leader, b2.member_id);
        assert_eq!(group.members.len(), 1);
    }

    #[test]
    fn expired_sessions_and_leaves_rebalance_and_an_emptied_group_is_recorded() {
        let now = Instant::now();
        let mut group = Group::new("g", now, 0);
        let mut a = join_new(&mut group, now, &["range"]);
        let a1 = take(&mut a);
        group.sync(sync_request(&a1.member_id, None, 1, vec![]), now);
        group.assignment_committed(1, 0);
        assert!(group
            .tick(&RULES, now + Duration::from_secs(9), 0)
            .is_none());
        let record = group
            .tick(&RULES, now + Duration::from_secs(11), 7)
            .expect("the emptied group is committed");
        assert_eq!((record.generation, record.members.len()), (2, 0));
        assert_eq!(record.state_timestamp, 7);
        assert_eq!(group.state, GroupState::Empty);
        assert_eq!(
            group.check_commit(&a1.member_id, None, 1, now),
            Err(ResponseError::UnknownMemberId)
        );
        assert_eq!(group.check_commit("", None, -1, now), Ok(()));
    }

    #[test]
    fn a_static_member_rejoining_keeps_its_assignment_and_fences_the_old_id() {
        let now = Instant::now();
        let mut group = Group::new("g", now, 0);
        let static_request = |member: &str| JoinRequest {
            instance_id: Some("instance-1".into()),
            ..request(member, &["range"])
        };
        let mut a = wait(group.join(static_request(""), &RULES, now, 0));
        let a1 = take(&mut a);
        group.sync(
            sync_request(
                &a1.member_id,
                Some("instance-1"),
                1,
                vec![(a1.member_id.clone(), Bytes::from_static(b"p0"))],
            ),
            now,
        );
        group.assignment_committed(1, 0);

        // Restarted, it joins with no member id.
        let JoinStep::Persist(record, answer) = group.join(static_request(""), &RULES, now, 0)
        else {
            panic!("an unchanged static member rejoins without a rebalance");
        };
        assert_eq!(answer.generation, 1);
        assert_ne!(answer.member_id, a1.member_id);
        assert_eq!(record.generation, 1);
        assert_eq!(record.members[0].member_id, answer.member_id);
        assert_eq!(group.state, GroupState::Stable);
        let SyncStep::Done(sync) = group.sync(
            sync_request(&answer.member_id, Some("instance-1"), 1, vec![]),
            now,
        ) else {
            panic!("a stable group answers sync at once");
        };
        assert_eq!(sync.assignment, Bytes::from_static(b"p0"));
        assert_eq!(
            group.heartbeat(&a1.member_id, Some("instance-1"), 1, now),
            Err(ResponseError::FencedInstanceId)
        );
    }

    #[test]
    fn inconsistent_protocols_and_unknown_members_are_refused() {
        let now = Instant::now();
        let mut group = Group::new("g", now, 0);
        let mut a = join_new(&mut group, now, &["range"]);
        take(&mut a);
        let JoinStep::Done(r) = group.join(request("", &["sticky"]), &RULES, now, 0) else {
            panic!()
        };
        assert_eq!(r.error, Some(ResponseError::InconsistentGroupProtocol));
        let JoinStep::Done(r) = group.join(request("nobody", &["range"]), &RULES, now, 0) else {
            panic!()
        };
        assert_eq!(r.error, Some(ResponseError::UnknownMemberId));
    }

    #[test]
    fn a_new_group_waits_out_the_initial_delay() {
        let rules = GroupRules {
            initial_rebalance_delay: Duration::from_secs(3),
        };
        let now = Instant::now();
        let mut group = Group::new("g", now, 0);
        let JoinStep::Done(first) = group.join(request("", &["range"]), &rules, now, 0) else {
            panic!()
        };
        let mut a = wait(group.join(request(&first.member_id, &["range"]), &rules, now, 0));
        assert!(a.try_recv().is_err());
        group.tick(&rules, now + Duration::from_secs(2), 0);
        assert!(a.try_recv().is_err());
        group.tick(&rules, now + Duration::from_secs(3), 0);
        assert_eq!(take(&mut a).generation, 1);
    }
}
