//! Block maps in bmaptool's format (version 2.0): which 4 KiB blocks of the image hold data, with a
//! sha256 per range, so `bmaptool copy` and `image-builder flash` write only those and verify them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::{Reader, Writer};
use sha2::{Digest, Sha256};

use crate::disk::data_extents;

pub const BLOCK: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    /// Inclusive block ranges with the sha256 of their bytes.
    pub ranges: Vec<(u64, u64, String)>,
}

impl Bmap {
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|(a, b, _)| b - a + 1).sum()
    }

    /// Bytes the mapped ranges cover (the last block may be cut short by the image's end).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(first, last, _)| self.byte_range(*first, *last))
            .map(|(start, end)| end - start)
            .sum()
    }

    /// The bytes `[start, end)` of an inclusive block range.
    pub fn byte_range(&self, first: u64, last: u64) -> (u64, u64) {
        (first * BLOCK, ((last + 1) * BLOCK).min(self.image_size))
    }

    /// Reads a bmap file, checking its own checksum and that its ranges fit the image.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the bmap {}", path.display()))?;
        Self::from_xml(&text).with_context(|| format!("bad bmap {}", path.display()))
    }

    /// Parses bmaptool's format 2.x with sha256 checksums (what the builder and `bmaptool create` write).
    pub fn from_xml(text: &str) -> Result<Self> {
        let mut reader = Reader::from_str(text);
        reader.config_mut().trim_text(true);
        let mut fields = std::collections::BTreeMap::new();
        let mut ranges = Vec::new();
        let mut open: Option<(String, Option<String>)> = None;
        loop {
            match reader.read_event()? {
                Event::Start(e) => {
                    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    if name == "bmap" {
                        let version = e
                            .try_get_attribute("version")?
                            .context("<bmap> has no version")?
                            .unescape_value()?
                            .into_owned();
                        ensure!(
                            version.split('.').next() == Some("2"),
                            "bmap version {version} is not supported (2.x is)"
                        );
                    }
                    let chksum = match e.try_get_attribute("chksum")? {
                        Some(a) => Some(a.unescape_value()?.into_owned()),
                        None => None,
                    };
                    open = Some((name, chksum));
                }
                Event::Text(t) => {
                    let text = t.unescape()?.trim().to_owned();
                    match &open {
                        Some((name, Some(sum))) if name == "Range" => {
                            ranges.push(parse_range(&text, sum)?)
                        }
                        Some((name, _)) => {
                            fields.insert(name.clone(), text);
                        }
                        None => {}
                    }
                }
                Event::End(_) => open = None,
                Event::Eof => break,
                _ => {}
            }
        }
        let field = |name: &str| {
            fields
                .get(name)
                .map(String::as_str)
                .with_context(|| format!("no <{name}>"))
        };
        let number = |name: &str| -> Result<u64> {
            field(name)?
                .parse()
                .with_context(|| format!("<{name}> is not a number"))
        };
        ensure!(
            number("BlockSize")? == BLOCK,
            "block size {} is not supported ({BLOCK} is)",
            number("BlockSize")?
        );
        ensure!(
            field("ChecksumType")? == "sha256",
            "checksum type {} is not supported (sha256 is)",
            field("ChecksumType")?
        );
        check_file_checksum(text, field("BmapFileChecksum")?)?;
        let bmap = Bmap {
            image_size: number("ImageSize")?,
            ranges,
        };
        bmap.check_ranges(number("MappedBlocksCount")?)?;
        Ok(bmap)
    }

    /// Ranges in order, apart, inside the image, and adding up to the stated count: a writer trusts them.
    fn check_ranges(&self, mapped_blocks: u64) -> Result<()> {
        let blocks = self.image_size.div_ceil(BLOCK);
        let mut next_free = 0;
        for (first, last, _) in &self.ranges {
            ensure!(
                first <= last && *first >= next_free && *last < blocks,
                "range {first}-{last} overlaps another, is out of order, or passes the image's end (block {blocks})"
            );
            next_free = last + 1;
        }
        ensure!(
            self.mapped_blocks() == mapped_blocks,
            "<MappedBlocksCount> says {mapped_blocks} but the ranges hold {}",
            self.mapped_blocks()
        );
        Ok(())
    }

    /// Maps the data extents of a (sparse) image file.
    pub fn of_image(path: &Path) -> Result<Self> {
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let image_size = file.metadata()?.len();
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        for (start, end) in data_extents(&file)? {
            let (first, last) = (start / BLOCK, end.div_ceil(BLOCK) - 1);
            match blocks.last_mut() {
                Some((_, prev_last)) if first <= *prev_last + 1 => {
                    *prev_last = (*prev_last).max(last)
                }
                _ => blocks.push((first, last)),
            }
        }
        let mut ranges = Vec::with_capacity(blocks.len());
        let mut buf = vec![0u8; 1 << 20];
        for (first, last) in blocks {
            let start = first * BLOCK;
            let end = ((last + 1) * BLOCK).min(image_size);
            file.seek(SeekFrom::Start(start))?;
            let mut hasher = Sha256::new();
            let mut left = end - start;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                file.read_exact(&mut buf[..n])?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            ranges.push((first, last, hex::encode(hasher.finalize())));
        }
        Ok(Bmap { image_size, ranges })
    }

    /// The XML text, with BmapFileChecksum filled in as bmaptool expects: the sha256 of the file written
    /// with that field set to 64 zeros.
    pub fn to_xml(&self) -> Result<String> {
        let zeros = "0".repeat(64);
        let draft = self.render(&zeros)?;
        let checksum = hex::encode(Sha256::digest(draft.as_bytes()));
        Ok(draft.replacen(&zeros, &checksum, 1))
    }

    fn render(&self, file_checksum: &str) -> Result<String> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 4);
        w.write_event(Event::Decl(BytesDecl::new("1.0", None, None)))?;
        w.create_element("bmap")
            .with_attribute(("version", "2.0"))
            .write_inner_content(|w| {
                let blocks = self.image_size.div_ceil(BLOCK);
                for (name, value) in [
                    ("ImageSize", self.image_size.to_string()),
                    ("BlockSize", BLOCK.to_string()),
                    ("BlocksCount", blocks.to_string()),
                    ("MappedBlocksCount", self.mapped_blocks().to_string()),
                    ("ChecksumType", "sha256".to_owned()),
                    ("BmapFileChecksum", file_checksum.to_owned()),
                ] {
                    w.create_element(name)
                        .write_text_content(BytesText::new(&format!(" {value} ")))?;
                }
                w.create_element("BlockMap").write_inner_content(|w| {
                    for (first, last, sum) in &self.ranges {
                        let text = if first == last {
                            format!(" {first} ")
                        } else {
                            format!(" {first}-{last} ")
                        };
                        w.create_element("Range")
                            .with_attribute(("chksum", sum.as_str()))
                            .write_text_content(BytesText::new(&text))?;
                    }
                    Ok(())
                })?;
                Ok(())
            })?;
        let mut text = String::from_utf8(w.into_inner())?;
        text.push('\n');
        Ok(text)
    }
}

/// `12` or `12-40` with its sha256.
fn parse_range(text: &str, sum: &str) -> Result<(u64, u64, String)> {
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .with_context(|| format!("bad block range '{text}'"))
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (number(text)?, number(text)?),
    };
    ensure!(
        sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
        "range '{text}' has a bad sha256 '{sum}'"
    );
    Ok((first, last, sum.to_ascii_lowercase()))
}

/// bmaptool's BmapFileChecksum: the sha256 of the file with that field's value replaced by zeros. It
/// catches a bmap edited by hand or cut short.
fn check_file_checksum(text: &str, stated: &str) -> Result<()> {
    let zeroed = text.replacen(stated, &"0".repeat(stated.len()), 1);
    let actual = hex::encode(Sha256::digest(zeroed.as_bytes()));
    if !actual.eq_ignore_ascii_case(stated) {
        bail!("its BmapFileChecksum is {stated} but the file's is {actual}: it was changed or cut short");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_only_data_blocks_and_checksums_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut f = File::create(&path).unwrap();
        f.set_len(64 * BLOCK).unwrap();
        f.write_all(&[1u8; 4096 * 2]).unwrap();
        f.seek(SeekFrom::Start(40 * BLOCK)).unwrap();
        f.write_all(&[2u8; 4096]).unwrap();
        drop(f);
        let bmap = Bmap::of_image(&path).unwrap();
        assert_eq!(
            bmap.ranges
                .iter()
                .map(|(a, b, _)| (*a, *b))
                .collect::<Vec<_>>(),
            [(0, 1), (40, 40)]
        );
        assert_eq!(bmap.ranges[1].2, hex::encode(Sha256::digest([2u8; 4096])));
        let xml = bmap.to_xml().unwrap();
        assert!(
            xml.contains("<MappedBlocksCount> 3 </MappedBlocksCount>"),
            "{xml}"
        );
        assert!(xml.contains("> 40 </Range>"), "{xml}");
        let stated = xml.split("<BmapFileChecksum> ").nth(1).unwrap()[..64].to_owned();
        let zeroed = xml.replace(&stated, &"0".repeat(64));
        assert_eq!(stated, hex::encode(Sha256::digest(zeroed.as_bytes())));
    }

    #[test]
    fn reads_back_what_it_writes_and_refuses_tampering() {
        let bmap = Bmap {
            image_size: 10 * BLOCK + 100,
            ranges: vec![
                (0, 1, "ab".repeat(32)),
                (4, 4, "cd".repeat(32)),
                (9, 10, "ef".repeat(32)),
            ],
        };
        let xml = bmap.to_xml().unwrap();
        assert_eq!(Bmap::from_xml(&xml).unwrap(), bmap);
        assert_eq!(bmap.byte_range(9, 10), (9 * BLOCK, 10 * BLOCK + 100));
        assert_eq!(bmap.mapped_bytes(), 4 * BLOCK + 100);

        let edited = xml.replace("> 4 </Range>", "> 5 </Range>");
        let e = format!("{:#}", Bmap::from_xml(&edited).unwrap_err());
        assert!(e.contains("changed or cut short"), "{e}");

        let beyond = Bmap {
            image_size: 2 * BLOCK,
            ranges: vec![(0, 2, "ab".repeat(32))],
        };
        let e = format!(
            "{:#}",
            Bmap::from_xml(&beyond.to_xml().unwrap()).unwrap_err()
        );
        assert!(e.contains("passes the image's end"), "{e}");
    }
}
