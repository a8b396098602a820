//! One piece of a board's bootloader area, as a board config's `[bootloader]` section names it:
//! `name = sector=N source=URL-or-path sha256=HEX [member=/path/in/deb] [skip=BYTES] [bytes=N]`.
//! Data, not code per board: the SoC's offsets live in the board config next to their source.

use serde::Serialize;

const FIELDS: &[&str] = &["sector", "source", "sha256", "member", "skip", "bytes"];

/// The first 440 bytes of sector 0 are boot code; from byte 440 on come the disk signature (the PARTUUIDs
/// the kernel command line names) and the partition table, which no bootloader piece may overwrite.
pub const MBR_CODE_BYTES: u64 = 440;
pub const SECTOR: u64 = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Source {
    /// `source=zeros`: clears an area (a stale U-Boot environment left on a re-used card would win over
    /// the image's defaults, and bmap flashing skips the image's holes).
    Zeros,
    /// Downloaded once into the builder's cache and verified.
    Url(String),
    /// A local file; relative paths are relative to the board config's folder.
    Path(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Piece {
    pub name: String,
    /// Where the piece starts on the card, in 512-byte sectors.
    pub sector: u64,
    pub source: Source,
    /// sha256 of the source file (of the .deb when `member` is set). Empty: not pinned yet, so the build
    /// stops with a hint (the vendor-signed blobs Debian cannot ship).
    pub sha256: String,
    /// A file inside the source .deb, e.g. `/usr/lib/u-boot/odroid/u-boot.bin`.
    pub member: Option<String>,
    /// Bytes of the blob skipped before writing (Amlogic: the FIP's first sector goes elsewhere).
    pub skip: u64,
    /// At most this many bytes are written (required for `zeros`).
    pub bytes: Option<u64>,
    #[serde(skip)]
    pub line: usize,
}

impl Piece {
    /// Parses one `[bootloader]` entry; the error text is meant to follow "key 'x' in section [y]: ".
    pub fn parse(name: &str, value: &str, line: usize) -> Result<Self, String> {
        let mut fields = std::collections::BTreeMap::new();
        for word in value.split_whitespace() {
            let Some((key, val)) = word.split_once('=') else {
                return Err(format!("expected key=value words, got '{word}'"));
            };
            if !FIELDS.contains(&key) {
                return Err(format!(
                    "unknown field '{key}' (known: {})",
                    FIELDS.join(", ")
                ));
            }
            if fields.insert(key, val).is_some() {
                return Err(format!("field '{key}' is given twice"));
            }
        }
        let number = |key: &str| -> Result<Option<u64>, String> {
            fields
                .get(key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("field '{key}' expects a whole number, got '{v}'"))
                })
                .transpose()
        };
        let sector = number("sector")?.ok_or("needs field 'sector'")?;
        let source = match *fields.get("source").ok_or("needs field 'source'")? {
            "zeros" => Source::Zeros,
            s if s.starts_with("https://") || s.starts_with("http://") => Source::Url(s.to_owned()),
            "" => return Err("field 'source' is empty".into()),
            s => Source::Path(s.to_owned()),
        };
        let sha256 = fields.get("sha256").copied().unwrap_or_default().to_owned();
        if !sha256.is_empty()
            && (sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "field 'sha256' expects 64 hex digits, got '{sha256}'"
            ));
        }
        let piece = Piece {
            name: name.to_owned(),
            sector,
            sha256: sha256.to_ascii_lowercase(),
            member: fields.get("member").map(|m| (*m).to_owned()),
            skip: number("skip")?.unwrap_or(0),
            bytes: number("bytes")?,
            source,
            line,
        };
        if piece.source == Source::Zeros && (piece.bytes.is_none() || piece.member.is_some()) {
            return Err("source=zeros needs 'bytes' and takes no 'member'".into());
        }
        if piece.sector == 0 && piece.bytes.is_none_or(|b| b > MBR_CODE_BYTES) {
            return Err(format!(
                "a piece at sector 0 may write only the boot code: add bytes=N with N <= {MBR_CODE_BYTES} \
                 (the disk signature and partition table follow)"
            ));
        }
        Ok(piece)
    }

    pub fn start_bytes(&self) -> u64 {
        self.sector * SECTOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_field() {
        let p = Piece::parse(
            "u-boot",
            "sector=63 source=https://deb.debian.org/x.deb sha256=ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789 member=/usr/lib/u-boot/odroid/u-boot.bin",
            7,
        )
        .unwrap();
        assert_eq!(p.sector, 63);
        assert_eq!(p.source, Source::Url("https://deb.debian.org/x.deb".into()));
        assert!(p.sha256.starts_with("abcdef"), "lower-cased: {}", p.sha256);
        assert_eq!(
            p.member.as_deref(),
            Some("/usr/lib/u-boot/odroid/u-boot.bin")
        );
        assert_eq!((p.skip, p.bytes, p.line), (0, None, 7));
        let fip = Piece::parse("fip", "sector=1 skip=512 source=blobs/fip.bin", 1).unwrap();
        assert_eq!(
            (fip.skip, fip.source),
            (512, Source::Path("blobs/fip.bin".into()))
        );
        assert!(fip.sha256.is_empty());
    }

    #[test]
    fn rejects_what_could_break_a_card() {
        let err = |v: &str| Piece::parse("x", v, 1).unwrap_err();
        assert!(err("sector=1").contains("needs field 'source'"));
        assert!(err("source=a").contains("needs field 'sector'"));
        assert!(err("sector=1 source=a colour=red").contains("unknown field 'colour'"));
        assert!(err("sector=one source=a").contains("expects a whole number"));
        assert!(err("sector=1 source=a sha256=12").contains("64 hex digits"));
        assert!(err("sector=1 source=zeros").contains("needs 'bytes'"));
        assert!(err("sector=0 source=a").contains("only the boot code"));
        assert!(err("sector=0 bytes=446 source=a").contains("only the boot code"));
        assert!(Piece::parse("x", "sector=0 bytes=440 source=a", 1).is_ok());
        assert!(err("sector=1 sector=2 source=a").contains("twice"));
    }
}
