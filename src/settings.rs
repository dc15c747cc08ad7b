//! Server settings: Kafka's names and defaults, read from an optional TOML
//! file, then `SLUICE_*` environment variables, then `--set key=value` flags
//! (each later source wins).
//!
//! In the TOML file a dotted key may be written flat (`"log.dirs" = "..."`)
//! or as TOML tables (`log.dirs = "..."`); both mean the same setting.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Every setting the server reads, with its default.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("node.id", "1"),
    ("process.roles", "broker,controller"),
    ("listeners", "PLAINTEXT://127.0.0.1:9092"),
    ("advertised.listeners", ""),
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
];

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
        Ok(settings)
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

/// A `NAME://host:port` listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub host: String,
    pub port: u16,
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
