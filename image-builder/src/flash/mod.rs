//! Flashing a card the way bmaptool does, writing only the blocks the bmap maps, and then proving it:
//! every mapped range is read back from the card itself and checked against the bmap's sha256. The
//! image's own bytes are checked against the bmap as they pass, so a corrupt image is refused too.

pub mod boot;
mod readback;
mod source;
mod target;
mod usage;

pub use source::Source;
pub use target::{open_for_flash, open_for_reading, shown, Target};

use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::bmap::Bmap;
use crate::disk::mbr;
use crate::progress::Progress;
use readback::{drop_cache, DeviceReader};

/// Large enough that a card reader sees long sequential requests.
const CHUNK: usize = 4 << 20;

/// Writes the mapped ranges of `source` to the target and flushes them to the card.
pub fn write(source: &mut Source, bmap: &Bmap, target: &Target, progress: &Progress) -> Result<()> {
    let dev = target.path.display();
    let step = progress.bar(&format!("write {dev}"), bmap.mapped_bytes());
    let mut buf = vec![0u8; CHUNK];
    for (index, (first, last, sum)) in bmap.ranges.iter().enumerate() {
        let (start, end) = bmap.byte_range(*first, *last);
        source.skip_to(start)?;
        let mut hasher = Sha256::new();
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(CHUNK as u64) as usize;
            source.read_exact(&mut buf[..n])?;
            hasher.update(&buf[..n]);
            target
                .file
                .write_all_at(&buf[..n], pos)
                .with_context(|| format!("cannot write {dev} at byte {pos}"))?;
            step.inc(n as u64);
            pos += n as u64;
        }
        if hex::encode(hasher.finalize()) != *sum {
            bail!(
                "the image does not match its bmap in {}: the image is corrupt or the bmap belongs to \
                 another image; {dev} now holds a partial image",
                describe_range(bmap, index)
            );
        }
    }
    target
        .file
        .sync_all()
        .with_context(|| format!("cannot flush {dev}"))?;
    // Nothing will read these pages again from memory: the read-back must come from the card.
    drop_cache(&target.file, &target.path)?;
    step.finish();
    Ok(())
}

/// How a read-back went.
pub struct Verified {
    pub ranges: usize,
    pub bytes: u64,
    /// Ranges left out because they lie in the span the caller asked to skip.
    pub skipped: usize,
    /// O_DIRECT; otherwise the page cache was dropped first.
    pub direct: bool,
}

/// Reads every mapped range back from the card at `path` and checks it against the bmap, leaving out
/// ranges that lie wholly in `skip` (a byte span); the error names the first range that differs, with
/// its offset and partition.
pub fn verify(
    path: &Path,
    bmap: &Bmap,
    skip: Option<(u64, u64)>,
    progress: &Progress,
) -> Result<Verified> {
    let target = open_for_reading(path)?;
    if target.size < bmap.image_size {
        bail!(
            "{} holds {} bytes, less than the image's {}: it cannot hold this image",
            shown(path),
            target.size,
            bmap.image_size
        );
    }
    let mut reader = DeviceReader::open(path, CHUNK)?;
    let step = progress.bar(&format!("verify {}", path.display()), bmap.mapped_bytes());
    let mut verified = Verified {
        ranges: 0,
        bytes: 0,
        skipped: 0,
        direct: reader.direct,
    };
    for (index, (first, last, sum)) in bmap.ranges.iter().enumerate() {
        let (start, end) = bmap.byte_range(*first, *last);
        if skip.is_some_and(|(from, to)| from <= start && end <= to) {
            verified.skipped += 1;
            continue;
        }
        let actual = reader.sha256(start, end, &|n| step.inc(n))?;
        if actual != *sum {
            let (place, hint) = partition_note(&target, start);
            bail!(
                "{} does not match the image in {}{place}: its sha256 is {actual}, the bmap says {sum}{hint}",
                shown(path),
                describe_range(bmap, index),
            );
        }
        verified.ranges += 1;
        verified.bytes += end - start;
    }
    step.finish();
    Ok(verified)
}

/// Where the card's own partition table places `offset` (", in partition 2"), and a hint when that
/// is the boot partition, which `flash --center` changes after verifying.
fn partition_note(target: &Target, offset: u64) -> (String, &'static str) {
    let Ok(entries) = boot::partitions(&target.file, &target.path) else {
        return (String::new(), "");
    };
    let holding = entries
        .iter()
        .find(|e| (e.start_bytes..e.start_bytes + e.size_bytes).contains(&offset));
    match holding {
        Some(e) if Some(*e) == mbr::boot_partition(&entries) => (
            format!(", in partition {}, the boot partition", e.number),
            "\nhint: a center.ini put there by `flash --center` changes the boot partition; \
             `verify --except-boot` checks the rest",
        ),
        Some(e) => (format!(", in partition {}", e.number), ""),
        None => (
            ", outside the partitions (partition table or bootloader area)".to_owned(),
            "",
        ),
    }
}

/// "range 3 of 12 (blocks 1024-25198, bytes 4194304-103219199, offset 0x400000 = 4.0 MiB)".
fn describe_range(bmap: &Bmap, index: usize) -> String {
    let (first, last, _) = &bmap.ranges[index];
    let (start, end) = bmap.byte_range(*first, *last);
    format!(
        "range {} of {} (blocks {first}-{last}, bytes {start}-{}, offset {start:#x} = {:.1} MiB)",
        index + 1,
        bmap.ranges.len(),
        end - 1,
        start as f64 / 1048576.0
    )
}
