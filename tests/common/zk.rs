//! A real Apache ZooKeeper ensemble for the tests, started exactly as
//! `sluice cluster up --mode zk` starts one: the generation and launch code
//! is src/zk_ensemble.rs, included here. A test that cannot start ZooKeeper
//! fails (with the servers' logs); it never skips.

use std::time::{Duration, Instant};

#[path = "../../src/zk_ensemble.rs"]
mod ensemble;

pub use ensemble::{ServerPorts, ServerStatus, ZkServer};

use super::free_port;

/// ZooKeeper's tick in tests: sessions may then be as short as 1 s
/// (2 ticks), so a test can make a session expire quickly.
pub const TEST_TICK: Duration = Duration::from_millis(500);

/// Servers numbered 1.. on 127.0.0.1 with free ports, data and logs
/// in a temp dir; stopped when dropped.
pub struct ZkEnsemble {
    inner: ensemble::ZkEnsemble,
    // Dropped after `inner` (fields drop in order): the servers stop first.
    dir: tempfile::TempDir,
}

impl ZkEnsemble {
    /// Starts `servers` servers and waits until each serves as leader or
    /// follower (or standalone, for one).
    pub fn start(servers: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<ServerPorts> = (0..servers)
            .map(|_| ServerPorts {
                client: free_port(),
                quorum: free_port(),
                election: free_port(),
            })
            .collect();
        let inner = ensemble::ZkEnsemble::configure(dir.path(), &ports, TEST_TICK)
            .unwrap_or_else(|e| panic!("configuring ZooKeeper: {e:#}"));
        let mut zk = ZkEnsemble { inner, dir };
        if let Err(e) = zk.inner.start() {
            panic!("starting ZooKeeper: {e:#}");
        }
        zk.wait_ready(Duration::from_secs(90));
        zk
    }

    /// Waits until every running, unpaused server serves.
    pub fn wait_ready(&mut self, limit: Duration) {
        if let Err(e) = self.inner.wait_ready(limit) {
            panic!("ZooKeeper did not come up: {e:#}\n{}", self.inner.logs());
        }
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,...`, without a chroot.
    pub fn connect_string(&self) -> String {
        self.inner.connect_string()
    }

    pub fn servers(&self) -> &[ZkServer] {
        &self.inner.servers
    }

    pub fn server(&mut self, id: u32) -> &mut ZkServer {
        self.inner.server(id)
    }

    /// kill -9 of server `id`.
    pub fn kill9(&mut self, id: u32) {
        self.server(id).kill9();
    }

    /// Starts server `id` again on its data (after [`ZkEnsemble::kill9`]),
    /// without waiting for it to rejoin.
    pub fn restart(&mut self, id: u32) {
        if let Err(e) = self.server(id).start() {
            panic!("restarting ZooKeeper server {id}: {e:#}");
        }
    }

    /// SIGSTOP of server `id`: alive but silent to peers and clients.
    pub fn pause(&mut self, id: u32) {
        self.server(id).pause().expect("pausing a ZooKeeper server");
    }

    /// SIGCONT after [`ZkEnsemble::pause`].
    pub fn resume(&mut self, id: u32) {
        self.server(id)
            .resume()
            .expect("resuming a ZooKeeper server");
    }

    /// Server `id`'s role and zxid, if it answers.
    pub fn status(&self, id: u32) -> Option<ServerStatus> {
        self.inner
            .servers
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.status().ok())
    }

    /// The server that leads now, if one answers that it does.
    pub fn leader(&self) -> Option<u32> {
        self.inner.leader()
    }

    /// Waits until some server leads (a quorum is up) and returns it.
    pub fn wait_leader(&self, limit: Duration) -> u32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no ZooKeeper leader within {limit:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every server's log.
    pub fn logs(&self) -> String {
        self.inner.logs()
    }

    /// The last lines of each server's log, for failure messages that
    /// also carry the brokers' logs.
    pub fn log_tails(&self) -> String {
        self.inner
            .servers
            .iter()
            .map(|s| format!("===== ZooKeeper server {}\n{}\n", s.id, s.log_tail()))
            .collect()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}
