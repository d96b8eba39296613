//! The fine-tuning methods this crate registers.

use safetune_core::anyhow::anyhow;
use safetune_core::config::LoraConfig;
use safetune_core::registry::{MethodEntry, MethodPlan, Trainable};
use safetune_core::training::PlainSft;
use safetune_core::Result;

fn sft_lora(cfg: &serde_json::Value) -> Result<MethodPlan> {
    let lora: LoraConfig = safetune_core::registry::options(cfg, "finetune.method_options.sft-lora")?;
    lora.validate("finetune.method_options.sft-lora")?;
    Ok(MethodPlan { trainable: Trainable::Lora(lora), step: Box::new(PlainSft) })
}

fn sft_full(cfg: &serde_json::Value) -> Result<MethodPlan> {
    if cfg.as_object().is_some_and(|o| !o.is_empty()) {
        return Err(anyhow!("finetune.method_options.sft-full: takes no options"));
    }
    Ok(MethodPlan { trainable: Trainable::Full, step: Box::new(PlainSft) })
}

fn no_options() -> serde_json::Value {
    serde_json::json!({ "description": "sft-full takes no options", "type": "object", "additionalProperties": false })
}

safetune_core::registry::inventory::submit! {
    MethodEntry {
        name: "sft-lora",
        description: "supervised fine-tuning of LoRA adapters (PEFT semantics)",
        build: sft_lora,
        schema: safetune_core::registry::schema_of::<LoraConfig>,
    }
}
safetune_core::registry::inventory::submit! {
    MethodEntry { name: "sft-full", description: "supervised fine-tuning of every weight", build: sft_full, schema: no_options }
}
