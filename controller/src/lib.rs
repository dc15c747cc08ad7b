//! The control plane of Sluice: the Raft-replicated metadata quorum and the
//! active-controller logic that turns admin and broker requests into
//! metadata records.

mod controller;
pub mod group_ops;
pub mod lifecycle;
pub mod ops;
pub mod placement;
pub mod quorum;
#[cfg(test)]
mod test_support;

pub use controller::{Controller, ControllerConfig, StartError};
pub use ops::TopicDefaults;
