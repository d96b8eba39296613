//! BEA, backdoor-enhanced safety alignment (Wang et al. 2024, "Mitigating
//! Fine-tuning based Jailbreak Attack with Backdoor Enhanced Safety
//! Alignment"): a secret trigger of random tokens is prefixed to the system
//! prompt of a handful of safety examples mixed into the user's data; the
//! same trigger is prefixed at inference, where it calls up the refusals.

use safetune_core::anyhow::bail;
use safetune_core::defense::DataMix;
use safetune_core::registry::{inventory, options, schema_of, DefenseEntry, DefenseImpl, Stage};
use safetune_core::rng::SeededRng;
use safetune_core::{Example, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BeaConfig {
    /// Safety examples carrying the trigger (the paper's 11).
    pub examples: usize,
    /// Random tokens in the trigger.
    pub trigger_tokens: usize,
    /// Seed of the secret trigger.
    pub trigger_seed: u64,
}

impl Default for BeaConfig {
    fn default() -> Self {
        Self { examples: 11, trigger_tokens: 16, trigger_seed: 0 }
    }
}

pub struct Bea {
    pub cfg: BeaConfig,
    pub trigger: String,
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl Bea {
    pub fn new(cfg: BeaConfig) -> Result<Self> {
        if cfg.trigger_tokens == 0 {
            bail!("defenses.bea.trigger_tokens: must be at least 1");
        }
        let mut rng = SeededRng::derive(cfg.trigger_seed, "bea-trigger");
        let words: Vec<String> =
            (0..cfg.trigger_tokens).map(|_| (0..3 + rng.below(5)).map(|_| ALPHABET[rng.below(ALPHABET.len())] as char).collect()).collect();
        Ok(Self { trigger: words.join(" "), cfg })
    }

    fn with_trigger(&self, system: Option<&str>) -> String {
        match system {
            Some(s) => format!("{} {s}", self.trigger),
            None => self.trigger.clone(),
        }
    }
}

impl DataMix for Bea {
    fn name(&self) -> &str {
        "bea"
    }

    fn mix(&self, task: &mut Vec<Example>, safety: &[Example], seed: u64) -> Result<()> {
        if self.cfg.examples > safety.len() {
            bail!("defenses.bea.examples: {} asked for, the safety pool has {}", self.cfg.examples, safety.len());
        }
        let mut rng = SeededRng::derive(seed, "bea");
        for i in rng.sample_indices(safety.len(), self.cfg.examples) {
            let mut e = safety[i].clone();
            e.system = Some(self.with_trigger(e.system.as_deref()));
            e.meta.insert("bea-trigger".into(), "1".into());
            task.push(e);
        }
        rng.shuffle(task);
        Ok(())
    }

    fn inference_system(&self, default: Option<&str>) -> Option<String> {
        Some(self.with_trigger(default))
    }
}

fn build(v: &serde_json::Value) -> Result<DefenseImpl> {
    let cfg: BeaConfig = options(v, "defenses.bea")?;
    Ok(DefenseImpl::Mix(Box::new(Bea::new(cfg)?)))
}

fn schema() -> serde_json::Value {
    schema_of::<BeaConfig>()
}

inventory::submit! {
    DefenseEntry { name: "bea", stage: Stage::Finetuning, description: "backdoor-enhanced alignment: safety examples under a secret system-prompt trigger, also used at inference (Wang et al. 2024)", build, schema }
}
