//! `sluice cluster up|status`: a local multi-process cluster on 127.0.0.1,
//! for trying failover by hand and for scripts.
//!
//! `up` starts each controller and broker as its own `sluice server`
//! process, with its data and log file under one directory, writes
//! `cluster.toml` there describing the nodes, prints where everything is and
//! stops every node on Ctrl-C. `status` asks the quorum and the brokers how
//! they are.
//!
//! With `--mode zk` the brokers are coordinated by a ZooKeeper ensemble
//! instead of controllers: `up` generates and starts the ensemble first
//! ([`crate::zk_ensemble`]), waits until it has a leader, then starts the
//! brokers with `zookeeper.connect`; on Ctrl-C it stops the brokers (a
//! controlled shutdown needs ZooKeeper) and then ZooKeeper. `status` shows
//! each ZooKeeper server's role and zxid, the controller broker and its
//! epoch, and each broker's registration.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use kafka_protocol::messages::{
    describe_quorum_request, DescribeClusterRequest, DescribeQuorumRequest, DescribeQuorumResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_broker::KafkaClient;

use crate::settings::parse_zookeeper_connect;
use crate::table::Table;
use crate::zk_ensemble::{srvr, ServerPorts, SpawnIgnoringInterrupts, ZkEnsemble};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start controllers (or a ZooKeeper ensemble) and brokers as separate processes;
    /// Ctrl-C (or SIGTERM) stops them all.
    Up(UpArgs),
    /// Show the metadata quorum (leader, epoch, each voter's lag) and the brokers; in
    /// ZooKeeper mode each ZooKeeper server, the controller and the brokers' registrations.
    Status {
        /// Any controller's address (host:port); read from DIR/cluster.toml when omitted.
        #[arg(long)]
        controller: Option<String>,
        /// A ZooKeeper-mode cluster's zookeeper.connect (host:port,...[/chroot]);
        /// read from DIR/cluster.toml when omitted.
        #[arg(long, conflicts_with = "controller")]
        zookeeper: Option<String>,
        /// The directory `cluster up` used.
        #[arg(long, default_value = "./sluice-cluster")]
        data_dir: PathBuf,
    },
}

/// How the brokers of a local cluster are coordinated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterMode {
    /// A Raft controller quorum (`--controllers`).
    Kraft,
    /// A ZooKeeper ensemble (`--zookeepers`), as Kafka 2.x/3.x ran.
    Zk,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// kraft: controllers run a Raft quorum; zk: a ZooKeeper ensemble coordinates the brokers.
    #[arg(long, value_enum, default_value_t = ClusterMode::Kraft)]
    mode: ClusterMode,
    /// Number of controllers (the Raft voters) in KRaft mode: 1, 3 or 5 [default: 3].
    #[arg(long)]
    controllers: Option<u16>,
    /// Number of ZooKeeper servers in ZooKeeper mode: 1, 3 or 5 [default: 3].
    #[arg(long)]
    zookeepers: Option<u16>,
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
    /// The first ZooKeeper server's client port (ZooKeeper mode); servers take
    /// the ports after it, their quorum ports start at this plus 707 (2888)
    /// and their election ports at this plus 1707 (3888).
    #[arg(long, default_value_t = 2181)]
    zk_port: u16,
    /// Serve each node's Prometheus metrics, the first broker's on this
    /// port and the others' on the ports after it, the controllers' from
    /// this plus 100 (off when omitted).
    #[arg(long)]
    metrics_port: Option<u16>,
    /// A setting for every node, key=value; repeatable.
    #[arg(long = "set", short = 'o', value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// Brokers are numbered from 1, controllers from this.
pub const FIRST_CONTROLLER_ID: u16 = 1001;

/// The chroot ZooKeeper-mode brokers keep their znodes under.
pub const ZK_CHROOT: &str = "/sluice";

/// What coordinates the brokers of a [`LocalCluster`].
#[derive(Clone, Copy, Debug)]
pub enum Coordination {
    /// `controllers` Raft voters, on the ports from the broker port plus 100.
    KRaft { controllers: u16 },
    /// `servers` ZooKeeper servers, client ports from `first_port`.
    ZooKeeper { servers: u16, first_port: u16 },
}

/// A local cluster to start.
#[derive(Clone, Debug)]
pub struct Spec {
    pub coordination: Coordination,
    pub brokers: u16,
    pub dir: PathBuf,
    /// The first broker's port.
    pub port: u16,
    /// The first broker's metrics port, if metrics are served.
    pub metrics_port: Option<u16>,
    /// Settings for every node.
    pub overrides: Vec<String>,
}

pub struct Node {
    pub id: u16,
    pub role: &'static str,
    pub address: String,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: Option<String>,
    command: Vec<String>,
    child: Option<Child>,
    /// "Serving" lines in the log before the latest start.
    served_before: usize,
}

impl Node {
    /// A `sluice server` node numbered `id` in `dir`, listening on `port`,
    /// with `settings` (key=value) on top of its own.
    fn new(
        dir: &Path,
        id: u16,
        role: &'static str,
        port: u16,
        metrics_port: Option<u16>,
        settings: impl IntoIterator<Item = String>,
    ) -> Self {
        let data = dir.join(format!("node-{id}"));
        let listener = if role == "controller" {
            "CONTROLLER"
        } else {
            "PLAINTEXT"
        };
        let metrics = metrics_port.map(|p| format!("127.0.0.1:{p}"));
        let own = [
            format!("node.id={id}"),
            format!("listeners={listener}://127.0.0.1:{port}"),
            format!("log.dirs={}", data.display()),
            format!("metrics.listen={}", metrics.as_deref().unwrap_or("")),
        ];
        let mut command = vec!["server".to_string()];
        for s in own.into_iter().chain(settings) {
            command.push("--set".into());
            command.push(s);
        }
        Node {
            id,
            role,
            address: format!("127.0.0.1:{port}"),
            log: dir.join(format!("node-{id}.log")),
            data,
            metrics,
            command,
            child: None,
            served_before: 0,
        }
    }

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
            .spawn_ignoring_interrupts()
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

    /// Asks the node to stop (SIGTERM): a broker then shuts down in a
    /// controlled way.
    fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the id of a child process we own.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Waits up to `limit` for the node to exit after [`Node::terminate`],
    /// then SIGKILLs it; an error if it had to be killed.
    fn wait_exit(&mut self, limit: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return Ok(()),
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "node {} ({}) did not exit within {} s of SIGTERM and was killed; see {}",
                        self.id,
                        self.role,
                        limit.as_secs(),
                        self.log.display()
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Controllers (or a ZooKeeper ensemble) and brokers as child processes on 127.0.0.1.
pub struct LocalCluster {
    pub nodes: Vec<Node>,
    /// The ensemble, in ZooKeeper mode.
    pub zookeeper: Option<ZkEnsemble>,
    /// The brokers' `zookeeper.connect`, in ZooKeeper mode.
    pub zookeeper_connect: Option<String>,
    pub dir: PathBuf,
    exe: PathBuf,
    /// How long a stopped node may take to exit before it is killed. A
    /// broker closes every log it holds on the way out: about 1.5 min at
    /// 100,000 partitions on a 2-core machine.
    pub exit_limit: Duration,
}

/// [`LocalCluster::exit_limit`] unless set otherwise.
const EXIT_LIMIT: Duration = Duration::from_secs(40);

impl LocalCluster {
    /// Starts the cluster `spec` describes: in ZooKeeper mode the ensemble
    /// first, waiting until it serves, then the nodes (without waiting for
    /// them; see [`LocalCluster::wait_serving`]).
    pub fn launch(spec: &Spec) -> Result<Self> {
        let brokers = spec.brokers;
        if brokers == 0 {
            bail!("a cluster needs at least one broker");
        }
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let dir = spec.dir.canonicalize()?;
        raise_descriptor_limit_for_nodes();
        let exe = std::env::current_exe().context("locating the sluice binary")?;
        let port = |offset: u16| {
            spec.port
                .checked_add(offset)
                .with_context(|| format!("port {} + {offset} is out of range", spec.port))
        };
        let metrics_port = |i: u16| -> Result<Option<u16>> {
            spec.metrics_port
                .map(|m| m.checked_add(i).context("metrics port out of range"))
                .transpose()
        };
        // Settings only the brokers get, whatever coordinates them.
        let broker_settings = [
            format!("default.replication.factor={}", brokers.min(3)),
            format!("min.insync.replicas={}", if brokers >= 3 { 2 } else { 1 }),
        ];
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            zookeeper: None,
            zookeeper_connect: None,
            dir: dir.clone(),
            exe,
            exit_limit: EXIT_LIMIT,
        };
        // How every broker reaches its coordinator.
        let coordinator_settings: Vec<String> = match spec.coordination {
            Coordination::KRaft { controllers } => {
                if controllers == 0 {
                    bail!("a KRaft cluster needs at least one controller");
                }
                let voters: Vec<String> = (0..controllers)
                    .map(|i| {
                        Ok(format!(
                            "{}@127.0.0.1:{}",
                            FIRST_CONTROLLER_ID + i,
                            port(100 + i)?
                        ))
                    })
                    .collect::<Result<_>>()?;
                let voters = format!("controller.quorum.voters={}", voters.join(","));
                for i in 0..controllers {
                    let settings = ["process.roles=controller".to_string(), voters.clone()];
                    cluster.nodes.push(Node::new(
                        &dir,
                        FIRST_CONTROLLER_ID + i,
                        "controller",
                        port(100 + i)?,
                        metrics_port(100 + i)?,
                        settings.into_iter().chain(spec.overrides.iter().cloned()),
                    ));
                }
                vec!["process.roles=broker".to_string(), voters]
            }
            Coordination::ZooKeeper {
                servers,
                first_port,
            } => {
                if servers == 0 {
                    bail!("a ZooKeeper-mode cluster needs at least one ZooKeeper server");
                }
                let zk_port = |offset: u16| {
                    first_port.checked_add(offset).with_context(|| {
                        format!("ZooKeeper port {first_port} + {offset} is out of range")
                    })
                };
                let ports: Vec<ServerPorts> = (0..servers)
                    .map(|i| {
                        Ok(ServerPorts {
                            client: zk_port(i)?,
                            quorum: zk_port(707 + i)?,
                            election: zk_port(1707 + i)?,
                        })
                    })
                    .collect::<Result<_>>()?;
                // ZooKeeper's own time unit, as its sample configuration has it.
                let mut ensemble = ZkEnsemble::configure(&dir, &ports, Duration::from_secs(2))?;
                ensemble.start()?;
                ensemble.wait_ready(Duration::from_secs(120))?;
                let connect = format!("{}{ZK_CHROOT}", ensemble.connect_string());
                cluster.zookeeper = Some(ensemble);
                cluster.zookeeper_connect = Some(connect.clone());
                vec![format!("zookeeper.connect={connect}")]
            }
        };
        for i in 0..brokers {
            let settings = coordinator_settings
                .iter()
                .chain(&broker_settings)
                .chain(&spec.overrides)
                .cloned()
                .collect::<Vec<_>>();
            cluster.nodes.push(Node::new(
                &dir,
                1 + i,
                "broker",
                port(i)?,
                metrics_port(i)?,
                settings,
            ));
        }
        for i in 0..cluster.nodes.len() {
            let exe = cluster.exe.clone();
            // (On error, dropping the cluster stops what started.)
            cluster.nodes[i].launch(&exe)?;
        }
        cluster.write_layout()?;
        Ok(cluster)
    }

    /// `cluster.toml`: what `cluster status` reads.
    fn write_layout(&self) -> Result<()> {
        let quoted = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let mut text = String::new();
        match &self.zookeeper_connect {
            Some(connect) => text.push_str(&format!(
                "mode = \"zk\"\nzookeeper_connect = \"{connect}\"\n\n"
            )),
            None => text.push_str("mode = \"kraft\"\n\n"),
        }
        for s in self.zookeeper.iter().flat_map(|z| &z.servers) {
            text.push_str(&format!(
                "[[node]]\nid = {}\nrole = \"zookeeper\"\naddress = \"{}\"\npid = {}\n\
                 config = {}\ndata = {}\nlog = {}\n\n",
                s.id,
                s.client_address(),
                s.pid().unwrap_or(0),
                quoted(&s.config_path()),
                quoted(&s.data_dir()),
                quoted(&s.log),
            ));
        }
        for n in &self.nodes {
            text.push_str(&format!(
                "[[node]]\nid = {}\nrole = \"{}\"\naddress = \"{}\"\npid = {}\ndata = {}\nlog = {}\n",
                n.id,
                n.role,
                n.address,
                n.pid().unwrap_or(0),
                quoted(&n.data),
                quoted(&n.log),
            ));
            if let Some(metrics) = &n.metrics {
                text.push_str(&format!("metrics = \"{metrics}\"\n"));
            }
            text.push('\n');
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

    /// SIGTERM to node `id` (a broker shuts down in a controlled way),
    /// without waiting: see [`Self::wait_node_exit`].
    pub fn terminate_node(&mut self, id: u16) -> Result<()> {
        self.node_mut(id)?.terminate();
        Ok(())
    }

    /// Waits up to [`Self::exit_limit`] for node `id` to exit, then kills
    /// it; an error if it had to be killed.
    pub fn wait_node_exit(&mut self, id: u16) -> Result<()> {
        let limit = self.exit_limit;
        self.node_mut(id)?.wait_exit(limit)
    }

    /// Stops node `id` in its tracks (SIGSTOP) until [`LocalCluster::resume`].
    pub fn pause(&mut self, id: u16) -> Result<()> {
        self.node_mut(id)?.signal(libc::SIGSTOP);
        Ok(())
    }

    pub fn resume(&mut self, id: u16) -> Result<()> {
        self.node_mut(id)?.signal(libc::SIGCONT);
        Ok(())
    }

    /// Starts a cluster stopped with [`LocalCluster::stop_all`] again from
    /// its data: the ZooKeeper ensemble first (waiting until it serves),
    /// then every node, each with `extra` settings on top of its own.
    pub fn relaunch(&mut self, extra: &[String]) -> Result<()> {
        if let Some(ensemble) = self.zookeeper.as_mut() {
            ensemble.start()?;
            ensemble.wait_ready(Duration::from_secs(120))?;
        }
        let exe = self.exe.clone();
        for node in &mut self.nodes {
            for setting in extra {
                node.command.push("--set".into());
                node.command.push(setting.clone());
            }
            node.launch(&exe)?;
        }
        self.write_layout()
    }

    /// Stops every node with SIGTERM: the brokers first, waiting for their
    /// controlled shutdown while the controllers (or ZooKeeper) are still
    /// there, then the controllers, then the ZooKeeper ensemble.
    pub fn stop_all(&mut self) {
        for role in ["broker", "controller"] {
            for n in self.nodes.iter().filter(|n| n.role == role) {
                n.terminate();
            }
            for n in self.nodes.iter_mut().filter(|n| n.role == role) {
                if let Err(e) = n.wait_exit(self.exit_limit) {
                    eprintln!("{e}");
                }
            }
        }
        if let Some(ensemble) = self.zookeeper.as_mut() {
            ensemble.stop();
        }
    }

    /// Reports nodes (and ZooKeeper servers) that exited on their own.
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
        for s in self.zookeeper.iter_mut().flat_map(|z| z.servers.iter_mut()) {
            if let Some(status) = s.exited() {
                eprintln!(
                    "ZooKeeper server {} exited: {status}; see {}",
                    s.id,
                    s.log.display()
                );
                s.kill9();
            }
        }
    }
}

/// The nodes a local cluster starts inherit this process's open-file
/// limit, and a partition holds a descriptor per segment (three while its
/// indexes are being written): tens of thousands of partitions on a broker
/// are past common hard limits. Where it may (as root), this process raises both limits to
/// the kernel's ceiling (`fs.nr_open`), as a service manager's LimitNOFILE
/// would for a production broker; elsewhere the nodes raise their soft
/// limit to the hard one themselves. Returns the hard limit the nodes get.
pub fn raise_descriptor_limit_for_nodes() -> u64 {
    let ceiling: libc::rlim_t = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_max >= ceiling {
            return limit.rlim_max;
        }
        let raised = libc::rlimit {
            rlim_cur: ceiling,
            rlim_max: ceiling,
        };
        // Refused without the privilege (CAP_SYS_RESOURCE): the nodes make
        // do with the hard limit.
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            ceiling
        } else {
            limit.rlim_max
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
            zookeeper,
            data_dir,
        } => status(controller, zookeeper, &data_dir).await,
    }
}

async fn up(args: UpArgs) -> Result<()> {
    let coordination = match args.mode {
        ClusterMode::Kraft => {
            if args.zookeepers.is_some() {
                bail!("--zookeepers is for --mode zk; KRaft mode has --controllers");
            }
            Coordination::KRaft {
                controllers: args.controllers.unwrap_or(3),
            }
        }
        ClusterMode::Zk => {
            if args.controllers.is_some() {
                bail!(
                    "--controllers is for KRaft mode: in ZooKeeper mode a broker is the \
                     controller; size the ensemble with --zookeepers"
                );
            }
            Coordination::ZooKeeper {
                servers: args.zookeepers.unwrap_or(3),
                first_port: args.zk_port,
            }
        }
    };
    let spec = Spec {
        coordination,
        brokers: args.brokers,
        dir: args.data_dir.clone(),
        port: args.port,
        metrics_port: args.metrics_port,
        overrides: args.overrides.clone(),
    };
    // Starting ZooKeeper waits on it in this thread.
    let mut cluster = tokio::task::block_in_place(|| LocalCluster::launch(&spec))?;
    // As long as a broker itself waits to join: a restart over 100,000
    // partitions on disk takes minutes.
    cluster.wait_serving(Duration::from_secs(600)).await?;
    let with_metrics = cluster.nodes.iter().any(|n| n.metrics.is_some());
    let mut header = vec!["ROLE", "NODE", "ADDRESS", "DATA", "LOG"];
    if with_metrics {
        header.push("METRICS");
    }
    let mut table = Table::new(&header);
    for s in cluster.zookeeper.iter().flat_map(|z| &z.servers) {
        table.row(vec![
            "zookeeper".to_string(),
            s.id.to_string(),
            s.client_address(),
            s.data_dir().display().to_string(),
            s.log.display().to_string(),
        ]);
    }
    for n in &cluster.nodes {
        let mut row = vec![
            n.role.to_string(),
            n.id.to_string(),
            n.address.clone(),
            n.data.display().to_string(),
            n.log.display().to_string(),
        ];
        if with_metrics {
            row.push(n.metrics.clone().unwrap_or_default());
        }
        table.row(row);
    }
    print!("{}", table.render());
    if let Some(connect) = &cluster.zookeeper_connect {
        println!("\nzookeeper.connect: {connect}");
    }
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
    tokio::task::block_in_place(|| cluster.stop_all());
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

/// What `dir/cluster.toml` says about a running cluster.
struct Layout {
    /// `zookeeper.connect` of a ZooKeeper-mode cluster.
    zookeeper_connect: Option<String>,
    /// (id, role, address) of every node, ZooKeeper servers included.
    nodes: Vec<(i64, String, String)>,
}

impl Layout {
    fn addresses(&self, role: &str) -> Vec<(i64, String)> {
        self.nodes
            .iter()
            .filter(|(_, r, _)| r == role)
            .map(|(id, _, a)| (*id, a.clone()))
            .collect()
    }
}

fn read_layout(dir: &Path) -> Result<Layout> {
    let path = dir.join("cluster.toml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (start the cluster with `sluice cluster up`)",
            path.display()
        )
    })?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
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
    let zookeeper_connect = match table.get("mode").and_then(|m| m.as_str()) {
        Some("zk") => Some(
            table
                .get("zookeeper_connect")
                .and_then(|c| c.as_str())
                .with_context(|| {
                    format!(
                        "{} has mode = \"zk\" but no zookeeper_connect",
                        path.display()
                    )
                })?
                .to_string(),
        ),
        _ => None,
    };
    Ok(Layout {
        zookeeper_connect,
        nodes,
    })
}

async fn status(controller: Option<String>, zookeeper: Option<String>, dir: &Path) -> Result<()> {
    if let Some(connect) = zookeeper {
        return zk_status(&connect, None).await;
    }
    let layout = if controller.is_none() {
        read_layout(dir)?
    } else {
        Layout {
            zookeeper_connect: None,
            nodes: Vec::new(),
        }
    };
    if let Some(connect) = layout.zookeeper_connect.clone() {
        return zk_status(&connect, Some(&layout)).await;
    }
    let controllers: Vec<String> = match controller {
        Some(c) => vec![c],
        None => layout
            .addresses("controller")
            .into_iter()
            .map(|(_, a)| a)
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

    for (_, address) in layout.addresses("broker") {
        let Ok(mut client) = KafkaClient::connect(&address, "sluice-cli").await else {
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

/// ZooKeeper mode: each server's role and zxid (`srvr`), the controller
/// broker and epoch, and each broker's registration (its czxid is the
/// broker epoch). `layout` adds the ZooKeeper servers' ids and the brokers
/// that should be registered.
async fn zk_status(connect: &str, layout: Option<&Layout>) -> Result<()> {
    let (servers, _) = parse_zookeeper_connect(connect)?;
    let servers: Vec<(i64, String)> = match layout {
        Some(l) if !l.addresses("zookeeper").is_empty() => l.addresses("zookeeper"),
        _ => servers
            .iter()
            .enumerate()
            .map(|(i, (host, port))| (i as i64 + 1, format!("{host}:{port}")))
            .collect(),
    };
    println!("ZooKeeper ensemble ({connect}):");
    let mut table = Table::new(&["SERVER", "ADDRESS", "MODE", "ZXID"]);
    for (id, address) in &servers {
        let probe = address.clone();
        let answer =
            tokio::task::spawn_blocking(move || srvr(&probe, Duration::from_secs(2))).await?;
        let (mode, zxid) = match answer {
            Ok(s) => (s.mode, format!("{:#x}", s.zxid)),
            Err(e) => (format!("down ({})", e.root_cause()), "-".to_string()),
        };
        table.row(vec![id.to_string(), address.clone(), mode, zxid]);
    }
    print!("{}", table.render());

    let view = sluice_zk::inspect::read_cluster(connect, Duration::from_secs(10))
        .await
        .context("no ZooKeeper quorum answered (is a majority of the ensemble up?)")?;
    println!(
        "\nCluster id: {}",
        view.cluster_id.as_deref().unwrap_or("(none yet)")
    );
    match (view.controller, view.controller_epoch) {
        (Some(id), Some(epoch)) => println!("Controller: broker {id}, controller epoch {epoch}"),
        (Some(id), None) => println!("Controller: broker {id}, no controller epoch yet"),
        (None, epoch) => println!(
            "Controller: none (no broker holds /controller){}",
            epoch.map_or(String::new(), |e| format!(", last controller epoch {e}"))
        ),
    }
    println!("\nRegistered brokers (/brokers/ids):");
    let mut table = Table::new(&["BROKER", "EPOCH (CZXID)", "ENDPOINTS"]);
    for b in &view.brokers {
        table.row(vec![
            b.broker_id.to_string(),
            format!("{} ({:#x})", b.epoch, b.epoch),
            match &b.problem {
                Some(problem) => format!("unreadable: {problem}"),
                None => b.endpoints.join(","),
            },
        ]);
    }
    for (id, address) in layout.map(|l| l.addresses("broker")).unwrap_or_default() {
        if !view.brokers.iter().any(|b| i64::from(b.broker_id) == id) {
            table.row(vec![
                id.to_string(),
                "-".to_string(),
                format!("not registered ({address} in cluster.toml)"),
            ]);
        }
    }
    print!("{}", table.render());
    for problem in &view.problems {
        println!("warning: {problem}");
    }
    Ok(())
}

fn lag(high_watermark: i64, end: i64) -> String {
    if end < 0 {
        "unknown".into()
    } else {
        (high_watermark - end).max(0).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zk_ensemble::{parse_srvr, ServerStatus};

    /// A cluster of one "broker" that runs `script` under /bin/sh.
    fn cluster_running(dir: &Path, script: &str) -> LocalCluster {
        let mut node = Node::new(dir, 1, "broker", 0, None, Vec::new());
        node.command = vec!["-c".into(), script.into()];
        node.launch(Path::new("/bin/sh")).unwrap();
        LocalCluster {
            nodes: vec![node],
            zookeeper: None,
            zookeeper_connect: None,
            dir: dir.to_path_buf(),
            exe: PathBuf::from("/bin/sh"),
            exit_limit: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_node_killed_after_the_exit_limit_is_an_error_not_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut exits = cluster_running(dir.path(), "exec sleep 30");
        exits.terminate_node(1).unwrap();
        exits
            .wait_node_exit(1)
            .expect("SIGTERM ends it within the limit");

        // A node still closing its logs when the limit passes is killed,
        // and a caller timing the stop must not take that for an exit.
        let mut lingers = cluster_running(dir.path(), "trap '' TERM; echo ignoring; sleep 30");
        let log = lingers.nodes[0].log.clone();
        let ready_by = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ignoring")) {
            assert!(Instant::now() < ready_by, "the script did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        lingers.terminate_node(1).unwrap();
        let err = lingers.wait_node_exit(1).expect_err("killed at the limit");
        assert!(err.to_string().contains("was killed"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn srvr_answers() {
        let text = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\n\
                    Zxid: 0x100000004\nMode: follower\nNode count: 5\n";
        assert_eq!(
            parse_srvr(text).unwrap(),
            ServerStatus {
                mode: "follower".into(),
                zxid: 0x1_0000_0004
            }
        );
        let not_serving = "This ZooKeeper instance is not currently serving requests\n";
        assert!(parse_srvr(not_serving).is_err());
        assert!(parse_srvr("Mode: leader\nZxid: nope\n").is_err());
    }
}
