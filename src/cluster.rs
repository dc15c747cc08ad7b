//! `sluice cluster up|status`: a local multi-process cluster on 127.0.0.1,
//! for trying failover by hand and for scripts.
//!
//! `up` starts each controller and broker as its own `sluice server`
//! process, with its data and log file under one directory, writes
//! `cluster.toml` there describing the nodes, prints where everything is and
//! stops every node on Ctrl-C. `status` asks the quorum and the brokers how
//! they are.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kafka_protocol::messages::{
    describe_quorum_request, DescribeClusterRequest, DescribeQuorumRequest, DescribeQuorumResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_broker::KafkaClient;

use crate::table::Table;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start controllers and brokers as separate processes; Ctrl-C (or SIGTERM) stops them all.
    Up(UpArgs),
    /// Show the metadata quorum (leader, epoch, each voter's lag) and the brokers.
    Status {
        /// Any controller's address (host:port); read from DIR/cluster.toml when omitted.
        #[arg(long)]
        controller: Option<String>,
        /// The directory `cluster up` used.
        #[arg(long, default_value = "./sluice-cluster")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of controllers (the Raft voters): 1, 3 or 5.
    #[arg(long, default_value_t = 3)]
    controllers: u16,
    /// Number of brokers.
    #[arg(long, default_value_t = 3)]
    brokers: u16,
    /// Where each node keeps its data (node-<id>/) and log (node-<id>.log).
    #[arg(long, default_value = "./sluice-cluster")]
    data_dir: PathBuf,
    /// The first broker's Kafka port; brokers take the ports after it, and
    /// controllers the ports from this plus 100.
    #[arg(long, default_value_t = 9092)]
    port: u16,
    /// A setting for every node, key=value; repeatable.
    #[arg(long = "set", short = 'o', value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// Brokers are numbered from 1, controllers from this.
pub const FIRST_CONTROLLER_ID: u16 = 1001;

pub struct Node {
    pub id: u16,
    pub role: &'static str,
    pub address: String,
    pub data: PathBuf,
    pub log: PathBuf,
    command: Vec<String>,
    child: Option<Child>,
    /// "Serving" lines in the log before the latest start.
    served_before: usize,
}

impl Node {
    fn marker(&self) -> &'static str {
        if self.role == "broker" {
            "Sluice is serving Kafka"
        } else {
            "serving the metadata quorum"
        }
    }

    fn launch(&mut self, exe: &Path) -> Result<()> {
        self.served_before = std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(self.marker())
            .count();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(exe)
            .args(&self.command)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting node {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_serving(&self) -> bool {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(self.marker())
            .count()
            > self.served_before
    }
}

/// Controllers and brokers as child processes on 127.0.0.1.
pub struct LocalCluster {
    pub nodes: Vec<Node>,
    pub dir: PathBuf,
    exe: PathBuf,
}

impl LocalCluster {
    /// Starts the nodes (without waiting for them; see [`LocalCluster::wait_serving`]).
    pub fn start(
        controllers: u16,
        brokers: u16,
        dir: &Path,
        port: u16,
        overrides: &[String],
    ) -> Result<Self> {
        if controllers == 0 || brokers == 0 {
            bail!("a cluster needs at least one controller and one broker");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let controller_port = |i: u16| port + 100 + i;
        let voters: Vec<String> = (0..controllers)
            .map(|i| {
                format!(
                    "{}@127.0.0.1:{}",
                    FIRST_CONTROLLER_ID + i,
                    controller_port(i)
                )
            })
            .collect();
        let voters = voters.join(",");
        let exe = std::env::current_exe().context("locating the sluice binary")?;
        let plan = (0..controllers)
            .map(|i| (FIRST_CONTROLLER_ID + i, "controller", controller_port(i)))
            .chain((0..brokers).map(|i| (1 + i, "broker", port + i)));
        let mut nodes = Vec::new();
        for (id, role, node_port) in plan {
            let data = dir.join(format!("node-{id}"));
            let listener = if role == "controller" {
                "CONTROLLER"
            } else {
                "PLAINTEXT"
            };
            let mut settings = vec![
                format!("node.id={id}"),
                format!("process.roles={role}"),
                format!("controller.quorum.voters={voters}"),
                format!("listeners={listener}://127.0.0.1:{node_port}"),
                format!("log.dirs={}", data.display()),
                "metrics.listen=".to_string(),
            ];
            if role == "broker" {
                settings.push(format!("default.replication.factor={}", brokers.min(3)));
                settings.push(format!(
                    "min.insync.replicas={}",
                    if brokers >= 3 { 2 } else { 1 }
                ));
            }
            settings.extend(overrides.iter().cloned());
            let mut command = vec!["server".to_string()];
            for s in settings {
                command.push("--set".into());
                command.push(s);
            }
            nodes.push(Node {
                id,
                role,
                address: format!("127.0.0.1:{node_port}"),
                log: dir.join(format!("node-{id}.log")),
                data,
                command,
                child: None,
                served_before: 0,
            });
        }
        let mut cluster = LocalCluster { nodes, dir, exe };
        for i in 0..cluster.nodes.len() {
            let exe = cluster.exe.clone();
            if let Err(e) = cluster.nodes[i].launch(&exe) {
                cluster.stop_all();
                return Err(e);
            }
        }
        cluster.write_layout()?;
        Ok(cluster)
    }

    /// `cluster.toml`: what `cluster status` reads.
    fn write_layout(&self) -> Result<()> {
        let mut text = String::new();
        for n in &self.nodes {
            text.push_str(&format!(
                "[[node]]\nid = {}\nrole = \"{}\"\naddress = \"{}\"\npid = {}\n",
                n.id,
                n.role,
                n.address,
                n.pid().unwrap_or(0)
            ));
        }
        std::fs::write(self.dir.join("cluster.toml"), text)?;
        Ok(())
    }

    pub fn bootstrap(&self) -> String {
        let brokers: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.role == "broker")
            .map(|n| n.address.as_str())
            .collect();
        brokers.join(",")
    }

    pub fn controller_addresses(&self) -> Vec<(u16, String)> {
        self.nodes
            .iter()
            .filter(|n| n.role == "controller")
            .map(|n| (n.id, n.address.clone()))
            .collect()
    }

    fn node_mut(&mut self, id: u16) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    /// Waits until node `id` prints that it serves.
    pub async fn wait_serving_node(&mut self, id: u16, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let node = self.node_mut(id)?;
        while !node.is_serving() {
            if let Some(Ok(Some(status))) = node.child.as_mut().map(Child::try_wait) {
                bail!(
                    "node {} exited ({status}); see {}",
                    node.id,
                    node.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not start within {limit:?}; see {}",
                    node.id,
                    node.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub async fn wait_serving(&mut self, limit: Duration) -> Result<()> {
        let ids: Vec<u16> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.wait_serving_node(id, limit).await?;
        }
        Ok(())
    }

    /// kill -9 of one node.
    pub fn kill9(&mut self, id: u16) -> Result<()> {
        let node = self.node_mut(id)?;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts a stopped node again on its data directory and port.
    pub fn restart(&mut self, id: u16) -> Result<()> {
        let exe = self.exe.clone();
        self.node_mut(id)?.launch(&exe)?;
        self.write_layout()
    }

    /// SIGTERM to every node (brokers first, so they shut down in a
    /// controlled way while the quorum is still there), then waits.
    pub fn stop_all(&mut self) {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|&i| self.nodes[i].role != "broker");
        for &i in &order {
            if let Some(pid) = self.nodes[i].pid() {
                // SAFETY: kill(2) on the id of a child process we own.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        for &i in &order {
            let Some(mut child) = self.nodes[i].child.take() else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    /// Reports nodes that exited on their own.
    fn report_exits(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(Ok(Some(status))) = n.child.as_mut().map(Child::try_wait) {
                eprintln!(
                    "node {} ({}) exited: {status}; see {}",
                    n.id,
                    n.role,
                    n.log.display()
                );
                n.child = None;
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

pub async fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Up(args) => up(args).await,
        ClusterCommand::Status {
            controller,
            data_dir,
        } => status(controller, &data_dir).await,
    }
}

async fn up(args: UpArgs) -> Result<()> {
    let mut cluster = LocalCluster::start(
        args.controllers,
        args.brokers,
        &args.data_dir,
        args.port,
        &args.overrides,
    )?;
    cluster.wait_serving(Duration::from_secs(120)).await?;
    let mut table = Table::new(&["ROLE", "NODE", "ADDRESS", "DATA", "LOG"]);
    for n in &cluster.nodes {
        table.row(vec![
            n.role.to_string(),
            n.id.to_string(),
            n.address.clone(),
            n.data.display().to_string(),
            n.log.display().to_string(),
        ]);
    }
    print!("{}", table.render());
    println!(
        "\nThe cluster is up. Bootstrap servers: {}",
        cluster.bootstrap()
    );
    println!("Press Ctrl-C to stop every node.");
    loop {
        tokio::select! {
            _ = crate::server::wait_for_signal() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => cluster.report_exits(),
        }
    }
    cluster.stop_all();
    println!("Stopped.");
    Ok(())
}

/// The quorum as its leader describes it, asking each controller in turn.
pub async fn describe_quorum(controllers: &[String]) -> Option<DescribeQuorumResponse> {
    for address in controllers {
        let Ok(mut client) = KafkaClient::connect(address, "sluice-cli").await else {
            continue;
        };
        let request = DescribeQuorumRequest::default().with_topics(vec![
            describe_quorum_request::TopicData::default()
                .with_topic_name(StrBytes::from_static_str("__cluster_metadata").into())
                .with_partitions(vec![describe_quorum_request::PartitionData::default()]),
        ]);
        if let Ok(r) = client.send(request).await {
            if r.error_code == 0 {
                return Some(r);
            }
        }
    }
    None
}

/// The controllers and brokers listed in `dir/cluster.toml`.
fn read_layout(dir: &Path) -> Result<Vec<(i64, String, String)>> {
    let path = dir.join("cluster.toml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (start the cluster with `sluice cluster up`)",
            path.display()
        )
    })?;
    let table: toml::Table = text.parse()?;
    let nodes = table
        .get("node")
        .and_then(|n| n.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|n| {
                    Some((
                        n.get("id")?.as_integer()?,
                        n.get("role")?.as_str()?.to_string(),
                        n.get("address")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(nodes)
}

async fn status(controller: Option<String>, dir: &Path) -> Result<()> {
    let layout = if controller.is_none() {
        read_layout(dir)?
    } else {
        Vec::new()
    };
    let controllers: Vec<String> = match controller {
        Some(c) => vec![c],
        None => layout
            .iter()
            .filter(|(_, role, _)| role == "controller")
            .map(|(_, _, a)| a.clone())
            .collect(),
    };
    let Some(quorum) = describe_quorum(&controllers).await else {
        bail!("no controller answered with the quorum's state (is a majority up?)");
    };
    let Some(p) = quorum.topics.first().and_then(|t| t.partitions.first()) else {
        bail!("the controller's answer names no metadata partition");
    };
    println!(
        "Metadata quorum: leader {}, epoch {}, high watermark {}",
        p.leader_id.0, p.leader_epoch, p.high_watermark
    );
    let mut table = Table::new(&["NODE", "ROLE", "LOG END", "LAG"]);
    for v in &p.current_voters {
        let role = if v.replica_id == p.leader_id {
            "leader"
        } else {
            "voter"
        };
        table.row(vec![
            v.replica_id.0.to_string(),
            role.to_string(),
            v.log_end_offset.to_string(),
            lag(p.high_watermark, v.log_end_offset),
        ]);
    }
    for o in &p.observers {
        table.row(vec![
            o.replica_id.0.to_string(),
            "observer (broker)".to_string(),
            o.log_end_offset.to_string(),
            lag(p.high_watermark, o.log_end_offset),
        ]);
    }
    print!("{}", table.render());

    let brokers: Vec<&String> = layout
        .iter()
        .filter(|(_, role, _)| role == "broker")
        .map(|(_, _, a)| a)
        .collect();
    for address in brokers {
        let Ok(mut client) = KafkaClient::connect(address, "sluice-cli").await else {
            continue;
        };
        if let Ok(r) = client.send(DescribeClusterRequest::default()).await {
            // (DescribeCluster's controller id is a broker that forwards
            // to the quorum; the quorum's leader is printed above.)
            println!("\nUnfenced brokers (cluster {}):", r.cluster_id);
            let mut table = Table::new(&["BROKER", "ADDRESS"]);
            for b in &r.brokers {
                table.row(vec![
                    b.broker_id.0.to_string(),
                    format!("{}:{}", b.host, b.port),
                ]);
            }
            print!("{}", table.render());
            return Ok(());
        }
    }
    println!("\nNo broker answered.");
    Ok(())
}

fn lag(high_watermark: i64, end: i64) -> String {
    if end < 0 {
        "unknown".into()
    } else {
        (high_watermark - end).max(0).to_string()
    }
}
