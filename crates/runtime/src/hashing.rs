//! sha256 of files and of serialisable values (cache keys, manifests); the
//! atomic file writes live with the result types (`safetune_eval::results`).

use std::io::Read;
use std::path::Path;

use safetune_core::anyhow::Context;
use safetune_core::Result;
use sha2::{Digest, Sha256};

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// Hash of a value's canonical JSON.
pub fn sha256_json<T: serde::Serialize>(v: &T) -> Result<String> {
    Ok(sha256_bytes(serde_json::to_string(v)?.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub use safetune_eval::results::{write_atomic, write_json};
