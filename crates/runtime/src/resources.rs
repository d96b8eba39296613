//! Wall time and peak resident memory of a stage, and the versions of the
//! crates a result was computed with.

use std::time::Instant;

/// Measures one stage: wall time since `start`, and the peak resident set
/// since then where the OS lets the peak be reset (Linux), else since the
/// process started.
pub struct StageMeter {
    start: Instant,
}

impl StageMeter {
    pub fn start() -> Self {
        safetune_model::memory::reset_peak_rss();
        Self { start: Instant::now() }
    }

    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// `{ "seconds": …, "peak_rss_mb": … }` (no peak where it cannot be read).
    pub fn report(&self) -> serde_json::Value {
        serde_json::json!({ "seconds": self.seconds(), "peak_rss_mb": peak_rss_mb() })
    }
}

pub use safetune_model::memory::peak_rss_mb;

/// Versions of the numeric and tokenizer crates and of every workspace
/// crate, read from the workspace's Cargo.lock at build time.
pub fn crate_versions() -> serde_json::Map<String, serde_json::Value> {
    const LOCK: &str = include_str!("../../../Cargo.lock");
    const KEEP: [&str; 6] = ["candle-core", "candle-nn", "tokenizers", "safetensors", "half", "gemm"];
    let mut out = serde_json::Map::new();
    let mut name: Option<&str> = None;
    for line in LOCK.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            if KEEP.contains(&n) || n.starts_with("safetune") {
                out.insert(n.to_string(), v.trim_matches('"').into());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_come_from_the_lock_file() {
        let v = super::crate_versions();
        assert!(v.get("candle-core").and_then(|s| s.as_str()).is_some_and(|s| s.starts_with("0.")), "{v:?}");
        assert_eq!(v.get("safetune-runtime").and_then(|s| s.as_str()), Some(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn peak_memory_includes_an_allocation_made_during_the_stage() {
        if super::peak_rss_mb().is_none() {
            return; // not Linux: no peak to read
        }
        let meter = super::StageMeter::start();
        let v = vec![1u8; 256 << 20]; // written, so resident
        std::hint::black_box(&v);
        let peak = meter.report()["peak_rss_mb"].as_f64().unwrap();
        assert!(peak >= 256.0, "peak {peak} MiB after touching 256 MiB");
    }
}
