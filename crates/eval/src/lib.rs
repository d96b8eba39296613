//! safetune-eval: scores a model — greedy answers per safety set (ASR, harmful
//! score, per-category ASR, K samples, surface variants, refusal consistency),
//! over-refusal sets, the task's utility, MMLU and MT-Bench — and the result types a run
//! writes. Knows nothing of training, caches or the results layout.

mod answers;
pub mod evaluate;
pub mod mmlu;
pub mod mt_bench;
pub mod results;
pub mod spec;

pub use evaluate::{evaluate, EvalInputs};
pub use spec::EvalSpec;

/// One progress line (nothing when quiet), through `tracing` at level info.
pub fn say(quiet: bool, msg: impl AsRef<str>) {
    if !quiet {
        safetune_core::tracing::info!("{}", msg.as_ref());
    }
}
