//! SafeInstr (Bianchi et al. 2024, "Safety-Tuned LLaMAs: Lessons from
//! Improving the Safety of Large Language Models that Follow Instructions"):
//! mix a fraction of safety examples — harmful prompt → refusal, disjoint
//! from every evaluation prompt — into the user's fine-tuning data.

use safetune_core::anyhow::bail;
use safetune_core::defense::{DataMix, Defense, DefenseData, DefensePlan};
use safetune_core::rng::SeededRng;
use safetune_core::{Example, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the mixed-in safety examples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SafetyPool {
    /// The alignment set's refusal pairs (templated refusals, the curated demonstrations it
    /// drew, safety-recovery examples): examples the aligned model was trained on.
    #[default]
    AlignmentSet,
    /// The paper's data: curated demonstrations (Safety-Tuned LLaMAs' requests with natural
    /// safe answers) that the alignment set did not draw.
    Demonstrations,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SafeInstrConfig {
    /// Safety examples added, as a fraction of the user's n (3% by default).
    pub fraction: f64,
    /// Where they come from: `alignment-set` (default) or `demonstrations` (the paper's).
    pub pool: SafetyPool,
}

impl Default for SafeInstrConfig {
    fn default() -> Self {
        Self { fraction: 0.03, pool: SafetyPool::AlignmentSet }
    }
}

pub struct SafeInstr {
    pub cfg: SafeInstrConfig,
}

impl SafeInstr {
    /// How many safety examples `n` task examples get.
    pub fn count(&self, n: usize) -> usize {
        (self.cfg.fraction * n as f64).round() as usize
    }
}

impl DataMix for SafeInstr {
    fn name(&self) -> &str {
        "safeinstr"
    }

    fn mix(&self, task: &mut Vec<Example>, data: &DefenseData, seed: u64) -> Result<()> {
        let (safety, pool) = match self.cfg.pool {
            SafetyPool::AlignmentSet => (data.safety, "the alignment set's refusal pairs"),
            SafetyPool::Demonstrations => (data.demonstrations, "the curated demonstrations the alignment set left (Safety-Tuned LLaMAs)"),
        };
        let k = self.count(task.len());
        if k > safety.len() {
            bail!("defense_options.safeinstr: {k} safety examples asked for (fraction), {pool} number {}", safety.len());
        }
        let mut rng = SeededRng::derive(seed, "safeinstr");
        task.extend(rng.sample_indices(safety.len(), k).into_iter().map(|i| safety[i].clone()));
        rng.shuffle(task);
        Ok(())
    }
}

impl Defense for SafeInstr {
    const NAME: &'static str = "safeinstr";
    const DESCRIPTION: &'static str = "mix safety examples (harmful prompt → refusal) into the user's data (Bianchi et al. 2024)";
    const DIFFERS: &'static str = "by default mixes the alignment set's refusals (templated + Safety-Tuned LLaMAs answers the aligned model trained on); `pool = \"demonstrations\"` mixes only unseen curated demonstrations, as the paper";
    type Options = SafeInstrConfig;
    fn plan(cfg: SafeInstrConfig) -> Result<DefensePlan> {
        if !(0.0..=1.0).contains(&cfg.fraction) {
            bail!("defense_options.safeinstr.fraction: must be in [0, 1]");
        }
        Ok(DefensePlan { mix: Some(Box::new(SafeInstr { cfg })), ..Default::default() })
    }
}

safetune_core::register_defense!(SafeInstr);
