//! How a run is carried out (where data and results live, parallel cells,
//! dry runs) — as opposed to what it computes (the spec).

use std::path::PathBuf;

#[derive(Clone)]
pub struct RunOptions {
    pub data_dir: Option<PathBuf>,
    pub out: PathBuf,
    pub quiet: bool,
    /// Cells fine-tuned at once, each in its own process with its share of the cores.
    pub jobs: usize,
    /// Set in a worker process: the cells it computes (the parent holds the lock).
    pub worker_cells: Option<Vec<String>>,
    /// Check every input and print the plan; train, evaluate and write nothing.
    pub dry_run: bool,
}

impl RunOptions {
    pub fn new(data_dir: Option<PathBuf>, out: PathBuf, quiet: bool) -> Self {
        Self { data_dir, out, quiet, jobs: 1, worker_cells: None, dry_run: false }
    }
}

/// `$SAFETUNE_DATA_DIR`, when set and not empty (an empty value means unset, as in a
/// shell's `SAFETUNE_DATA_DIR= cmd`).
pub fn env_data_dir() -> Option<PathBuf> {
    std::env::var_os("SAFETUNE_DATA_DIR").filter(|v| !v.is_empty()).map(PathBuf::from)
}
