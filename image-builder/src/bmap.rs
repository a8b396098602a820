//! Block maps in bmaptool's format (version 2.0): which 4 KiB blocks of the image hold data, with a
//! sha256 per range, so `bmaptool copy` writes only those and verifies them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;
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
}
