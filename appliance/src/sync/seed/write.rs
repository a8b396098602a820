//! Writing the hub's rows at a seeded center, as they are: with `skip_replication`, like every write
//! of the engine, because they are the hub's rows, not changes made here.

use anyhow::{bail, Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::change::{Row, Value};
use crate::sync::engine::policy::Policy;
use crate::sync::engine::site::Site;
use crate::sync::engine::sql::{quote, to_sql, Target};
use crate::sync::seed::copy::{columns_of, Copied};
use crate::sync::verify;

/// Writes one run of the hub's rows; returns the rows written. Columns or tables this card's Moodle
/// lacks are left out (plugins the hub has and the card does not). `code_version` is the `$version`
/// of the card's Moodle code, checked against the hub's before its version rows are written.
pub fn write_copied(
    site: &mut Site,
    policy: &Policy,
    copied: &Copied,
    code_version: Option<f64>,
) -> Result<u64> {
    let target = site.target().clone();
    let ours = columns_of(site.conn(), &target, copied.table())?;
    if ours.is_empty() {
        return Ok(0);
    }
    match copied {
        Copied::PerSite { table, rows } => {
            if table == "config" {
                check_release(rows, code_version)?;
            }
            for row in rows {
                replace_row(site, &target, table, row, &ours)?;
            }
        }
        Copied::Relayed {
            table,
            columns,
            rows,
        } => {
            let columns: Vec<String> = columns
                .iter()
                .filter(|c| ours.contains(c))
                .cloned()
                .collect();
            verify::copy_rows(site, policy, table, &columns, rows)?;
        }
    }
    Ok(copied.len() as u64)
}

fn replace_row(
    site: &mut Site,
    target: &Target,
    table: &str,
    row: &Row,
    ours: &[String],
) -> Result<()> {
    let (names, values): (Vec<String>, Vec<mysql::Value>) = row
        .iter()
        .filter(|(c, _)| ours.contains(c))
        .map(|(c, v)| (quote(c), to_sql(v)))
        .unzip();
    site.conn()
        .exec_drop(
            format!(
                "REPLACE INTO {} ({}) VALUES ({})",
                target.table(table),
                names.join(", "),
                vec!["?"; names.len()].join(", ")
            ),
            values,
        )
        .with_context(|| format!("cannot write a row of {table}"))
}

/// A card whose Moodle code is another release than the hub's would run the hub's database with the
/// wrong code: refused before anything is written.
fn check_release(rows: &[Row], code_version: Option<f64>) -> Result<()> {
    let Some(ours) = code_version else {
        return Ok(());
    };
    let theirs = rows
        .iter()
        .find(|r| matches!(r.get("name"), Some(Value::Bytes(n)) if n == b"version"))
        .and_then(|r| match r.get("value") {
            Some(Value::Bytes(v)) => std::str::from_utf8(v).ok()?.trim().parse::<f64>().ok(),
            _ => None,
        });
    match theirs {
        Some(theirs) if (theirs - ours).abs() < 0.005 => Ok(()),
        Some(theirs) => bail!(
            "the hub runs Moodle version {theirs}, this card carries {ours}: build the card with the \
             hub's release (image-builder build --moodle)"
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, value: &str) -> Row {
        Row::from([
            ("name".to_owned(), Value::Bytes(name.into())),
            ("value".to_owned(), Value::Bytes(value.into())),
        ])
    }

    #[test]
    fn the_hubs_release_must_be_the_cards() {
        let rows = [config("release", "4.5"), config("version", "2024100700")];
        assert!(check_release(&rows, Some(2024100700.00)).is_ok());
        assert!(check_release(&rows, None).is_ok());
        let e = check_release(&rows, Some(2024100705.01)).unwrap_err();
        assert!(format!("{e}").contains("2024100700"), "{e}");
    }
}
