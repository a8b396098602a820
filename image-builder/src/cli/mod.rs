//! One module per subcommand.

pub mod bench;
pub mod bench_flash;
pub mod build;
pub mod center;
pub mod flash;
pub mod lock;
pub mod verify;
