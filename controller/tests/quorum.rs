//! The metadata quorum driver end to end: a single voter on RocksDB
//! (including restarts from snapshot + log), and three voters in one process
//! over the in-memory network (election, replication, NotLeader, fail-over,
//! seeded message loss).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_controller::quorum::{
    self, Applied, CommittedEntry, MemNetwork, NoPeers, QuorumConfig, QuorumError, QuorumHandle,
};
use sluice_storage::raft_store::RaftLogStore;
use tokio::sync::mpsc::UnboundedReceiver;

const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test exceeded its time limit")
}

fn fast_config(id: u64, voters: &[u64], dir: &Path) -> QuorumConfig {
    let mut c = QuorumConfig::new(id, voters.to_vec(), dir.join(format!("node-{id}")));
    c.tick_interval = Duration::from_millis(10);
    c.election_tick = 10;
    c.heartbeat_tick = 2;
    c.snapshot_every_entries = 0;
    c
}

/// Receives until `n` entries have arrived; other items go to `others`.
async fn recv_entries(
    rx: &mut UnboundedReceiver<Applied>,
    n: usize,
    others: &mut Vec<Applied>,
) -> Vec<CommittedEntry> {
    let mut out = Vec::new();
    while out.len() < n {
        match rx.recv().await.expect("apply channel closed") {
            Applied::Entries(es) => out.extend(es),
            other => others.push(other),
        }
    }
    assert_eq!(out.len(), n, "more entries than proposed");
    out
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn encode_state(entries: &[CommittedEntry]) -> Bytes {
    let v: Vec<(u64, u64, Vec<u8>)> = entries
        .iter()
        .map(|e| (e.index, e.term, e.data.to_vec()))
        .collect();
    Bytes::from(serde_json::to_vec(&v).unwrap())
}

fn decode_state(b: &[u8]) -> Vec<CommittedEntry> {
    let v: Vec<(u64, u64, Vec<u8>)> = serde_json::from_slice(b).unwrap();
    v.into_iter()
        .map(|(index, term, data)| CommittedEntry {
            index,
            term,
            data: data.into(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_applies_proposals_in_order() {
    let dir = tempfile::tempdir().unwrap();
    bounded(async {
        let (h, mut rx) =
            quorum::start(fast_config(1, &[1], dir.path()), Box::new(NoPeers)).unwrap();
        let mut st = h.subscribe_status();
        st.wait_for(|s| s.is_leader).await.unwrap();
        assert_eq!(h.status().leader_id, Some(1));
        assert_eq!(h.status().voters, vec![1]);

        let mut acked = BTreeMap::new();
        for i in 0..20u32 {
            let data = format!("seq-{i}").into_bytes();
            let (index, term) = h.propose(data.clone()).await.unwrap();
            acked.insert(index, (term, data));
        }
        // Concurrent proposals share Readies; each still gets its own index.
        let tasks: Vec<_> = (0..30u32)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move {
                    let data = format!("par-{i}").into_bytes();
                    (h.propose(data.clone()).await.unwrap(), data)
                })
            })
            .collect();
        for t in tasks {
            let ((index, term), data) = t.await.unwrap();
            assert!(
                acked.insert(index, (term, data)).is_none(),
                "index {index} acked twice"
            );
        }

        let mut others = Vec::new();
        let entries = recv_entries(&mut rx, 50, &mut others).await;
        assert!(others.is_empty(), "unexpected {others:?}");
        assert!(entries.windows(2).all(|w| w[0].index < w[1].index));
        for e in &entries {
            let (term, data) = &acked[&e.index];
            assert_eq!((e.term, &e.data[..]), (*term, &data[..]));
        }
        let last = entries.last().unwrap().index;
        let s = h.status();
        assert!(s.commit_index >= last && s.applied_index >= last, "{s:?}");
        h.shutdown().await;
        assert!(
            rx.recv().await.is_none(),
            "apply channel closes on shutdown"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_also_asked_for_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(1, &[1], dir.path());
    config.snapshot_interval = Duration::from_millis(200);
    bounded(async {
        let (h, mut rx) = quorum::start(config, Box::new(NoPeers)).unwrap();
        let (index, _) = h.propose(b"one".to_vec()).await.unwrap();
        let mut others = Vec::new();
        recv_entries(&mut rx, 1, &mut others).await;
        // Few entries, but the interval passes: a snapshot is asked for.
        loop {
            match rx.recv().await.expect("apply channel closed") {
                Applied::SnapshotDue { applied_index } => {
                    assert!(applied_index >= index);
                    break;
                }
                other => others.push(other),
            }
        }
        h.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_restart_replays_snapshot_then_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(1, &[1], dir.path());
    config.snapshot_every_entries = 10;
    bounded(async {
        let (h, mut rx) = quorum::start(config.clone(), Box::new(NoPeers)).unwrap();
        let mut proposed = Vec::new();
        for i in 0..15u32 {
            proposed.push(h.propose(format!("a{i}").into_bytes()).await.unwrap());
        }
        let mut others = Vec::new();
        let mut state = recv_entries(&mut rx, 15, &mut others).await;
        assert!(
            others.iter().any(
                |a| matches!(a, Applied::SnapshotDue { applied_index } if *applied_index >= 10)
            ),
            "expected a SnapshotDue, got {others:?}"
        );
        let snap_index = state.last().unwrap().index;
        assert_eq!(snap_index, proposed.last().unwrap().0);
        let snap_data = encode_state(&state);
        h.offer_snapshot(snap_index, snap_data.clone());
        h.subscribe_status()
            .wait_for(|s| s.snapshot_index == snap_index)
            .await
            .unwrap();
        // Offers at or below the snapshot, or ahead of what was applied, are ignored.
        h.offer_snapshot(snap_index, Bytes::from_static(b"stale"));
        h.offer_snapshot(snap_index + 1000, Bytes::from_static(b"future"));

        for i in 0..10u32 {
            proposed.push(h.propose(format!("b{i}").into_bytes()).await.unwrap());
        }
        state.extend(recv_entries(&mut rx, 10, &mut others).await);
        let last_index = state.last().unwrap().index;
        h.shutdown().await;

        // The log was compacted behind the snapshot.
        {
            let store = RaftLogStore::open(config.raft_log_dir()).unwrap();
            use raft::Storage;
            assert_eq!(store.first_index().unwrap(), snap_index + 1);
            assert!(store.last_index().unwrap() >= last_index);
            assert_eq!(store.snapshot_metadata().index, snap_index);
        }

        // Restart: the snapshot first, then exactly the tail after it.
        for round in 0..2 {
            let (h, mut rx) = quorum::start(config.clone(), Box::new(NoPeers)).unwrap();
            match rx.recv().await.unwrap() {
                Applied::Snapshot { index, data, .. } => {
                    assert_eq!(index, snap_index);
                    assert_eq!(data, snap_data);
                    assert_eq!(decode_state(&data), state[..15].to_vec());
                }
                other => panic!("round {round}: expected the snapshot first, got {other:?}"),
            }
            let expected = state[15..].to_vec();
            let tail = recv_entries(&mut rx, expected.len(), &mut Vec::new()).await;
            assert_eq!(tail, expected, "round {round}");
            h.subscribe_status()
                .wait_for(|s| s.is_leader)
                .await
                .unwrap();
            let (index, _) = h.propose(format!("r{round}").into_bytes()).await.unwrap();
            assert!(index > last_index);
            let e = recv_entries(&mut rx, 1, &mut Vec::new()).await;
            assert_eq!(e[0].index, index);
            state.extend(e);
            h.shutdown().await;
        }
    })
    .await;
}

/// A toy state machine: the list of applied entries, replaced wholesale
/// by a snapshot (which is that list, serialized).
#[derive(Default)]
struct Replica {
    entries: Vec<CommittedEntry>,
    snapshots: Vec<u64>,
}

/// Applies each node's stream into a shared replica.
fn collect(mut rx: UnboundedReceiver<Applied>) -> Arc<Mutex<Replica>> {
    let replica = Arc::new(Mutex::new(Replica::default()));
    let sink = replica.clone();
    tokio::spawn(async move {
        while let Some(a) = rx.recv().await {
            let mut r = sink.lock().unwrap();
            match a {
                Applied::Entries(es) => r.entries.extend(es),
                Applied::Snapshot { index, data, .. } => {
                    r.entries = decode_state(&data);
                    r.snapshots.push(index);
                }
                Applied::SnapshotDue { .. } => {}
            }
        }
    });
    replica
}

struct Cluster {
    net: MemNetwork,
    nodes: Vec<QuorumHandle>,
    logs: Vec<Arc<Mutex<Replica>>>,
}

impl Cluster {
    fn start(dir: &Path, seed: u64) -> Cluster {
        let voters = [1, 2, 3];
        let net = MemNetwork::new(seed);
        let mut nodes = Vec::new();
        let mut logs = Vec::new();
        for &id in &voters {
            let (h, rx) = quorum::start(fast_config(id, &voters, dir), net.transport(id)).unwrap();
            net.register(id, h.clone());
            nodes.push(h);
            logs.push(collect(rx));
        }
        Cluster { net, nodes, logs }
    }

    fn node(&self, id: u64) -> &QuorumHandle {
        &self.nodes[(id - 1) as usize]
    }

    /// Waits for one leader among `among` that all of them acknowledge.
    async fn agreed_leader(&self, among: &[u64]) -> u64 {
        let mut leader = 0;
        wait_until("an agreed leader", || {
            let st: Vec<_> = among.iter().map(|&id| self.node(id).status()).collect();
            let leaders: Vec<_> = st.iter().filter(|s| s.is_leader).collect();
            if leaders.len() != 1 {
                return false;
            }
            leader = leaders[0].node_id;
            st.iter()
                .all(|s| s.leader_id == Some(leader) && s.term == leaders[0].term)
        })
        .await;
        leader
    }

    async fn wait_all_applied(&self, among: &[u64], n: usize) {
        wait_until("every node to apply", || {
            among
                .iter()
                .all(|&id| self.logs[(id - 1) as usize].lock().unwrap().entries.len() >= n)
        })
        .await;
    }

    fn log(&self, id: u64) -> Vec<CommittedEntry> {
        self.logs[(id - 1) as usize].lock().unwrap().entries.clone()
    }

    fn snapshots(&self, id: u64) -> Vec<u64> {
        self.logs[(id - 1) as usize]
            .lock()
            .unwrap()
            .snapshots
            .clone()
    }

    async fn shutdown(self) {
        for h in self.nodes {
            h.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_replicate_and_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    bounded(async {
        let c = Cluster::start(dir.path(), 7);
        let leader = c.agreed_leader(&[1, 2, 3]).await;
        let old_term = c.node(leader).status().term;

        for i in 0..10u32 {
            let (index, term) = c
                .node(leader)
                .propose(format!("x{i}").into_bytes())
                .await
                .unwrap();
            assert_eq!(term, old_term);
            assert!(index > 0);
        }
        c.wait_all_applied(&[1, 2, 3], 10).await;
        assert_eq!(c.log(1), c.log(2));
        assert_eq!(c.log(2), c.log(3));

        // A follower refuses proposals and names the leader.
        let follower = (1..=3).find(|&id| id != leader).unwrap();
        match c.node(follower).propose(b"nope".to_vec()).await {
            Err(QuorumError::NotLeader { leader_hint }) => assert_eq!(leader_hint, Some(leader)),
            other => panic!("expected NotLeader, got {other:?}"),
        }

        // Isolate the leader: its pending proposal fails and the other two
        // elect a new leader in a later term.
        c.net.isolate(leader);
        let isolated = c.node(leader).clone();
        let stuck = tokio::spawn(async move { isolated.propose(b"lost".to_vec()).await });
        let rest: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
        let new_leader = c.agreed_leader(&rest).await;
        assert_ne!(new_leader, leader);
        assert!(c.node(new_leader).status().term > old_term);
        match stuck.await.unwrap() {
            Err(QuorumError::NotLeader { .. }) => {}
            other => panic!("the isolated leader's proposal should fail, got {other:?}"),
        }
        wait_until("the old leader to step down", || {
            !c.node(leader).status().is_leader
        })
        .await;

        for i in 0..5u32 {
            c.node(new_leader)
                .propose(format!("y{i}").into_bytes())
                .await
                .unwrap();
        }
        c.wait_all_applied(&rest, 15).await;

        // Heal: the old leader drops its uncommitted tail and catches up.
        c.net.heal();
        c.wait_all_applied(&[1, 2, 3], 15).await;
        c.agreed_leader(&[1, 2, 3]).await;
        let (index, _) = c
            .node(new_leader)
            .propose(b"after heal".to_vec())
            .await
            .unwrap();
        c.wait_all_applied(&[1, 2, 3], 16).await;
        let log = c.log(new_leader);
        assert_eq!(log.last().unwrap().index, index);
        for id in 1..=3 {
            assert_eq!(c.log(id), log, "node {id} diverged");
        }
        assert!(log.iter().all(|e| &e.data[..] != b"lost"));
        c.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_converge_over_a_lossy_network() {
    let seed = 0x5EED_u64;
    let dir = tempfile::tempdir().unwrap();
    bounded(async {
        let c = Cluster::start(dir.path(), seed);
        c.net.set_drop_rate_ppm(50_000); // lose 5% of all messages
        let mut acked = BTreeMap::new();
        let mut i = 0u32;
        while acked.len() < 30 {
            let leader = c.agreed_leader(&[1, 2, 3]).await;
            let data = format!("z{i}").into_bytes();
            match c.node(leader).propose(data.clone()).await {
                Ok((index, _)) => {
                    acked.insert(index, data);
                    i += 1;
                }
                // Ambiguous or refused: try again (possibly a duplicate entry).
                Err(QuorumError::NotLeader { .. } | QuorumError::Dropped) => {}
                Err(e) => panic!("seed {seed:#x}: {e}"),
            }
        }
        c.net.set_drop_rate_ppm(0);
        let last = *acked.keys().last().unwrap();
        wait_until("every node to reach the last acked index", || {
            (1..=3).all(|id| c.log(id).last().is_some_and(|e| e.index >= last))
        })
        .await;
        let log = c.log(1);
        for id in 2..=3 {
            let other = c.log(id);
            let n = log.len().min(other.len());
            assert_eq!(log[..n], other[..n], "seed {seed:#x}: node {id} diverged");
        }
        let by_index: BTreeMap<u64, &[u8]> = log.iter().map(|e| (e.index, &e.data[..])).collect();
        for (index, data) in &acked {
            assert_eq!(
                by_index.get(index).copied(),
                Some(&data[..]),
                "seed {seed:#x}: acked entry {index} lost"
            );
        }
        let (delivered, dropped) = c.net.counts();
        assert!(
            dropped > 0 && delivered > dropped,
            "{delivered} delivered, {dropped} dropped"
        );
        c.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    bounded(async {
        let c = Cluster::start(dir.path(), 11);
        let leader = c.agreed_leader(&[1, 2, 3]).await;
        let lagging = (1..=3).find(|&id| id != leader).unwrap();
        let rest: Vec<u64> = (1..=3).filter(|&id| id != lagging).collect();
        c.net.isolate(lagging);

        for i in 0..20u32 {
            c.node(leader)
                .propose(format!("s{i}").into_bytes())
                .await
                .unwrap();
        }
        c.wait_all_applied(&rest, 20).await;
        // The leader's state machine snapshots; its log no longer reaches
        // back to where the lagging follower stopped.
        let state = c.log(leader);
        let snap_index = state.last().unwrap().index;
        c.node(leader)
            .offer_snapshot(snap_index, encode_state(&state));
        c.node(leader)
            .subscribe_status()
            .wait_for(|s| s.snapshot_index == snap_index)
            .await
            .unwrap();
        assert!(c.log(lagging).len() < 20);

        c.net.heal();
        wait_until("the follower to install the snapshot", || {
            c.snapshots(lagging) == vec![snap_index]
        })
        .await;
        c.node(lagging)
            .subscribe_status()
            .wait_for(|s| s.snapshot_index == snap_index)
            .await
            .unwrap();
        let (index, _) = c.node(leader).propose(b"after".to_vec()).await.unwrap();
        c.wait_all_applied(&[1, 2, 3], 21).await;
        let log = c.log(leader);
        assert_eq!(log.last().unwrap().index, index);
        for id in 1..=3 {
            assert_eq!(c.log(id), log, "node {id} diverged");
        }
        c.shutdown().await;
    })
    .await;
}
