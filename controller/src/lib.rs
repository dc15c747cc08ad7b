//! The control plane of Sluice: the Raft-replicated metadata quorum and the
//! active-controller logic that turns admin and broker requests into
//! metadata records.

#[cfg(feature = "quorum")]
mod controller;
pub mod group_ops;
pub mod lifecycle;
pub mod ops;
pub mod placement;
#[cfg(feature = "quorum")]
pub mod quorum;
#[cfg(test)]
mod test_support;

#[cfg(feature = "quorum")]
pub use controller::{Controller, ControllerConfig, StartError};
pub use ops::TopicDefaults;
