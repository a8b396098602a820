//! The `[files]` section of a center's `appliance.ini`, and the hub's file keys.

use std::path::PathBuf;
use std::time::Duration;

use crate::ini::{ConfigError, Document, Key, Section};
use crate::sync::files::pool::Perms;
use crate::sync::files::priority::Order;
use crate::sync::files::window::Window;

pub const FILES_SECTION: Section = Section {
    name: "files",
    help: "File sync: the blobs of Moodle's filedir that the `files` rows reference, moved with the hub in \
           checked chunks that resume after a cut, in priority order, under [sync] rate_limit_kbit.",
    free_keys: false,
    keys: &[
        Key::optional(
            "dataroot",
            "",
            "Moodle's $CFG->dataroot (its filedir, trashdir and temp); empty: files are not synced",
        ),
        DIRECTORY_PERMISSIONS,
        FILE_PERMISSIONS,
        Key::optional(
            "first",
            "course/*, mod_resource/*, mod_folder/*, mod_page/*, mod_book/*, mod_label/*, question/*",
            "what moves first, in this order: component/filearea patterns ('*' may end either part) or \
             mime:type/subtype",
        ),
        Key::optional(
            "last",
            "mime:video/*, mime:audio/*, backup/*",
            "what moves last, in this order (wins over `first`: a lecture video is course content, but heavy)",
        ),
        Key::optional(
            "bulk_kib",
            "8192",
            "files larger than this (KiB) are bulk: they move after all others, and only inside bulk_window",
        ),
        Key::optional(
            "bulk_window",
            "",
            "local time when bulk files may move, e.g. 22:00-06:00; empty: any time",
        ),
        Key::optional(
            "chunk_kib",
            "64",
            "size of one checked chunk, 4 to 4096: a cut loses at most the chunk in flight",
        ),
        Key::optional(
            "request_kib",
            "1024",
            "bytes asked for in one download request, 64 to 16384: large requests keep a slow link busy \
             across round trips (chunks are written as they arrive)",
        ),
        Key::optional(
            "upload_kib",
            "256",
            "bytes sent in one upload request, 4 to 4096, in chunks of chunk_kib, each sealed with the \
             center's secret: the hub keeps the whole chunks of a cut request",
        ),
        Key::optional(
            "pass_seconds",
            "20",
            "longest file transfer between two row exchanges, 1 to 3600: rows never wait behind a video",
        ),
        TRASH_AFTER,
    ],
};

pub const TRASH_AFTER: Key = Key::optional(
    "trash_after_minutes",
    "60",
    "a blob in filedir that no file references goes to trashdir, as Moodle does with deleted files, once \
     it is this old (Moodle writes a blob just before its row); 0: never",
);

pub const DIRECTORY_PERMISSIONS: Key = Key::optional(
    "directory_permissions",
    "02777",
    "mode of directories created in filedir and trashdir (octal), as Moodle's $CFG->directorypermissions",
);

pub const FILE_PERMISSIONS: Key = Key::optional(
    "file_permissions",
    "0666",
    "mode of blobs placed in filedir (octal), as Moodle's $CFG->filepermissions",
);

/// The `[files]` section, read: `None` when `dataroot` is empty.
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub dataroot: PathBuf,
    pub perms: Perms,
    pub order: Order,
    pub bulk_window: Option<Window>,
    pub chunk_bytes: usize,
    pub request_bytes: usize,
    pub upload_bytes: usize,
    pub pass: Duration,
    pub trash_after: Option<Duration>,
}

/// An octal mode such as 02777.
fn mode(doc: &Document, section: &str, key: &str) -> Result<u32, ConfigError> {
    let v = doc.get(section, key);
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            doc.error(
                section,
                key,
                format!("expected an octal mode like 02777, got '{v}'"),
            )
        })
}

/// `trash_after_minutes` of `section`.
pub fn trash_after(doc: &Document, section: &str) -> Result<Option<Duration>, ConfigError> {
    let minutes = doc.int_in(section, "trash_after_minutes", 0..=525_600)?;
    Ok((minutes > 0).then(|| Duration::from_secs(minutes * 60)))
}

/// The permission keys of `section`.
pub fn perms(doc: &Document, section: &str) -> Result<Perms, ConfigError> {
    Ok(Perms {
        dir: mode(doc, section, "directory_permissions")?,
        file: mode(doc, section, "file_permissions")?,
    })
}

impl FileSettings {
    pub fn read(doc: &Document) -> Result<Option<FileSettings>, ConfigError> {
        let s = "files";
        let dataroot = doc.get(s, "dataroot");
        if dataroot.is_empty() {
            return Ok(None);
        }
        let kib = |key: &str, range| -> Result<usize, ConfigError> {
            Ok(doc.int_in(s, key, range)? as usize * 1024)
        };
        let bulk_bytes = doc.int_in(s, "bulk_kib", 1..=1 << 30)? * 1024;
        let order = Order::new(&doc.list(s, "first"), &doc.list(s, "last"), bulk_bytes)
            .map_err(|e| doc.error(s, "first", format!("{e:#} (in first or last)")))?;
        let window = doc.get(s, "bulk_window");
        let bulk_window = if window.is_empty() {
            None
        } else {
            Some(Window::parse(window).map_err(|e| doc.error(s, "bulk_window", format!("{e:#}")))?)
        };
        Ok(Some(FileSettings {
            dataroot: dataroot.into(),
            perms: perms(doc, s)?,
            order,
            bulk_window,
            chunk_bytes: kib("chunk_kib", 4..=4096)?,
            request_bytes: kib("request_kib", 64..=16_384)?,
            upload_bytes: kib("upload_kib", 4..=4096)?,
            pass: Duration::from_secs(doc.int_in(s, "pass_seconds", 1..=3600)?),
            trash_after: trash_after(doc, s)?,
        }))
    }

    /// Whether a blob of this size may move now.
    pub fn may_move(&self, size: u64) -> bool {
        !self.order.is_bulk(size) || self.bulk_window.is_none_or(|w| w.is_open_now())
    }
}
