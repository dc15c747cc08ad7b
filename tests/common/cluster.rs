//! A multi-process cluster for tests: controllers and brokers as separate
//! `sluice server` processes on 127.0.0.1, each killable and restartable on
//! its own data directory and port.
//!
//! The same [`Cluster`] runs in either [`Mode`]: KRaft (controllers run a
//! Raft quorum) or ZooKeeper (a real three-server ensemble, brokers with
//! `zookeeper.connect`, one of them the controller), so a suite is
//! parametrised over both rather than copied.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{describe_quorum_request, DescribeQuorumRequest};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_broker::KafkaClient;
use sluice_zk::inspect::{read_cluster, ClusterView};

use super::netns::Network;
use super::zk::ZkEnsemble;
use super::{free_port, BIN};

/// What coordinates a test cluster's brokers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    KRaft,
    ZooKeeper,
}

impl Mode {
    /// Both modes, for a suite that runs once in each.
    pub const BOTH: [Mode; 2] = [Mode::KRaft, Mode::ZooKeeper];
}

/// One test body run in each [`Mode`], as two tests `<name>::kraft` and
/// `<name>::zk` (so a report says which mode failed, and `-- ::zk` picks
/// one mode). The body is `async fn <name>(mode: Mode)` (or a plain `fn`
/// with `sync`) beside the macro call:
///
/// ```ignore
/// async fn round_trip(mode: Mode) { let cluster = Cluster::start_in(mode, 3, 3, &[]); ... }
/// in_both_modes!(round_trip);
/// in_both_modes!(round_trip, flavor = "multi_thread", worker_threads = 2);
/// in_both_modes!(sync round_trip);
/// ```
#[macro_export]
macro_rules! in_both_modes {
    (sync $name:ident) => {
        mod $name {
            #[test]
            fn kraft() {
                super::$name($crate::common::cluster::Mode::KRaft)
            }
            #[test]
            fn zk() {
                super::$name($crate::common::cluster::Mode::ZooKeeper)
            }
        }
    };
    ($name:ident) => {
        $crate::in_both_modes!($name, flavor = "multi_thread");
    };
    ($name:ident, $($runtime:tt)+) => {
        mod $name {
            #[tokio::test($($runtime)+)]
            async fn kraft() {
                super::$name($crate::common::cluster::Mode::KRaft).await
            }
            #[tokio::test($($runtime)+)]
            async fn zk() {
                super::$name($crate::common::cluster::Mode::ZooKeeper).await
            }
        }
    };
}

/// The chroot ZooKeeper-mode brokers use (as `sluice cluster up --mode zk`).
pub const ZK_CHROOT: &str = "/sluice";

pub struct Node {
    pub id: i32,
    pub role: &'static str,
    pub host: String,
    pub port: u16,
    /// The network namespace the node runs in, if any.
    namespace: Option<String>,
    pub data: PathBuf,
    settings: Vec<String>,
    child: Option<Child>,
    /// "Serving" lines in the log before the latest start.
    served_before: usize,
}

impl Node {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn marker(&self) -> &'static str {
        if self.role == "broker" {
            "serving Kafka on"
        } else {
            "serving the metadata quorum on"
        }
    }

    fn launch(&mut self) {
        self.served_before = self.log().matches(self.marker()).count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("node log file");
        let mut cmd = match &self.namespace {
            // `ip netns exec` execs the server, so the child is the server.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, BIN]);
                cmd
            }
            None => Command::new(BIN),
        };
        cmd.arg("server");
        for s in &self.settings {
            cmd.arg("--set").arg(s);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning sluice server");
        self.child = Some(child);
    }

    /// Waits until the node prints that it serves (a broker: once it is unfenced).
    pub fn wait_serving(&mut self, limit: Duration) {
        self.wait_serving_or(limit, None)
    }

    /// [`Node::wait_serving`], with `context` (other processes' logs) in
    /// the failure message.
    pub fn wait_serving_or(&mut self, limit: Duration, context: Option<&str>) {
        let context = context.unwrap_or("");
        let deadline = Instant::now() + limit;
        let marker = self.marker();
        loop {
            // The log is appended to across restarts: wait for a new line.
            if self.log().matches(marker).count() > self.served_before {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "node {} exited ({status}):\n{}{context}",
                        self.id,
                        self.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not serve within {limit:?}:\n{}{context}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kill -9: no chance to flush, checkpoint or hand over leadership.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the process to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(45);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGSTOP: the process stays but does nothing (its ZooKeeper session
    /// or broker heartbeats lapse, as in a long GC pause); see [`Node::resume`].
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&mut self, signal: &str) {
        let child = self.child.as_ref().expect("the node is not running");
        let sent = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill {signal} of node {}", self.id);
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} is still running", self.id);
        self.launch();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub mode: Mode,
    /// The Raft controllers (none in ZooKeeper mode).
    pub controllers: Vec<Node>,
    pub brokers: Vec<Node>,
    /// The ensemble, in ZooKeeper mode (dropped after the brokers).
    pub zookeeper: Option<ZkEnsemble>,
    /// The brokers' `zookeeper.connect` (with the chroot), in ZooKeeper mode.
    pub zookeeper_connect: Option<String>,
    _dir: tempfile::TempDir,
}

/// A `sluice server` node numbered `id` with data under `dir`, on `host:port`
/// (in `namespace`, if given), with `settings` after its own.
fn new_node(
    dir: &Path,
    id: i32,
    role: &'static str,
    (host, port, namespace): (String, u16, Option<String>),
    settings: impl IntoIterator<Item = String>,
) -> Node {
    let data = dir.join(format!("node-{id}"));
    let listener = if role == "controller" {
        "CONTROLLER"
    } else {
        "PLAINTEXT"
    };
    let own = [
        format!("node.id={id}"),
        format!("listeners={listener}://{host}:{port}"),
        format!("log.dirs={}", data.display()),
        "metrics.listen=".to_string(),
    ];
    // "{port}" in a setting is this node's port, so one setting can give
    // every node listeners of its own.
    let settings = own
        .into_iter()
        .chain(settings)
        .map(|s| s.replace("{port}", &port.to_string()))
        .collect();
    Node {
        id,
        role,
        host,
        port,
        namespace,
        data,
        settings,
        child: None,
        served_before: 0,
    }
}

impl Cluster {
    /// Starts `controllers` controllers (ids 1001..) and `brokers` brokers
    /// (ids 1..), with `extra` settings on every node, and waits until every
    /// broker serves.
    pub fn start(controllers: usize, brokers: usize, extra: &[&str]) -> Self {
        Self::start_on(None, controllers, brokers, extra)
    }

    /// Starts a cluster in `mode` with `coordinators` controllers (KRaft)
    /// or ZooKeeper servers (ZooKeeper mode) and `brokers` brokers, with
    /// `extra` settings on every node, and waits until every broker serves.
    pub fn start_in(mode: Mode, coordinators: usize, brokers: usize, extra: &[&str]) -> Self {
        match mode {
            Mode::KRaft => Self::start(coordinators, brokers, extra),
            Mode::ZooKeeper => Self::start_zk(coordinators, brokers, extra),
        }
    }

    /// Like [`Cluster::start`], with each node on its own host of `network`
    /// when given: controllers on hosts 0.., brokers on the hosts after them.
    pub fn start_on(
        network: Option<&Network>,
        controllers: usize,
        brokers: usize,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // (host, port, namespace) of node number `i` in start order.
        let place = |i: usize| match network {
            Some(net) => (
                net.address(i),
                if i < controllers { 9093 } else { 9092 },
                Some(net.namespace(i)),
            ),
            None => ("127.0.0.1".to_string(), free_port(), None),
        };
        let places: Vec<(String, u16, Option<String>)> =
            (0..controllers + brokers).map(place).collect();
        let voters: Vec<String> = places[..controllers]
            .iter()
            .enumerate()
            .map(|(i, (host, port, _))| format!("{}@{host}:{port}", 1001 + i))
            .collect();
        let voters = format!("controller.quorum.voters={}", voters.join(","));
        let node = |id: i32, role: &'static str, place: &(String, u16, Option<String>)| {
            let settings = [format!("process.roles={role}"), voters.clone()];
            let extra = extra.iter().map(|s| s.to_string());
            new_node(
                dir.path(),
                id,
                role,
                place.clone(),
                settings.into_iter().chain(extra),
            )
        };
        let mut cluster = Cluster {
            mode: Mode::KRaft,
            controllers: (0..controllers)
                .map(|i| node(1001 + i as i32, "controller", &places[i]))
                .collect(),
            brokers: (0..brokers)
                .map(|i| node(1 + i as i32, "broker", &places[controllers + i]))
                .collect(),
            zookeeper: None,
            zookeeper_connect: None,
            _dir: dir,
        };
        cluster.launch_all();
        cluster
    }

    /// A ZooKeeper-mode cluster: `zookeepers` real ZooKeeper servers, then
    /// `brokers` brokers (ids 1..) with `zookeeper.connect` and `extra`.
    /// A `broker.session.timeout.ms` in `extra` also sets
    /// `zookeeper.session.timeout.ms`, so a suite written with KRaft's
    /// session timeout sees the same one in ZooKeeper mode.
    pub fn start_zk(zookeepers: usize, brokers: usize, extra: &[&str]) -> Self {
        let zookeeper = ZkEnsemble::start(zookeepers);
        let connect = format!("{}{ZK_CHROOT}", zookeeper.connect_string());
        let dir = tempfile::tempdir().expect("temp dir");
        let same_session = extra.iter().filter_map(|s| {
            s.strip_prefix("broker.session.timeout.ms=")
                .map(|ms| format!("zookeeper.session.timeout.ms={ms}"))
        });
        let settings: Vec<String> = std::iter::once(format!("zookeeper.connect={connect}"))
            .chain(same_session)
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        let mut cluster = Cluster {
            mode: Mode::ZooKeeper,
            controllers: Vec::new(),
            brokers: (0..brokers)
                .map(|i| {
                    let place = ("127.0.0.1".to_string(), free_port(), None);
                    new_node(dir.path(), 1 + i as i32, "broker", place, settings.clone())
                })
                .collect(),
            zookeeper: Some(zookeeper),
            zookeeper_connect: Some(connect),
            _dir: dir,
        };
        cluster.launch_all();
        cluster
    }

    /// Starts every node (controllers first) and waits until each serves.
    fn launch_all(&mut self) {
        for n in self.controllers.iter_mut().chain(self.brokers.iter_mut()) {
            n.launch();
        }
        let extra_logs = self.zookeeper.as_ref().map(ZkEnsemble::log_tails);
        for n in self.controllers.iter_mut().chain(self.brokers.iter_mut()) {
            n.wait_serving_or(Duration::from_secs(120), extra_logs.as_deref());
        }
    }

    /// The ensemble of a ZooKeeper-mode cluster.
    pub fn zk(&mut self) -> &mut ZkEnsemble {
        self.zookeeper
            .as_mut()
            .expect("a ZooKeeper-mode cluster (Cluster::start_zk)")
    }

    pub fn bootstrap(&self) -> String {
        let addresses: Vec<String> = self.brokers.iter().map(Node::address).collect();
        addresses.join(",")
    }

    /// The node `id`, controller or broker.
    pub fn node(&mut self, id: i32) -> &mut Node {
        self.controllers
            .iter_mut()
            .chain(self.brokers.iter_mut())
            .find(|n| n.id == id)
            .expect("no such node")
    }

    pub fn broker(&mut self, id: i32) -> &mut Node {
        self.brokers
            .iter_mut()
            .find(|n| n.id == id)
            .expect("no such broker")
    }

    pub fn controller(&mut self, id: i32) -> &mut Node {
        self.controllers
            .iter_mut()
            .find(|n| n.id == id)
            .expect("no such controller")
    }

    /// kill -9 of every broker but `keep`.
    pub fn kill_brokers_except(&mut self, keep: i32) {
        for broker in self.brokers.iter_mut().filter(|b| b.id != keep) {
            broker.kill9();
        }
    }

    /// kill -9 of every node (ZooKeeper servers included), then every node
    /// started again (controllers or ZooKeeper first) and waited for until
    /// it serves.
    pub fn kill9_and_restart_all(&mut self, limit: Duration) {
        self.kill9_all();
        self.restart_all(limit);
    }

    /// kill -9 of every node, brokers first, ZooKeeper servers included.
    pub fn kill9_all(&mut self) {
        for node in self.brokers.iter_mut().chain(self.controllers.iter_mut()) {
            node.kill9();
        }
        if let Some(zk) = self.zookeeper.as_mut() {
            let ids: Vec<u32> = zk.servers().iter().map(|s| s.id).collect();
            for &id in &ids {
                zk.kill9(id);
            }
        }
    }

    /// Every node started again after [`Cluster::kill9_all`] (controllers
    /// or ZooKeeper first), and waited for until it serves.
    pub fn restart_all(&mut self, limit: Duration) {
        if let Some(zk) = self.zookeeper.as_mut() {
            let ids: Vec<u32> = zk.servers().iter().map(|s| s.id).collect();
            for &id in &ids {
                zk.restart(id);
            }
            zk.wait_ready(limit);
        }
        for node in self.controllers.iter_mut().chain(self.brokers.iter_mut()) {
            node.restart();
        }
        for node in self.controllers.iter_mut().chain(self.brokers.iter_mut()) {
            node.wait_serving(limit);
        }
    }

    /// Runs `sluice topics ...` against the brokers that are up.
    pub fn cli(&mut self, args: &[&str]) -> std::process::Output {
        let bootstrap = self
            .brokers
            .iter_mut()
            .filter_map(|b| b.is_running().then(|| b.address()))
            .next()
            .expect("no broker is running");
        Command::new(BIN)
            .arg("topics")
            .arg("--bootstrap-server")
            .arg(bootstrap)
            .args(args)
            .output()
            .expect("running sluice topics")
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.controllers
            .iter()
            .chain(self.brokers.iter())
            .map(|n| format!("===== node {} ({})\n{}", n.id, n.role, n.log()))
            .chain(self.zookeeper.as_ref().map(ZkEnsemble::log_tails))
            .collect()
    }
}

/// The metadata quorum as its leader describes it (DescribeQuorum).
pub struct QuorumView {
    pub leader: i32,
    pub epoch: i32,
    pub high_watermark: i64,
    /// (voter, log end offset)
    pub voters: Vec<(i32, i64)>,
}

/// The quorum as its leader describes it, asking each running controller in turn.
pub async fn describe_quorum(cluster: &mut Cluster) -> Option<QuorumView> {
    for node in cluster.controllers.iter_mut() {
        if !node.is_running() {
            continue;
        }
        let Ok(mut client) = KafkaClient::connect(&node.address(), "test").await else {
            continue;
        };
        let request = DescribeQuorumRequest::default().with_topics(vec![
            describe_quorum_request::TopicData::default()
                .with_topic_name(StrBytes::from_static_str("__cluster_metadata").into())
                .with_partitions(vec![describe_quorum_request::PartitionData::default()]),
        ]);
        let Ok(r) = client.send(request).await else {
            continue;
        };
        if r.error_code != 0 {
            continue;
        }
        let p = r.topics.first()?.partitions.first()?;
        return Some(QuorumView {
            leader: p.leader_id.0,
            epoch: p.leader_epoch,
            high_watermark: p.high_watermark,
            voters: p
                .current_voters
                .iter()
                .map(|v| (v.replica_id.0, v.log_end_offset))
                .collect(),
        });
    }
    None
}

/// Waits until the quorum has a leader.
pub async fn wait_for_quorum(cluster: &mut Cluster, limit: Duration) -> QuorumView {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(q) = describe_quorum(cluster).await {
            return q;
        }
        assert!(
            Instant::now() < deadline,
            "no quorum leader:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What ZooKeeper holds about a ZooKeeper-mode cluster (controller, epoch,
/// registrations with their czxid), if a quorum answers.
pub async fn zk_view(cluster: &Cluster) -> Option<ClusterView> {
    let connect = cluster.zookeeper_connect.as_deref()?;
    read_cluster(connect, Duration::from_secs(5)).await.ok()
}

/// Waits for an active controller, in either mode, and returns its id and
/// epoch: KRaft, the quorum's leader and leader epoch; ZooKeeper, the
/// broker holding `/controller` and `/controller_epoch`.
pub async fn wait_for_controller(cluster: &mut Cluster, limit: Duration) -> (i32, i32) {
    if cluster.mode == Mode::KRaft {
        let q = wait_for_quorum(cluster, limit).await;
        return (q.leader, q.epoch);
    }
    let deadline = Instant::now() + limit;
    loop {
        if let Some(view) = zk_view(cluster).await {
            if let (Some(id), Some(epoch)) = (view.controller, view.controller_epoch) {
                return (id, epoch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no broker won /controller within {limit:?}:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leader, ISR and replicas of each partition of `topic`, as a broker sees them.
/// Waits until every broker of `bootstrap` shows `topic` with `count`
/// partitions, each with a leader: in ZooKeeper mode the controller's
/// pushes reach brokers one by one, and a client that asks a broker the
/// push has not reached yet finds no such topic (kcat gives up on that).
pub fn wait_for_topic_everywhere(bootstrap: &str, topic: &str, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for broker in bootstrap.split(',') {
        loop {
            let known = partitions(broker, topic);
            if known.len() == count && known.iter().all(|&(_, leader, _)| leader >= 0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{broker} does not show {topic} with {count} led partitions: {known:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn partitions(bootstrap: &str, topic: &str) -> Vec<(i32, i32, usize)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return Vec::new();
    };
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), p.leader(), p.isr().len()))
        .collect()
}
