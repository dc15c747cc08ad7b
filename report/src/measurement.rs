//! What one run of one scenario measured.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How the cluster is coordinated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Zk,
    Kraft,
}

impl Mode {
    /// Both modes, in the order the report shows them.
    pub const ALL: [Mode; 2] = [Mode::Zk, Mode::Kraft];

    /// Short machine-friendly name, as in JSON and CSV.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Zk => "zk",
            Mode::Kraft => "kraft",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Zk => "ZooKeeper",
            Mode::Kraft => "KRaft",
        })
    }
}

/// One value from one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// E.g. "controller-failover (defaults)".
    pub scenario: String,
    /// E.g. "new controller in charge"; a scenario can have several metrics.
    pub metric: String,
    pub mode: Mode,
    pub partitions: u32,
    /// 1-based.
    pub run: u32,
    /// JSON has no NaN: serde_json writes it (and infinities) as null, so
    /// null reads back as NaN.
    #[serde(deserialize_with = "null_as_nan")]
    pub value: f64,
    /// "ms", "offsets/s", "requests", "bytes", ...
    pub unit: String,
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names() {
        assert_eq!(Mode::Zk.to_string(), "ZooKeeper");
        assert_eq!(Mode::Kraft.to_string(), "KRaft");
        assert_eq!(Mode::Zk.label(), "zk");
        assert_eq!(Mode::Kraft.label(), "kraft");
        // The serde name and the label are the same text.
        assert_eq!(serde_json::to_string(&Mode::Kraft).unwrap(), "\"kraft\"");
        assert_eq!(serde_json::from_str::<Mode>("\"zk\"").unwrap(), Mode::Zk);
    }
}
