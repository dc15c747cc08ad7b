//! Server settings: Kafka's names and defaults, read from an optional TOML
//! file, then `SLUICE_*` environment variables, then `--set key=value` flags
//! (each later source wins).
//!
//! In the TOML file a dotted key may be written flat (`"log.dirs" = "..."`)
//! or as TOML tables (`log.dirs = "..."`); both mean the same setting.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Every setting the server reads, with its default.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("node.id", "1"),
    // Kafka's ZooKeeper-mode name for node.id; empty means "the same as node.id".
    ("broker.id", ""),
    ("process.roles", "broker,controller"),
    ("listeners", "PLAINTEXT://127.0.0.1:9092"),
    ("advertised.listeners", ""),
    // Empty: every listener is PLAINTEXT, the only protocol Sluice speaks.
    ("listener.security.protocol.map", ""),
    // Empty: the broker listener named PLAINTEXT, else the first one.
    ("inter.broker.listener.name", ""),
    ("log.dirs", "./sluice-data"),
    ("metadata.log.dir", ""),
    ("num.partitions", "1"),
    ("default.replication.factor", "1"),
    ("min.insync.replicas", "1"),
    ("auto.create.topics.enable", "true"),
    ("log.retention.ms", "604800000"),
    ("log.retention.minutes", ""),
    ("log.retention.hours", "168"),
    ("log.retention.bytes", "-1"),
    ("log.retention.check.interval.ms", "300000"),
    ("log.cleanup.policy", "delete"),
    ("log.cleaner.enable", "true"),
    ("log.cleaner.backoff.ms", "15000"),
    ("log.cleaner.min.cleanable.ratio", "0.5"),
    ("log.cleaner.delete.retention.ms", "86400000"),
    ("log.cleaner.min.compaction.lag.ms", "0"),
    ("log.cleaner.max.compaction.lag.ms", "9223372036854775807"),
    ("log.segment.bytes", "1073741824"),
    ("log.roll.ms", "604800000"),
    ("log.index.interval.bytes", "4096"),
    ("log.flush.interval.messages", "9223372036854775807"),
    ("log.flush.interval.ms", ""),
    ("log.flush.scheduler.interval.ms", "1000"),
    ("message.max.bytes", "1048588"),
    ("socket.request.max.bytes", "104857600"),
    ("max.connections", "10000"),
    ("queued.max.request.bytes", "268435456"),
    ("fetch.max.bytes", "57671680"),
    ("replica.high.watermark.checkpoint.interval.ms", "5000"),
    ("metadata.snapshot.max.records", "20000"),
    ("metadata.log.max.snapshot.interval.ms", "3600000"),
    ("controller.quorum.voters", ""),
    ("controller.listener.names", "CONTROLLER"),
    ("controller.quorum.election.timeout.ms", "1000"),
    ("broker.session.timeout.ms", "9000"),
    ("broker.heartbeat.interval.ms", "2000"),
    ("controlled.shutdown.enable", "true"),
    ("replica.lag.time.max.ms", "30000"),
    ("replica.fetch.wait.max.ms", "500"),
    ("replica.fetch.min.bytes", "1"),
    ("replica.socket.timeout.ms", "30000"),
    ("replica.fetch.max.bytes", "1048576"),
    ("replica.fetch.response.max.bytes", "10485760"),
    ("replica.fetch.backoff.ms", "1000"),
    ("unclean.leader.election.enable", "false"),
    ("auto.leader.rebalance.enable", "true"),
    ("leader.imbalance.check.interval.seconds", "300"),
    ("group.initial.rebalance.delay.ms", "3000"),
    ("group.min.session.timeout.ms", "6000"),
    ("group.max.session.timeout.ms", "1800000"),
    ("offset.metadata.max.bytes", "4096"),
    ("offsets.retention.minutes", "10080"),
    ("offsets.retention.check.interval.ms", "600000"),
    ("metrics.listen", "127.0.0.1:9464"),
    // ZooKeeper mode: set zookeeper.connect and the node is a broker
    // coordinated by that ensemble (no controller quorum).
    ("zookeeper.connect", ""),
    ("zookeeper.session.timeout.ms", "18000"),
    // Empty: the session timeout, as in Kafka.
    ("zookeeper.connection.timeout.ms", ""),
    ("controller.socket.timeout.ms", "30000"),
];

/// How a node is coordinated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A Raft metadata quorum inside the cluster (`process.roles`,
    /// `controller.quorum.voters`).
    KRaft,
    /// A broker coordinated through a ZooKeeper ensemble (`zookeeper.connect`).
    ZooKeeper,
}

#[derive(Clone, Debug)]
pub struct Settings {
    values: BTreeMap<String, String>,
    explicit: BTreeMap<String, bool>,
}

impl Settings {
    /// Defaults, overridden by `file`, the environment and `overrides` in that order.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Self> {
        let mut settings = Settings {
            values: DEFAULTS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            explicit: BTreeMap::new(),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let table: toml::Table = text
                .parse()
                .with_context(|| format!("parsing {}", path.display()))?;
            let mut flat = Vec::new();
            flatten("", &toml::Value::Table(table), &mut flat)?;
            for (key, value) in flat {
                settings
                    .set(&key, value)
                    .with_context(|| format!("in {}", path.display()))?;
            }
        }
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix("SLUICE_") {
                let key = rest.to_ascii_lowercase().replace('_', ".");
                // Other SLUICE_* variables (the test harness's, say) are not settings.
                if settings.values.contains_key(&key) {
                    settings
                        .set(&key, value)
                        .with_context(|| format!("in environment variable {name}"))?;
                }
            }
        }
        for pair in overrides {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--set expects key=value, got {pair:?}");
            };
            settings.set(key.trim(), value.trim().to_string())?;
        }
        settings.reconcile_broker_id()?;
        Ok(settings)
    }

    /// `broker.id` is Kafka's ZooKeeper-mode name for `node.id`: either
    /// spelling sets both, and two different explicit values are refused.
    fn reconcile_broker_id(&mut self) -> Result<()> {
        if !self.is_explicit("broker.id") {
            let id = self.get("node.id").to_string();
            self.values.insert("broker.id".into(), id);
            return Ok(());
        }
        let broker_id: i32 = self.parse("broker.id")?;
        if self.is_explicit("node.id") {
            let node_id: i32 = self.parse("node.id")?;
            if node_id != broker_id {
                bail!(
                    "broker.id = {broker_id} and node.id = {node_id} disagree: they name the same \
                     thing (broker.id is Kafka's ZooKeeper-mode spelling); set one of them"
                );
            }
        }
        self.values.insert("node.id".into(), broker_id.to_string());
        self.values
            .insert("broker.id".into(), broker_id.to_string());
        self.explicit.insert("node.id".into(), true);
        Ok(())
    }

    /// ZooKeeper mode when `zookeeper.connect` is set, else KRaft. Settings
    /// that only mean something in KRaft mode are refused beside
    /// `zookeeper.connect` rather than silently ignored.
    pub fn mode(&self) -> Result<Mode> {
        let connect = self.get("zookeeper.connect").trim();
        if connect.is_empty() {
            return Ok(Mode::KRaft);
        }
        for key in ["process.roles", "controller.quorum.voters"] {
            if self.is_explicit(key) {
                bail!(
                    "zookeeper.connect ({connect}) makes this node a ZooKeeper-mode broker, \
                     which has no controller quorum: remove {key} = {:?} (it is for KRaft \
                     mode only), or remove zookeeper.connect to run in KRaft mode",
                    self.get(key)
                );
            }
        }
        parse_zookeeper_connect(connect)?;
        Ok(Mode::ZooKeeper)
    }

    /// `zookeeper.connect` with its timeouts, for a ZooKeeper-mode broker.
    pub fn zookeeper(&self) -> Result<sluice_zk::ZkConfig> {
        let connect = self.get("zookeeper.connect").trim().to_string();
        parse_zookeeper_connect(&connect)?;
        let session_ms: u64 = self.parse("zookeeper.session.timeout.ms")?;
        if session_ms == 0 {
            bail!("zookeeper.session.timeout.ms must be positive");
        }
        let connection_ms: u64 = if self
            .get("zookeeper.connection.timeout.ms")
            .trim()
            .is_empty()
        {
            session_ms
        } else {
            self.parse("zookeeper.connection.timeout.ms")?
        };
        Ok(sluice_zk::ZkConfig {
            connect,
            session_timeout: Duration::from_millis(session_ms),
            connection_timeout: Duration::from_millis(connection_ms),
        })
    }

    /// `controller.socket.timeout.ms`: how long the ZooKeeper-mode
    /// controller waits for a broker to answer a push.
    pub fn controller_socket_timeout(&self) -> Result<Duration> {
        Ok(Duration::from_millis(
            self.parse("controller.socket.timeout.ms")?,
        ))
    }

    fn set(&mut self, key: &str, value: String) -> Result<()> {
        if !self.values.contains_key(key) {
            bail!("unknown setting {key:?}");
        }
        self.values.insert(key.to_string(), value);
        self.explicit.insert(key.to_string(), true);
        Ok(())
    }

    pub fn get(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or("")
    }

    pub fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.get(key);
        raw.trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("setting {key} = {raw:?}: {e}"))
    }

    fn is_explicit(&self, key: &str) -> bool {
        self.explicit.contains_key(key)
    }

    /// Retention in ms from Kafka's three spellings: `log.retention.ms` wins
    /// over `log.retention.minutes`, which wins over `log.retention.hours`.
    pub fn retention_ms(&self) -> Result<i64> {
        if self.is_explicit("log.retention.ms") {
            return self.parse("log.retention.ms");
        }
        if !self.get("log.retention.minutes").is_empty() {
            return Ok(self.parse::<i64>("log.retention.minutes")? * 60_000);
        }
        if self.is_explicit("log.retention.hours") {
            return Ok(self.parse::<i64>("log.retention.hours")? * 3_600_000);
        }
        self.parse("log.retention.ms")
    }

    /// `log.flush.interval.ms`; unset means never (`i64::MAX`). Kafka falls
    /// back to `log.flush.scheduler.interval.ms` here, whose Kafka default is
    /// also "never"; Sluice's scheduler checks every second, so falling back
    /// would turn time-based flushing on by default.
    pub fn flush_ms(&self) -> Result<i64> {
        if self.get("log.flush.interval.ms").trim().is_empty() {
            return Ok(i64::MAX);
        }
        self.parse("log.flush.interval.ms")
    }

    /// Every setting with its value and whether it was set explicitly.
    pub fn described(&self) -> BTreeMap<String, (String, bool)> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), (v.clone(), self.explicit.contains_key(k))))
            .collect()
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) -> Result<()> {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out)?;
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        toml::Value::Integer(i) => out.push((prefix.to_string(), i.to_string())),
        toml::Value::Float(f) => out.push((prefix.to_string(), f.to_string())),
        toml::Value::Boolean(b) => out.push((prefix.to_string(), b.to_string())),
        toml::Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.push((prefix.to_string(), parts.join(",")));
        }
        toml::Value::Datetime(d) => out.push((prefix.to_string(), d.to_string())),
    }
    Ok(())
}

/// The servers (host, port) and the chroot ("" for none) of a
/// `zookeeper.connect` value `host:port,host:port[/chroot]`.
pub fn parse_zookeeper_connect(text: &str) -> Result<(Vec<(String, u16)>, String)> {
    let (servers, chroot) = match text.find('/') {
        Some(i) => (&text[..i], text[i..].trim_end_matches('/')),
        None => (text, ""),
    };
    let servers = servers
        .split(',')
        .map(str::trim)
        .map(|server| {
            let (host, port) = server.rsplit_once(':').with_context(|| {
                format!("zookeeper.connect {text:?}: server {server:?} is not host:port")
            })?;
            let port = port
                .parse()
                .with_context(|| format!("zookeeper.connect {text:?}: bad port in {server:?}"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                bail!("zookeeper.connect {text:?}: server {server:?} has no host");
            }
            Ok((host.to_string(), port))
        })
        .collect::<Result<Vec<_>>>()?;
    if chroot.contains("//") {
        bail!("zookeeper.connect {text:?}: chroot {chroot:?} has an empty path segment");
    }
    Ok((servers, chroot.to_string()))
}

/// A `NAME://host:port` listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// A node's listeners by role: the Kafka listeners a broker serves (the
/// inter-broker one first, so that whatever reaches another broker by its
/// first endpoint uses it) and the controller listener, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listeners {
    pub broker: Vec<Listener>,
    pub controller: Option<Listener>,
}

impl Settings {
    /// `listeners`, split by `controller.listener.names`, checked against
    /// `listener.security.protocol.map` and ordered by
    /// `inter.broker.listener.name`.
    pub fn listeners(&self) -> Result<Listeners> {
        let all = parse_listeners(self.get("listeners"))?;
        let mut names = BTreeSet::new();
        for l in &all {
            if !names.insert(l.name.as_str()) {
                bail!("listeners: {} is named twice", l.name);
            }
        }
        let protocols = parse_protocol_map(self.get("listener.security.protocol.map"))?;
        if !protocols.is_empty() {
            for l in &all {
                match protocols.get(&l.name) {
                    Some(p) if p == "PLAINTEXT" => {}
                    Some(p) => bail!("listener {}: security protocol {p} is not supported (Sluice speaks PLAINTEXT only)", l.name),
                    None => bail!("listener {} has no entry in listener.security.protocol.map", l.name),
                }
            }
        }
        let controller_names: Vec<&str> = self
            .get("controller.listener.names")
            .split(',')
            .map(str::trim)
            .collect();
        let (controller, mut broker): (Vec<Listener>, Vec<Listener>) = all
            .into_iter()
            .partition(|l| controller_names.contains(&l.name.as_str()));
        let inter_broker = match self.get("inter.broker.listener.name") {
            "" => broker
                .iter()
                .position(|l| l.name == "PLAINTEXT")
                .unwrap_or(0),
            name => broker
                .iter()
                .position(|l| l.name == name)
                .with_context(|| {
                    format!(
                        "inter.broker.listener.name {name} is not one of the broker's listeners"
                    )
                })?,
        };
        if !broker.is_empty() {
            let first = broker.remove(inter_broker);
            broker.insert(0, first);
        }
        Ok(Listeners {
            broker,
            controller: controller.into_iter().next(),
        })
    }
}

/// `NAME:PROTOCOL,...` as a map.
fn parse_protocol_map(text: &str) -> Result<BTreeMap<String, String>> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (name, protocol) = entry.split_once(':').with_context(|| {
                format!("listener.security.protocol.map: {entry:?} is not NAME:PROTOCOL")
            })?;
            Ok((name.trim().to_string(), protocol.trim().to_uppercase()))
        })
        .collect()
}

/// Every listener of a comma-separated `listeners` value.
pub fn parse_listeners(text: &str) -> Result<Vec<Listener>> {
    text.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(parse_listener)
        .collect()
}

/// A voter of `controller.quorum.voters`: `id@host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

impl Voter {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub fn parse_voters(text: &str) -> Result<Vec<Voter>> {
    text.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let (id, address) = v
                .split_once('@')
                .with_context(|| format!("voter {v:?} is not of the form id@host:port"))?;
            let (host, port) = address
                .rsplit_once(':')
                .with_context(|| format!("voter {v:?} has no port"))?;
            Ok(Voter {
                id: id
                    .parse()
                    .with_context(|| format!("voter {v:?} has a bad id"))?,
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port: port
                    .parse()
                    .with_context(|| format!("voter {v:?} has a bad port"))?,
            })
        })
        .collect()
}

pub fn parse_listener(text: &str) -> Result<Listener> {
    let first = text.split(',').next().unwrap_or("").trim();
    let (name, address) = first
        .split_once("://")
        .with_context(|| format!("listener {first:?} is not of the form NAME://host:port"))?;
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("listener {first:?} has no port"))?;
    let port = port
        .parse()
        .with_context(|| format!("listener {first:?} has a bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(Listener {
        name: name.to_string(),
        host: if host.is_empty() {
            "0.0.0.0".into()
        } else {
            host.to_string()
        },
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(
            &file,
            "node.id = 3\n\"num.partitions\" = 4\n[log]\ndirs = \"/tmp/x\"\n",
        )
        .unwrap();
        let env = vec![
            ("SLUICE_NUM_PARTITIONS".to_string(), "5".to_string()),
            ("SLUICE_NOT_A_SETTING".to_string(), "x".to_string()),
        ];
        let s = Settings::load(Some(&file), env.into_iter(), &["node.id=7".to_string()]).unwrap();
        assert_eq!(s.get("log.dirs"), "/tmp/x");
        assert_eq!(s.parse::<i32>("num.partitions").unwrap(), 5);
        assert_eq!(s.parse::<i32>("node.id").unwrap(), 7);
        assert!(s.described()["node.id"].1);
        assert!(!s.described()["log.roll.ms"].1);
        assert!(Settings::load(None, std::iter::empty(), &["no.such=1".to_string()]).is_err());
    }

    #[test]
    fn retention_spellings() {
        let load = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            Settings::load(None, std::iter::empty(), &o)
                .unwrap()
                .retention_ms()
                .unwrap()
        };
        assert_eq!(load(&[]), 604_800_000);
        assert_eq!(load(&["log.retention.hours=1"]), 3_600_000);
        assert_eq!(
            load(&["log.retention.hours=1", "log.retention.minutes=2"]),
            120_000
        );
        assert_eq!(load(&["log.retention.minutes=2", "log.retention.ms=5"]), 5);
    }

    #[test]
    fn flush_settings_default_to_never() {
        let load = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            let s = Settings::load(None, std::iter::empty(), &o).unwrap();
            (
                s.parse::<i64>("log.flush.interval.messages").unwrap(),
                s.flush_ms().unwrap(),
            )
        };
        assert_eq!(load(&[]), (i64::MAX, i64::MAX));
        assert_eq!(
            load(&["log.flush.interval.messages=1", "log.flush.interval.ms=250"]),
            (1, 250)
        );
    }

    fn load(overrides: &[&str]) -> Result<Settings> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Settings::load(None, std::iter::empty(), &overrides)
    }

    #[test]
    fn broker_id_is_node_id() {
        let s = load(&[]).unwrap();
        assert_eq!((s.get("node.id"), s.get("broker.id")), ("1", "1"));
        let s = load(&["node.id=4"]).unwrap();
        assert_eq!(s.get("broker.id"), "4");
        let s = load(&["broker.id=5"]).unwrap();
        assert_eq!(s.parse::<i32>("node.id").unwrap(), 5);
        assert!(s.described()["node.id"].1);
        let s = load(&["broker.id=6", "node.id=6"]).unwrap();
        assert_eq!(s.get("node.id"), "6");
        let e = load(&["broker.id=6", "node.id=7"]).unwrap_err().to_string();
        assert!(
            e.contains("broker.id = 6") && e.contains("node.id = 7"),
            "{e}"
        );
        assert!(load(&["broker.id=x"]).is_err());
        // From the environment too.
        let env = vec![("SLUICE_BROKER_ID".to_string(), "9".to_string())];
        let s = Settings::load(None, env.into_iter(), &[]).unwrap();
        assert_eq!(s.get("node.id"), "9");
    }

    #[test]
    fn mode_follows_zookeeper_connect() {
        assert_eq!(load(&[]).unwrap().mode().unwrap(), Mode::KRaft);
        assert_eq!(
            load(&["process.roles=broker", "controller.quorum.voters=1@h:1"])
                .unwrap()
                .mode()
                .unwrap(),
            Mode::KRaft
        );
        let zk = load(&["zookeeper.connect=127.0.0.1:2181,127.0.0.1:2182/sluice"]).unwrap();
        assert_eq!(zk.mode().unwrap(), Mode::ZooKeeper);
        for kraft_only in ["process.roles=broker", "controller.quorum.voters=1@h:1"] {
            let s = load(&["zookeeper.connect=127.0.0.1:2181", kraft_only]).unwrap();
            let e = s.mode().unwrap_err().to_string();
            let key = kraft_only.split('=').next().unwrap();
            assert!(e.contains(key) && e.contains("zookeeper.connect"), "{e}");
        }
        for bad in ["127.0.0.1", "127.0.0.1:x", ":2181", "h:1,/c", "h:1//c"] {
            let s = load(&[&format!("zookeeper.connect={bad}")]).unwrap();
            assert!(s.mode().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn zookeeper_settings() {
        let s = load(&["zookeeper.connect=h1:2181,h2:2182/sluice/a"]).unwrap();
        let c = s.zookeeper().unwrap();
        assert_eq!(c.connect, "h1:2181,h2:2182/sluice/a");
        assert_eq!(c.split(), ("h1:2181,h2:2182", "/sluice/a"));
        assert_eq!(c.session_timeout, Duration::from_secs(18));
        // Unset: the session timeout.
        assert_eq!(c.connection_timeout, Duration::from_secs(18));
        let s = load(&[
            "zookeeper.connect=h1:2181",
            "zookeeper.session.timeout.ms=6000",
            "zookeeper.connection.timeout.ms=2500",
            "controller.socket.timeout.ms=1000",
        ])
        .unwrap();
        let c = s.zookeeper().unwrap();
        assert_eq!(c.session_timeout, Duration::from_secs(6));
        assert_eq!(c.connection_timeout, Duration::from_millis(2500));
        assert_eq!(
            s.controller_socket_timeout().unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            load(&[]).unwrap().controller_socket_timeout().unwrap(),
            Duration::from_secs(30)
        );
        let (servers, chroot) = parse_zookeeper_connect("a:1, [::1]:2/x/").unwrap();
        assert_eq!(servers, vec![("a".to_string(), 1), ("::1".to_string(), 2)]);
        assert_eq!(chroot, "/x");
    }

    #[test]
    fn listeners() {
        let l = parse_listener("PLAINTEXT://127.0.0.1:9092").unwrap();
        assert_eq!((l.host.as_str(), l.port), ("127.0.0.1", 9092));
        assert_eq!(parse_listener("PLAINTEXT://:0").unwrap().host, "0.0.0.0");
        assert!(parse_listener("127.0.0.1:9092").is_err());
        let all =
            parse_listeners("PLAINTEXT://127.0.0.1:9092, CONTROLLER://127.0.0.1:9093").unwrap();
        assert_eq!(all[1].name, "CONTROLLER");
    }

    #[test]
    fn listeners_by_role_with_the_inter_broker_one_first() {
        let names = |l: &Listeners| l.broker.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
        let s = load(&[]).unwrap();
        let l = s.listeners().unwrap();
        assert_eq!(
            (names(&l), l.controller),
            (vec!["PLAINTEXT".to_string()], None)
        );

        let two =
            "listeners=EXTERNAL://0.0.0.0:9092,INTERNAL://0.0.0.0:19092,CONTROLLER://0.0.0.0:9093";
        let s = load(&[two, "inter.broker.listener.name=INTERNAL"]).unwrap();
        let l = s.listeners().unwrap();
        assert_eq!(names(&l), ["INTERNAL", "EXTERNAL"]);
        assert_eq!(l.controller.unwrap().port, 9093);
        // Without a name: PLAINTEXT if there is one, else the first.
        let s = load(&[two]).unwrap();
        assert_eq!(names(&s.listeners().unwrap()), ["EXTERNAL", "INTERNAL"]);
        let s = load(&["listeners=A://:1,PLAINTEXT://:2"]).unwrap();
        assert_eq!(names(&s.listeners().unwrap()), ["PLAINTEXT", "A"]);

        for (bad, why) in [
            (vec![two, "inter.broker.listener.name=OTHER"], "OTHER"),
            (vec!["listeners=A://:1,A://:2"], "named twice"),
            (
                vec![two, "listener.security.protocol.map=EXTERNAL:PLAINTEXT,INTERNAL:SSL,CONTROLLER:PLAINTEXT"],
                "SSL is not supported",
            ),
            (
                vec![two, "listener.security.protocol.map=EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"],
                "INTERNAL has no entry",
            ),
        ] {
            let error = load(&bad).unwrap().listeners().unwrap_err().to_string();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn voters() {
        let v = parse_voters("1@127.0.0.1:9093,2@localhost:9094").unwrap();
        assert_eq!(
            v[1],
            Voter {
                id: 2,
                host: "localhost".into(),
                port: 9094
            }
        );
        assert!(parse_voters("1@127.0.0.1").is_err());
        assert!(parse_voters("x@127.0.0.1:1").is_err());
        assert!(parse_voters("").unwrap().is_empty());
    }
}
