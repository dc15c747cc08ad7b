//! A multi-process cluster for tests: controllers and brokers as separate
//! `sluice server` processes on 127.0.0.1, each killable and restartable on
//! its own data directory and port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{describe_quorum_request, DescribeQuorumRequest};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_broker::KafkaClient;

use super::netns::Network;
use super::{free_port, BIN};

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
        let deadline = Instant::now() + limit;
        let marker = self.marker();
        loop {
            // The log is appended to across restarts: wait for a new line.
            if self.log().matches(marker).count() > self.served_before {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("node {} exited ({status}):\n{}", self.id, self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not serve within {limit:?}:\n{}",
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
    pub controllers: Vec<Node>,
    pub brokers: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `controllers` controllers (ids 1001..) and `brokers` brokers
    /// (ids 1..), with `extra` settings on every node, and waits until every
    /// broker serves.
    pub fn start(controllers: usize, brokers: usize, extra: &[&str]) -> Self {
        Self::start_on(None, controllers, brokers, extra)
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
        let voters = voters.join(",");
        let node = |id: i32, role: &'static str, place: &(String, u16, Option<String>)| {
            let (host, port, namespace) = place.clone();
            let data = dir.path().join(format!("node-{id}"));
            let listener = if role == "controller" {
                "CONTROLLER"
            } else {
                "PLAINTEXT"
            };
            let mut settings = vec![
                format!("node.id={id}"),
                format!("process.roles={role}"),
                format!("controller.quorum.voters={voters}"),
                format!("listeners={listener}://{host}:{port}"),
                format!("log.dirs={}", data.display()),
                "metrics.listen=".to_string(),
            ];
            settings.extend(extra.iter().map(|s| s.to_string()));
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
        };
        let mut cluster = Cluster {
            controllers: (0..controllers)
                .map(|i| node(1001 + i as i32, "controller", &places[i]))
                .collect(),
            brokers: (0..brokers)
                .map(|i| node(1 + i as i32, "broker", &places[controllers + i]))
                .collect(),
            _dir: dir,
        };
        for n in cluster
            .controllers
            .iter_mut()
            .chain(cluster.brokers.iter_mut())
        {
            n.launch();
        }
        for n in cluster
            .controllers
            .iter_mut()
            .chain(cluster.brokers.iter_mut())
        {
            n.wait_serving(Duration::from_secs(120));
        }
        cluster
    }

    pub fn bootstrap(&self) -> String {
        let addresses: Vec<String> = self.brokers.iter().map(Node::address).collect();
        addresses.join(",")
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

    /// kill -9 of every node, then every node started again (controllers
    /// first) and waited for until it serves.
    pub fn kill9_and_restart_all(&mut self, limit: Duration) {
        for node in self.brokers.iter_mut().chain(self.controllers.iter_mut()) {
            node.kill9();
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

/// The leader, ISR and replicas of each partition of `topic`, as a broker sees them.
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
