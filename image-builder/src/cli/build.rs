//! `image-builder build`: board config + center config -> card image, checksum, bmap, compressed image and
//! manifest. Slow stages are cached (packages, base root filesystem, cross toolchain, appliance binary);
//! everything per center is applied on top, so changing a center or the appliance is quick.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use appliance::center::Center;
use appliance::commission::secrets::write_private;
use appliance::commission::{apply, context, render};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use crate::bmap::Bmap;
use crate::board::Board;
use crate::disk::{self, Layout};
use crate::lockfile::Lock;
use crate::manifest::{self, Manifest};
use crate::moodle::{self, Release};
use crate::packages::sha256_file;
use crate::progress::Progress;
use crate::secrets::Secrets;
use crate::{bootloader, cross, overlay, rootfs, tools, Paths};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Board name (a file in the board-configs folder) or a path to a board INI.
    #[arg(long, default_value = "rpi4")]
    pub board: String,
    /// Center config INI; default: the example center in board-configs/.
    #[arg(long)]
    pub center: Option<PathBuf>,
    /// The Moodle release to build in (an INI naming its tarball and sha256; see README). Without it
    /// the image serves a placeholder page instead of Moodle.
    #[arg(long)]
    pub moodle: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Rebuild the root filesystem and the appliance even when cached (the reproducibility test uses it).
    #[arg(long)]
    pub fresh: bool,
    #[command(flatten)]
    pub paths: Paths,
}

/// The board config and the center config (`example-center.ini` by default), with its path.
pub fn load_configs(
    paths: &Paths,
    board: &str,
    center: Option<&Path>,
) -> Result<(Board, PathBuf, Center)> {
    let board = Board::load(&paths.board_configs(), board)?;
    let center_path = center
        .map(Path::to_path_buf)
        .unwrap_or_else(|| paths.board_configs().join("example-center.ini"));
    let center = Center::load(&center_path)?;
    Ok((board, center_path, center))
}

pub struct Outputs {
    pub image: PathBuf,
    pub manifest: Manifest,
}

pub fn run(args: &Args, progress: &Progress) -> Result<Outputs> {
    let paths = &args.paths;
    let (board, center_path, center) = load_configs(paths, &args.board, args.center.as_deref())?;
    let moodle = args.moodle.as_deref().map(Release::load).transpose()?;
    // Configs first: a typo is reported before anything is installed or downloaded.
    tools::check_required()?;
    tools::check_installed(&bootloader::required_tools(&board))?;
    let lock = Lock::load(&Lock::path_for(&paths.locks(), "trixie", &board.arch))?;
    let secrets = Secrets::for_center(&paths.state, &center.id)?;
    let center_text = std::fs::read_to_string(&center_path)
        .with_context(|| format!("cannot read {}", center_path.display()))?;
    crate::centers::registry::record(&paths.state, &center.id, &center_text)?;
    let cache = &paths.cache;
    std::fs::create_dir_all(cache)
        .with_context(|| format!("cannot create the cache {}", cache.display()))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let epoch = lock.source_date_epoch;
    // Before the slow root filesystem: a missing or altered bootloader blob fails the build at once.
    let blobs = bootloader::fetch(&board, cache)?;
    let moodle_tarball = moodle.as_ref().map(|r| r.fetch(cache)).transpose()?;

    let mut layers = overlay::layers(&paths.overlays(), &board);
    if moodle.is_some() {
        layers.push(paths.overlays().join(moodle::LAYER));
    }
    let mut boards = Board::all(&paths.board_configs())?;
    boards.retain(|b| b.name != board.name);
    boards.push(board.clone());
    let packages = rootfs::arch_package_set(&paths.overlays(), &boards, &board.arch)?;
    let base = rootfs::base(cache, &lock, &packages, args.fresh, progress)?;
    let binary = cross::appliance(
        cache,
        &paths.workspace,
        &board.arch,
        epoch,
        args.fresh,
        progress,
    )?;
    if base.cached {
        progress.cached("root filesystem (mmdebstrap)");
    }
    if binary.cached {
        progress.cached("cross-build appliance");
    }
    let appliance_sha = sha256_file(&binary.path)?;

    let seed = input_digest(&[
        lock.digest(),
        base.key.clone(),
        sha256_file(&board.file)?,
        sha256_file(&center_path)?,
        tree_digest(&layers)?,
        appliance_sha.clone(),
        moodle
            .as_ref()
            .map(|r| r.sha256.clone())
            .unwrap_or_default(),
        hex::encode(Sha256::digest(format!("{:?}", secrets.values).as_bytes())),
    ]);
    let build_id = seed[..12].to_owned();
    let layout = Layout::new(&seed, board.boot_mib, board.root_mib, board.data_mib);
    let name = format!("kituo-{}-{}", board.name, center.id);

    let work = tempfile::Builder::new().prefix("work-").tempdir_in(cache)?;
    let (root, boot, data) = (
        work.path().join("root"),
        work.path().join("boot"),
        work.path().join("data"),
    );
    let step = progress.step("root filesystem: overlays");
    rootfs::unpack(&base.tarball, &root)?;
    std::fs::create_dir_all(&boot)?;
    install_appliance(&root, &binary.path)?;
    if let Some(tarball) = &moodle_tarball {
        // Before the overlays: Kituo's files in the web root (config.php, kituo-health.php) go on top.
        moodle::unpack(tarball, &root)?;
    }
    normalize(&root, epoch)?;
    let context = template_context(
        &board,
        &center,
        &secrets,
        &layout,
        moodle.as_ref(),
        &build_id,
        epoch,
    );
    std::fs::write(root.join("etc/kituo/build.ini"), build_info(&context))?;
    overlay::apply(&layers, &context, &root, &boot)?;
    overlay::customize(&layers, &root, epoch)?;
    bootloader::stage(&board, &root, &boot, &layout, epoch)?;
    empty_dir(&root.join("boot/firmware"))?;
    data_tree(&root, &data)?;
    install_commissioning(
        &layers,
        &image_context(&board, &layout, moodle.as_ref(), &build_id, epoch),
        &secrets,
        (&center, &center_path),
        &root,
        &data,
    )?;
    if moodle.is_some() {
        moodle::drop_placeholder(&root)?;
    }
    for dir in [&root, &boot, &data] {
        overlay::clamp_mtimes(dir, epoch)?;
    }
    let packages = manifest::installed_packages(&root, &lock)?;
    step.finish();

    check_room(&board, &root, &data)?;

    let step = progress.step("disk image");
    let image = args.out.join(format!("{name}.img"));
    write_disk_image(work.path(), &layout, &seed, epoch, &image)?;
    bootloader::install(&blobs, &image)?;
    drop(work);
    step.finish();

    let step = progress.step("checksum, bmap, zstd");
    let image_sha = sha256_file(&image)?;
    std::fs::write(
        args.out.join(format!("{name}.img.sha256")),
        format!("{image_sha}  {name}.img\n"),
    )?;
    let bmap = Bmap::of_image(&image)?;
    std::fs::write(args.out.join(format!("{name}.bmap")), bmap.to_xml()?)?;
    let zst = args.out.join(format!("{name}.img.zst"));
    compress(&image, &zst)?;
    step.finish();

    let manifest = Manifest {
        name: name.clone(),
        build_id,
        board: board.name.clone(),
        arch: board.arch.clone(),
        center_id: center.id.clone(),
        center_config_sha256: sha256_file(&center_path)?,
        source_date_epoch: epoch,
        lock: manifest::LockInfo {
            file: lock.path.display().to_string(),
            sha256: lock.digest(),
        },
        appliance: manifest::Appliance {
            version: appliance::VERSION.to_owned(),
            sha256: appliance_sha,
        },
        image: manifest::ImageInfo {
            file: format!("{name}.img"),
            size_bytes: bmap.image_size,
            sha256: image_sha,
            mapped_bytes: bmap.mapped_blocks() * crate::bmap::BLOCK,
            compressed_file: format!("{name}.img.zst"),
            compressed_bytes: std::fs::metadata(&zst)?.len(),
        },
        partition_table: layout,
        bootloader: blobs.iter().map(bootloader::Blob::describe).collect(),
        moodle,
        packages,
    };
    std::fs::write(
        args.out.join(format!("{name}.manifest.json")),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    Ok(Outputs { image, manifest })
}

/// Before any image is written: the staged trees fit their partitions. A root slot left less than a
/// fifth free is said aloud, as root slot B gets the next release at the same size.
fn check_room(board: &Board, root: &Path, data: &Path) -> Result<()> {
    let in_board = || format!("board {}", board.file.display());
    let need = disk::room::check(root, board.root_mib, "root file system", "root_mib")
        .with_context(in_board)?;
    disk::room::check(data, board.data_mib, "data partition", "data_mib").with_context(in_board)?;
    if need * 5 > board.root_mib * 4 {
        eprintln!(
            "warning: the root file system takes {need} of root_mib = {} MiB: little room for the next \
             release in the same slot ({})",
            board.root_mib,
            board.file.display()
        );
    }
    Ok(())
}

/// The three file systems from the staged trees in `work` (root/, boot/, data/), placed into `image`.
fn write_disk_image(
    work: &Path,
    layout: &Layout,
    seed: &str,
    epoch: u64,
    image: &Path,
) -> Result<()> {
    let (boot_img, root_img, data_img) = (
        work.join("boot.vfat"),
        work.join("root.ext4"),
        work.join("data.ext4"),
    );
    disk::make_boot(&work.join("boot"), &boot_img, layout.part("boot"), epoch)?;
    disk::make_ext4(
        &work.join("root"),
        &root_img,
        layout.part("root-a"),
        "kituo-root-a",
        seed,
        epoch,
    )?;
    disk::make_ext4(
        &work.join("data"),
        &data_img,
        layout.part("data"),
        "kituo-data",
        seed,
        epoch,
    )?;
    disk::assemble(
        layout,
        &[
            (layout.part("boot"), &boot_img),
            (layout.part("root-a"), &root_img),
            (layout.part("data"), &data_img),
        ],
        image,
    )
}

fn input_digest(parts: &[String]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Digest of every file (path, mode, content) in the overlay layers.
fn tree_digest(layers: &[PathBuf]) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    for layer in layers {
        for entry in WalkDir::new(layer).sort_by_file_name() {
            let entry = entry?;
            h.update(
                entry
                    .path()
                    .strip_prefix(layer)?
                    .to_string_lossy()
                    .as_bytes(),
            );
            if entry.file_type().is_file() {
                h.update(entry.metadata()?.permissions().mode().to_le_bytes());
                h.update(std::fs::read(entry.path())?);
            } else if entry.file_type().is_symlink() {
                h.update(
                    std::fs::read_link(entry.path())?
                        .to_string_lossy()
                        .as_bytes(),
                );
            }
            h.update([0]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn install_appliance(root: &Path, binary: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dest = root.join("usr/bin/appliance");
    std::fs::copy(binary, &dest)?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    std::fs::create_dir_all(root.join("etc/kituo"))?;
    Ok(())
}

/// The variables overlay templates see (documented in overlays/README.md): the center half, built by
/// the same code first boot uses for another center, and this image's half.
pub(crate) fn template_context(
    board: &Board,
    center: &Center,
    secrets: &Secrets,
    layout: &Layout,
    moodle: Option<&Release>,
    build_id: &str,
    epoch: u64,
) -> Value {
    context::merge(
        context::center_half(center, &secrets.values),
        image_context(board, layout, moodle, build_id, epoch),
    )
}

/// The image half: what does not depend on the center. Kept in the image for first boot.
fn image_context(
    board: &Board,
    layout: &Layout,
    moodle: Option<&Release>,
    build_id: &str,
    epoch: u64,
) -> Value {
    json!({
        // Empty without --moodle: templates leave out what only a card with Moodle needs.
        "moodle": { "version": moodle.map(|r| r.version.as_str()).unwrap_or_default() },
        "board": {
            "name": board.name, "description": board.description, "arch": board.arch, "family": board.family,
            "ram_mib": board.ram_mib.to_string(), "console": board.console,
        },
        "boot": { "cmdline": bootloader::kernel_cmdline(board, layout), "dtb": board.dtb },
        "build": { "version": appliance::VERSION, "id": build_id, "source_date_epoch": epoch.to_string() },
        "disk": {
            "id": layout.disk_id,
            "boot_partuuid": layout.part("boot").partuuid,
            "root_a_partuuid": layout.part("root-a").partuuid,
            "data_partuuid": layout.part("data").partuuid,
            "root_b_partuuid": format!("{}-04", layout.disk_id),
            "root_b_mib": (layout.root_b_bytes >> 20).to_string(),
        },
    })
}

/// What first boot needs to configure the card for another center (`appliance center apply`): the
/// root filesystem's templates, the image half of their context, and this center's secrets on the
/// data partition (root only), which the card keeps when its center.ini names the same center, and that
/// center's config, which the card renders from again when its boot partition has none.
fn install_commissioning(
    layers: &[PathBuf],
    image_context: &Value,
    secrets: &Secrets,
    (center, center_path): (&Center, &Path),
    root: &Path,
    data: &Path,
) -> Result<()> {
    let rootfs: Vec<PathBuf> = layers.iter().map(|l| l.join("rootfs")).collect();
    render::install_templates(&rootfs, root)?;
    let path = root.join(render::IMAGE_CONTEXT);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(image_context)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    let text = std::fs::read(center_path)
        .with_context(|| format!("cannot read {}", center_path.display()))?;
    write_private(&data.join(apply::KEPT_CENTER_ON_DATA), &text)?;
    let mut card = secrets.file(Some(&center.id));
    card.take_from_config(center);
    card.save(
        &data.join(apply::SECRETS_ON_DATA),
        "Secrets of this card, from the image builder. Keep private.",
    )
}

fn build_info(context: &Value) -> String {
    let get = |a: &str, b: &str| context[a][b].as_str().unwrap_or_default().to_owned();
    format!(
        "; Written by image-builder: the identity of this image. built_for is the center it was built\n\
         ; for; a card flashed with another center.ini serves that one (see /api/status center_config).\n\
         [build]\nid = {}\nversion = {}\nboard = {}\nbuilt_for = {}\nsource_date_epoch = {}\n",
        get("build", "id"),
        get("build", "version"),
        get("board", "name"),
        get("center", "id"),
        get("build", "source_date_epoch"),
    )
}

/// Package scripts that record the time of the build: set what they wrote to the lock's epoch.
fn normalize(root: &Path, epoch: u64) -> Result<()> {
    // fake-hwclock's postinst saves "now"; the appliance's clock must start no earlier than the build.
    let clock = root.join("etc/fake-hwclock.data");
    if clock.exists() {
        std::fs::write(&clock, format!("{}\n", utc_datetime(epoch)))?;
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (days-to-civil, proleptic Gregorian).
fn utc_datetime(epoch: u64) -> String {
    let (days, secs) = ((epoch / 86400) as i64, epoch % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn empty_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?
            } else {
                std::fs::remove_file(&path)?
            }
        }
    }
    Ok(())
}

/// The data partition's initial tree: MariaDB's datadir, Moodle's data, Kituo's state, owned by the
/// users of this root filesystem.
fn data_tree(root: &Path, data: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let ids = |user: &str| -> Result<(u32, u32)> {
        let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&user) && f.len() > 3)
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .with_context(|| format!("user {user} is missing from the root filesystem"))
    };
    for (dir, user, mode) in [
        ("mysql", "mysql", 0o750),
        ("moodledata", "www-data", 0o770),
        ("kituo", "root", 0o755),
    ] {
        let path = data.join(dir);
        std::fs::create_dir_all(&path)?;
        let (uid, gid) = ids(user)?;
        nix::unistd::chown(&path, Some(uid.into()), Some(gid.into()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn compress(image: &Path, out: &Path) -> Result<()> {
    let mut input = std::fs::File::open(image)?;
    let partial = out.with_extension("zst.partial");
    let output = std::fs::File::create(&partial)?;
    let mut encoder = zstd::Encoder::new(output, 3)?;
    std::io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    std::fs::rename(&partial, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_datetime_matches_known_dates() {
        assert_eq!(utc_datetime(0), "1970-01-01 00:00:00");
        assert_eq!(utc_datetime(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_datetime(1_795_317_743), "2026-11-22 03:22:23");
    }

    /// First boot rebuilds the builder's template context from what the image carries: for the center
    /// the image was built for, it must be the very same context, so a card renders the same files.
    #[test]
    fn image_carries_the_context_first_boot_renders_with() {
        use std::os::unix::fs::PermissionsExt;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let board = Board::load(&repo.join("board-configs"), "rpi4").unwrap();
        let center = Center::load(&repo.join("board-configs/example-center.ini")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::for_center(&dir.path().join("state"), &center.id).unwrap();
        let layout = Layout::new("seed", board.boot_mib, board.root_mib, board.data_mib);
        let (root, data) = (dir.path().join("root"), dir.path().join("data"));
        std::fs::create_dir_all(root.join("usr/share/kituo")).unwrap();
        std::fs::create_dir_all(data.join("kituo")).unwrap();
        let layers = overlay::layers(&repo.join("overlays"), &board);
        let image = image_context(&board, &layout, None, "build-id", 1);
        let center_path = repo.join("board-configs/example-center.ini");
        install_commissioning(
            &layers,
            &image,
            &secrets,
            (&center, &center_path),
            &root,
            &data,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(data.join(apply::KEPT_CENTER_ON_DATA)).unwrap(),
            std::fs::read(&center_path).unwrap()
        );

        let card_path = data.join(apply::SECRETS_ON_DATA);
        let card = appliance::commission::secrets::File::load(&card_path).unwrap();
        assert_eq!(card.center.as_deref(), Some("example"));
        assert_eq!(card.values, secrets.values);
        let mode = std::fs::metadata(&card_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let carried: Value =
            serde_json::from_slice(&std::fs::read(root.join(render::IMAGE_CONTEXT)).unwrap())
                .unwrap();
        assert_eq!(
            context::merge(context::center_half(&center, &card.values), carried),
            template_context(&board, &center, &secrets, &layout, None, "build-id", 1)
        );
        let templates: Vec<PathBuf> = render::templates(&root.join(render::TEMPLATES))
            .unwrap()
            .into_iter()
            .map(|(_, rel)| rel)
            .collect();
        assert!(templates.contains(&PathBuf::from("etc/hostapd/kituo.conf")));
        assert!(templates.contains(&PathBuf::from("etc/kituo/appliance.ini")));
        // Boot partition templates are the board's, not the center's: not carried.
        assert!(!templates.iter().any(|t| t.ends_with("config.txt")));
    }

    /// Moodle's config.php from the real template: the local socket, this center's password and names.
    #[test]
    fn moodle_config_names_the_socket_the_center_and_its_secrets() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let board = Board::load(&repo.join("board-configs"), "qemu-arm64").unwrap();
        let center = Center::load(&repo.join("board-configs/example-center.ini")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::for_center(&dir.path().join("state"), &center.id).unwrap();
        let layout = Layout::new("seed", board.boot_mib, board.root_mib, board.data_mib);
        let context = template_context(&board, &center, &secrets, &layout, None, "id", 1);
        let layer = repo.join("overlays").join(moodle::LAYER).join("rootfs");
        let env = render::environment();
        let config = render::render(
            &env,
            &layer.join("var/www/moodle/config.php.tmpl"),
            &context,
        )
        .unwrap();
        let db_password = &secrets.values["moodle_db_password"];
        for want in [
            "$CFG->dbtype    = 'mariadb';".to_owned(),
            "$CFG->dbhost    = 'localhost';".to_owned(),
            "'dbsocket' => '/run/mysqld/mysqld.sock',".to_owned(),
            "$CFG->dbname    = 'moodle';".to_owned(),
            "$CFG->dbuser    = 'moodle';".to_owned(),
            format!("$CFG->dbpass    = '{db_password}';"),
            "$CFG->prefix    = 'mdl_';".to_owned(),
            "$CFG->wwwroot = 'http://kituo.kituo.lan';".to_owned(),
            "$CFG->dataroot  = '/data/moodledata';".to_owned(),
            "$CFG->reverseproxy = false;".to_owned(),
        ] {
            assert!(config.contains(&want), "{want} missing from\n{config}");
        }
        let install = render::render(
            &env,
            &layer.join("usr/lib/kituo/moodle-install.tmpl"),
            &context,
        )
        .unwrap();
        let admin = &secrets.values["moodle_admin_password"];
        // The password goes by the environment, never on the installer's command line.
        assert!(admin.len() >= 20 && install.contains(&format!("KITUO_ADMINPASS='{admin}'")));
        assert_eq!(install.matches(admin.as_str()).count(), 1);
        assert!(
            install.contains("--shortname='example'")
                && install.contains("Example Regional Center")
        );
        assert!(!install.contains("{{") && !config.contains("{{"));
    }
}
