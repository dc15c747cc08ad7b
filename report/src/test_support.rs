//! Shorthand for building measurements in tests.

use crate::measurement::{Measurement, Mode};

/// A measurement in milliseconds.
pub(crate) fn m(
    scenario: &str,
    metric: &str,
    mode: Mode,
    partitions: u32,
    run: u32,
    value: f64,
) -> Measurement {
    Measurement {
        scenario: scenario.into(),
        metric: metric.into(),
        mode,
        partitions,
        run,
        value,
        unit: "ms".into(),
    }
}
