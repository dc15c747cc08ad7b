//! The `sluice` command: run a node, administer topics and consumer groups,
//! measure throughput.

mod alloc_guard;
mod bench;
mod client;
mod cluster;
mod commit_bench;
mod compare;
mod failover;
mod groups;
mod health;
mod reload_bench;
mod server;
mod settings;
mod table;
mod topics;
// Shared with the tests' harness (tests/common/zk.rs), which uses more of it.
#[allow(dead_code)]
mod zk_ensemble;
mod zk_server;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "A Kafka-compatible broker cluster with built-in Raft coordination"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node. With no options: a single-node cluster on 127.0.0.1:9092, data in ./sluice-data.
    Server {
        /// A TOML file of settings (Kafka names, e.g. `log.dirs = "/var/lib/sluice"`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override one setting, key=value; repeatable. SLUICE_* environment variables also work
        /// (SLUICE_LOG_DIRS for log.dirs).
        #[arg(long = "set", short = 'o', value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Exit 0 when the node these settings describe is ready (a broker: registered, unfenced
    /// and caught up; a controller: in a quorum with a leader, caught up), 1 with the reason
    /// otherwise. Reads the same settings as `server`: a container health check.
    Health {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long = "set", short = 'o', value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// How long to wait for the node's answers, in milliseconds.
        #[arg(long, default_value_t = 4000)]
        timeout_ms: u64,
    },
    /// Create, list, describe, alter and delete topics on any Kafka-compatible cluster.
    Topics {
        #[arg(
            long,
            short = 'b',
            default_value = "127.0.0.1:9092",
            env = "SLUICE_BOOTSTRAP_SERVER"
        )]
        bootstrap_server: String,
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// List, describe and delete consumer groups, and reset their committed offsets.
    Groups {
        #[arg(
            long,
            short = 'b',
            default_value = "127.0.0.1:9092",
            env = "SLUICE_BOOTSTRAP_SERVER",
            global = true
        )]
        bootstrap_server: String,
        #[command(subcommand)]
        command: groups::GroupsCommand,
    },
    /// Run a local multi-process cluster (controllers or a ZooKeeper ensemble, and brokers)
    /// and show its state.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Measure produce/consume throughput and latency with librdkafka against a running cluster.
    Bench(bench::BenchArgs),
    /// ZooKeeper mode against KRaft mode: start-up, topic creation,
    /// controller failover, broker failure, controlled shutdown and offset
    /// commits, measured side by side at each partition count; writes a
    /// report folder (HTML with charts, JSON, CSV).
    Compare(compare::CompareArgs),
}

#[global_allocator]
static ALLOCATOR: alloc_guard::LazyLargeAlloc = alloc_guard::LazyLargeAlloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    // A server logs its ZooKeeper sessions; a command that only looks
    // (`cluster status`) keeps its output to the answer.
    let default_filter = match cli.command {
        Command::Server { .. } => "info",
        _ => "info,zookeeper_client=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server { config, overrides } => {
                let settings =
                    settings::Settings::load(config.as_deref(), std::env::vars(), &overrides)?;
                // Refuses zookeeper.connect beside KRaft-only settings before anything starts.
                settings.mode()?;
                server::run(settings).await
            }
            Command::Health {
                config,
                overrides,
                timeout_ms,
            } => {
                let settings =
                    settings::Settings::load(config.as_deref(), std::env::vars(), &overrides)?;
                health::run(settings, std::time::Duration::from_millis(timeout_ms)).await
            }
            Command::Topics {
                bootstrap_server,
                command,
            } => topics::run(&bootstrap_server, command).await,
            Command::Groups {
                bootstrap_server,
                command,
            } => groups::run(&bootstrap_server, command).await,
            Command::Cluster { command } => cluster::run(command).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Compare(args) => compare::run(args).await,
        }
    })
}
