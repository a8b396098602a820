//! The image being flashed, read front to back: a sparse `.img` by seeking over its holes, or a
//! `.img.zst` decompressed as a stream (the holes are zeros in the stream and are read past, never
//! written to a temporary file).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

pub struct Source {
    path: PathBuf,
    reader: Reader,
    pos: u64,
    skip_buf: Vec<u8>,
}

enum Reader {
    Plain(File),
    Zstd(Box<zstd::Decoder<'static, BufReader<File>>>),
}

impl Source {
    /// Opens `path`, recognising zstd by its magic number, and checks a plain image's length against
    /// the bmap's (a compressed one is checked as it is read).
    pub fn open(path: &Path, image_size: u64) -> Result<Self> {
        let mut file = File::open(path)
            .with_context(|| format!("cannot open the image {}", path.display()))?;
        let mut magic = [0u8; 4];
        let is_zstd = file.read_exact(&mut magic).is_ok() && magic == ZSTD_MAGIC;
        file.rewind()?;
        let reader = if is_zstd {
            let decoder = zstd::Decoder::new(file)
                .with_context(|| format!("cannot decompress {}", path.display()))?;
            Reader::Zstd(Box::new(decoder))
        } else {
            let len = file.metadata()?.len();
            ensure!(
                len == image_size,
                "the image {} is {len} bytes but its bmap says {image_size}: the bmap belongs to another image",
                path.display()
            );
            Reader::Plain(file)
        };
        Ok(Source {
            path: path.to_owned(),
            reader,
            pos: 0,
            skip_buf: Vec::new(),
        })
    }

    /// Moves forward to `offset`: the bmap's ranges come in order, so a stream never goes back.
    pub fn skip_to(&mut self, offset: u64) -> Result<()> {
        ensure!(offset >= self.pos, "ranges out of order at byte {offset}");
        match &mut self.reader {
            Reader::Plain(file) => {
                file.seek(SeekFrom::Start(offset))?;
            }
            Reader::Zstd(_) => {
                let mut buf = std::mem::take(&mut self.skip_buf);
                buf.resize(1 << 20, 0);
                while self.pos < offset {
                    let n = (offset - self.pos).min(buf.len() as u64) as usize;
                    self.read_exact(&mut buf[..n])?;
                }
                self.skip_buf = buf;
            }
        }
        self.pos = offset;
        Ok(())
    }

    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let result = match &mut self.reader {
            Reader::Plain(file) => file.read_exact(buf),
            Reader::Zstd(decoder) => decoder.read_exact(buf),
        };
        if let Err(e) = result {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bail!(
                    "the image {} ends before byte {}, where its bmap still maps data: it is cut short",
                    self.path.display(),
                    self.pos + buf.len() as u64
                );
            }
            return Err(e)
                .with_context(|| format!("cannot read the image {}", self.path.display()));
        }
        self.pos += buf.len() as u64;
        Ok(())
    }
}
