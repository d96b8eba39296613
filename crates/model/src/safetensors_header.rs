//! A safetensors file's header, read and checked without its data: the header
//! length within the file and a bound, every tensor's byte range within the
//! data and equal to its shape × dtype size (overflow-checked).

use std::io::Read;
use std::path::Path;

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;

/// Headers larger than this are refused (the format's own reference limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// A safetensors file's tensors (name, shape), after checking the header against the file.
pub fn tensors(path: &Path) -> Result<Vec<(String, Vec<usize>)>> {
    let shown = path.display();
    let mut f = std::fs::File::open(path).with_context(|| format!("{shown}: cannot open"))?;
    let len = f.metadata()?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| anyhow!("{shown}: not a safetensors file (shorter than its header length)"))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > len.saturating_sub(8) {
        bail!("{shown}: safetensors header of {n} bytes does not fit (file {len} bytes, limit {MAX_HEADER})");
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| anyhow!("{shown}: safetensors header is not a JSON object: {e}"))?;
    let data = len - 8 - n;
    let mut names = Vec::new();
    for (name, t) in &header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |why: &str| anyhow!("{shown}: tensor `{name}`: {why}");
        let dtype = t.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?;
        let size = dtype_size(dtype).ok_or_else(|| bad(&format!("unknown dtype `{dtype}`")))?;
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
            .ok_or_else(|| bad("no shape"))?;
        let offsets: Vec<u64> =
            t.get("data_offsets").and_then(|o| o.as_array()).and_then(|o| o.iter().map(|x| x.as_u64()).collect()).unwrap_or_default();
        let [begin, end] = offsets[..] else { return Err(bad("no data_offsets [begin, end]")) };
        let bytes = shape.iter().try_fold(size, |a, &d| a.checked_mul(d)).map(|b| b as u64);
        if begin > end || end > data || bytes != Some(end - begin) {
            bail!("{shown}: tensor `{name}` of shape {shape:?} ({dtype}) does not match its bytes {begin}..{end} of {data}");
        }
        names.push((name.clone(), shape));
    }
    Ok(names)
}
