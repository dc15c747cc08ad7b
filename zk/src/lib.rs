//! ZooKeeper mode: the same brokers, coordinated by a real Apache ZooKeeper
//! ensemble the way Kafka 2.x/3.x ran, for comparison with KRaft mode.
//!
//! - [`znodes`]: the znode layout and formats (Kafka's).
//! - [`connect`]: sessions, the chroot, pipelined reads.
//! - [`source`]: a broker's metadata, fed by the controller's pushes.
//! - [`session`]: a broker's registration and its ZooKeeper session.
//! - [`controller`]: the controller every broker runs and one wins.
//! - [`admin`]: the broker's `ControllerApi`: admin requests, ISR changes
//!   and producer ids as znode writes.
//! - [`configs`]: topic configs and their change notifications.
//! - [`groups`]: consumer groups' durable state under `/consumers`.
//! - [`inspect`]: a read-only look at the cluster (`sluice cluster status`).
//!
//! Only this crate depends on the ZooKeeper client.

pub mod admin;
pub mod channel;
pub mod configs;
pub mod connect;
pub mod controller;
pub mod groups;
pub mod inspect;
pub mod session;
pub mod source;
#[cfg(test)]
mod test_support;
pub mod znodes;

pub use admin::ZkControllerApi;
pub use configs::start_config_watch;
pub use connect::{connect, ZkConfig};
pub use session::{Sessions, ZkBrokerSession};
pub use source::ZkMetadata;
