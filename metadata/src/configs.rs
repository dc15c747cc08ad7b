//! The topic-level configuration keys Sluice knows, with the broker setting
//! each one defaults to, and value checks shared by the controller and the CLI.

/// How a topic config's value is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    Long {
        min: i64,
    },
    Int {
        min: i64,
    },
    Boolean,
    /// One of a fixed set of words (comma-separated lists allowed when `list`).
    Choice {
        options: &'static [&'static str],
        list: bool,
    },
    Double,
}

/// One topic config: its name, the broker config that supplies its default,
/// and Kafka's default when the broker config is unset.
#[derive(Clone, Copy, Debug)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub broker_key: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
}

const fn def(
    name: &'static str,
    broker_key: &'static str,
    default: &'static str,
    kind: ConfigType,
) -> TopicConfigDef {
    TopicConfigDef {
        name,
        broker_key,
        default,
        kind,
    }
}

const COMPRESSION: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];

pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def(
        "cleanup.policy",
        "log.cleanup.policy",
        "delete",
        ConfigType::Choice {
            options: &["delete", "compact"],
            list: true,
        },
    ),
    def(
        "compression.type",
        "compression.type",
        "producer",
        ConfigType::Choice {
            options: COMPRESSION,
            list: false,
        },
    ),
    def(
        "delete.retention.ms",
        "log.cleaner.delete.retention.ms",
        "86400000",
        ConfigType::Long { min: 0 },
    ),
    def(
        "file.delete.delay.ms",
        "log.segment.delete.delay.ms",
        "60000",
        ConfigType::Long { min: 0 },
    ),
    def(
        "flush.messages",
        "log.flush.interval.messages",
        "9223372036854775807",
        ConfigType::Long { min: 1 },
    ),
    def(
        "flush.ms",
        "log.flush.interval.ms",
        "9223372036854775807",
        ConfigType::Long { min: 0 },
    ),
    def(
        "index.interval.bytes",
        "log.index.interval.bytes",
        "4096",
        ConfigType::Int { min: 0 },
    ),
    def(
        "max.compaction.lag.ms",
        "log.cleaner.max.compaction.lag.ms",
        "9223372036854775807",
        ConfigType::Long { min: 1 },
    ),
    def(
        "max.message.bytes",
        "message.max.bytes",
        "1048588",
        ConfigType::Int { min: 0 },
    ),
    def(
        "message.timestamp.type",
        "log.message.timestamp.type",
        "CreateTime",
        ConfigType::Choice {
            options: &["CreateTime", "LogAppendTime"],
            list: false,
        },
    ),
    def(
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
        "0.5",
        ConfigType::Double,
    ),
    def(
        "min.compaction.lag.ms",
        "log.cleaner.min.compaction.lag.ms",
        "0",
        ConfigType::Long { min: 0 },
    ),
    def(
        "min.insync.replicas",
        "min.insync.replicas",
        "1",
        ConfigType::Int { min: 1 },
    ),
    def(
        "preallocate",
        "log.preallocate",
        "false",
        ConfigType::Boolean,
    ),
    def(
        "retention.bytes",
        "log.retention.bytes",
        "-1",
        ConfigType::Long { min: -1 },
    ),
    def(
        "retention.ms",
        "log.retention.ms",
        "604800000",
        ConfigType::Long { min: -1 },
    ),
    def(
        "segment.bytes",
        "log.segment.bytes",
        "1073741824",
        ConfigType::Int { min: 14 },
    ),
    def(
        "segment.index.bytes",
        "log.index.size.max.bytes",
        "10485760",
        ConfigType::Int { min: 4 },
    ),
    def(
        "segment.jitter.ms",
        "log.roll.jitter.ms",
        "0",
        ConfigType::Long { min: 0 },
    ),
    def(
        "segment.ms",
        "log.roll.ms",
        "604800000",
        ConfigType::Long { min: 1 },
    ),
    def(
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        "false",
        ConfigType::Boolean,
    ),
];

pub fn topic_config_def(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks a topic config name and value; the error is the message clients see.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), String> {
    let def = topic_config_def(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
    let bad = || format!("Invalid value {value} for configuration {name}");
    match def.kind {
        ConfigType::Long { min } | ConfigType::Int { min } => {
            let parsed: i64 = value.trim().parse().map_err(|_| bad())?;
            let in_int =
                matches!(def.kind, ConfigType::Long { .. }) || i32::try_from(parsed).is_ok();
            if parsed < min || !in_int {
                return Err(format!("{}: value must be at least {min}", bad()));
            }
        }
        ConfigType::Boolean => {
            if !value.trim().eq_ignore_ascii_case("true")
                && !value.trim().eq_ignore_ascii_case("false")
            {
                return Err(bad());
            }
        }
        ConfigType::Double => {
            let v = value.trim().parse::<f64>().map_err(|_| bad())?;
            if name == "min.cleanable.dirty.ratio" && !(0.0..=1.0).contains(&v) {
                return Err(format!("{}: value must be between 0 and 1", bad()));
            }
        }
        ConfigType::Choice { options, list } => {
            let words: Vec<&str> = if list {
                value.split(',').map(str::trim).collect()
            } else {
                vec![value.trim()]
            };
            if words.is_empty() || words.iter().any(|w| !options.contains(w)) {
                return Err(format!("{}: expected one of {}", bad(), options.join(", ")));
            }
        }
    }
    check_implemented(name, value.trim())
}

/// Refuses a value Sluice would accept but not honour: a setting that does
/// nothing must not look as if it worked. Values that describe what Sluice
/// does anyway (Kafka's defaults, mostly) are accepted.
fn check_implemented(name: &str, value: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("Sluice does not implement {name}={value}: {why}"));
    match name {
        "compression.type" if value != "producer" => refuse(
            "batches are stored as the producer compressed them (only compression.type=producer)",
        ),
        "message.timestamp.type" if value != "CreateTime" => {
            refuse("record timestamps are the producer's (only message.timestamp.type=CreateTime)")
        }
        "preallocate" if !value.eq_ignore_ascii_case("false") => {
            refuse("segment files are not preallocated (only preallocate=false)")
        }
        "segment.jitter.ms" if value.parse::<i64>() != Ok(0) => {
            refuse("segments roll without jitter (only segment.jitter.ms=0)")
        }
        "file.delete.delay.ms" => refuse("segment files are deleted at once"),
        "segment.index.bytes" => refuse("index files do not limit a segment's size"),
        _ => Ok(()),
    }
}

/// Checks a topic name the way Kafka does.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > 249 {
        return Err(format!(
            "Topic name is illegal, it can't be longer than 249 characters, topic name: {name}"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "Topic name {name} is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-' (found {c:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        for bad in ["", ".", "..", "a b", "é", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_values() {
        assert!(validate_topic_config("retention.ms", "-1").is_ok());
        assert!(validate_topic_config("retention.ms", "-2").is_err());
        assert!(validate_topic_config("segment.bytes", "99999999999").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("cleanup.policy", "shred").is_err());
        assert!(validate_topic_config("no.such.config", "1").is_err());
        assert!(validate_topic_config("preallocate", "FALSE").is_ok());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", "0.1").is_ok());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", "1.5").is_err());
    }

    #[test]
    fn unimplemented_configs_are_refused_implemented_ones_accepted() {
        let refused = [
            ("compression.type", "gzip"),
            ("compression.type", "uncompressed"),
            ("message.timestamp.type", "LogAppendTime"),
            ("preallocate", "true"),
            ("segment.jitter.ms", "1000"),
            ("file.delete.delay.ms", "60000"),
            ("segment.index.bytes", "10485760"),
        ];
        for (name, value) in refused {
            let e = validate_topic_config(name, value).expect_err(name);
            assert!(e.contains("does not implement"), "{e}");
        }
        let accepted = [
            ("cleanup.policy", "compact"),
            ("cleanup.policy", "compact,delete"),
            ("compression.type", "producer"),
            ("delete.retention.ms", "1000"),
            ("flush.messages", "1"),
            ("flush.ms", "1000"),
            ("index.interval.bytes", "100"),
            ("max.compaction.lag.ms", "1000"),
            ("max.message.bytes", "1000"),
            ("message.timestamp.type", "CreateTime"),
            ("min.cleanable.dirty.ratio", "0.2"),
            ("min.compaction.lag.ms", "10"),
            ("min.insync.replicas", "2"),
            ("preallocate", "false"),
            ("retention.bytes", "1000"),
            ("retention.ms", "1000"),
            ("segment.bytes", "1000"),
            ("segment.jitter.ms", "0"),
            ("segment.ms", "1000"),
            ("unclean.leader.election.enable", "true"),
        ];
        for (name, value) in accepted {
            assert_eq!(validate_topic_config(name, value), Ok(()), "{name}={value}");
        }
        // A config added to the list must be classified here too.
        for def in TOPIC_CONFIGS {
            assert!(
                refused.iter().chain(&accepted).any(|(n, _)| *n == def.name),
                "{} is neither refused nor known to work",
                def.name
            );
        }
    }

    /// The log honours these (sluice-storage `LogConfig`), with Kafka's
    /// bounds: flush.messages >= 1, flush.ms >= 0.
    #[test]
    fn flush_configs_are_accepted() {
        for (name, value) in [
            ("flush.messages", "1"),
            ("flush.messages", "9223372036854775807"),
            ("flush.ms", "0"),
            ("flush.ms", "1000"),
        ] {
            assert_eq!(validate_topic_config(name, value), Ok(()), "{name}={value}");
        }
        assert!(validate_topic_config("flush.messages", "0").is_err());
        assert!(validate_topic_config("flush.ms", "-1").is_err());
        assert!(validate_topic_config("flush.ms", "soon").is_err());
    }
}
