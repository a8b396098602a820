//! The whole Moodle 4.5 schema in a real MariaDB: our DDL creates every table with Moodle's keys and
//! indexes, and `upgrade(4.5.0 → 4.5.5+)` leaves a database identical to a fresh 4.5.5+ install.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use appliance::sync::schema::{create_tables, ddl, upgrade, Schema};
use kituo_tests::testbed::MariaDb;
use mysql::prelude::Queryable;

const MOODLE_450: &str = "/work/shared/moodle-schema/4.5.0";
const MOODLE_455: &str = "/work/shared/moodle-schema/4.5.5plus";
const PREFIX: &str = "mdl_";

type ColumnRow = (String, String, u64, String, String, Option<String>, String);
type IndexRow = (String, String, i64, u64, String);
type TableRow = (String, String, String, String);

fn run_all(conn: &mut mysql::Conn, db: &str, statements: &[String]) -> Result<()> {
    conn.query_drop(format!(
        "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))?;
    conn.query_drop(format!("USE `{db}`"))?;
    for sql in statements {
        conn.query_drop(sql)
            .with_context(|| format!("in database {db}, this failed:\n{sql}"))?;
    }
    Ok(())
}

fn columns(conn: &mut mysql::Conn, db: &str) -> Result<Vec<ColumnRow>> {
    Ok(conn.exec(
        "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
        (db,),
    )?)
}

fn indexes(conn: &mut mysql::Conn, db: &str) -> Result<Vec<IndexRow>> {
    Ok(conn.exec(
        "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME
         FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ?
         ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
        (db,),
    )?)
}

fn tables(conn: &mut mysql::Conn, db: &str) -> Result<Vec<TableRow>> {
    Ok(conn.exec(
        "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION, ROW_FORMAT
         FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
        (db,),
    )?)
}

/// Equal, or an error listing what only one side has (readable, unlike a 5000-row assert_eq).
fn same<T: Ord + std::fmt::Debug + Clone>(what: &str, a: &[T], b: &[T]) -> Result<()> {
    let a: BTreeSet<T> = a.iter().cloned().collect();
    let b: BTreeSet<T> = b.iter().cloned().collect();
    let only_a: Vec<_> = a.difference(&b).take(10).collect();
    let only_b: Vec<_> = b.difference(&a).take(10).collect();
    ensure!(
        only_a.is_empty() && only_b.is_empty(),
        "{what} differ:\n  only in the upgraded database: {only_a:#?}\n  only in the fresh one: {only_b:#?}"
    );
    Ok(())
}

#[test]
fn moodle_schema_loads_into_mariadb_and_upgrades_like_a_fresh_install() -> Result<()> {
    let s450 = Schema::load_moodle_dir(Path::new(MOODLE_450))?;
    let s455 = Schema::load_moodle_dir(Path::new(MOODLE_455))?;
    let dir = tempfile::tempdir()?;
    let db = MariaDb::start_with(dir.path(), &MariaDb::sync_site_args(1, 10, 1))?;
    let mut conn = mysql::Conn::new(db.opts())?;

    // 4.5.0 from scratch.
    let create: Vec<String> = create_tables(&s450, PREFIX)
        .into_iter()
        .map(|(_, sql)| sql)
        .collect();
    run_all(&mut conn, "moodle_a", &create)?;
    let t = tables(&mut conn, "moodle_a")?;
    assert_eq!(t.len(), 494);
    for (name, engine, collation, row_format) in &t {
        assert!(name.starts_with(PREFIX), "{name}");
        assert_eq!(
            (engine.as_str(), collation.as_str(), row_format.as_str()),
            ("InnoDB", "utf8mb4_unicode_ci", "Compressed"),
            "{name}"
        );
    }
    let ix = indexes(&mut conn, "moodle_a")?;
    let primaries: Vec<(&str, &str)> = ix
        .iter()
        .filter(|r| r.1 == "PRIMARY")
        .map(|r| (r.0.as_str(), r.4.as_str()))
        .collect();
    assert_eq!(
        primaries.len(),
        494,
        "one single-column primary key per table"
    );
    assert!(
        primaries.iter().all(|(_, col)| *col == "id"),
        "{primaries:?}"
    );
    // Every unique key of XMLDB is a unique index, named as Moodle names it.
    let db_unique: BTreeSet<(String, String)> = ix
        .iter()
        .filter(|r| r.2 == 0 && r.1 != "PRIMARY")
        .map(|r| (r.0.clone(), r.1.clone()))
        .collect();
    let want_unique: BTreeSet<(String, String)> = ddl::install_indexes(&s450, PREFIX)
        .into_iter()
        .flat_map(|(table, ix)| {
            ix.into_iter()
                .filter(|i| i.unique)
                .map(move |i| (format!("{PREFIX}{table}"), i.name))
        })
        .collect();
    assert_eq!(db_unique, want_unique);
    let gg: Vec<&str> = ix
        .iter()
        .filter(|r| r.0 == "mdl_grade_grades" && r.1 == "mdl_gradgrad_useite_uix")
        .map(|r| r.4.as_str())
        .collect();
    assert_eq!(gg, ["userid", "itemid"]);
    // No real foreign keys: Moodle makes none on MySQL.
    let fks: Vec<String> = conn.exec(
        "SELECT CONSTRAINT_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ?",
        ("moodle_a",),
    )?;
    assert!(fks.is_empty(), "{fks:?}");
    // The site's auto-increment share applies to Moodle's tables.
    conn.query_drop("INSERT INTO mdl_forum_posts (subject, message, attachment) VALUES ('a', 'b', ''), ('c', 'd', '')")?;
    let ids: Vec<u64> = conn.query("SELECT id FROM mdl_forum_posts ORDER BY id")?;
    assert_eq!(ids, [1, 11]);

    // Upgrade it to 4.5.5+, and compare with a fresh 4.5.5+.
    let steps = upgrade(&s450, &s455, PREFIX);
    assert_eq!(steps.len(), 3, "{steps:#?}");
    for sql in &steps {
        conn.query_drop(sql)
            .with_context(|| format!("upgrade step failed:\n{sql}"))?;
    }
    let fresh: Vec<String> = create_tables(&s455, PREFIX)
        .into_iter()
        .map(|(_, sql)| sql)
        .collect();
    run_all(&mut conn, "moodle_b", &fresh)?;
    let (ca, cb) = (
        columns(&mut conn, "moodle_a")?,
        columns(&mut conn, "moodle_b")?,
    );
    assert!(ca.len() > 4400, "{} columns", ca.len());
    assert!(ca
        .iter()
        .any(|c| c.0 == "mdl_oauth2_issuer" && c.1 == "systememail"));
    same("columns", &ca, &cb)?;
    assert_eq!(ca, cb, "same columns in the same order");
    let (ia, ib) = (
        indexes(&mut conn, "moodle_a")?,
        indexes(&mut conn, "moodle_b")?,
    );
    assert!(ia.iter().any(|i| i.1 == "mdl_coursect_comite_ix"));
    same("indexes", &ia, &ib)?;
    same(
        "tables",
        &tables(&mut conn, "moodle_a")?,
        &tables(&mut conn, "moodle_b")?,
    )?;
    // Nothing left to do once upgraded.
    assert!(upgrade(&s455, &s455, PREFIX).is_empty());
    Ok(())
}
