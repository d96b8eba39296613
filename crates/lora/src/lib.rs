//! safetune-lora: LoRA adapters written in-house (candle-lora is not on crates.io).
//!
//! An adapter adds `scale · B·A·dropout(x)` to a frozen linear layer, with
//! `A` `[r, in]` (uniform init) and `B` `[out, r]` (zero init) and
//! `scale = alpha / r`. Adapters attach to a model through
//! [`safetune_core::CausalLm::attach_adapter`]; they can be merged into the
//! base weights, and saved and loaded in Python peft's file layout.

mod adapter;
mod peft;

pub use adapter::{attach_lora, merge_adapters, LoraAdapter};
pub use peft::{check_peft, load_peft, save_peft, write_safetensors};
