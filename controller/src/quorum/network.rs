//! Transports: [`NoPeers`] for a single voter, and [`MemNetwork`], an
//! in-process network for tests that can isolate nodes, cut links and drop
//! messages with a seeded random source (so a failing run can be replayed).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::Message;

use super::{QuorumHandle, Transport};

/// The transport of a single-voter quorum: there is nobody to talk to.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            tracing::warn!(to = m.to, msg_type = ?m.get_msg_type(), "no transport: dropping raft message");
        }
    }
}

#[derive(Default)]
struct Links {
    nodes: HashMap<u64, QuorumHandle>,
    isolated: HashSet<u64>,
    /// Directed links that drop everything: (from, to).
    cut: HashSet<(u64, u64)>,
    /// Probability, in parts per million, that a message is lost.
    drop_ppm: u32,
    rng: u64,
    delivered: u64,
    dropped: u64,
}

impl Links {
    /// splitmix64: small, seedable, good enough to pick lost messages.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn passes(&mut self, from: u64, to: u64) -> bool {
        if self.isolated.contains(&from) || self.isolated.contains(&to) {
            return false;
        }
        if self.cut.contains(&(from, to)) {
            return false;
        }
        self.drop_ppm == 0 || self.next_random() % 1_000_000 >= u64::from(self.drop_ppm)
    }
}

/// An in-memory network between quorum nodes of one process. Nodes are
/// started with [`MemNetwork::transport`] and then [`MemNetwork::register`]ed;
/// messages to a node not (yet) registered are dropped, as on a real network.
#[derive(Clone, Default)]
pub struct MemNetwork {
    links: Arc<Mutex<Links>>,
}

impl MemNetwork {
    /// A network whose random message loss (if any) is driven by `seed`.
    pub fn new(seed: u64) -> Self {
        let net = MemNetwork::default();
        net.lock().rng = seed;
        net
    }

    fn lock(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transport node `id` sends through.
    pub fn transport(&self, id: u64) -> Box<dyn Transport> {
        Box::new(MemTransport {
            from: id,
            net: self.clone(),
        })
    }

    /// Delivers messages addressed to `id` to `handle`.
    pub fn register(&self, id: u64, handle: QuorumHandle) {
        self.lock().nodes.insert(id, handle);
    }

    /// Stops delivering to `id` (a stopped or crashed node).
    pub fn unregister(&self, id: u64) {
        self.lock().nodes.remove(&id);
    }

    /// Drops every message from or to `id`.
    pub fn isolate(&self, id: u64) {
        self.lock().isolated.insert(id);
    }

    /// Drops every message from `from` to `to` (one direction).
    pub fn cut(&self, from: u64, to: u64) {
        self.lock().cut.insert((from, to));
    }

    /// Undoes every `isolate` and `cut`; random loss stays as set.
    pub fn heal(&self) {
        let mut l = self.lock();
        l.isolated.clear();
        l.cut.clear();
    }

    /// Loses each message with probability `ppm` / 1,000,000.
    pub fn set_drop_rate_ppm(&self, ppm: u32) {
        self.lock().drop_ppm = ppm.min(1_000_000);
    }

    /// (delivered, dropped) message counts so far.
    pub fn counts(&self) -> (u64, u64) {
        let l = self.lock();
        (l.delivered, l.dropped)
    }
}

struct MemTransport {
    from: u64,
    net: MemNetwork,
}

impl Transport for MemTransport {
    fn send(&self, msgs: Vec<Message>) {
        let mut links = self.net.lock();
        for m in msgs {
            let to = m.to;
            if !links.passes(self.from, to) {
                links.dropped += 1;
                continue;
            }
            match links.nodes.get(&to) {
                Some(handle) => {
                    handle.step(m);
                    links.delivered += 1;
                }
                None => links.dropped += 1,
            }
        }
    }
}
