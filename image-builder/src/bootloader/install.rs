//! Writing the bootloader pieces into a card image (or card) whose partition table is already there:
//! each piece at its sector, none overlapping another, all before the first partition, and the disk
//! signature and partition table (bytes 440..512 of sector 0) left exactly as they were.

use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::fetch::Blob;
use super::piece::MBR_CODE_BYTES;
use crate::disk::mbr;

pub fn install(blobs: &[Blob], image: &Path) -> Result<()> {
    if blobs.is_empty() {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("cannot open {}", image.display()))?;
    let mut sector0 = [0u8; 512];
    file.read_exact_at(&mut sector0, 0)
        .with_context(|| format!("cannot read the partition table of {}", image.display()))?;
    let table = mbr::parse(&sector0).with_context(|| image.display().to_string())?;
    let first = table
        .iter()
        .map(|e| e.start_bytes)
        .min()
        .with_context(|| format!("{} has no partitions", image.display()))?;
    check_layout(blobs, first)?;
    for blob in blobs {
        file.write_all_at(&blob.data, blob.piece.start_bytes())
            .with_context(|| {
                format!(
                    "cannot write bootloader piece '{}' into {}",
                    blob.piece.name,
                    image.display()
                )
            })?;
    }
    let mut after = [0u8; 512];
    file.read_exact_at(&mut after, 0)?;
    ensure!(
        after[MBR_CODE_BYTES as usize..] == sector0[MBR_CODE_BYTES as usize..],
        "writing the bootloader changed the partition table of {}",
        image.display()
    );
    file.sync_all()?;
    Ok(())
}

/// Every piece inside the bootloader area (after sector 0's boot code, before `first_partition`), and no
/// two pieces on the same bytes: a piece that grew (a newer U-Boot) must not silently cut into the next.
fn check_layout(blobs: &[Blob], first_partition: u64) -> Result<()> {
    let mut spans: Vec<(u64, u64, &str)> = blobs
        .iter()
        .map(|b| {
            let start = b.piece.start_bytes();
            (start, start + b.data.len() as u64, b.piece.name.as_str())
        })
        .collect();
    spans.sort();
    for &(start, end, name) in &spans {
        if start == 0 {
            ensure!(
                end <= MBR_CODE_BYTES,
                "bootloader piece '{name}' would overwrite the disk signature and partition table"
            );
        }
        if end > first_partition {
            bail!(
                "bootloader piece '{name}' ends at byte {end}, past the start of the first partition at byte \
                 {first_partition}"
            );
        }
    }
    for pair in spans.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            bail!("bootloader pieces '{a}' and '{b}' overlap: '{a}' ends at byte {end}, '{b}' starts at byte {start}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::piece::Piece;

    fn blob(name: &str, spec: &str, len: usize) -> Blob {
        Blob {
            piece: Piece::parse(name, spec, 1).unwrap(),
            data: vec![0xa5; len],
        }
    }

    #[test]
    fn overlaps_and_pieces_past_the_first_partition_are_refused() {
        let mib = 1 << 20;
        let ok = [
            blob("bl1", "sector=1 source=a", 15 * 1024),
            blob("bl2", "sector=31 source=a", 16 * 1024),
        ];
        assert!(check_layout(&ok, 4 * mib).is_ok());
        let grown = [
            blob("bl1", "sector=1 source=a", 15 * 1024 + 1),
            blob("bl2", "sector=31 source=a", 10),
        ];
        let e = check_layout(&grown, 4 * mib).unwrap_err().to_string();
        assert!(e.contains("'bl1' and 'bl2' overlap"), "{e}");
        let big = [blob("u-boot", "sector=63 source=a", 4 * mib as usize)];
        let e = check_layout(&big, 4 * mib).unwrap_err().to_string();
        assert!(e.contains("past the start of the first partition"), "{e}");
    }
}
