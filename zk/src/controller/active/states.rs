//! Partition states: creating them for new partitions, and elections,
//! written conditionally on their versions; and the pushes that follow.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sluice_controller::lifecycle::preferred_leader_elections;
use sluice_metadata::control_requests::{ControlRequest, PartitionState, PushHeader};
use sluice_metadata::{MetadataImage, MetadataRecord, PartitionRecord, Uuid};
use tracing::{info, warn};
use zookeeper_client as zk;

use super::{ActError, Active, Op, BATCH, MAX_ATTEMPTS};
use crate::controller::channels::{push_address, BrokerChannel};
use crate::controller::context::{initial_state, offline_changes, UNCLEAN_CONFIG};
use crate::znodes::{
    partition_path, partition_state_path, partitions_path, topic_config_path, ConfigZnode,
    PartitionStateZnode,
};

impl Active {
    // ---- partition states ----

    /// Creates the state znodes of new partitions (and their parents), in
    /// epoch-guarded multi-ops. Returns the partitions created.
    pub(super) async fn create_states(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<(Uuid, i32)>, ActError> {
        let mut created = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let Some(assignment) = self.ctx.assignments.get(topic).cloned() else {
                return Ok(created);
            };
            let todo: Vec<i32> = {
                let missing = self.missing_partitions(topic);
                partitions
                    .iter()
                    .copied()
                    .filter(|p| missing.contains(p))
                    .collect()
            };
            if todo.is_empty() {
                break;
            }
            let (mut need_parent, existing) =
                match self.client.list_children(&partitions_path(topic)).await {
                    Ok(children) => (
                        false,
                        children.iter().filter_map(|c| c.parse().ok()).collect(),
                    ),
                    Err(zk::Error::NoNode) => (true, HashSet::<i32>::new()),
                    Err(e) => return Err(e.into()),
                };
            let mut lost_race = false;
            for chunk in todo.chunks(BATCH) {
                let mut ops = Vec::new();
                if need_parent {
                    ops.push(Op::Create(partitions_path(topic), Vec::new()));
                }
                let mut states = Vec::new();
                for &p in chunk {
                    let Some(replicas) = assignment.replicas.get(&p) else {
                        continue;
                    };
                    if !existing.contains(&p) {
                        ops.push(Op::Create(partition_path(topic, p), Vec::new()));
                    }
                    let (leader, isr) = initial_state(replicas, |b| {
                        self.ctx.is_live(b) && !self.ctx.shutting_down.contains(&b)
                    });
                    let znode = PartitionStateZnode::new(self.epoch, leader, 0, isr.clone());
                    ops.push(Op::Create(partition_state_path(topic, p), znode.encode()));
                    states.push(PartitionRecord {
                        topic_id: assignment.topic_id,
                        partition: p,
                        replicas: replicas.clone(),
                        isr,
                        leader,
                        leader_epoch: 0,
                        partition_epoch: 0,
                    });
                }
                match self.write(&ops).await? {
                    Ok(_) => {
                        need_parent = false;
                        let mut records = self.topic_records(topic, assignment.topic_id);
                        for state in states {
                            let key = (state.topic_id, state.partition);
                            self.ctx.state_epochs.insert(key, self.epoch);
                            created.push(key);
                            records.push(MetadataRecord::Partition(state));
                        }
                        self.ctx.apply(&records);
                    }
                    Err(e) => {
                        info!(topic, error = %e, "partition states changed while creating them; reading them again");
                        lost_race = true;
                        break;
                    }
                }
            }
            if !lost_race {
                break;
            }
            // Those another writer created count as new here too: they are pushed.
            let again: Vec<(String, i32)> = todo.iter().map(|&p| (topic.to_string(), p)).collect();
            created.extend(self.refresh(&again).await?);
        }
        if !created.is_empty() {
            info!(
                topic,
                partitions = created.len(),
                "created partition states"
            );
        }
        Ok(created)
    }

    /// The topics whose unclean election setting matters now, read from
    /// their config znodes (at election time, as Kafka does).
    pub(super) async fn unclean_settings(&self) -> Result<HashMap<String, bool>, ActError> {
        let topics = self.ctx.topics_needing_unclean_choice();
        let mut settings = HashMap::new();
        if topics.is_empty() {
            return Ok(settings);
        }
        let paths = topics.iter().map(|t| topic_config_path(t)).collect();
        for (topic, (path, read)) in topics.into_iter().zip(self.read_many(paths).await) {
            let data = match read {
                Ok((data, _)) => data,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(e.into()),
            };
            match ConfigZnode::decode(&path, &data) {
                Ok(znode) => {
                    if let Some(value) = znode.config.get(UNCLEAN_CONFIG) {
                        settings.insert(topic, value.trim().eq_ignore_ascii_case("true"));
                    }
                }
                Err(e) => {
                    warn!(path = %path, error = %e, "topic config is not valid; using the broker default")
                }
            }
        }
        Ok(settings)
    }

    /// Elects leaders for partitions whose leader is gone and takes gone
    /// (or shutting down) brokers out of ISRs, writing each state
    /// conditionally on its version. Returns the partitions changed.
    pub(super) async fn settle(&mut self) -> Result<Vec<(Uuid, i32)>, ActError> {
        let settings = self.unclean_settings().await?;
        let default = self.unclean_default;
        self.write_planned(|view| {
            offline_changes(view, &|topic| {
                settings.get(topic).copied().unwrap_or(default)
            })
        })
        .await
    }

    /// Writes the states `plan` makes from the electable view, planning
    /// again (up to [`MAX_ATTEMPTS`] times) when a state changed under the
    /// controller. Returns the partitions changed.
    async fn write_planned(
        &mut self,
        plan: impl Fn(&MetadataImage) -> Vec<PartitionRecord>,
    ) -> Result<Vec<(Uuid, i32)>, ActError> {
        let mut changed = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let planned = plan(&self.ctx.electable());
            if planned.is_empty() {
                break;
            }
            let (done, lost_race) = self.write_states(planned).await?;
            changed.extend(done);
            if !lost_race {
                break;
            }
        }
        changed.sort();
        changed.dedup();
        Ok(changed)
    }

    /// Moves leadership back to each partition's preferred (first) replica
    /// where that replica is live and in sync, restoring the spread the
    /// assignment gave (`auto.leader.rebalance.enable`).
    pub(super) async fn rebalance_leaders(&mut self) -> Result<(), ActError> {
        let changed = self
            .write_planned(|view| {
                // The planner's records carry the next partition epoch; a
                // write is conditional on the current one (the znode's
                // version), and ZooKeeper bumps it.
                preferred_leader_elections(view)
                    .records
                    .into_iter()
                    .filter_map(|r| match r {
                        MetadataRecord::Partition(mut p) => {
                            let current = view
                                .topic_by_id(&p.topic_id)?
                                .partitions
                                .get(&p.partition)?;
                            p.partition_epoch = current.partition_epoch;
                            Some(p)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .await?;
        if !changed.is_empty() {
            info!(
                partitions = changed.len(),
                "leadership moved back to preferred replicas"
            );
            self.push_changes(&changed, &BTreeSet::new());
        }
        Ok(())
    }

    /// Writes planned states, [`BATCH`] partitions per multi-op. On a lost
    /// race it reads the batch again and stops, for the caller to re-plan.
    pub(super) async fn write_states(
        &mut self,
        plan: Vec<PartitionRecord>,
    ) -> Result<(Vec<(Uuid, i32)>, bool), ActError> {
        let mut done = Vec::new();
        for chunk in plan.chunks(BATCH) {
            let mut ops = Vec::new();
            let mut names = Vec::new();
            for record in chunk {
                let Some(topic) = self.ctx.image.topic_by_id(&record.topic_id) else {
                    continue;
                };
                let znode = PartitionStateZnode::new(
                    self.epoch,
                    record.leader,
                    record.leader_epoch,
                    record.isr.clone(),
                );
                ops.push(Op::Set(
                    partition_state_path(&topic.name, record.partition),
                    znode.encode(),
                    record.partition_epoch,
                ));
                names.push((topic.name.clone(), record.clone()));
            }
            match self.write(&ops).await? {
                Ok(results) => {
                    let mut records = Vec::new();
                    for ((_, mut record), result) in names.into_iter().zip(results) {
                        if let zk::MultiWriteResult::SetData { stat } = result {
                            record.partition_epoch = stat.version;
                        }
                        let key = (record.topic_id, record.partition);
                        self.ctx.state_epochs.insert(key, self.epoch);
                        done.push(key);
                        records.push(MetadataRecord::Partition(record));
                    }
                    self.ctx.apply(&records);
                }
                Err(e) => {
                    info!(error = %e, "a partition state changed under the controller; reading it again");
                    let again: Vec<(String, i32)> =
                        names.into_iter().map(|(t, r)| (t, r.partition)).collect();
                    self.refresh(&again).await?;
                    return Ok((done, true));
                }
            }
        }
        Ok((done, false))
    }

    // ---- pushes ----

    pub(super) fn header(&self, broker_id: i32) -> PushHeader {
        PushHeader {
            controller_id: self.node_id,
            controller_epoch: self.epoch,
            broker_epoch: self.ctx.broker_epoch(broker_id).unwrap_or(-1),
        }
    }

    pub(super) fn send(&self, broker_id: i32, request: ControlRequest) {
        if let Some(channel) = self.channels.get(&broker_id) {
            channel.send(request);
        }
    }

    /// One queue per live broker, for its current registration.
    pub(super) fn sync_channels(&mut self) {
        let live: BTreeMap<i32, (i64, Option<String>)> = self
            .ctx
            .image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| (b.broker_id, (b.broker_epoch, push_address(&b.endpoints))))
            .collect();
        self.channels.retain(|id, channel| {
            live.get(id).is_some_and(|(epoch, address)| {
                *epoch == channel.broker_epoch
                    && address.as_deref() == Some(channel.address.as_str())
            })
        });
        for (id, (epoch, address)) in live {
            if self.channels.contains_key(&id) {
                continue;
            }
            match address {
                Some(address) => {
                    let channel = BrokerChannel::start(id, epoch, address, self.socket_timeout);
                    self.channels.insert(id, channel);
                }
                None => warn!(
                    broker = id,
                    "broker registered no endpoint; nothing is pushed to it"
                ),
            }
        }
    }

    /// Everything, to a broker that just came (or to all, after a reload):
    /// the full metadata, then leadership of its partitions.
    pub(super) fn push_full(&self, broker_id: i32) {
        let states = self.ctx.all_states();
        let own: Vec<PartitionState> = states
            .iter()
            .filter(|s| s.replicas.contains(&broker_id))
            .cloned()
            .collect();
        self.send(
            broker_id,
            ControlRequest::UpdateMetadata {
                header: self.header(broker_id),
                full: true,
                live_brokers: self.ctx.live_brokers(),
                partitions: states,
            },
        );
        if !own.is_empty() {
            self.send(
                broker_id,
                ControlRequest::LeaderAndIsr {
                    header: self.header(broker_id),
                    partitions: own,
                },
            );
        }
    }

    /// Changed partitions: UpdateMetadata (live brokers and the changes) to
    /// every live broker except those in `skip` (which got everything
    /// already), then LeaderAndIsr to their live replicas.
    pub(super) fn push_changes(&self, changed: &[(Uuid, i32)], skip: &BTreeSet<i32>) {
        if changed.is_empty() {
            return;
        }
        let states = self.ctx.states(changed);
        // UpdateMetadata first: a broker's image then shows a new topic with
        // all its partitions at once, never only those it hosts (clients
        // asking it in between would see too few partitions).
        self.update_metadata(states.clone(), skip);
        let mut by_broker: BTreeMap<i32, Vec<PartitionState>> = BTreeMap::new();
        for state in &states {
            for &replica in &state.replicas {
                if self.ctx.is_live(replica) && !skip.contains(&replica) {
                    by_broker.entry(replica).or_default().push(state.clone());
                }
            }
        }
        for (broker, partitions) in by_broker {
            self.send(
                broker,
                ControlRequest::LeaderAndIsr {
                    header: self.header(broker),
                    partitions,
                },
            );
        }
    }

    pub(super) fn update_metadata(&self, partitions: Vec<PartitionState>, skip: &BTreeSet<i32>) {
        let live = self.ctx.live_brokers();
        for broker in self.ctx.live_broker_ids() {
            if skip.contains(&broker) {
                continue;
            }
            self.send(
                broker,
                ControlRequest::UpdateMetadata {
                    header: self.header(broker),
                    full: false,
                    live_brokers: live.clone(),
                    partitions: partitions.clone(),
                },
            );
        }
    }
}
