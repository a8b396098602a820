//! The hub's registry of centers: each center's site number, name and secret, by which the hub
//! authenticates its requests and its sticks.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::sync::exchange::wire::Secret;

/// A registered center's secret; `None` for a site the hub does not know.
pub fn center_secret(conn: &mut impl Queryable, center: u32) -> Result<Option<Secret>> {
    let found: Option<Vec<u8>> = conn
        .exec_first(
            "SELECT secret FROM kituo_sync.centers WHERE site = ?",
            (center,),
        )
        .context("cannot read the centers' secrets")?;
    Ok(found.map(Secret::from_bytes))
}

/// Registers a center with its secret, or replaces the secret of a registered one.
pub fn add_center(
    conn: &mut impl Queryable,
    center: u32,
    name: &str,
    secret: &Secret,
) -> Result<()> {
    conn.exec_drop(
        "INSERT INTO kituo_sync.centers (site, name, secret) VALUES (?, ?, ?)
         ON DUPLICATE KEY UPDATE name = VALUES(name), secret = VALUES(secret)",
        (center, name, secret.as_bytes()),
    )
    .context("cannot register the center")
}
