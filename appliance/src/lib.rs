//! Kituo's on-device program. The binary (`appliance`) is the supervisor and its tools; the library also
//! holds the configuration formats the image builder shares.

pub mod center;
pub mod config;
pub mod ini;
pub mod status;

/// The version of this program, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
