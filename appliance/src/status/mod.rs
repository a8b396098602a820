//! The status server: a JSON API (and, with the supervisor issue, the technician's page) on loopback,
//! proxied by nginx.

mod server;

pub use server::{serve, Snapshot};
