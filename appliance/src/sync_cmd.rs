//! `appliance hub ...` and `appliance sync ...`: the sync engine's commands.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use appliance::config::Config;
use appliance::sync::engine::policy::Role;
use appliance::sync::engine::site::Site;
use appliance::sync::exchange::centers;
use appliance::sync::exchange::wire::Secret;
use appliance::sync::files::pool::Pool;
use appliance::sync::files::serve::HubFiles;
use appliance::sync::files::sweep;
use appliance::sync::link::runner::{Controls, Runner};
use appliance::sync::link::server::{HubOptions, HubServer};
use appliance::sync::link::settings::HubSettings;
use appliance::sync::stick;
use appliance::sync::verify;

/// Serves centers until the process is stopped.
pub fn serve_hub(config: &Path) -> Result<()> {
    let settings = HubSettings::load(config)?;
    let rules = settings.moodle.rulebook()?;
    let site = settings.moodle.site_config(settings.site_id, Role::Hub)?;
    let files = match &settings.dataroot {
        Some(dataroot) => {
            let pool = || Pool::new(dataroot, settings.perms);
            if let Some(grace) = settings.trash_after {
                sweep::spawn_hub_sweeper(pool()?, site.clone(), grace)?;
            }
            Some(Arc::new(HubFiles::new(pool()?)))
        }
        None => None,
    };
    let server = HubServer::start(
        HubOptions {
            site,
            listen: settings.listen,
            workers: settings.workers,
            capture_every: settings.capture_every,
            files,
        },
        rules,
    )?;
    eprintln!("hub: serving centers on {}", server.addr());
    server.wait();
    Ok(())
}

/// How `add-center` gets the center's secret.
pub enum SecretSource<'a> {
    /// The image builder made it (the card already holds it).
    From(&'a Path),
    /// Make a new one and write it here for the card.
    NewTo(&'a Path),
}

/// Registers a center at the hub, or gives it a new secret.
pub fn add_center(config: &Path, center: u32, name: &str, source: SecretSource<'_>) -> Result<()> {
    let settings = HubSettings::load(config)?;
    anyhow::ensure!(
        center != settings.site_id,
        "site {center} is the hub itself; centers take other numbers"
    );
    let mut site = Site::open(settings.moodle.site_config(settings.site_id, Role::Hub)?)?;
    let secret = match source {
        SecretSource::From(file) => Secret::read(file)?,
        SecretSource::NewTo(file) => {
            let secret = Secret::generate()?;
            write_private(file, &format!("{}\n", secret.to_hex()))?;
            eprintln!(
                "hub: the new secret is in {} (copy it to the card's [sync] secret_file)",
                file.display()
            );
            secret
        }
    };
    centers::add_center(site.conn(), center, name, &secret)?;
    eprintln!("hub: center {center} ({name}) registered");
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The agent for this appliance's config, not yet running.
fn runner(config: &Path) -> Result<Runner> {
    let config = Config::load(config)?;
    let settings = config.sync.with_context(|| {
        format!(
            "{}: [sync] hub_url is empty: this appliance does not sync",
            config.file.display()
        )
    })?;
    Runner::new(settings, u32::from(config.site_id), Controls::default())
}

/// The agent alone, in the foreground (the supervisor runs the same loop on a thread).
pub fn run_agent(config: &Path) -> Result<()> {
    runner(config)?.run()
}

/// Compares this site with the hub; exits non-zero when they differ (after repair, if it still does).
pub fn verify(config: &Path, opts: &verify::Options) -> Result<()> {
    let report = runner(config)?.verify(opts)?;
    print!("{report}");
    if opts.repair || report.identical() {
        Ok(())
    } else {
        anyhow::bail!("this site differs from the hub; `appliance sync verify --repair` copies the hub's rows")
    }
}

/// Seeds this center's empty Moodle database from the hub; idempotent once done.
pub fn seed(config: &Path) -> Result<()> {
    let seeded = runner(config)?.seed()?;
    if seeded.already {
        println!("seed: this center was seeded before: nothing to do");
        return Ok(());
    }
    println!(
        "seed: {}copied {} per-site rows and {} relayed rows; pulling from hub log position {}",
        if seeded.resumed { "resumed; " } else { "" },
        seeded.copied,
        seeded.relayed,
        seeded.cursor
    );
    if !seeded.tables_only_at_hub.is_empty() {
        println!(
            "seed: the hub has tables this card's Moodle lacks (plugins to add to the image): {}",
            seeded.tables_only_at_hub.join(", ")
        );
    }
    Ok(())
}

/// Prints the SQL that creates Moodle's tables from the XMLDB under `[moodle] dirroot`, for a
/// database a seed fills (tables that exist are left alone).
pub fn schema_sql(config: &Path) -> Result<()> {
    let (_, settings) = center_settings(config)?;
    let moodle = &settings.moodle;
    let schema =
        appliance::sync::schema::Schema::load_moodle_dir(&moodle.dirroot).with_context(|| {
            format!(
                "cannot read Moodle's schema under {}",
                moodle.dirroot.display()
            )
        })?;
    for (_, sql) in appliance::sync::schema::ddl::create_tables(&schema, &moodle.target.prefix) {
        println!(
            "{};",
            sql.replacen("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1)
        );
    }
    Ok(())
}

/// Where `sync export` writes.
pub struct ExportTo<'a> {
    pub dir: &'a Path,
    pub volume_size: Option<&'a str>,
}

fn volume_size(to: &ExportTo<'_>) -> Result<u64> {
    to.volume_size
        .map_or(Ok(u64::MAX), stick::parse_size)
        .context("--volume-size")
}

fn print_exported(e: &stick::export::Exported) {
    eprintln!(
        "sync: stick {}: {} changes and {} files, {} bytes in {} volumes:",
        e.stick,
        e.changes,
        e.blobs,
        e.bytes,
        e.volumes.len()
    );
    for v in &e.volumes {
        println!("{}", v.display());
    }
}

fn print_imported(dir: &Path, i: &stick::import::Imported) -> Result<()> {
    eprintln!(
        "sync: {} volumes from {}: applied {} changes, placed {} files",
        i.volumes,
        dir.display(),
        i.changes,
        i.placed.len()
    );
    if i.problems.is_empty() {
        return Ok(());
    }
    for p in &i.problems {
        eprintln!("sync: {p}");
    }
    let applied = if i.volumes == 0 {
        "nothing was applied"
    } else {
        "what verified was applied, the rest was not"
    };
    anyhow::bail!(
        "{} problem(s) with {} (listed above); {applied}",
        i.problems.len(),
        dir.display(),
    )
}

/// A center's settings for sticks: its `[sync]` (secret, batch size) and `[moodle]`, `[files]`.
fn center_settings(config: &Path) -> Result<(u32, appliance::sync::link::settings::AgentSettings)> {
    let config = Config::load(config)?;
    let settings = config.sync.with_context(|| {
        format!(
            "{}: [sync] hub_url is empty: sticks need the [sync] section too (a center that \
             syncs only by sticks may name a hub it cannot reach)",
            config.file.display()
        )
    })?;
    Ok((u32::from(config.site_id), settings))
}

/// `appliance sync export` at a center: a stick for the hub.
pub fn export_center(config: &Path, to: &ExportTo<'_>) -> Result<()> {
    let size = volume_size(to)?;
    let (site_id, s) = center_settings(config)?;
    let rules = s.moodle.rulebook()?;
    let secret = Secret::read(&s.secret_file)?;
    let mut site = Site::open(s.moodle.site_config(site_id, Role::Center)?)?;
    let target = stick::export::Target {
        dir: to.dir,
        volume_size: size,
    };
    let done = stick::export::from_center(
        &mut site,
        rules.policy(),
        secret,
        s.files.as_ref(),
        s.batch_changes,
        &target,
    )?;
    print_exported(&done);
    Ok(())
}

/// `appliance sync export --for CENTER` at the hub.
pub fn export_hub(config: &Path, center: u32, seed: bool, to: &ExportTo<'_>) -> Result<()> {
    let size = volume_size(to)?;
    let settings = HubSettings::load(config)?;
    let rules = settings.moodle.rulebook()?;
    let mut site = Site::open(settings.moodle.site_config(settings.site_id, Role::Hub)?)?;
    let pool = hub_pool(&settings)?;
    let target = stick::export::Target {
        dir: to.dir,
        volume_size: size,
    };
    let export = if seed {
        stick::export::seed_for_center
    } else {
        stick::export::for_center
    };
    let done = export(&mut site, rules.policy(), center, pool.as_ref(), &target)?;
    print_exported(&done);
    Ok(())
}

fn hub_pool(settings: &HubSettings) -> Result<Option<Pool>> {
    settings
        .dataroot
        .as_ref()
        .map(|d| Pool::new(d, settings.perms))
        .transpose()
}

/// `appliance sync import DIR` at a center.
pub fn import_center(config: &Path, dir: &Path) -> Result<()> {
    let (site_id, s) = center_settings(config)?;
    let rules = s.moodle.rulebook()?;
    let secret = Secret::read(&s.secret_file)?;
    let mut site = Site::open(s.moodle.site_config(site_id, Role::Center)?)?;
    let pool = s
        .files
        .as_ref()
        .map(|f| Pool::new(&f.dataroot, f.perms))
        .transpose()?;
    let version = appliance::sync::seed::code_version(&s.moodle.dirroot)?;
    let done = stick::import::at_center(
        &mut site,
        rules.policy(),
        &secret,
        pool.as_ref(),
        dir,
        version,
    )?;
    print_imported(dir, &done)
}

/// `appliance sync import --hub DIR`.
pub fn import_hub(config: &Path, dir: &Path) -> Result<()> {
    let settings = HubSettings::load(config)?;
    let rules = settings.moodle.rulebook()?;
    let mut site = Site::open(settings.moodle.site_config(settings.site_id, Role::Hub)?)?;
    let pool = hub_pool(&settings)?;
    let done = stick::import::at_hub(&mut site, rules.policy(), pool.as_ref(), dir)?;
    print_imported(dir, &done)
}

/// `appliance sync clashes` at a center.
pub fn clashes_center(config: &Path) -> Result<()> {
    let (site_id, s) = center_settings(config)?;
    let mut site = Site::open(s.moodle.site_config(site_id, Role::Center)?)?;
    print_clashes(&mut site)
}

/// `appliance sync clashes --hub`.
pub fn clashes_hub(config: &Path) -> Result<()> {
    let settings = HubSettings::load(config)?;
    let mut site = Site::open(settings.moodle.site_config(settings.site_id, Role::Hub)?)?;
    print_clashes(&mut site)
}

fn print_clashes(site: &mut Site) -> Result<()> {
    let clashes = appliance::sync::engine::clash::recent(site.conn(), 1000)?;
    if clashes.is_empty() {
        println!("no name was given to two people or things");
    }
    for c in clashes {
        println!(
            "{}: {}.{} '{}': row {} kept it, row {} (made at site {}) is now '{}'",
            c.at, c.table, c.column, c.old, c.kept, c.renamed, c.site, c.new
        );
    }
    Ok(())
}
