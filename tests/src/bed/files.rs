//! Files for the sync test bed and `appliance bench files`: a Moodle dataroot per site, files added as
//! Moodle's upload adds them (the blob into filedir, then its `files` row), and real content from
//! Moodle's course backups. Nothing here runs on an appliance.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use mysql::prelude::Queryable;
use serde::Deserialize;

use crate::bed::{Node, PREFIX};
use appliance::sync::files::chunk::Chunk;
use appliance::sync::files::hash::ContentHash;
use appliance::sync::files::pool::{Perms, Pool};

/// `$dataroot` of a bed site: `<dir>/site<N>-moodledata`, created if missing.
pub fn dataroot(dir: &Path, site: u32) -> Result<PathBuf> {
    let root = dir.join(format!("site{site}-moodledata"));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    Ok(root)
}

/// A center's `[files]` section for its bed dataroot, with `keys` added (e.g. `chunk_kib = 16\n`).
pub fn files_section(dir: &Path, site: u32, keys: &str) -> Result<String> {
    Ok(format!(
        "[files]\ndataroot = {}\n{keys}",
        dataroot(dir, site)?.display()
    ))
}

/// A bed site's pool with Moodle's default modes.
pub fn pool(dir: &Path, site: u32) -> Result<Pool> {
    Pool::new(&dataroot(dir, site)?, Perms::default())
}

/// The folder of Moodle's course backups (`.mbz`): `$KITUO_MOODLE_BACKUPS`, else the project's shared
/// folder beside the checkout, else `/work/shared/moodle-backups`.
pub fn backups_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KITUO_MOODLE_BACKUPS") {
        return dir.into();
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/moodle-backups");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared/moodle-backups")
}

/// One `files` row, as Moodle writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct FileRow {
    pub contenthash: String,
    pub contextid: i64,
    pub component: String,
    pub filearea: String,
    pub itemid: i64,
    pub filepath: String,
    pub filename: String,
    pub userid: String,
    pub filesize: u64,
    pub mimetype: String,
    pub timecreated: i64,
}

impl FileRow {
    /// A row for new content in course context 30, as a teacher's upload makes it.
    pub fn new(
        component: &str,
        filearea: &str,
        filename: &str,
        mimetype: &str,
        data: &[u8],
    ) -> FileRow {
        FileRow {
            contenthash: ContentHash::of(data).hex(),
            contextid: 30,
            component: component.into(),
            filearea: filearea.into(),
            itemid: 0,
            filepath: "/".into(),
            filename: filename.into(),
            userid: "2".into(),
            filesize: data.len() as u64,
            mimetype: mimetype.into(),
            timecreated: appliance::history::unix_now() as i64,
        }
    }

    /// Moodle's `pathnamehash`: the sha1 of the file's full path, unique per file.
    fn pathnamehash(&self) -> String {
        let path = format!(
            "/{}/{}/{}/{}{}{}",
            self.contextid,
            self.component,
            self.filearea,
            self.itemid,
            self.filepath,
            self.filename
        );
        ContentHash::of(path.as_bytes()).hex()
    }

    pub fn hash(&self) -> Result<ContentHash> {
        ContentHash::parse(&self.contenthash)
    }
}

/// Inserts `files` rows at a site as Moodle does (binlogged, so row sync carries them).
pub fn insert_rows(node: &Node, rows: &[FileRow]) -> Result<()> {
    let mut c = node.sql()?;
    for r in rows {
        let userid = (r.userid != "$@NULL@$").then(|| r.userid.clone());
        c.exec_drop(
            format!(
                "INSERT INTO {PREFIX}files (contenthash, pathnamehash, contextid, component, filearea, itemid,
                     filepath, filename, userid, filesize, mimetype, status, timecreated, timemodified, sortorder)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 0)"
            ),
            mysql::Params::Positional(vec![
                r.contenthash.clone().into(),
                r.pathnamehash().into(),
                r.contextid.into(),
                r.component.clone().into(),
                r.filearea.clone().into(),
                r.itemid.into(),
                r.filepath.clone().into(),
                r.filename.clone().into(),
                userid.into(),
                r.filesize.into(),
                r.mimetype.clone().into(),
                r.timecreated.into(),
                r.timecreated.into(),
            ]),
        )
        .with_context(|| format!("cannot insert the files row of {}", r.filename))?;
    }
    Ok(())
}

/// Writes a whole blob straight into filedir, as Moodle's upload would.
pub fn add_blob(pool: &Pool, data: &[u8]) -> Result<ContentHash> {
    let hash = ContentHash::of(data);
    let chunk = Chunk {
        hash,
        total: data.len() as u64,
        offset: 0,
        data: data.to_vec(),
    };
    pool.write(&chunk, "")?;
    Ok(hash)
}

/// Adds a file at a site as Moodle's upload does: the blob into filedir, then its row.
pub fn add_file(node: &Node, pool: &Pool, row: &FileRow, data: &[u8]) -> Result<ContentHash> {
    let hash = add_blob(pool, data)?;
    ensure!(
        hash.hex() == row.contenthash,
        "the row's hash is not the data's"
    );
    insert_rows(node, std::slice::from_ref(row))?;
    Ok(hash)
}

#[derive(Deserialize)]
struct FilesXml {
    #[serde(rename = "file", default)]
    files: Vec<FileRow>,
}

/// A course backup unpacked: its `files.xml` rows and the folder of its blobs (`files/<h[0:2]>/<hash>`).
pub struct Backup {
    pub rows: Vec<FileRow>,
    pub blobs: PathBuf,
}

impl Backup {
    /// Unpacks a `.mbz` (a tar.gz) into `into` with tar.
    pub fn unpack(mbz: &Path, into: &Path) -> Result<Backup> {
        std::fs::create_dir_all(into)?;
        let out = Command::new("tar")
            .arg("-xzf")
            .arg(mbz)
            .arg("-C")
            .arg(into)
            .output()
            .context("cannot run tar")?;
        if !out.status.success() {
            bail!(
                "tar cannot unpack {}: {}",
                mbz.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let xml = std::fs::read_to_string(into.join("files.xml"))
            .with_context(|| format!("{} has no files.xml", mbz.display()))?;
        let parsed: FilesXml = quick_xml::de::from_str(&xml).context("files.xml does not parse")?;
        Ok(Backup {
            rows: parsed.files,
            blobs: into.join("files"),
        })
    }

    /// The blob of a row.
    pub fn blob(&self, row: &FileRow) -> Result<Vec<u8>> {
        let path = self
            .blobs
            .join(&row.contenthash[..2])
            .join(&row.contenthash);
        std::fs::read(&path).with_context(|| format!("the backup lacks {}", path.display()))
    }

    /// Adds every file of the backup at a site: its blobs and its rows. Returns the distinct blobs
    /// (without the empty one).
    pub fn install(&self, node: &Node, pool: &Pool) -> Result<Vec<ContentHash>> {
        let mut blobs = Vec::new();
        for row in &self.rows {
            let hash = row.hash()?;
            if hash != appliance::sync::files::hash::EMPTY && !blobs.contains(&hash) {
                add_blob(pool, &self.blob(row)?)?;
                blobs.push(hash);
            }
        }
        insert_rows(node, &self.rows)?;
        Ok(blobs)
    }
}

/// Checks that every blob in a pool's filedir is whole: its sha1 is its name. Returns how many.
pub fn assert_filedir_sound(pool: &Pool) -> Result<usize> {
    let blobs = pool.live_blobs()?;
    for (hash, _) in &blobs {
        let got = ContentHash::of_file(&pool.live_path(hash))?;
        ensure!(
            got == *hash,
            "filedir holds {hash} with the content of {got}"
        );
    }
    Ok(blobs.len())
}

/// Deterministic content that does not compress (as video does not), `len` bytes from `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}
