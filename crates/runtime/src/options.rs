//! How a run is carried out (where data and results live, parallel cells,
//! dry runs) — as opposed to what it computes (the spec).

use std::path::PathBuf;

/// Checkpoints every 10 minutes of training: a few seconds of writing (LoRA) to at most
/// one lost interval when a stage is stopped.
pub const DEFAULT_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Clone)]
pub struct RunOptions {
    pub data_dir: Option<PathBuf>,
    pub out: PathBuf,
    pub quiet: bool,
    /// Cells fine-tuned at once, each in its own process with its share of the cores.
    pub jobs: usize,
    /// Set in a worker process: the cells it computes (the parent holds the lock).
    pub worker_cells: Option<Vec<String>>,
    /// Set in a worker process: the aligned models it trains and evaluates (labels
    /// `aligned`, `aligned+<defense>`), then it stops (the parent holds the lock).
    pub worker_alignments: Option<Vec<String>>,
    /// `--cells`: only these cells (labels `<method>[+<defense>...]__<regime>`) and the
    /// aligned models they start from; the base model is evaluated as always. A run cut into
    /// pieces this way is put back together by `safetune report OUT --from PIECE...`.
    pub only_cells: Option<Vec<String>>,
    /// Check every input and print the plan; train, evaluate and write nothing.
    pub dry_run: bool,
    /// Time between two checkpoints of a training stage (`None`: none saved). A stage
    /// stopped part-way resumes from its last one when the run is started again.
    pub checkpoint_every: Option<std::time::Duration>,
    /// Hashes of the code that computes each cached stage, part of its cache
    /// key (the build's own; tests set others to stand for an edited build).
    pub code: CodeKeys,
    /// In a grid's sub-runs after `--jobs` computed their stages in workers across them: the
    /// wall time that took until the sub-run's last worker ended (recorded in its manifest as
    /// `grid_workers_s`, since each sub-run's own `run_s` then counts only its pass over the
    /// finished stages).
    pub grid_workers_s: Option<f64>,
}

/// Hashes of the sources that compute the cached stages (`src/code_hash.rs`,
/// hashed by `build.rs`): `train` enters the keys of aligned models and
/// trained weights, `eval` those of evaluations; a cell's key holds both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeKeys {
    pub train: String,
    pub eval: String,
}

impl CodeKeys {
    /// The hashes of the sources this binary was built from.
    pub fn built() -> Self {
        Self { train: env!("SAFETUNE_CODE_TRAIN").into(), eval: env!("SAFETUNE_CODE_EVAL").into() }
    }
}

impl RunOptions {
    /// Whether this process is a `--jobs` or `--slurm` worker (its parent holds the lock
    /// and writes the run's manifest and report).
    pub fn is_worker(&self) -> bool {
        self.worker_cells.is_some() || self.worker_alignments.is_some()
    }

    pub fn new(data_dir: Option<PathBuf>, out: PathBuf, quiet: bool) -> Self {
        Self {
            data_dir,
            out,
            quiet,
            jobs: 1,
            worker_cells: None,
            worker_alignments: None,
            only_cells: None,
            dry_run: false,
            checkpoint_every: Some(DEFAULT_CHECKPOINT_EVERY),
            code: CodeKeys::built(),
            grid_workers_s: None,
        }
    }

    /// `safetune run SPEC --out OUT` plus the options a worker process inherits (data
    /// directory, quiet, checkpoint interval): the command line of `--jobs` workers and
    /// of `--slurm` jobs, before their `--worker-cells`. A worker of a `--cells` run gets the
    /// same `--cells`, so that it, too, leaves the other cells' aligned models alone.
    pub fn worker_args(&self, spec_json: &std::path::Path, out: &std::path::Path) -> Vec<String> {
        let mut v = vec!["run".into(), spec_json.display().to_string(), "--out".into(), out.display().to_string()];
        if let Some(d) = &self.data_dir {
            v.extend(["--data-dir".into(), d.display().to_string()]);
        }
        if self.quiet {
            v.push("--quiet".into());
        }
        v.extend(["--checkpoint-minutes".into(), self.checkpoint_every.map_or(0.0, |d| d.as_secs_f64() / 60.0).to_string()]);
        if let Some(cells) = &self.only_cells {
            v.extend(["--cells".into(), cells.join(",")]);
        }
        v
    }
}

/// `$SAFETUNE_DATA_DIR`, when set and not empty (an empty value means unset, as in a
/// shell's `SAFETUNE_DATA_DIR= cmd`).
pub fn env_data_dir() -> Option<PathBuf> {
    std::env::var_os("SAFETUNE_DATA_DIR").filter(|v| !v.is_empty()).map(PathBuf::from)
}
