//! Results of `sluice compare` — ZooKeeper mode against KRaft mode, at
//! several partition counts, several runs each — as statistics, a terminal
//! table and a report folder.
//!
//! - [`measurement`]: one value from one run ([`Measurement`], [`Mode`]).
//! - [`stats`]: medians and ranges per scenario, metric and partition count.
//! - [`table`]: an aligned text table for the terminal.
//! - [`machine`]: what the experiment ran on.
//! - [`report`]: the folder: `report.html` (self-contained), `results.json`,
//!   `results.csv` and `charts/*.svg`.
//!
//! Deliberately independent of every other sluice crate and of anything slow
//! to build, so the report can be iterated on without building a broker.

mod chart;
mod csv;
mod html;
pub mod machine;
pub mod measurement;
pub mod report;
pub mod stats;
pub mod table;
#[cfg(test)]
mod test_support;

pub use chart::slug;
pub use csv::to_csv;
pub use machine::Machine;
pub use measurement::{Measurement, Mode};
pub use report::{Report, Written};
pub use stats::{stats, summarize, Stats, Summary};
pub use table::{format_value, table};
