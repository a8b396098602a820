//! `image-builder center new` (a center config with a fresh Wi-Fi passphrase and a free site number, and
//! the center's other secrets in the builder's state) and `image-builder center check FILE`.
//!
//! The passphrase and the sync secret go into the center config: it belongs on the card's boot partition,
//! a technician needs the passphrase, and a card flashed from a shared image must have the secret the hub
//! registers. Both are also kept with the database passwords in `<state>/centers/<id>/secrets.ini`, as for
//! every built center, beside a copy of the new config, which is how the next `center new` knows the site
//! number is taken.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use appliance::center::Center;

use crate::centers::{password, registry, render};
use crate::secrets::{self, Secrets};
use crate::Paths;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Write a new center config: fresh WPA2 passphrase, the lowest free site_id, secrets in --state.
    New(Box<NewArgs>),
    /// Check a center config, naming the file, line and key of the first problem.
    Check {
        /// The center config (e.g. a center.ini to go onto a card).
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// Short identifier: lower-case letters, digits and '-'.
    #[arg(long)]
    pub id: String,
    /// Human-readable name, shown on the status page.
    #[arg(long)]
    pub name: String,
    /// URL of the central hub.
    #[arg(long)]
    pub hub_url: String,
    /// Access-point network name [default: Kituo-<id>].
    #[arg(long)]
    pub ssid: Option<String>,
    /// ISO 3166 country code [default: the example's, TZ].
    #[arg(long)]
    pub country: Option<String>,
    /// 2.4 GHz channel, 1 to 13 [default: the example's, 6].
    #[arg(long)]
    pub channel: Option<u8>,
    /// IANA time zone [default: the example's, Africa/Dar_es_Salaam].
    #[arg(long)]
    pub timezone: Option<String>,
    /// Folders of center configs whose ids and site_ids are taken (repeatable) [default: the board-configs
    /// folder and <state>/centers].
    #[arg(long)]
    pub dir: Vec<PathBuf>,
    /// Ask for the technician password of the card's status page (twice, unechoed, at a terminal; one
    /// line from a pipe) and store only its Argon2 hash, as [status] technician_password_hash.
    #[arg(long)]
    pub technician_password_prompt: bool,
    /// Where to write the config [default: ./<id>.ini]; an existing file is never overwritten.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub paths: Paths,
}

pub fn run(command: &Command) -> Result<()> {
    match command {
        Command::New(args) => {
            let (path, center) = new(args)?;
            println!("{}", path.display());
            eprintln!(
                "center '{}': site_id {} of {}, SSID '{}'; secrets in {}",
                center.id,
                center.site_id,
                center.auto_increment_increment,
                center.ssid,
                Secrets::dir(&args.paths.state, &center.id).display()
            );
            Ok(())
        }
        Command::Check { file } => {
            let center = check(file)?;
            println!(
                "{}: center '{}' ({}), site_id {} of {}, SSID '{}', hub {}",
                file.display(),
                center.id,
                center.name,
                center.site_id,
                center.auto_increment_increment,
                center.ssid,
                center.hub_url
            );
            Ok(())
        }
    }
}

pub fn check(file: &Path) -> Result<Center> {
    Center::load(file).context("the center config is not valid")
}

/// Writes the new center config; returns its path and the center.
pub fn new(args: &NewArgs) -> Result<(PathBuf, Center)> {
    let id = &args.id;
    // Checked before the id names a path in the state folder.
    if id.is_empty()
        || id.starts_with('-')
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("--id: use lower-case letters, digits and '-' (not first), got '{id}'");
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{id}.ini")));
    if out.exists() {
        bail!(
            "{} exists; choose another --out (it is never overwritten)",
            out.display()
        );
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!("--out: no folder {}", parent.display());
        }
    }
    let dirs = if args.dir.is_empty() {
        vec![args.paths.board_configs(), args.paths.state.join("centers")]
    } else {
        args.dir.clone()
    };
    let known = registry::scan(&dirs)?;
    if let Some(other) = registry::with_id(&known, id) {
        bail!(
            "center id '{id}' exists: {}; choose another --id",
            other.path.display()
        );
    }
    if Secrets::exist(&args.paths.state, id) {
        bail!(
            "center id '{id}' exists: the builder holds its secrets in {}; choose another --id",
            Secrets::dir(&args.paths.state, id).display()
        );
    }
    let unrecorded = registry::unrecorded(&args.paths.state);
    if args.dir.is_empty() && !unrecorded.is_empty() {
        eprintln!(
            "warning: the builder holds secrets of {} without a copy of their center config, so their \
             site_ids are unknown here\nhint: build them once more (a build keeps a copy), or copy each \
             config to {}",
            unrecorded.join(", "),
            Secrets::dir(&args.paths.state, "<id>").join("center.ini").display()
        );
    }
    let increment = registry::shared_increment(&known)?;
    let taken: BTreeSet<u8> = known.iter().map(|k| k.center.site_id).collect();
    let Some(site_id) = registry::free_site_id(&taken, increment) else {
        bail!(
            "no free site_id: all of 2 to {} are taken by the {} center configs in {}\n\
             hint: reuse the site_id of a decommissioned center (remove its config), or raise \
             auto_increment_increment at the hub and every center together",
            increment - 1,
            known.len(),
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };

    let passphrase = secrets::fresh("wifi_passphrase").context("no Wi-Fi passphrase generator")?;
    // In the config too: a card flashed from a shared image then has the secret the hub registers.
    let sync_secret = secrets::fresh("sync_secret").context("no sync secret generator")?;
    let mut values = vec![
        ("center", "id", id.clone()),
        ("center", "name", args.name.clone()),
        (
            "wifi",
            "ssid",
            args.ssid.clone().unwrap_or_else(|| format!("Kituo-{id}")),
        ),
        ("wifi", "passphrase", passphrase.clone()),
        ("sync", "hub_url", args.hub_url.clone()),
        ("sync", "site_id", site_id.to_string()),
        ("sync", "auto_increment_increment", increment.to_string()),
        ("sync", "secret", sync_secret.clone()),
        // A new center joins the university: its Moodle is the hub's.
        ("sync", "moodle", "seed".to_owned()),
    ];
    if let Some(tz) = &args.timezone {
        values.push(("center", "timezone", tz.clone()));
    }
    if let Some(country) = &args.country {
        values.push(("wifi", "country", country.clone()));
    }
    if let Some(channel) = args.channel {
        values.push(("wifi", "channel", channel.to_string()));
    }
    if args.technician_password_prompt {
        let password = password::ask("technician password for the status page")?;
        let hash = appliance::status::auth::hash_password(&password)?;
        values.push(("status", "technician_password_hash", hash));
    }
    let (text, center) = render::center_ini(&out, &values)
        .context("the given values do not make a valid center config")?;

    Secrets::create(
        &args.paths.state,
        id,
        &[
            ("wifi_passphrase", &passphrase),
            ("sync_secret", &sync_secret),
        ],
    )?;
    registry::record(&args.paths.state, id, &text)?;
    render::write_new(&out, &text)?;
    Ok((out, center))
}
