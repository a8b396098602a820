//! `appliance sync schema-sql` against real Moodle 4.5.0 (../shared/moodle-release): the tables a center
//! gets before its seed are the tables Moodle's own installer makes, down to index names, row format and
//! the index an install step adds; and Moodle's `check_database_schema.php` finds nothing wrong with a
//! center made that way and filled with the hub's rows.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{ensure, Result};
use kituo_tests::moodle::{self, Site};
use kituo_tests::testbed::MariaDb;
use kituo_tests::{appliance_binary, stdout};

/// What information_schema says of a database: tables, columns and indexes, each a sorted list.
fn catalog(site: &Site) -> Result<BTreeMap<&'static str, String>> {
    let db = &site.database;
    let mut out = BTreeMap::new();
    out.insert(
        "tables",
        site.sql(&format!(
            "SELECT table_name, engine, row_format, table_collation, table_comment
             FROM information_schema.tables WHERE table_schema = '{db}' ORDER BY 1"
        ))?,
    );
    out.insert(
        "columns",
        site.sql(&format!(
            "SELECT table_name, ordinal_position, column_name, column_type, is_nullable,
                    column_default, extra, collation_name, column_comment
             FROM information_schema.columns WHERE table_schema = '{db}' ORDER BY 1, 2"
        ))?,
    );
    out.insert(
        "indexes",
        site.sql(&format!(
            "SELECT table_name, index_name, non_unique, index_type,
                    GROUP_CONCAT(column_name ORDER BY seq_in_index)
             FROM information_schema.statistics WHERE table_schema = '{db}'
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2"
        ))?,
    );
    Ok(out)
}

/// The first lines where two listings differ.
fn differences(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let only_a = a.iter().filter(|l| !b.contains(l)).take(8);
    let only_b = b.iter().filter(|l| !a.contains(l)).take(8);
    format!(
        "installer only: {:#?}\nschema-sql only: {:#?}",
        only_a.collect::<Vec<_>>(),
        only_b.collect::<Vec<_>>()
    )
}

#[test]
fn schema_sql_makes_what_moodles_installer_makes() -> Result<()> {
    moodle::ensure_php()?;
    let dirroot = moodle::code("4.5.0")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    // The install is what takes time; durability is not what this test is about.
    let db = MariaDb::start_with(
        &dir.join("db"),
        &["--innodb-flush-log-at-trx-commit=0".into()],
    )?;
    let hub = Site::new(&db, "hub", &dirroot, &dir.join("hubdata"))?;
    hub.install("Hub")?;

    let center = Site::new(&db, "center", &dirroot, &dir.join("centerdata"))?;
    let secret = dir.join("secret");
    std::fs::write(&secret, "ab".repeat(32))?;
    let config = dir.join("appliance.ini");
    std::fs::write(
        &config,
        format!(
            "[site]\ncenter_id = c\nsite_id = 2\n[sync]\nhub_url = http://127.0.0.1:9/\nsecret_file = {}\n\
             [moodle]\ndatabase = center\ndirroot = {}\nsocket = {}\nuser = root\npassword_file =\n",
            secret.display(),
            dirroot.display(),
            db.socket.display()
        ),
    )?;
    let out = Command::new(appliance_binary())
        .args(["sync", "schema-sql", "--config"])
        .arg(&config)
        .output()?;
    ensure!(out.status.success(), "schema-sql: {out:?}");
    center.sql(&stdout(&out))?;

    let (made, installed) = (catalog(&center)?, catalog(&hub)?);
    let tables = installed["tables"].lines().count();
    ensure!(tables == 494, "the installer made {tables} tables");
    for (what, listing) in &installed {
        ensure!(
            made[what] == *listing,
            "{what} differ:\n{}",
            differences(listing, &made[what])
        );
    }
    let fulltext = made["indexes"]
        .lines()
        .any(|l| l.contains("mdl_search_simpledb_index_index") && l.contains("FULLTEXT"));
    ensure!(fulltext, "the simple search engine's FULLTEXT index");

    // A center holds the hub's rows once seeded; then Moodle itself checks its tables.
    let names = hub.sql("SHOW TABLES")?;
    let copy: String = names
        .lines()
        .map(|t| format!("INSERT INTO center.`{t}` SELECT * FROM hub.`{t}`;"))
        .collect();
    center.sql(&copy)?;
    let check = center.php("admin/cli/check_database_schema.php", &[])?;
    let said = String::from_utf8_lossy(&check.stdout);
    ensure!(
        check.status.success() && said.contains("Database structure is ok"),
        "check_database_schema.php on the center ({}):\n{said}{}",
        check.status,
        String::from_utf8_lossy(&check.stderr)
    );
    // And it does find what is wrong: a table no plugin declares.
    center.sql("CREATE TABLE mdl_stray (id BIGINT PRIMARY KEY)")?;
    let check = center.php("admin/cli/check_database_schema.php", &[])?;
    let said = String::from_utf8_lossy(&check.stdout);
    ensure!(
        !check.status.success() && said.contains("stray"),
        "the check must see a stray table: {said}"
    );
    Ok(())
}
