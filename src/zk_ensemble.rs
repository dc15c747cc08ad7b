//! A local Apache ZooKeeper ensemble on 127.0.0.1: each server's dataDir,
//! `myid` and `zoo.cfg` generated, each server its own `java` process with
//! its own log file.
//!
//! `sluice cluster up --mode zk` runs its ensemble with this, and the
//! integration tests include this same file (tests/common/zk.rs), so both
//! start ZooKeeper one way. It therefore uses only std, anyhow and libc.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Debian's `zookeeper` package (3.8): the server's jar and one logging
/// binding. (`/usr/share/java/*` would put every slf4j binding on the class
/// path, and slf4j then picks the no-op one: no log at all.)
pub const DEBIAN_CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:\
/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar";

/// The server's main class, for a quorum (and for a single server too).
const MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";

/// The class path: `SLUICE_ZOOKEEPER_CLASSPATH` for a ZooKeeper installed
/// elsewhere, else Debian's.
pub fn classpath() -> String {
    std::env::var("SLUICE_ZOOKEEPER_CLASSPATH").unwrap_or_else(|_| DEBIAN_CLASSPATH.to_string())
}

/// The ports one server listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerPorts {
    /// Clients (brokers) connect here.
    pub client: u16,
    /// Followers connect to the leader here.
    pub quorum: u16,
    /// Leader election.
    pub election: u16,
}

/// What `srvr` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// leader, follower, observer or standalone.
    pub mode: String,
    /// The last transaction id the server has seen.
    pub zxid: i64,
}

/// One ZooKeeper server: its files, ports and (when running) process.
pub struct ZkServer {
    /// `myid`.
    pub id: u32,
    pub ports: ServerPorts,
    /// Holds `zoo.cfg` and `data/` (the dataDir, with `myid`).
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl ZkServer {
    pub fn client_address(&self) -> String {
        format!("127.0.0.1:{}", self.ports.client)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("zoo.cfg")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server on its configuration and data (appending to its log).
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("ZooKeeper server {} is already running", self.id);
        }
        // A server already on these ports (another ensemble, a leftover)
        // would answer `srvr` in this one's place.
        for (what, port) in [
            ("client", self.ports.client),
            ("quorum", self.ports.quorum),
            ("election", self.ports.election),
        ] {
            if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                bail!(
                    "ZooKeeper server {}'s {what} port 127.0.0.1:{port} is not free ({e}); \
                     is another ZooKeeper running? Choose other ports",
                    self.id
                );
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(java())
            // 100,000 partitions are some 200,000 znodes, with their watches:
            // a heap that holds them without collecting all the time. Java
            // takes the memory only as the tree grows.
            .arg("-Xmx1g")
            // Log to stdout, i.e. to this server's log file.
            .arg("-Dzookeeper.root.logger=INFO,CONSOLE")
            .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
            .arg("-cp")
            .arg(classpath())
            .arg(MAIN_CLASS)
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn_ignoring_interrupts()
            .with_context(|| {
                format!(
                    "starting ZooKeeper server {} with `{}` (is a Java runtime installed? \
                     scripts/install-deps.sh installs one)",
                    self.id,
                    java()
                )
            })?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// The exit status if the process has ended on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status),
            _ => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// kill -9: the server's session state and unsynced writes are gone with it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid() else { return };
        if self.paused {
            signal(pid, libc::SIGCONT);
        }
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                self.child = None;
                self.paused = false;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    /// SIGSTOP: the process stays, but answers nobody (its peers and
    /// clients see a silent server, as in a long GC pause).
    pub fn pause(&mut self) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("ZooKeeper server {} is not running", self.id))?;
        signal(pid, libc::SIGSTOP);
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after [`ZkServer::pause`].
    pub fn resume(&mut self) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("ZooKeeper server {} is not running", self.id))?;
        signal(pid, libc::SIGCONT);
        self.paused = false;
        Ok(())
    }

    /// The server's role and zxid (`srvr`).
    pub fn status(&self) -> Result<ServerStatus> {
        srvr(&self.client_address(), Duration::from_secs(2))
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Servers numbered 1.., all on 127.0.0.1.
pub struct ZkEnsemble {
    pub servers: Vec<ZkServer>,
}

impl ZkEnsemble {
    /// Writes `zk-<id>/zoo.cfg` and `zk-<id>/data/myid` under `dir` for a
    /// server on each of `ports`, numbered from 1, without starting any.
    /// `tick` is ZooKeeper's time unit: sessions may last 2 to 20 ticks by
    /// default, so the configuration allows up to 60 s whatever the tick.
    pub fn configure(dir: &Path, ports: &[ServerPorts], tick: Duration) -> Result<Self> {
        if ports.is_empty() {
            bail!("a ZooKeeper ensemble needs at least one server");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let tick_ms = tick.as_millis().max(1) as u64;
        // Generous limits in time, whatever the tick: a loaded machine must
        // not make followers drop out.
        let init_limit = 20_000_u64.div_ceil(tick_ms).max(2);
        let sync_limit = 10_000_u64.div_ceil(tick_ms).max(2);
        let peers: String = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("server.{}=127.0.0.1:{}:{}\n", i + 1, p.quorum, p.election))
            .collect();
        let mut servers = Vec::new();
        for (i, &server_ports) in ports.iter().enumerate() {
            let id = i as u32 + 1;
            let server = ZkServer {
                id,
                ports: server_ports,
                dir: dir.join(format!("zk-{id}")),
                log: dir.join(format!("zk-{id}.log")),
                child: None,
                paused: false,
            };
            let data = server.data_dir();
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            std::fs::write(data.join("myid"), format!("{id}\n"))?;
            let config = format!(
                "# Generated by sluice: ZooKeeper server {id} of {count}.\n\
                 tickTime={tick_ms}\n\
                 initLimit={init_limit}\n\
                 syncLimit={sync_limit}\n\
                 maxSessionTimeout=60000\n\
                 dataDir={data}\n\
                 clientPort={client}\n\
                 clientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=srvr,mntr,ruok\n\
                 {peers}",
                count = ports.len(),
                data = data.display(),
                client = server_ports.client,
            );
            std::fs::write(server.config_path(), config)?;
            servers.push(server);
        }
        Ok(ZkEnsemble { servers })
    }

    /// Starts every server that is not running.
    pub fn start(&mut self) -> Result<()> {
        for server in &mut self.servers {
            if server.child.is_none() {
                server.start()?;
            }
        }
        Ok(())
    }

    /// Waits until every running, unpaused server serves as leader,
    /// follower or standalone (an ensemble of three elects within seconds).
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        for server in &mut self.servers {
            if server.child.is_none() || server.paused {
                continue;
            }
            loop {
                if let Some(status) = server.exited() {
                    bail!(
                        "ZooKeeper server {} exited ({status}); the end of {}:\n{}",
                        server.id,
                        server.log.display(),
                        server.log_tail()
                    );
                }
                let last = server.status();
                if let Ok(status) = &last {
                    if is_serving_mode(&status.mode) {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    bail!(
                        "ZooKeeper server {} did not join a quorum within {limit:?} \
                         (last answer: {last:?}); the end of {}:\n{}",
                        server.id,
                        server.log.display(),
                        server.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// `host:port,host:port,...` of every server (no chroot).
    pub fn connect_string(&self) -> String {
        let servers: Vec<String> = self.servers.iter().map(ZkServer::client_address).collect();
        servers.join(",")
    }

    pub fn server(&mut self, id: u32) -> &mut ZkServer {
        let count = self.servers.len();
        self.servers
            .iter_mut()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no ZooKeeper server {id} (the ensemble has {count})"))
    }

    /// The server that says it leads, if one answers so.
    pub fn leader(&self) -> Option<u32> {
        self.servers
            .iter()
            .filter(|s| s.child.is_some() && !s.paused)
            .find(|s| s.status().is_ok_and(|st| st.mode == "leader"))
            .map(|s| s.id)
    }

    /// Stops every server (SIGTERM).
    pub fn stop(&mut self) {
        for server in &mut self.servers {
            if let Some(pid) = server.pid() {
                if server.paused {
                    signal(pid, libc::SIGCONT);
                }
                signal(pid, libc::SIGTERM);
            }
        }
        for server in &mut self.servers {
            server.stop();
        }
    }

    /// Every server's log, for failure messages.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                format!(
                    "===== ZooKeeper server {}\n{}\n",
                    s.id,
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for ZkEnsemble {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_serving_mode(mode: &str) -> bool {
    matches!(mode, "leader" | "follower" | "observer" | "standalone")
}

/// `$JAVA_HOME/bin/java` when JAVA_HOME is set, else `java` from PATH.
fn java() -> String {
    match std::env::var("JAVA_HOME") {
        Ok(home) if !home.is_empty() => format!("{home}/bin/java"),
        _ => "java".to_string(),
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on the id of a child process this module started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Asks the server at `address` for `srvr` (a four-letter command that
/// must be whitelisted) and reads its role and zxid.
pub fn srvr(address: &str, timeout: Duration) -> Result<ServerStatus> {
    let text = four_letter(address, "srvr", timeout)?;
    parse_srvr(&text).with_context(|| format!("{address} answered srvr with {text:?}"))
}

/// The server's counters from `mntr` (whitelisted too), by name; only the
/// numeric ones.
pub fn mntr(address: &str, timeout: Duration) -> Result<BTreeMap<String, f64>> {
    let text = four_letter(address, "mntr", timeout)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once('\t')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

/// Sends a four-letter command and reads the answer to the end.
fn four_letter(address: &str, command: &str, timeout: Duration) -> Result<String> {
    let addr = address
        .to_socket_addrs()
        .with_context(|| format!("{address} is not host:port"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(command.as_bytes())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .with_context(|| format!("reading {command} from {address}"))?;
    Ok(text)
}

/// The `Mode:` and `Zxid:` lines of a `srvr` answer.
pub fn parse_srvr(text: &str) -> Result<ServerStatus> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let Some(mode) = field("Mode:") else {
        // "This ZooKeeper instance is not currently serving requests".
        bail!("not serving");
    };
    let zxid = field("Zxid:").context("no Zxid line")?;
    let zxid = i64::from_str_radix(zxid.trim_start_matches("0x"), 16)
        .with_context(|| format!("zxid {zxid:?}"))?;
    Ok(ServerStatus {
        mode: mode.to_string(),
        zxid,
    })
}

/// Starting a cluster's processes so that Ctrl-C stops them in order.
pub trait SpawnIgnoringInterrupts {
    /// Spawns the process with SIGINT ignored. Ctrl-C in a terminal sends
    /// SIGINT to the whole foreground process group: the nodes would stop
    /// all at once, the controllers (or ZooKeeper) before the brokers'
    /// controlled shutdown could finish. Ignoring it, they leave it to the
    /// process that started them, which stops the brokers first with
    /// SIGTERM. They stay in its process group, so killing the group still
    /// takes them all. (A `sluice server` keeps an inherited SIGINT
    /// ignored, as a JVM does: the nohup convention.)
    fn spawn_ignoring_interrupts(&mut self) -> std::io::Result<Child>;
}

impl SpawnIgnoringInterrupts for Command {
    fn spawn_ignoring_interrupts(&mut self) -> std::io::Result<Child> {
        // SAFETY: signal(2) is async-signal-safe, as a pre_exec hook
        // requires; it changes only the child's disposition of SIGINT.
        unsafe {
            self.pre_exec(|| {
                if libc::signal(libc::SIGINT, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.spawn()
    }
}
