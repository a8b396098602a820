//! One module per subcommand.

pub mod bench;
pub mod build;
pub mod flash;
pub mod lock;
pub mod verify;
