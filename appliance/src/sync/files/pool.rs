//! One site's blobs on disk, laid out exactly as Moodle's `file_system_filedir` does:
//! `$dataroot/filedir/<h[0:2]>/<h[2:4]>/<hash>` for live blobs, the same under `trashdir/` for blobs no
//! file references any more (Moodle's cron empties it daily; a file added again is recovered from it).
//! Transfers in progress live in `$dataroot/temp/kituo-blobs/<hash>.part`, on the same filesystem, so
//! placing a finished blob is one atomic rename and Moodle never sees half a file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, ensure, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::sync::files::chunk::Chunk;
use crate::sync::files::hash::ContentHash;

/// Modes for what the pool creates, as Moodle's `$CFG->directorypermissions` and `$CFG->filepermissions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub dir: u32,
    pub file: u32,
}

impl Default for Perms {
    /// Moodle's defaults: 02777, and the same without execute bits for files.
    fn default() -> Perms {
        Perms {
            dir: 0o2777,
            file: 0o666,
        }
    }
}

pub struct Pool {
    filedir: PathBuf,
    trashdir: PathBuf,
    temp: PathBuf,
    perms: Perms,
    /// The dataroot's owner, given to everything the pool creates when this process may (it runs as root
    /// on a card while PHP runs as www-data).
    owner: Option<(u32, u32)>,
}

/// Where a blob is at this site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// In filedir, with this size.
    Live(u64),
    /// Only in trashdir.
    Trashed(PathBuf),
    Absent,
}

/// What writing a chunk into a partial copy came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Bytes held durably so far.
    Partial(u64),
    /// The blob passed its sha1 check and is in filedir.
    Placed,
}

impl Pool {
    pub fn new(dataroot: &Path, perms: Perms) -> Result<Pool> {
        let meta = std::fs::metadata(dataroot)
            .with_context(|| format!("the Moodle dataroot {} is not there", dataroot.display()))?;
        ensure!(meta.is_dir(), "{} is not a directory", dataroot.display());
        let root = nix::unistd::geteuid().is_root();
        Ok(Pool {
            filedir: dataroot.join("filedir"),
            trashdir: dataroot.join("trashdir"),
            temp: dataroot.join("temp").join("kituo-blobs"),
            perms,
            owner: (root && (meta.uid(), meta.gid()) != (0, 0)).then(|| (meta.uid(), meta.gid())),
        })
    }

    pub fn live_path(&self, hash: &ContentHash) -> PathBuf {
        hash.pool_path(&self.filedir)
    }

    pub fn find(&self, hash: &ContentHash) -> Found {
        if let Ok(meta) = std::fs::metadata(self.live_path(hash)) {
            return Found::Live(meta.len());
        }
        // Moodle's recover_file also looks in the trash's root, where old versions put blobs.
        let trashed = [
            hash.pool_path(&self.trashdir),
            self.trashdir.join(hash.hex()),
        ];
        match trashed.into_iter().find(|p| p.is_file()) {
            Some(p) => Found::Trashed(p),
            None => Found::Absent,
        }
    }

    /// Moves a trashed blob back into filedir, as Moodle's `recover_file`: only if its size and sha1 are
    /// right (a damaged copy stays in the trash and is fetched instead). True if restored.
    pub fn restore(&self, hash: &ContentHash, trashed: &Path, size: u64) -> Result<bool> {
        let meta = std::fs::metadata(trashed)
            .with_context(|| format!("cannot read {}", trashed.display()))?;
        if meta.len() != size || ContentHash::of_file(trashed)? != *hash {
            return Ok(false);
        }
        self.make_dirs(&self.filedir, hash)?;
        std::fs::rename(trashed, self.live_path(hash))
            .with_context(|| format!("cannot restore {hash} from the trash"))?;
        Ok(true)
    }

    /// Moves a blob no file references any more to the trash, as Moodle's `remove_file`.
    pub fn trash(&self, hash: &ContentHash) -> Result<()> {
        let live = self.live_path(hash);
        let trashed = hash.pool_path(&self.trashdir);
        self.make_dirs(&self.trashdir, hash)?;
        if trashed.exists() {
            std::fs::remove_file(&live)
                .with_context(|| format!("cannot remove {}", live.display()))?;
        } else {
            std::fs::rename(&live, &trashed)
                .with_context(|| format!("cannot move {hash} to the trash"))?;
        }
        Ok(())
    }

    /// Every blob in filedir with its modification time; names that are not hashes (Moodle's
    /// `warning.txt`, its `.tmp` files mid-write) are skipped.
    pub fn live_blobs(&self) -> Result<Vec<(ContentHash, SystemTime)>> {
        let mut out = Vec::new();
        let level = |dir: &Path| -> Result<Vec<PathBuf>> {
            match std::fs::read_dir(dir) {
                Ok(entries) => Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(e).with_context(|| format!("cannot list {}", dir.display())),
            }
        };
        for l1 in level(&self.filedir)?.iter().filter(|p| p.is_dir()) {
            for l2 in level(l1)?.iter().filter(|p| p.is_dir()) {
                for file in level(l2)? {
                    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if let Ok(hash) = ContentHash::parse(name) {
                        if let Ok(modified) = file.metadata().and_then(|m| m.modified()) {
                            out.push((hash, modified));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// A partial copy's path; `tag` tells apart copies of the same blob from different senders (the
    /// hub keeps one per center).
    pub fn part_path(&self, hash: &ContentHash, tag: &str) -> PathBuf {
        self.temp.join(format!("{hash}{tag}.part"))
    }

    /// Bytes of a partial copy held so far: what survived a cut, a kill (the page cache keeps every
    /// written chunk) or a power loss (ext4's default data=ordered never shows a length whose data did
    /// not reach the disk). Chunks are not synced one by one: a sync stalls reading the link for as
    /// long as the SD card takes, and what the socket holds meanwhile is lost on a cut.
    pub fn part_len(&self, hash: &ContentHash, tag: &str) -> u64 {
        std::fs::metadata(self.part_path(hash, tag)).map_or(0, |m| m.len())
    }

    /// Writes a checked chunk into the blob's partial copy at its offset, durably; a chunk that
    /// completes the blob has the whole copy checked against its sha1 and placed in filedir. A chunk
    /// already held (a retry whose first answer was lost) is a no-op; one beyond the held length is an
    /// error naming where to resume.
    pub fn write(&self, chunk: &Chunk, tag: &str) -> Result<Progress> {
        let hash = &chunk.hash;
        if chunk.offset == 0 && chunk.is_last() {
            // Whole in one chunk (most Moodle files): checked in memory, nothing bad is ever written.
            ensure!(
                ContentHash::of(&chunk.data) == *hash,
                "blob {hash} does not match its sha1; dropped"
            );
        }
        std::fs::create_dir_all(&self.temp)
            .with_context(|| format!("cannot create {}", self.temp.display()))?;
        let path = self.part_path(hash, tag);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // Two requests for the same copy (a sender's retry racing its first try) take turns.
        let file = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {}", path.display()))?;
        let held = file.metadata()?.len();
        if held > chunk.total {
            drop(file);
            let _ = std::fs::remove_file(&path);
            bail!("the partial copy of {hash} is longer than the blob; it is deleted");
        }
        let end = chunk.offset + chunk.data.len() as u64;
        if chunk.offset > held {
            bail!(
                "blob {hash}: a chunk at {} but only {held} bytes are held; resume at {held}",
                chunk.offset
            );
        }
        if end > held {
            let fresh = &chunk.data[(held - chunk.offset) as usize..];
            file.write_all_at(fresh, held)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let held = held.max(end);
        if held < chunk.total {
            return Ok(Progress::Partial(held));
        }
        let got = ContentHash::of_file(&path)?;
        if got != *hash {
            drop(file);
            let _ = std::fs::remove_file(&path);
            bail!("blob {hash} failed its sha1 check (got {got}); the copy is deleted and fetched again");
        }
        self.place(&file, &path, hash)?;
        Ok(Progress::Placed)
    }

    /// Gives a checked copy Moodle's modes and the dataroot's owner, and renames it into filedir, synced
    /// first: a power loss must not leave a name in filedir without its content.
    fn place(&self, file: &File, part: &Path, hash: &ContentHash) -> Result<()> {
        file.sync_all()
            .with_context(|| format!("cannot sync {}", part.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(self.perms.file))
            .with_context(|| format!("cannot set the mode of {}", part.display()))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid)).with_context(|| {
                format!("cannot give {} to the dataroot's owner", part.display())
            })?;
        }
        self.make_dirs(&self.filedir, hash)?;
        std::fs::rename(part, self.live_path(hash))
            .with_context(|| format!("cannot move {hash} into filedir"))
    }

    /// `root/<h[0:2]>/<h[2:4]>` with the configured mode and owner on each level it creates (set
    /// explicitly: this process's umask is not Moodle's).
    fn make_dirs(&self, root: &Path, hash: &ContentHash) -> Result<()> {
        let h = hash.hex();
        let levels = [
            root.to_path_buf(),
            root.join(&h[0..2]),
            root.join(&h[0..2]).join(&h[2..4]),
        ];
        for dir in levels {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(self.perms.dir))
                        .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
                    if let Some((uid, gid)) = self.owner {
                        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).with_context(
                            || format!("cannot give {} to the dataroot's owner", dir.display()),
                        )?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", dir.display()))
                }
            }
        }
        Ok(())
    }

    /// Up to `max` bytes of a blob from `offset` (from filedir, else the trash), with its size; `None`
    /// when this site does not hold it.
    pub fn read(
        &self,
        hash: &ContentHash,
        offset: u64,
        max: usize,
    ) -> Result<Option<(u64, Vec<u8>)>> {
        let path = match self.find(hash) {
            Found::Live(_) => self.live_path(hash),
            Found::Trashed(p) => p,
            Found::Absent => return Ok(None),
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            // Moved to the trash or restored between the look and the open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        let total = file.metadata()?.len();
        let len = (total.saturating_sub(offset)).min(max as u64) as usize;
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, offset)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some((total, data)))
    }

    pub fn filedir(&self) -> &Path {
        &self.filedir
    }

    pub fn trashdir(&self) -> &Path {
        &self.trashdir
    }
}

/// Writes `data` to a new file (test beds).
pub fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &[u8], offset: usize, len: usize) -> Chunk {
        Chunk {
            hash: ContentHash::of(data),
            total: data.len() as u64,
            offset: offset as u64,
            data: data[offset..offset + len].to_vec(),
        }
    }

    #[test]
    fn chunks_build_a_blob_that_lands_in_filedir_with_moodles_modes() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(
            dir.path(),
            Perms {
                dir: 0o2770,
                file: 0o660,
            },
        )
        .unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let h = ContentHash::of(&data);
        assert_eq!(
            pool.write(&chunk(&data, 0, 4000), "").unwrap(),
            Progress::Partial(4000)
        );
        // A retry of the same chunk, and one overlapping what is held, write nothing twice.
        assert_eq!(
            pool.write(&chunk(&data, 0, 4000), "").unwrap(),
            Progress::Partial(4000)
        );
        assert_eq!(
            pool.write(&chunk(&data, 2000, 4000), "").unwrap(),
            Progress::Partial(6000)
        );
        // A gap is refused, naming where to resume.
        let gap = pool.write(&chunk(&data, 8000, 2000), "").unwrap_err();
        assert!(format!("{gap:#}").contains("resume at 6000"), "{gap:#}");
        assert_eq!(pool.part_len(&h, ""), 6000);
        assert_eq!(
            pool.write(&chunk(&data, 6000, 4000), "").unwrap(),
            Progress::Placed
        );
        assert_eq!(std::fs::read(pool.live_path(&h)).unwrap(), data);
        assert_eq!(pool.find(&h), Found::Live(10_000));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&pool.live_path(&h)), 0o660);
        assert_eq!(mode(pool.live_path(&h).parent().unwrap()), 0o2770);
        assert!(!pool.part_path(&h, "").exists());

        // To the trash and back, as Moodle's remove_file and recover_file.
        pool.trash(&h).unwrap();
        let Found::Trashed(t) = pool.find(&h) else {
            panic!("not in the trash")
        };
        assert!(
            !pool.restore(&h, &t, 9_999).unwrap(),
            "a wrong size stays in the trash"
        );
        assert!(pool.restore(&h, &t, 10_000).unwrap());
        assert_eq!(pool.find(&h), Found::Live(10_000));
        assert_eq!(pool.live_blobs().unwrap().len(), 1);
    }

    #[test]
    fn a_blob_that_fails_its_sha1_never_reaches_filedir() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(dir.path(), Perms::default()).unwrap();
        let data = vec![1u8; 5000];
        let mut first = chunk(&data, 0, 3000);
        first.data[10] ^= 1;
        pool.write(&first, "").unwrap();
        let err = pool.write(&chunk(&data, 3000, 2000), "").unwrap_err();
        assert!(format!("{err:#}").contains("sha1"), "{err:#}");
        assert_eq!(pool.find(&first.hash), Found::Absent);
        assert_eq!(pool.part_len(&first.hash, ""), 0, "the bad copy is gone");
        let mut whole = chunk(&data, 0, 5000);
        whole.data[0] = 9;
        assert!(pool.write(&whole, "").is_err());
        assert_eq!(pool.find(&whole.hash), Found::Absent);
    }
}
