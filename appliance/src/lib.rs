//! Kituo's on-device program. The binary (`appliance`) is the supervisor and its tools; the library also
//! holds the configuration formats the image builder shares.
//!
//! - [`power`]: UPS and power sources, the power state machine, the shutdown sequence
//! - [`health`]: service probes, restarts, system facts
//! - [`status`]: the technician's page, JSON API and metrics, and the [`status::Feed`] for sync and updates
//! - [`history`]: power transitions and the 24-hour chart, persisted sparingly
//! - [`commission`]: a center config turned into the card's files (builder and first boot)
//! - [`supervisor`]: wires them together (`appliance supervise`)
//! - [`sync`]: two-way sync of Moodle with the hub (at a center) or with the centers (at the hub)

pub mod center;
pub mod commission;
pub mod config;
pub mod health;
pub mod history;
pub mod ini;
pub mod power;
pub mod status;
pub mod supervisor;
pub mod sync;

/// The version of this program, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
