//! Locating the SmolLM2 GGUF for tests that need the real model.

use std::path::PathBuf;

/// The GGUF path from `SAFETUNE_SMOLLM2_GGUF` or the default model cache.
/// Without it, a test is skipped — except under CI, where it must be present.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let p = std::env::var_os("SAFETUNE_SMOLLM2_GGUF").map(PathBuf::from).or_else(|| {
        let home = std::env::var_os("SAFETUNE_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/safetune")))?;
        Some(home.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"))
    })?;
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} is missing under CI: run `safetune model fetch smollm2-135m-instruct` first", p.display());
    }
    eprintln!("skipped: {} not present", p.display());
    None
}
