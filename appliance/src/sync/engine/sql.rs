//! Names and values as MariaDB takes them: where Moodle's tables are, quoting, parameters, and the
//! server errors the engine answers.

use anyhow::{Context, Result};
use mysql::prelude::Queryable;

use crate::sync::engine::change::{Row, Value};

const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;

/// Every Moodle table's primary key.
pub const ID: &str = "id";

const ER_DUP_ENTRY: u16 = 1062;

/// Where Moodle's tables are.
#[derive(Debug, Clone)]
pub struct Target {
    pub database: String,
    pub prefix: String,
}

impl Target {
    /// The quoted, qualified name of a Moodle table given its XMLDB name.
    pub fn table(&self, name: &str) -> String {
        format!(
            "{}.{}",
            quote(&self.database),
            quote(&format!("{}{name}", self.prefix))
        )
    }
}

/// Quotes an identifier for MariaDB. Names reaching SQL are also checked against the catalog first.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

pub fn is_duplicate(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<mysql::Error>(),
        Some(mysql::Error::MySqlError(m)) if m.code == ER_DUP_ENTRY
    )
}

pub fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Our value as a query parameter. Decimals travel as their exact text.
pub fn to_sql(v: &Value) -> mysql::Value {
    match v {
        Value::Null => mysql::Value::NULL,
        Value::Int(i) => mysql::Value::Int(*i),
        Value::UInt(u) => mysql::Value::UInt(*u),
        Value::Double(d) => mysql::Value::Double(*d),
        Value::Decimal(s) => mysql::Value::Bytes(s.clone().into_bytes()),
        Value::Bytes(b) => mysql::Value::Bytes(b.clone()),
    }
}

/// A value read back with SQL. Dates and times (which Moodle does not use) become their text.
pub fn from_sql(v: mysql::Value) -> Value {
    match v {
        mysql::Value::NULL => Value::Null,
        mysql::Value::Int(i) => Value::Int(i),
        mysql::Value::UInt(u) => Value::UInt(u),
        mysql::Value::Float(f) => Value::Double(f64::from(f)),
        mysql::Value::Double(d) => Value::Double(d),
        mysql::Value::Bytes(b) => Value::Bytes(b),
        other => Value::Bytes(other.as_sql(true).into_bytes()),
    }
}

/// One row by id, as values.
pub fn read_row(
    tx: &mut impl Queryable,
    target: &Target,
    table: &str,
    id: i64,
) -> Result<Option<Row>> {
    let row: Option<mysql::Row> = tx
        .exec_first(
            format!("SELECT * FROM {} WHERE id = ?", target.table(table)),
            (id,),
        )
        .with_context(|| format!("cannot read {table} id {id}"))?;
    Ok(row.map(|r| {
        let names: Vec<String> = r
            .columns_ref()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        names
            .into_iter()
            .zip(r.unwrap().into_iter().map(from_sql))
            .collect()
    }))
}

/// Ids per `IN (...)` list: a few hundred rows per statement, far below any packet limit.
pub const IN_LIST: usize = 500;

/// `table` then `ids`: the parameters of `WHERE tbl = ? AND row_id IN (?, ...)`.
pub fn table_and_ids(table: &str, ids: &[i64]) -> Vec<mysql::Value> {
    let mut params: Vec<mysql::Value> = vec![table.into()];
    params.extend(ids.iter().map(|id| mysql::Value::Int(*id)));
    params
}
/// A lost deadlock or lock wait: the server error that [`retry`] answers by running the batch again.
pub fn is_lock_error_code(code: u16) -> bool {
    code == ER_LOCK_DEADLOCK || code == ER_LOCK_WAIT_TIMEOUT
}
