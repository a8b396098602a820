//! Reading an MBR partition table back from a card or image: enough to find the boot partition after
//! flashing, without asking the kernel to re-read partitions (it may not even scan loop devices).

use anyhow::{ensure, Result};

const SECTOR: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub number: u32,
    pub kind: u8,
    pub bootable: bool,
    pub start_bytes: u64,
    pub size_bytes: u64,
}

impl Entry {
    /// FAT12/16/32 in any of their MBR type codes (the builder uses 0x0c, FAT32 with LBA).
    pub fn is_fat(&self) -> bool {
        matches!(self.kind, 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e)
    }
}

/// The primary partitions of the table in the first sector; empty slots are left out.
pub fn parse(sector: &[u8]) -> Result<Vec<Entry>> {
    ensure!(
        sector.len() >= 512 && sector[510..512] == [0x55, 0xaa],
        "no MBR partition table (the boot signature 55 aa is missing)"
    );
    let mut entries = Vec::new();
    for (i, raw) in sector[446..510].chunks_exact(16).enumerate() {
        let le32 = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let (kind, start, sectors) = (raw[4], le32(8), le32(12));
        if kind == 0 || sectors == 0 {
            continue;
        }
        entries.push(Entry {
            number: i as u32 + 1,
            kind,
            bootable: raw[0] == 0x80,
            start_bytes: u64::from(start) * SECTOR,
            size_bytes: u64::from(sectors) * SECTOR,
        });
    }
    Ok(entries)
}

/// The boot partition: the first FAT partition marked bootable, else the first FAT partition.
pub fn boot_partition(entries: &[Entry]) -> Option<Entry> {
    let fat = || entries.iter().filter(|e| e.is_fat());
    fat().find(|e| e.bootable).or_else(|| fat().next()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(parts: &[(u8, u8, u32, u32)]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        for (i, (flag, kind, start, size)) in parts.iter().enumerate() {
            let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
            e[0] = *flag;
            e[4] = *kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&size.to_le_bytes());
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    #[test]
    fn finds_the_fat_boot_partition() {
        let s = table(&[(0, 0x83, 2048, 100), (0x80, 0x0c, 8192, 262144)]);
        let entries = parse(&s).unwrap();
        assert_eq!(entries.len(), 2);
        let boot = boot_partition(&entries).unwrap();
        assert_eq!((boot.number, boot.start_bytes), (2, 8192 * 512));
        assert_eq!(boot.size_bytes, 128 << 20);
        assert!(boot_partition(&parse(&table(&[(0, 0x83, 2048, 100)])).unwrap()).is_none());
        let mut unsigned = s.clone();
        unsigned[511] = 0;
        assert!(parse(&unsigned).is_err());
    }
}
