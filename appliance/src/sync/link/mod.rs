//! The link: HTTP(S) carrying the exchange and the tools between a center and the hub.
//!
//! - [`http`]: the agent's authenticated client, under a bandwidth cap.
//! - [`files`]: the file calls over that client.
//! - [`runner`]: the agent as a service (`appliance supervise`, `appliance sync run`): exchanges,
//!   files, backoff.
//! - [`server`]: `appliance hub`, the hub's HTTP service.
//! - [`settings`]: `[sync]` and `[moodle]` of `appliance.ini`, and the hub's `hub.ini`.

pub mod files;
pub mod http;
pub mod runner;
pub mod server;
pub mod settings;
