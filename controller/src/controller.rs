//! The controller role of a node: the metadata quorum, the loader that turns
//! committed entries into images, and the operations brokers ask for.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_metadata::controller_api::{
    BoxFuture, BrokerHeartbeat, BrokerRegistrationRequest, ConfigChange, ControllerApi,
    ControllerError, CreatedTopic, GroupWrite, GroupWriteOutcome, GroupWriter, HeartbeatReply,
    IsrChange, MetadataLogSource, NewPartitions, NewTopic, PartitionState, QuorumDescription,
    QuorumLeader, ReplicaProgress, TopicRef,
};
use sluice_metadata::{
    encode_batch, ConfigResource, MetadataDelta, MetadataImage, MetadataLoader, MetadataRecord,
    Publisher, Uuid,
};
use sluice_storage::wall_clock_ms;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tracing::{debug, error, info, warn};

use crate::group_ops;
use crate::lifecycle;
use crate::ops::{self, OpResult, TopicDefaults};
use crate::quorum::{
    self, Applied, NoPeers, QuorumConfig, QuorumError, QuorumHandle, QuorumStatus, TcpTransport,
    Transport,
};

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// `controller.quorum.voters`: each voter's id and controller address.
    /// Empty: this node is the only voter and needs no network.
    pub voters: Vec<(i32, String)>,
    pub defaults: TopicDefaults,
    /// How long a change may wait for its records to commit.
    pub request_timeout: Duration,
    /// `metadata.snapshot.max.records`: snapshot after this many entries
    /// since the last snapshot.
    pub snapshot_every_entries: u64,
    /// `metadata.log.max.snapshot.interval.ms`: or after this long.
    pub snapshot_interval: Duration,
    /// `controller.quorum.election.timeout.ms`: the longest a follower goes
    /// without hearing from the leader before it starts an election.
    pub election_timeout: Duration,
    /// `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub broker_session_timeout: Duration,
    /// `unclean.leader.election.enable`
    pub unclean_leader_election: bool,
    /// `auto.leader.rebalance.enable`
    pub auto_leader_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`
    pub leader_imbalance_check_interval: Duration,
    /// `offsets.retention.minutes`: how long committed offsets outlive
    /// their commit, or their group's last member.
    pub offsets_retention: Duration,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval: Duration,
}

impl ControllerConfig {
    /// A single-voter controller with Kafka's defaults.
    pub fn standalone(node_id: i32, data_dir: PathBuf, defaults: TopicDefaults) -> Self {
        Self {
            node_id,
            data_dir,
            voters: Vec::new(),
            defaults,
            request_timeout: Duration::from_secs(30),
            snapshot_every_entries: 20_000,
            snapshot_interval: Duration::from_secs(3600),
            election_timeout: Duration::from_secs(1),
            broker_session_timeout: Duration::from_secs(9),
            unclean_leader_election: false,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval: Duration::from_secs(300),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            offsets_retention_check_interval: Duration::from_secs(600),
        }
    }
}

/// One Raft tick; timeouts are counted in ticks.
const RAFT_TICK: Duration = Duration::from_millis(50);

/// Committed entries kept in memory for brokers that follow the log: every
/// entry after `base` (an offset a snapshot covers).
#[derive(Default)]
struct EntryWindow {
    base: u64,
    /// Shared with the committed entries the quorum handed over: no copies.
    entries: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// The window keeps at most this much; older entries are served by snapshot.
const WINDOW_MAX_BYTES: usize = 64 * 1024 * 1024;

impl EntryWindow {
    fn reset(&mut self, base: u64) {
        self.base = base;
        self.entries.clear();
        self.bytes = 0;
    }

    fn push(&mut self, offset: u64, data: Bytes) {
        self.bytes += data.len();
        self.entries.push_back((offset, data));
        while self.bytes > WINDOW_MAX_BYTES {
            let Some((offset, data)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= data.len();
            self.base = offset;
        }
    }
}

/// How a broker's metadata stands against the controller's log.
struct MetadataLag {
    /// Has not received the log's newest entries, and not moved, for longer
    /// than a session: it follows a stale source or is stuck, and serves
    /// from a view the cluster has moved past. It is fenced. (A broker that
    /// keeps receiving, however far behind a burst of changes left it, is
    /// not: at 100,000 partitions creating them takes every broker minutes.
    /// Nor is one that has received everything and is still applying an
    /// entry: moving 30,000 leaderships takes longer than a session.)
    stalled: bool,
    /// Has not reached, within a session, an offset the log had when it
    /// was seen behind: not caught up, so a fenced broker stays fenced.
    behind_too_long: bool,
}

/// The active controller's view of broker sessions: when each broker
/// (at its current epoch) must next be heard from.
#[derive(Default)]
struct Sessions {
    /// The term these deadlines were set under; a new term starts afresh.
    term: u64,
    deadlines: HashMap<i32, (i64, Instant)>,
    /// Metadata offsets brokers reported in their last heartbeat.
    offsets: HashMap<i32, u64>,
    /// Brokers whose metadata is behind this controller's: the offset each
    /// must reach (this controller's log end when it was seen behind), and
    /// since when.
    behind: HashMap<i32, (u64, Instant)>,
    /// Brokers behind this controller's log: the offset each last reported
    /// moving to, and when.
    progress: HashMap<i32, (u64, Instant)>,
}

impl Sessions {
    /// Starts afresh in a new term: what an earlier term saw is stale.
    fn for_term(&mut self, term: u64) -> &mut Self {
        if self.term != term {
            self.term = term;
            self.deadlines.clear();
            self.behind.clear();
            self.progress.clear();
        }
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metadata quorum: {0}")]
    Quorum(#[from] QuorumError),
    #[error("the metadata quorum elected no leader within {0:?}")]
    NoLeader(Duration),
    #[error("starting the metadata publisher thread: {0}")]
    Publisher(#[from] std::io::Error),
}

pub struct Controller {
    config: ControllerConfig,
    quorum: QuorumHandle,
    image: watch::Receiver<Arc<MetadataImage>>,
    /// One group of operations at a time: each plans against an image that
    /// holds every earlier group's committed records.
    op_lock: Mutex<()>,
    /// Operations waiting to be planned and committed.
    queue: StdMutex<VecDeque<QueuedOp>>,
    /// The term in which this node, as leader, has applied everything
    /// committed before it (0: none yet).
    ready_term: StdMutex<u64>,
    /// The offset of the last committed entry that failed to replay.
    rejected: watch::Receiver<u64>,
    window: Arc<StdMutex<EntryWindow>>,
    sessions: StdMutex<Sessions>,
}

fn lock<T>(m: &StdMutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Starts the quorum, the metadata loader and the active-controller
    /// duties; `publishers` see every image in log order. Returns at once:
    /// the controller listener must be up before the voters can elect a
    /// leader. [`Controller::wait_ready`] waits for that.
    pub fn start(
        config: ControllerConfig,
        publishers: Vec<Arc<dyn Publisher>>,
    ) -> Result<Arc<Self>, StartError> {
        let node_id = config.node_id as u64;
        let voter_ids: Vec<u64> = if config.voters.is_empty() {
            vec![node_id]
        } else {
            config.voters.iter().map(|(id, _)| *id as u64).collect()
        };
        let transport: Box<dyn Transport> = if voter_ids.len() > 1 {
            let peers = config
                .voters
                .iter()
                .map(|(id, address)| (*id as u64, address.clone()))
                .collect();
            Box::new(TcpTransport::start(node_id, peers))
        } else {
            Box::new(NoPeers)
        };
        // raft-rs draws each election timeout from [ticks, 2 * ticks): a
        // follower that has not heard from the leader for the configured
        // timeout has started an election by then.
        let election_tick =
            ((config.election_timeout.as_millis() / (2 * RAFT_TICK.as_millis())) as usize).max(2);
        let quorum_config = QuorumConfig {
            node_id,
            voters: voter_ids,
            data_dir: config.data_dir.clone(),
            tick_interval: RAFT_TICK,
            election_tick,
            heartbeat_tick: (election_tick / 5).max(1),
            snapshot_every_entries: config.snapshot_every_entries,
            snapshot_interval: config.snapshot_interval,
        };
        let (quorum, applied) = quorum::start(quorum_config, transport)?;
        let (image_tx, image) = watch::channel(MetadataImage::empty());
        let (rejected_tx, rejected) = watch::channel(0);
        let window = Arc::new(StdMutex::new(EntryWindow::default()));
        // Publishers (a standalone node's broker) run on their own thread:
        // their disk work must not delay the entries heartbeats wait on.
        let loader = MetadataLoader::with_publisher_thread(publishers)?;
        tokio::spawn(run_loader(
            loader,
            applied,
            quorum.subscribe_status(),
            image_tx,
            rejected_tx,
            quorum.clone(),
            window.clone(),
        ));

        let controller = Arc::new(Self {
            config,
            quorum,
            image,
            op_lock: Mutex::new(()),
            queue: StdMutex::new(VecDeque::new()),
            ready_term: StdMutex::new(0),
            rejected,
            window,
            sessions: StdMutex::new(Sessions::default()),
        });
        tokio::spawn(run_active_duties(Arc::downgrade(&controller)));
        Ok(controller)
    }

    /// Waits until the quorum has a leader and this node has applied
    /// everything committed when it learned of it. (The leader's own image
    /// is made complete by the barrier of [`Controller::ensure_active`].)
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), StartError> {
        let mut status = self.quorum.subscribe_status();
        let commit = tokio::time::timeout(limit, status.wait_for(|s| s.leader_id.is_some()))
            .await
            .map_err(|_| StartError::NoLeader(limit))?
            .map_err(|_| StartError::NoLeader(limit))?
            .commit_index;
        tokio::time::timeout(limit, status.wait_for(|s| s.applied_index >= commit))
            .await
            .map_err(|_| StartError::NoLeader(limit))?
            .map_err(|_| StartError::NoLeader(limit))?;
        info!(offset = commit, "metadata log replayed");
        Ok(())
    }

    /// Makes sure this node leads and its image holds everything committed
    /// before its term: once per term, an empty batch is committed as a
    /// barrier and waited for.
    async fn ensure_active(&self) -> Result<(), ControllerError> {
        let status = self.quorum.status();
        if !status.is_leader {
            return Err(ControllerError::NotController(format!(
                "node {} is not the active controller (leader: {:?})",
                self.config.node_id, status.leader_id
            )));
        }
        if *lock(&self.ready_term) == status.term {
            return Ok(());
        }
        let (index, term) = self
            .quorum
            .propose(encode_batch(&[]))
            .await
            .map_err(quorum_error)?;
        let mut image = self.image.clone();
        tokio::time::timeout(
            self.config.request_timeout,
            image.wait_for(|i| i.offset >= index),
        )
        .await
        .map_err(|_| ControllerError::Timeout)?
        .map_err(|_| ControllerError::Internal("metadata loader stopped".into()))?;
        *lock(&self.ready_term) = term;
        info!(term, offset = index, "active controller ready");
        Ok(())
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn subscribe_image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.clone()
    }

    pub fn quorum(&self) -> &QuorumHandle {
        &self.quorum
    }

    pub async fn shutdown(&self) {
        self.quorum.clone().shutdown().await;
    }

    /// Computes an operation against the latest image and, unless it is only
    /// a validation, commits its records before returning the results.
    ///
    /// Operations queue up and are committed in groups: whoever holds the
    /// turn plans every queued operation in order, each against the image as
    /// the ones before it leave it, and proposes all their records as one
    /// Raft entry. Under load many operations share one commit.
    async fn run<T: Send + 'static>(
        &self,
        validate_only: bool,
        op: impl FnOnce(&MetadataImage) -> OpResult<T> + Send + 'static,
    ) -> Result<T, ControllerError> {
        if validate_only {
            self.ensure_active().await?;
            return Ok(op(&self.image()).results);
        }
        self.run_at(op).await.map(|(results, _offset)| results)
    }

    /// Like [`Self::run`], also returning the metadata log offset the
    /// operation's records committed at (the latest offset when it wrote none).
    async fn run_at<T: Send + 'static>(
        &self,
        op: impl FnOnce(&MetadataImage) -> OpResult<T> + Send + 'static,
    ) -> Result<(T, u64), ControllerError> {
        let (reply, answer) = oneshot::channel();
        let queued: QueuedOp = Box::new(move |image| {
            let OpResult { records, results } = op(image);
            Planned {
                records,
                finish: Box::new(move |outcome| {
                    let _ = reply.send(outcome.map(|offset| (results, offset)));
                }),
            }
        });
        lock(&self.queue).push_back(queued);
        self.commit_queued().await;
        answer
            .await
            .map_err(|_| ControllerError::Internal("the operation was dropped".into()))?
    }

    /// Commits queued operations, a group at a time, until none is left.
    async fn commit_queued(&self) {
        let _turn = self.op_lock.lock().await;
        loop {
            let group: Vec<QueuedOp> = {
                let mut queue = lock(&self.queue);
                let n = queue.len().min(MAX_OPS_PER_ENTRY);
                queue.drain(..n).collect()
            };
            if group.is_empty() {
                return;
            }
            metrics::histogram!("sluice_controller_ops_per_entry").record(group.len() as f64);
            self.commit_group(group).await;
        }
    }

    async fn commit_group(&self, group: Vec<QueuedOp>) {
        let active = self.ensure_active().await;
        let mut image = self.image();
        let mut records = Vec::new();
        let mut finishes: Vec<Finish> = Vec::with_capacity(group.len());
        for op in group {
            let planned = op(&image);
            if let Err(e) = &active {
                (planned.finish)(Err(e.clone()));
                continue;
            }
            if !planned.records.is_empty() {
                // The next operation plans against the image this one leaves.
                let mut delta = MetadataDelta::new(image.clone());
                if let Err(e) = delta.replay_all(&planned.records) {
                    error!(error = %e, "an operation's records do not replay; refused");
                    (planned.finish)(Err(ControllerError::Internal(e.to_string())));
                    continue;
                }
                image = delta.apply(image.offset);
                records.extend(planned.records);
            }
            finishes.push(planned.finish);
        }
        let outcome = if records.is_empty() {
            Ok(image.offset)
        } else {
            self.commit(records).await
        };
        for finish in finishes {
            finish(outcome.clone());
        }
    }

    /// Proposes `records` as one entry and waits until it is applied;
    /// returns the entry's offset.
    async fn commit(&self, records: Vec<MetadataRecord>) -> Result<u64, ControllerError> {
        let data = encode_batch(&records);
        // No time limit on the proposal itself: the quorum answers every
        // proposal (committed, or failed when leadership is lost), and giving
        // up early would let the next operation plan from an image that lacks
        // a change still on its way to commit.
        let (index, _term) = self.quorum.propose(data).await.map_err(quorum_error)?;
        let mut image = self.image.clone();
        tokio::time::timeout(
            self.config.request_timeout,
            image.wait_for(|i| i.offset >= index),
        )
        .await
        .map_err(|_| ControllerError::Timeout)?
        .map_err(|_| ControllerError::Internal("metadata loader stopped".into()))?;
        if *self.rejected.borrow() == index {
            return Err(ControllerError::Internal(format!(
                "metadata entry {index} committed but did not apply; see the log"
            )));
        }
        Ok(index)
    }
}

/// The most operations committed in one Raft entry.
const MAX_OPS_PER_ENTRY: usize = 1000;

/// An operation waiting for its turn: planned against an image, it yields
/// its records and what to do once they are committed (or not).
type QueuedOp = Box<dyn FnOnce(&MetadataImage) -> Planned + Send>;
/// Told the offset the operation's entry committed at, or why it did not.
type Finish = Box<dyn FnOnce(Result<u64, ControllerError>) + Send>;

struct Planned {
    records: Vec<MetadataRecord>,
    finish: Finish,
}

fn quorum_error(e: QuorumError) -> ControllerError {
    match e {
        QuorumError::NotLeader { .. } | QuorumError::Dropped => {
            ControllerError::NotController(e.to_string())
        }
        other => ControllerError::Internal(other.to_string()),
    }
}

/// How often the active controller checks broker sessions.
const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The active controller's periodic duties: fencing brokers whose session
/// expired and, when enabled, moving leaders back to preferred replicas.
/// Ends when the controller is dropped.
async fn run_active_duties(controller: std::sync::Weak<Controller>) {
    let mut next_rebalance = Instant::now();
    let mut next_expiry = Instant::now();
    loop {
        tokio::time::sleep(SESSION_CHECK_INTERVAL).await;
        let Some(c) = controller.upgrade() else {
            return;
        };
        let status = c.quorum.status();
        if !status.running {
            return;
        }
        if !status.is_leader {
            continue;
        }
        for (broker_id, broker_epoch) in c.expired_sessions(status.term) {
            warn!(
                broker_id,
                broker_epoch, "broker session expired; fencing it"
            );
            let unclean = c.config.unclean_leader_election;
            if let Err(e) = c
                .run(false, move |image| {
                    lifecycle::fence_broker(image, broker_id, broker_epoch, unclean)
                })
                .await
            {
                warn!(broker_id, error = %e, "could not fence broker");
            }
        }
        if c.config.auto_leader_rebalance && Instant::now() >= next_rebalance {
            next_rebalance = Instant::now() + c.config.leader_imbalance_check_interval;
            match c.run(false, lifecycle::preferred_leader_elections).await {
                Ok(0) => {}
                Ok(moved) => info!(moved, "moved leaders back to preferred replicas"),
                Err(e) => debug!(error = %e, "preferred leader election skipped"),
            }
        }
        if Instant::now() >= next_expiry {
            let interval = c.config.offsets_retention_check_interval;
            next_expiry = Instant::now() + interval;
            let retention = c.config.offsets_retention;
            let expiry = c.run(false, move |image| {
                group_ops::expire_groups(image, wall_clock_ms(), retention, interval)
            });
            match expiry.await {
                Ok((0, 0)) => {}
                Ok((offsets, groups)) => info!(
                    offsets,
                    groups, "expired committed offsets and empty groups"
                ),
                Err(e) => debug!(error = %e, "offset expiry skipped"),
            }
        }
    }
}

impl Controller {
    /// Unfenced brokers not heard from within their session, as
    /// (id, epoch). A new term gives every broker a full session, since
    /// heartbeats went to the previous leader.
    fn expired_sessions(&self, term: u64) -> Vec<(i32, i64)> {
        let image = self.image();
        let now = Instant::now();
        let timeout = self.config.broker_session_timeout;
        let mut guard = lock(&self.sessions);
        let sessions = guard.for_term(term);
        let mut expired = Vec::new();
        for b in image.brokers.values().filter(|b| !b.fenced) {
            let entry = sessions
                .deadlines
                .entry(b.broker_id)
                .or_insert((b.broker_epoch, now + timeout));
            if entry.0 != b.broker_epoch {
                *entry = (b.broker_epoch, now + timeout);
            }
            if entry.1 <= now {
                expired.push((b.broker_id, b.broker_epoch));
            }
        }
        expired
    }

    fn touch_session(&self, broker_id: i32, broker_epoch: i64, metadata_offset: u64) {
        let deadline = Instant::now() + self.config.broker_session_timeout;
        let mut sessions = lock(&self.sessions);
        sessions
            .deadlines
            .insert(broker_id, (broker_epoch, deadline));
        sessions.offsets.insert(broker_id, metadata_offset);
    }

    /// Notes how far a broker's metadata has got against this controller's
    /// log end `log_end`: `applied`, and `replayed` (received, perhaps still
    /// being applied; at least `applied`).
    fn metadata_lag(
        &self,
        term: u64,
        broker_id: i32,
        applied: u64,
        replayed: u64,
        log_end: u64,
    ) -> MetadataLag {
        let now = Instant::now();
        let session = self.config.broker_session_timeout;
        let mut guard = lock(&self.sessions);
        let sessions = guard.for_term(term);
        if let Some(&(target, _)) = sessions.behind.get(&broker_id) {
            if applied >= target {
                sessions.behind.remove(&broker_id);
            }
        }
        if applied < log_end {
            sessions.behind.entry(broker_id).or_insert((log_end, now));
        }
        let replayed = replayed.max(applied);
        if replayed < log_end {
            let moved = sessions
                .progress
                .get(&broker_id)
                .is_none_or(|&(last, _)| replayed > last);
            if moved {
                sessions.progress.insert(broker_id, (replayed, now));
            }
        } else {
            sessions.progress.remove(&broker_id);
        }
        let long_behind = |since: &Instant| now.duration_since(*since) > session;
        MetadataLag {
            stalled: sessions
                .progress
                .get(&broker_id)
                .is_some_and(|(_, since)| long_behind(since)),
            behind_too_long: sessions
                .behind
                .get(&broker_id)
                .is_some_and(|(_, since)| long_behind(since)),
        }
    }

    async fn heartbeat(&self, hb: BrokerHeartbeat) -> Result<HeartbeatReply, ControllerError> {
        self.ensure_active().await?;
        let term = self.quorum.status().term;
        let image = self.image();
        let registered = image
            .brokers
            .get(&hb.broker_id)
            .filter(|b| b.broker_epoch == hb.broker_epoch)
            .ok_or(ControllerError::StaleBrokerEpoch {
                broker_id: hb.broker_id,
                broker_epoch: hb.broker_epoch,
            })?;
        self.touch_session(hb.broker_id, hb.broker_epoch, hb.metadata_offset);
        let lag = self.metadata_lag(
            term,
            hb.broker_id,
            hb.metadata_offset,
            hb.metadata_replayed_offset,
            image.offset,
        );
        // A registration's epoch is at most the offset it committed at.
        let is_caught_up =
            hb.metadata_offset >= registered.broker_epoch as u64 && !lag.behind_too_long;
        let unclean = self.config.unclean_leader_election;
        if hb.want_shutdown {
            // Leaderships move (or lapse) in one commit; then the broker is
            // fenced so it gets no new ones, and may exit.
            let broker_id = hb.broker_id;
            self.run(false, move |image| {
                lifecycle::controlled_shutdown(image, broker_id)
            })
            .await?;
            let epoch = hb.broker_epoch;
            self.run(false, move |image| {
                lifecycle::fence_broker(image, broker_id, epoch, unclean)
            })
            .await?;
            info!(broker_id = hb.broker_id, "controlled shutdown complete");
            return Ok(HeartbeatReply {
                is_caught_up,
                is_fenced: true,
                should_shutdown: true,
            });
        }
        let mut is_fenced = registered.fenced;
        if !is_fenced && lag.stalled {
            warn!(
                broker_id = hb.broker_id,
                metadata_offset = hb.metadata_offset,
                log_end = image.offset,
                metadata_replayed_offset = hb.metadata_replayed_offset,
                "broker's metadata has been behind, not moving, for longer than its session; fencing it"
            );
            let (broker_id, epoch) = (hb.broker_id, hb.broker_epoch);
            self.run(false, move |image| {
                lifecycle::fence_broker(image, broker_id, epoch, unclean)
            })
            .await?;
            is_fenced = true;
        }
        if is_fenced && !hb.want_fence && is_caught_up {
            let broker_id = hb.broker_id;
            self.run(false, move |image| {
                lifecycle::unfence_broker(image, broker_id, unclean)
            })
            .await?;
            info!(broker_id = hb.broker_id, "broker unfenced");
            is_fenced = false;
        }
        Ok(HeartbeatReply {
            is_caught_up,
            is_fenced,
            should_shutdown: false,
        })
    }
}

/// Applies committed entries in order, keeps recent ones for brokers that
/// follow the log, and hands the quorum a snapshot of the image when it
/// asks, so its log stays bounded. Publishers (a standalone node's broker)
/// see nothing until the image has caught up with the commit index known
/// when the quorum first had a leader.
async fn run_loader(
    mut loader: MetadataLoader,
    mut applied: mpsc::UnboundedReceiver<Applied>,
    mut status: watch::Receiver<QuorumStatus>,
    image_tx: watch::Sender<Arc<MetadataImage>>,
    rejected_tx: watch::Sender<u64>,
    quorum: QuorumHandle,
    window: Arc<StdMutex<EntryWindow>>,
) {
    let leader_commit = |s: &QuorumStatus| s.leader_id.is_some().then_some(s.commit_index);
    let mut watching_status = true;
    if let Some(commit) = leader_commit(&status.borrow_and_update()) {
        loader.set_committed_offset(commit);
        watching_status = false;
    }
    loop {
        let event = tokio::select! {
            event = applied.recv() => match event {
                Some(event) => event,
                None => return,
            },
            changed = status.changed(), if watching_status => {
                if changed.is_err() {
                    watching_status = false;
                    continue;
                }
                let commit = leader_commit(&status.borrow_and_update());
                if let Some(commit) = commit {
                    loader.set_committed_offset(commit);
                    watching_status = false;
                }
                continue;
            }
        };
        match event {
            Applied::Snapshot { index, data, .. } => match loader.load_snapshot(index, &data) {
                Ok(()) => {
                    lock(&window).reset(index);
                    info!(
                        offset = index,
                        bytes = data.len(),
                        "loaded metadata snapshot"
                    )
                }
                Err(e) => {
                    error!(error = %e, "metadata snapshot does not load; keeping the previous image")
                }
            },
            Applied::Entries(entries) => {
                let mut window = lock(&window);
                for entry in entries {
                    window.push(entry.index, entry.data.clone());
                    if entry.data.is_empty() {
                        loader.skip_entry(entry.index);
                    } else if let Err(e) = loader.load_entry(entry.index, &entry.data) {
                        // The controller validated these records before
                        // proposing them; a failure here is a bug, and the
                        // batch is left out whole rather than half applied.
                        error!(error = %e, "metadata entry does not replay; skipped");
                        rejected_tx.send_replace(entry.index);
                        loader.skip_entry(entry.index);
                    }
                }
                drop(window);
            }
            Applied::SnapshotDue { applied_index } => {
                let image = loader.image();
                if image.offset >= applied_index {
                    let data = encode_batch(&image.to_records());
                    quorum.offer_snapshot(image.offset, data.into());
                }
                continue;
            }
        }
        let image = loader.image().clone();
        metrics::gauge!("sluice_metadata_applied_offset").set(image.offset as f64);
        metrics::gauge!("sluice_partitions").set(image.partition_count() as f64);
        if image_tx.send(image).is_err() {
            warn!("no one follows the metadata image any more; loader stops");
            return;
        }
    }
}

impl MetadataLogSource for Controller {
    fn read_entries(&self, from: u64, max_bytes: usize) -> Option<Vec<(u64, Bytes)>> {
        let window = lock(&self.window);
        if from <= window.base {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let start = window.entries.partition_point(|(offset, _)| *offset < from);
        for (offset, data) in window.entries.range(start..) {
            if !out.is_empty() && bytes + data.len() > max_bytes {
                break;
            }
            bytes += data.len();
            out.push((*offset, data.clone()));
        }
        Some(out)
    }

    fn last_offset(&self) -> u64 {
        self.image.borrow().offset
    }

    fn snapshot(&self) -> (u64, Vec<u8>) {
        let image = self.image();
        (image.offset, encode_batch(&image.to_records()))
    }

    fn wait_beyond(&self, offset: u64, max_wait: Duration) -> BoxFuture<'_, ()> {
        let mut image = self.image.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(max_wait, image.wait_for(|i| i.offset > offset)).await;
        })
    }

    fn quorum_leader(&self) -> Option<QuorumLeader> {
        let status = self.quorum.status();
        let leader_id = status.leader_id.filter(|_| status.running)?;
        Some(QuorumLeader {
            leader_id: leader_id as i32,
            term: status.term as i32,
        })
    }
}

impl ControllerApi for Controller {
    fn active_controller_id(&self) -> Option<i32> {
        self.quorum.status().leader_id.map(|id| id as i32)
    }

    fn describe_quorum(&self) -> Result<QuorumDescription, ControllerError> {
        let status = self.quorum.status();
        if !status.is_leader {
            return Err(ControllerError::NotController(format!(
                "node {} is not the active controller",
                self.config.node_id
            )));
        }
        let voters = status
            .voters
            .iter()
            .map(|&id| ReplicaProgress {
                node_id: id as i32,
                log_end_offset: status
                    .progress
                    .iter()
                    .find(|(voter, _)| *voter == id)
                    .map_or(-1, |(_, matched)| *matched as i64),
            })
            .collect();
        let observers = lock(&self.sessions)
            .offsets
            .iter()
            .filter(|(id, _)| !status.voters.contains(&(**id as u64)))
            .map(|(&node_id, &offset)| ReplicaProgress {
                node_id,
                log_end_offset: offset as i64,
            })
            .collect();
        Ok(QuorumDescription {
            leader_id: self.config.node_id,
            leader_epoch: status.term as i32,
            high_watermark: status.commit_index as i64,
            voters,
            observers,
        })
    }

    fn create_topics(
        &self,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<CreatedTopic, ControllerError>>> {
        Box::pin(async move {
            let count = topics.len();
            let defaults = self.config.defaults.clone();
            self.run(validate_only, move |image| {
                ops::create_topics(image, &defaults, topics)
            })
            .await
            .unwrap_or_else(|e| vec![Err(e); count])
        })
    }

    fn delete_topics(
        &self,
        topics: Vec<TopicRef>,
    ) -> BoxFuture<'_, Vec<Result<(String, Uuid), ControllerError>>> {
        Box::pin(async move {
            let count = topics.len();
            self.run(false, move |image| ops::delete_topics(image, topics))
                .await
                .unwrap_or_else(|e| vec![Err(e); count])
        })
    }

    fn create_partitions(
        &self,
        requests: Vec<NewPartitions>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async move {
            let count = requests.len();
            self.run(validate_only, move |image| {
                ops::create_partitions(image, requests)
            })
            .await
            .unwrap_or_else(|e| vec![Err(e); count])
        })
    }

    fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, Vec<ConfigChange>)>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async move {
            let count = changes.len();
            self.run(validate_only, move |image| {
                ops::alter_configs(image, changes)
            })
            .await
            .unwrap_or_else(|e| vec![Err(e); count])
        })
    }

    fn register_broker(
        &self,
        request: BrokerRegistrationRequest,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async move {
            let unclean = self.config.unclean_leader_election;
            let broker_id = request.broker_id;
            let epoch = self
                .run(false, move |image| {
                    lifecycle::register_broker(image, request, unclean)
                })
                .await?;
            self.touch_session(broker_id, epoch, 0);
            Ok(epoch)
        })
    }

    fn allocate_producer_ids(
        &self,
        broker_id: i32,
        count: i64,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async move {
            self.run(false, move |image| {
                ops::allocate_producer_ids(image, broker_id, count)
            })
            .await
        })
    }

    fn broker_heartbeat(
        &self,
        heartbeat: BrokerHeartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, ControllerError>> {
        Box::pin(self.heartbeat(heartbeat))
    }

    fn alter_partition(
        &self,
        broker_id: i32,
        broker_epoch: i64,
        changes: Vec<IsrChange>,
    ) -> BoxFuture<'_, Vec<Result<PartitionState, ControllerError>>> {
        Box::pin(async move {
            let count = changes.len();
            self.run(false, move |image| {
                lifecycle::alter_partition(image, broker_id, broker_epoch, changes)
            })
            .await
            .unwrap_or_else(|e| vec![Err(e); count])
        })
    }

    fn write_group(
        &self,
        writer: GroupWriter,
        write: GroupWrite,
    ) -> BoxFuture<'_, Result<GroupWriteOutcome, ControllerError>> {
        Box::pin(async move {
            let (outcome, log_offset) = self
                .run_at(move |image| group_ops::write_group(image, writer, write, wall_clock_ms()))
                .await?;
            outcome.map(|o| GroupWriteOutcome { log_offset, ..o })
        })
    }
}
