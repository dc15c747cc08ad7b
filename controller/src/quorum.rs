//! The metadata quorum: one raft-rs `RawNode` over the RocksDB Raft log,
//! driven by one loop on a dedicated thread.
//!
//! The loop reads the way raft-rs documents it: receive a command (with a
//! timeout) → step / propose → tick when a tick is due → handle the `Ready`
//! (send the leader's messages, persist snapshot + entries + hard state in
//! one batch, apply, send the followers' messages, `advance`, handle the
//! `LightReady`, `advance_apply`). RocksDB I/O therefore never runs on the
//! tokio runtime; callers talk to the loop through a [`QuorumHandle`].
//!
//! The state machine receives [`Applied`] items in log order on an unbounded
//! channel: on start, the saved snapshot (if any) and then every committed
//! entry after it, so an in-memory state machine rebuilds itself from
//! snapshot + log on every start.

mod log_bridge;
mod network;
pub mod tcp;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot};
use raft::{Config, RawNode, SnapshotStatus, StateRole, Storage};
use sluice_storage::raft_store::{RaftLogStore, RaftStoreError};
use tokio::sync::{mpsc, oneshot, watch};

pub use network::{MemNetwork, NoPeers};
pub use tcp::{serve_peer_stream, TcpTransport};

/// Name of the RocksDB directory inside [`QuorumConfig::data_dir`].
pub const RAFT_LOG_DIR: &str = "raft-log";

/// Configuration of one quorum member.
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    /// This node's id; never 0.
    pub node_id: u64,
    /// The voters of a brand-new quorum. Only used to initialize an empty
    /// log: afterwards the configuration recorded in the log wins.
    pub voters: Vec<u64>,
    /// Directory owned by the quorum (the log lives in `RAFT_LOG_DIR` below it).
    pub data_dir: PathBuf,
    /// One Raft tick.
    pub tick_interval: Duration,
    /// Election timeout, in ticks (randomized in [election_tick, 2 * election_tick)).
    pub election_tick: usize,
    /// Heartbeat interval, in ticks; less than `election_tick`.
    pub heartbeat_tick: usize,
    /// Ask the state machine for a snapshot ([`Applied::SnapshotDue`]) after
    /// this many log entries past the last snapshot; 0 never asks.
    pub snapshot_every_entries: u64,
    /// Also ask once this long has passed since the last snapshot and
    /// something was applied since; zero never asks on time alone.
    pub snapshot_interval: Duration,
}

impl QuorumConfig {
    /// Defaults: 100 ms ticks, 1 s election timeout, 200 ms heartbeats, a
    /// snapshot every 10,000 entries or hour.
    pub fn new(node_id: u64, voters: Vec<u64>, data_dir: impl Into<PathBuf>) -> Self {
        QuorumConfig {
            node_id,
            voters,
            data_dir: data_dir.into(),
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every_entries: 10_000,
            snapshot_interval: Duration::from_secs(3600),
        }
    }

    /// Where the Raft log's RocksDB lives.
    pub fn raft_log_dir(&self) -> PathBuf {
        self.data_dir.join(RAFT_LOG_DIR)
    }
}

/// A committed normal entry with data, as handed to the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    pub index: u64,
    pub term: u64,
    pub data: Bytes,
}

/// What the state machine receives, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Committed entries. Only normal entries with data: the leader's empty
    /// entries and configuration changes are handled inside the driver.
    Entries(Vec<CommittedEntry>),
    /// Replace the whole state with this snapshot, taken at `index`. Sent
    /// first on start when one was saved, and when a leader sends one.
    Snapshot { index: u64, term: u64, data: Bytes },
    /// `snapshot_every_entries` entries have been applied since the last
    /// snapshot: please [`QuorumHandle::offer_snapshot`] when convenient.
    SnapshotDue { applied_index: u64 },
}

/// A view of the node, refreshed by the loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumStatus {
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    /// Last index handed to the state machine (or covered by a snapshot).
    pub applied_index: u64,
    /// Index of the last saved snapshot (0 if none); the log starts after it.
    pub snapshot_index: u64,
    pub is_leader: bool,
    pub voters: Vec<u64>,
    /// On the leader: each voter's matched log index (its replication
    /// progress); empty elsewhere.
    pub progress: Vec<(u64, u64)>,
    /// False once the loop has stopped.
    pub running: bool,
}

/// Errors of the quorum.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    /// This node is not the leader, or lost leadership before the proposal
    /// committed. In the latter case the entry may still commit under the
    /// next leader: the outcome is unknown.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<u64> },
    /// raft-rs refused the proposal (a leader transfer is in progress).
    #[error("proposal dropped by raft")]
    Dropped,
    /// The loop has stopped (shut down, or failed: see its last log line).
    #[error("the quorum has stopped")]
    Stopped,
    #[error("invalid quorum configuration: {0}")]
    Config(String),
    #[error("raft log store: {0}")]
    Store(#[from] RaftStoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("corrupt raft log entry {index}: {reason}")]
    CorruptEntry { index: u64, reason: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends Raft messages to peers. `send` is called on the quorum loop's
/// thread: it must not block (queue and return).
pub trait Transport: Send + 'static {
    fn send(&self, msgs: Vec<Message>);
}

/// A proposal's outcome: its (index, term) once committed.
type ProposeResult = Result<(u64, u64), QuorumError>;
type ProposeReply = oneshot::Sender<ProposeResult>;

enum Cmd {
    Propose { data: Vec<u8>, reply: ProposeReply },
    Step(Message),
    OfferSnapshot { applied_index: u64, data: Bytes },
    Shutdown,
}

/// A cheap, cloneable handle on a running quorum member.
#[derive(Clone)]
pub struct QuorumHandle {
    node_id: u64,
    cmds: std_mpsc::Sender<Cmd>,
    status: watch::Receiver<QuorumStatus>,
}

impl std::fmt::Debug for QuorumHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumHandle")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl QuorumHandle {
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Proposes `data` and resolves with its (index, term) once the entry is
    /// committed and has been handed to the apply channel. Dropping the
    /// future does not withdraw the proposal.
    pub async fn propose(&self, data: Vec<u8>) -> Result<(u64, u64), QuorumError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Propose { data, reply })
            .map_err(|_| QuorumError::Stopped)?;
        rx.await.map_err(|_| QuorumError::Stopped)?
    }

    /// Hands a message received from the network to the node.
    pub fn step(&self, msg: Message) {
        // A stopped loop drops it, as a dead node would.
        let _ = self.cmds.send(Cmd::Step(msg));
    }

    pub fn status(&self) -> QuorumStatus {
        let mut status = self.status.borrow().clone();
        // A loop that died without saying so (a panic) dropped the sender:
        // its last status is stale.
        if self.status.has_changed().is_err() {
            status.running = false;
            status.is_leader = false;
            status.leader_id = None;
        }
        status
    }

    pub fn subscribe_status(&self) -> watch::Receiver<QuorumStatus> {
        self.status.clone()
    }

    /// The state machine's serialized state as of `applied_index` (an index
    /// it has received). The driver saves it and compacts the log behind it;
    /// an offer older than the last snapshot, or ahead of what was handed
    /// out, is ignored with a log line.
    pub fn offer_snapshot(&self, applied_index: u64, data: Bytes) {
        let _ = self.cmds.send(Cmd::OfferSnapshot {
            applied_index,
            data,
        });
    }

    /// Stops the loop and waits until it has released the Raft log.
    /// Pending proposals fail with [`QuorumError::Stopped`]; other handles
    /// see `Stopped` from then on.
    pub async fn shutdown(self) {
        let _ = self.cmds.send(Cmd::Shutdown);
        let mut status = self.status.clone();
        drop(self);
        // The loop drops the status sender only after the store.
        while status.changed().await.is_ok() {}
    }
}

/// Opens (or initializes) the log in `config.data_dir` and starts the
/// quorum loop on its own thread. Entries to apply arrive on the returned
/// receiver; a single voter elects itself at once.
pub fn start(
    config: QuorumConfig,
    transport: Box<dyn Transport>,
) -> Result<(QuorumHandle, mpsc::UnboundedReceiver<Applied>), QuorumError> {
    if config.node_id == 0 {
        return Err(QuorumError::Config("node_id must not be 0".into()));
    }
    if config.tick_interval.is_zero() {
        return Err(QuorumError::Config("tick_interval must not be 0".into()));
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let store = RaftLogStore::open(config.raft_log_dir())?;
    if !store.is_initialized() {
        if config.voters.is_empty() {
            return Err(QuorumError::Config(
                "a new quorum needs at least one voter".into(),
            ));
        }
        store.initialize(&config.voters)?;
        tracing::info!(node_id = config.node_id, voters = ?config.voters, "initialized a new raft log");
    }
    let (conf_state, conf_index) = store.conf_state();
    if !config.voters.is_empty() && sorted(&config.voters) != sorted(&conf_state.voters) {
        tracing::warn!(
            configured = ?config.voters,
            in_log = ?conf_state.voters,
            "configured voters differ from the raft log's; using the log's"
        );
    }

    let snapshot = store.load_snapshot()?;
    let snapshot_index = snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
    let snapshot_conf = snapshot
        .as_ref()
        .map(|s| s.get_metadata().get_conf_state().clone());
    let raft_config = Config {
        id: config.node_id,
        election_tick: config.election_tick,
        heartbeat_tick: config.heartbeat_tick,
        // Entries after the snapshot are handed out again: the state
        // machine rebuilds from snapshot + log.
        applied: snapshot_index,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Config::default()
    };
    raft_config.validate()?;
    let mut raw_node = RawNode::new(&raft_config, store.clone(), &log_bridge::raft_logger())?;

    let (applied_tx, applied_rx) = mpsc::unbounded_channel();
    if let Some(snap) = snapshot {
        let m = snap.get_metadata();
        let _ = applied_tx.send(Applied::Snapshot {
            index: m.index,
            term: m.term,
            data: Bytes::from(Vec::from(snap.data)),
        });
    }
    // A lone voter has nobody to wait for.
    if conf_state.voters == [config.node_id] && conf_state.learners.is_empty() {
        raw_node.campaign()?;
    }

    let (cmds, cmd_rx) = std_mpsc::channel();
    // Configurations known from the snapshot on. (Conf changes replayed
    // after a restart are not re-applied, so with several of them between
    // the snapshot and the restart only the latest is known: a snapshot
    // taken in between would record that one.)
    let mut history = BTreeMap::new();
    if let Some(cs) = &snapshot_conf {
        history.insert(snapshot_index, cs.clone());
    }
    history.insert(conf_index.max(snapshot_index), conf_state.clone());
    let mut driver = Driver {
        raw_node,
        store,
        transport,
        applied_tx,
        cmd_rx,
        node_id: config.node_id,
        tick_interval: config.tick_interval,
        snapshot_every: config.snapshot_every_entries,
        snapshot_interval: config.snapshot_interval,
        last_snapshot_asked: Instant::now(),
        conf_state,
        conf_history: history,
        applied_index: snapshot_index,
        snapshot_index,
        snapshot_due_at: 0,
        pending: HashMap::new(),
        by_index: BTreeMap::new(),
        next_proposal: first_proposal_id(),
        replies: Vec::new(),
        snapshots_sent: Vec::new(),
        status_tx: watch::channel(QuorumStatus::default()).0,
    };
    let status_rx = driver.status_tx.subscribe();
    driver.publish_status(true);

    let node_id = config.node_id;
    std::thread::Builder::new()
        .name(format!("quorum-{node_id}"))
        .spawn(move || {
            let span = tracing::info_span!("quorum", node_id);
            let _entered = span.enter();
            driver.run();
        })?;
    Ok((
        QuorumHandle {
            node_id,
            cmds,
            status: status_rx,
        },
        applied_rx,
    ))
}

fn sorted(v: &[u64]) -> Vec<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

/// Proposal ids only need to be unique within one run of this node (a
/// match also requires the index and term the entry was appended at);
/// starting from the clock keeps them apart across restarts too.
fn first_proposal_id() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// An entry's context: the proposing node and its proposal id.
fn encode_context(node_id: u64, id: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&node_id.to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v
}

fn decode_context(ctx: &[u8]) -> Option<(u64, u64)> {
    if ctx.len() != 16 {
        return None;
    }
    let node = u64::from_be_bytes(ctx[..8].try_into().ok()?);
    let id = u64::from_be_bytes(ctx[8..].try_into().ok()?);
    Some((node, id))
}

struct Pending {
    reply: ProposeReply,
    /// Term this node led when it proposed.
    term: u64,
    /// (index, term) once the entry showed up in a `Ready`.
    position: Option<(u64, u64)>,
}

/// Everything the loop owns. Field order matters: `status_tx` is dropped
/// last, after the RocksDB handles, so [`QuorumHandle::shutdown`] returns
/// only once the log is closed (also when the loop panics).
struct Driver {
    raw_node: RawNode<RaftLogStore>,
    store: RaftLogStore,
    transport: Box<dyn Transport>,
    applied_tx: mpsc::UnboundedSender<Applied>,
    cmd_rx: std_mpsc::Receiver<Cmd>,
    node_id: u64,
    tick_interval: Duration,
    snapshot_every: u64,
    snapshot_interval: Duration,
    /// When a snapshot was last asked for (or this node started).
    last_snapshot_asked: Instant,
    /// The configuration in force after `applied_index`.
    conf_state: ConfState,
    /// Configurations by the index they took effect at, back to the last
    /// snapshot: a snapshot at index i records the one in force at i.
    conf_history: BTreeMap<u64, ConfState>,
    applied_index: u64,
    snapshot_index: u64,
    /// Applied index at which SnapshotDue was last sent.
    snapshot_due_at: u64,
    pending: HashMap<u64, Pending>,
    /// Log index → proposal id, for proposals whose entry has an index.
    by_index: BTreeMap<u64, u64>,
    next_proposal: u64,
    /// Answers to send after the status is published.
    replies: Vec<(ProposeReply, ProposeResult)>,
    /// Followers a snapshot was sent to during the current `Ready`.
    snapshots_sent: Vec<u64>,
    status_tx: watch::Sender<QuorumStatus>,
}

impl Driver {
    fn run(&mut self) {
        tracing::info!(
            applied = self.applied_index,
            voters = ?self.conf_state.voters,
            "quorum loop started"
        );
        let mut next_tick = Instant::now() + self.tick_interval;
        let outcome = 'run: loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            match self.cmd_rx.recv_timeout(timeout) {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        break 'run Ok(());
                    }
                    // Take what else is queued before the next Ready, so a
                    // burst of proposals shares one fsync.
                    for _ in 0..1024 {
                        match self.cmd_rx.try_recv() {
                            Ok(cmd) => {
                                if !self.handle(cmd) {
                                    break 'run Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                // Every handle is gone: nobody can use this node any more.
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break 'run Ok(()),
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw_node.tick();
                self.maybe_ask_for_snapshot();
                next_tick += self.tick_interval;
                if next_tick < now {
                    next_tick = now + self.tick_interval;
                }
            }
            if let Err(e) = self.on_ready() {
                break 'run Err(e);
            }
            self.fail_pending_if_deposed();
            self.publish_status(true);
            self.send_replies();
        };
        match outcome {
            Ok(()) => tracing::info!("quorum loop stopped"),
            Err(e) => tracing::error!(error = %e, "quorum loop failed; this node is stopped"),
        }
        self.send_replies();
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(QuorumError::Stopped));
        }
        self.by_index.clear();
        self.publish_status(false);
    }

    /// Answers proposals whose entries were handed to the state machine,
    /// once the status shows them committed and applied.
    fn send_replies(&mut self) {
        for (reply, result) in self.replies.drain(..) {
            let _ = reply.send(result);
        }
    }

    /// Returns false on shutdown.
    fn handle(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Propose { data, reply } => self.propose(data, reply),
            Cmd::Step(msg) => {
                if msg.to != self.node_id {
                    tracing::debug!(to = msg.to, "dropping raft message for another node");
                } else if let Err(e) = self.raw_node.step(msg) {
                    tracing::debug!(error = %e, "raft refused a message");
                }
            }
            Cmd::OfferSnapshot {
                applied_index,
                data,
            } => self.save_snapshot(applied_index, data),
            Cmd::Shutdown => return false,
        }
        true
    }

    fn leader_hint(&self) -> Option<u64> {
        Some(self.raw_node.status().ss.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    fn propose(&mut self, data: Vec<u8>, reply: ProposeReply) {
        let (role, term) = {
            let st = self.raw_node.status();
            (st.ss.raft_state, st.hs.term)
        };
        if role != StateRole::Leader {
            let leader_hint = self.leader_hint();
            let _ = reply.send(Err(QuorumError::NotLeader { leader_hint }));
            return;
        }
        let id = self.next_proposal;
        self.next_proposal = self.next_proposal.wrapping_add(1);
        match self
            .raw_node
            .propose(encode_context(self.node_id, id), data)
        {
            Ok(()) => {
                self.pending.insert(
                    id,
                    Pending {
                        reply,
                        term,
                        position: None,
                    },
                );
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(QuorumError::Dropped));
            }
            Err(e) => {
                let _ = reply.send(Err(QuorumError::Raft(e)));
            }
        }
    }

    /// Handles one `Ready` in the order raft-rs documents.
    fn on_ready(&mut self) -> Result<(), QuorumError> {
        if !self.raw_node.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw_node.ready();

        // A leader may send before persisting (Raft thesis 10.2.1).
        let msgs = rd.take_messages();
        self.send(msgs);

        // Persist snapshot, entries and hard state in one batch.
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        self.note_positions(rd.entries());
        self.store
            .append_ready(rd.entries(), rd.hs(), snapshot.as_ref(), rd.must_sync())?;

        // Apply: a snapshot comes with no committed entries.
        if let Some(snap) = snapshot {
            self.apply_snapshot(snap);
        }
        let committed = rd.take_committed_entries();
        self.apply_entries(committed)?;

        // A follower's messages (votes, append responses) only after persisting.
        let msgs = rd.take_persisted_messages();
        self.send(msgs);

        let mut light = self.raw_node.advance(rd);
        if let Some(commit) = light.commit_index() {
            // Persist the commit index before applying what it commits.
            let mut hs = self.raw_node.status().hs;
            hs.commit = commit;
            self.store.append_ready(&[], Some(&hs), None, false)?;
        }
        let msgs = light.take_messages();
        self.send(msgs);
        let committed = light.take_committed_entries();
        self.apply_entries(committed)?;
        self.raw_node.advance_apply();
        self.report_snapshots();
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        self.snapshots_sent.extend(
            msgs.iter()
                .filter(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
                .map(|m| m.to),
        );
        self.transport.send(msgs);
    }

    /// The transport gives no delivery report, so a snapshot handed to it
    /// counts as sent. If it was lost, the follower rejects the next append
    /// and is probed again. (Called after `advance`: nothing may step the
    /// node while a `Ready` is out.)
    fn report_snapshots(&mut self) {
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.raw_node.report_snapshot(to, SnapshotStatus::Finish);
        }
    }

    /// Records at which (index, term) our proposals were appended.
    fn note_positions(&mut self, entries: &[Entry]) {
        for e in entries {
            let Some((node, id)) = decode_context(&e.context) else {
                continue;
            };
            if node != self.node_id {
                continue;
            }
            if let Some(p) = self.pending.get_mut(&id) {
                p.position = Some((e.index, e.term));
                // An entry at this index from an earlier term lost its place.
                if let Some(old) = self.by_index.insert(e.index, id) {
                    if old != id {
                        self.fail_proposal(old);
                    }
                }
            }
        }
    }

    fn fail_proposal(&mut self, id: u64) {
        if let Some(p) = self.pending.remove(&id) {
            let leader_hint = self.leader_hint();
            let _ = p.reply.send(Err(QuorumError::NotLeader { leader_hint }));
        }
    }

    fn apply_snapshot(&mut self, snap: Snapshot) {
        let m = snap.get_metadata();
        tracing::info!(
            index = m.index,
            term = m.term,
            "installing a snapshot from the leader"
        );
        self.applied_index = m.index;
        self.snapshot_index = m.index;
        self.snapshot_due_at = m.index;
        self.conf_state = m.get_conf_state().clone();
        self.conf_history.clear();
        self.conf_history.insert(m.index, self.conf_state.clone());
        let _ = self.applied_tx.send(Applied::Snapshot {
            index: m.index,
            term: m.term,
            data: Bytes::from(Vec::from(snap.data)),
        });
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), QuorumError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::new();
        for mut e in entries {
            let (index, term) = (e.index, e.term);
            self.applied_index = index;
            if let Some(id) = self.by_index.remove(&index) {
                if let Some(p) = self.pending.remove(&id) {
                    let ours = decode_context(&e.context) == Some((self.node_id, id))
                        && p.position == Some((index, term));
                    let result = if ours {
                        // Counted once per entry in the cluster, by the node
                        // that proposed it (a replay after a restart has no
                        // pending proposals): what each operation costs the log.
                        metrics::counter!("sluice_quorum_committed_proposals_total").increment(1);
                        metrics::counter!("sluice_quorum_committed_proposal_bytes_total")
                            .increment(e.data.len() as u64);
                        Ok((index, term))
                    } else {
                        // Another leader's entry took this index.
                        Err(QuorumError::NotLeader {
                            leader_hint: self.leader_hint(),
                        })
                    };
                    self.replies.push((p.reply, result));
                }
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if !e.data.is_empty() {
                        batch.push(CommittedEntry {
                            index,
                            term,
                            data: Bytes::from(Vec::from(std::mem::take(&mut e.data))),
                        });
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&e)?;
                }
            }
        }
        metrics::counter!("sluice_quorum_applied_entries_total").increment(batch.len() as u64);
        if !batch.is_empty() && self.applied_tx.send(Applied::Entries(batch)).is_err() {
            tracing::debug!("apply channel closed; committed entries not delivered");
        }
        self.maybe_ask_for_snapshot();
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), QuorumError> {
        let (_, applied_conf_index) = self.store.conf_state();
        if e.index <= applied_conf_index {
            // Replayed after a restart: the stored configuration has it.
            return Ok(());
        }
        let corrupt = |err: protobuf::ProtobufError| QuorumError::CorruptEntry {
            index: e.index,
            reason: err.to_string(),
        };
        let result = if e.get_entry_type() == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(&e.data).map_err(corrupt)?;
            self.raw_node.apply_conf_change(&cc)
        } else {
            let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(corrupt)?;
            self.raw_node.apply_conf_change(&cc)
        };
        match result {
            Ok(cs) => {
                tracing::info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "applied a configuration change");
                self.store.set_conf_state(&cs, e.index)?;
                self.conf_history.insert(e.index, cs.clone());
                self.conf_state = cs;
            }
            // An invalid change is rejected by not applying it (raft-rs's rule).
            Err(err) => {
                tracing::warn!(index = e.index, error = %err, "rejected a configuration change")
            }
        }
        Ok(())
    }

    fn maybe_ask_for_snapshot(&mut self) {
        let base = self.snapshot_index.max(self.snapshot_due_at);
        let by_count = self.snapshot_every > 0 && self.applied_index >= base + self.snapshot_every;
        let by_time = !self.snapshot_interval.is_zero()
            && self.applied_index > base
            && self.last_snapshot_asked.elapsed() >= self.snapshot_interval;
        if by_count || by_time {
            self.snapshot_due_at = self.applied_index;
            self.last_snapshot_asked = Instant::now();
            let _ = self.applied_tx.send(Applied::SnapshotDue {
                applied_index: self.applied_index,
            });
        }
    }

    fn save_snapshot(&mut self, index: u64, data: Bytes) {
        if index <= self.snapshot_index || index > self.applied_index {
            tracing::warn!(
                index,
                snapshot_index = self.snapshot_index,
                applied_index = self.applied_index,
                "ignoring a snapshot offer outside (snapshot, applied]"
            );
            return;
        }
        let conf_state = self
            .conf_history
            .range(..=index)
            .next_back()
            .map(|(_, cs)| cs.clone())
            .unwrap_or_else(|| self.conf_state.clone());
        let saved = self
            .raw_node
            .store()
            .term(index)
            .map_err(QuorumError::from)
            .and_then(|term| {
                self.store.save_snapshot(index, term, &conf_state, &data)?;
                self.store.compact(index + 1)?;
                Ok(term)
            });
        match saved {
            Ok(term) => {
                tracing::info!(
                    index,
                    term,
                    bytes = data.len(),
                    "saved a snapshot and compacted the log"
                );
                self.snapshot_index = index;
                // Keep the configuration in force at the snapshot as the base.
                let base = self
                    .conf_history
                    .range(..=index)
                    .next_back()
                    .map(|(&i, _)| i);
                if let Some(base) = base {
                    self.conf_history = self.conf_history.split_off(&base);
                }
            }
            Err(e) => tracing::error!(index, error = %e, "could not save a snapshot"),
        }
    }

    /// A proposal whose proposer is no longer leader of its term fails: it
    /// may or may not commit later, under another leader.
    fn fail_pending_if_deposed(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (role, term) = {
            let st = self.raw_node.status();
            (st.ss.raft_state, st.hs.term)
        };
        let deposed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| role != StateRole::Leader || p.term != term)
            .map(|(&id, _)| id)
            .collect();
        if deposed.is_empty() {
            return;
        }
        tracing::info!(
            count = deposed.len(),
            "lost leadership; failing pending proposals"
        );
        for id in deposed {
            if let Some((index, _)) = self.pending.get(&id).and_then(|p| p.position) {
                self.by_index.remove(&index);
            }
            self.fail_proposal(id);
        }
    }

    fn publish_status(&self, running: bool) {
        let st = self.raw_node.status();
        let leader = Some(st.ss.leader_id).filter(|&id| id != raft::INVALID_ID && running);
        let is_leader = running && st.ss.raft_state == StateRole::Leader;
        let mut progress: Vec<(u64, u64)> = if is_leader {
            self.raw_node
                .raft
                .prs()
                .iter()
                .map(|(&id, pr)| (id, pr.matched))
                .collect()
        } else {
            Vec::new()
        };
        progress.sort_unstable();
        let status = QuorumStatus {
            node_id: self.node_id,
            leader_id: leader,
            term: st.hs.term,
            commit_index: st.hs.commit,
            applied_index: self.applied_index,
            snapshot_index: self.snapshot_index,
            is_leader,
            voters: self.conf_state.voters.clone(),
            progress,
            running,
        };
        self.status_tx.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            if current.is_leader != status.is_leader || current.term != status.term {
                metrics::gauge!("sluice_quorum_term").set(status.term as f64);
                metrics::gauge!("sluice_quorum_is_leader")
                    .set(f64::from(u8::from(status.is_leader)));
            }
            metrics::gauge!("sluice_quorum_commit_index").set(status.commit_index as f64);
            *current = status;
            true
        });
    }
}
