//! safetune-train: supervised fine-tuning for any [`safetune_core::CausalLm`].
//!
//! Prompt-masked cross-entropy, a fused AdamW, warmup + constant/linear/cosine
//! schedules, gradient clipping and accumulation, length-bucketed batches,
//! seeded and deterministic on CPU. The objective of each step comes from a
//! [`safetune_core::training::TrainStep`], so defenses change what a step
//! computes without touching the loop. Registers the `sft-lora` and
//! `sft-full` methods.

mod adamw;
mod batch;
mod checkpoint;
mod loss;
mod methods;
mod process;
mod schedule;
mod trainer;

pub use adamw::AdamW;
pub use batch::{encode_example, make_batches, EncodedExample};
pub use checkpoint::{clear as clear_checkpoints, Checkpoints};
pub use loss::masked_cross_entropy;
pub use process::{fix_thread_count, tune_allocator, tune_process};
pub use schedule::learning_rate;
pub use trainer::{epoch_tokens, train, train_stage, with_context, EpochTokens, StageData, StageRun, TrainReport};
