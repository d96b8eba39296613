//! A bounded scan of a GGUF header's metadata for the one value candle's reader
//! divides by, `general.alignment`, before that reader runs. Every length is
//! checked against the bytes left in the file, nothing is allocated from a
//! header count, and the file is left at its start.

use std::io::{BufReader, Read, Seek, SeekFrom};

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

const MAX_DEPTH: usize = 4;

struct Scan<R> {
    r: R,
    len: u64,
    wide: bool,
}

impl<R: Read + Seek> Scan<R> {
    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.r.read_exact(&mut b).map_err(|_| anyhow!("truncated header"))?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b).map_err(|_| anyhow!("truncated header"))?;
        Ok(u64::from_le_bytes(b))
    }

    /// A count or length: u32 in GGUF v1, u64 after.
    fn length(&mut self) -> Result<u64> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn remaining(&mut self) -> Result<u64> {
        Ok(self.len.saturating_sub(self.r.stream_position()?))
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        if n > self.remaining()? {
            bail!("a length of {n} bytes runs past the end of the file");
        }
        self.r.seek(SeekFrom::Current(n as i64))?;
        Ok(())
    }

    fn string(&mut self) -> Result<Vec<u8>> {
        let n = self.length()?;
        if n > self.remaining()? {
            bail!("a string of {n} bytes runs past the end of the file");
        }
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v)?;
        Ok(v)
    }

    /// Skips one value of type `ty`; returns it when it is a non-negative integer of at most 32 bits
    /// (the types candle reads `general.alignment` from).
    fn value(&mut self, ty: u32, depth: usize) -> Result<Option<u64>> {
        let fixed = |n: u64| Some(n);
        let size = match ty {
            0 | 1 | 7 => fixed(1),
            2 | 3 => fixed(2),
            4..=6 => fixed(4),
            10..=12 => fixed(8),
            _ => None,
        };
        if let Some(n) = size {
            if n > self.remaining()? {
                bail!("truncated header");
            }
            let mut b = [0u8; 8];
            self.r.read_exact(&mut b[..n as usize])?;
            let v = u64::from_le_bytes(b);
            let int = match ty {
                0 | 2 | 4 => Some(v),
                1 => Some(v as u8 as i8 as i64).filter(|x| *x >= 0).map(|x| x as u64),
                3 => Some(v as u16 as i16 as i64).filter(|x| *x >= 0).map(|x| x as u64),
                5 => Some(v as u32 as i32 as i64).filter(|x| *x >= 0).map(|x| x as u64),
                _ => None,
            };
            return Ok(int);
        }
        match ty {
            8 => {
                let n = self.length()?;
                self.skip(n)?;
            }
            9 => {
                if depth >= MAX_DEPTH {
                    bail!("arrays nested deeper than {MAX_DEPTH}");
                }
                let elem = self.u32()?;
                let n = self.length()?;
                // Every element takes at least one byte, so the loop is bounded by the file.
                if n > self.remaining()? {
                    bail!("an array of {n} elements runs past the end of the file");
                }
                for _ in 0..n {
                    self.value(elem, depth + 1)?;
                }
            }
            t => bail!("unknown metadata value type {t}"),
        }
        Ok(None)
    }
}

/// `general.alignment` as candle will read it (`None`: absent or of another type, so
/// candle uses its default). The file is left at its start.
pub fn alignment(f: &mut std::fs::File) -> Result<Option<u64>> {
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    let found = {
        let mut s = Scan { r: BufReader::new(&mut *f), len, wide: true };
        if &s.u32()?.to_le_bytes() != b"GGUF" {
            bail!("no GGUF magic");
        }
        s.wide = match s.u32()? {
            1 => false,
            2 | 3 => true,
            v => bail!("unsupported GGUF version {v}"),
        };
        let _tensors = s.length()?;
        let kvs = s.length()?;
        if kvs > s.remaining()? {
            bail!("{kvs} metadata entries cannot fit in the file");
        }
        let mut found = None;
        for _ in 0..kvs {
            let key = s.string()?;
            let ty = s.u32()?;
            let v = s.value(ty, 0)?;
            if key == b"general.alignment" {
                found = v;
            }
        }
        found
    };
    f.seek(SeekFrom::Start(0))?;
    Ok(found)
}
