//! safetune-runtime: the one place where datasets, methods, defenses and
//! metrics are composed into runs. It reads run specs, fetches models,
//! caches stage outputs, writes results and manifests, and backs the
//! `safetune` binary.

pub mod attack_search;
pub mod calibrate;
pub use safetune_eval::{evaluate, mmlu, results};
pub use safetune_report as report;
mod align;
mod cell;
pub mod cli;
#[doc(hidden)]
pub mod code_hash;
mod defenses;
pub mod eval_cmd;
mod export;
pub mod fetch;
pub mod hashing;
pub mod jobs;
pub mod judge_check;
pub mod lock;
pub mod logging;
mod merge;
pub mod options;
pub mod output;
pub mod pipeline;
mod plan;
pub(crate) mod prepare;
pub mod rejudge;
pub mod resources;
pub(crate) mod run;
pub mod serve;
mod slurm;
pub mod spec;
pub mod stack;
pub mod stage_cache;

pub use pipeline::run;
pub use spec::RunSpec;
