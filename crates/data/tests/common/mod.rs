//! Helpers shared by this crate's integration tests.

use std::path::PathBuf;

use safetune_data::DataDir;

/// `../shared/data` beside the repository, or `SAFETUNE_DATA_DIR`.
pub fn shared() -> Option<DataDir> {
    let p = std::env::var_os("SAFETUNE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if p.is_dir() {
        Some(DataDir::open(&p).unwrap())
    } else {
        // CI has ../shared/data beside the checkout: there a missing directory is a failure, not a skip.
        assert!(std::env::var_os("CI").is_none(), "CI: no data directory at {}", p.display());
        eprintln!("skipped: no data directory at {}", p.display());
        None
    }
}
