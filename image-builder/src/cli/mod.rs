//! One module per subcommand.

pub mod bench;
pub mod bench_flash;
pub mod boot_area;
pub mod build;
pub mod center;
pub mod flash;
pub mod lock;
pub mod verify;
