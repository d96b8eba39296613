//! Safety-recovery data augmentation (Qi et al. 2025, "Safety Alignment Should
//! Be Made More Than Just a Few Tokens Deep", ICLR 2025, §3), as a fine-tuning
//! data defense: add to the user's data harmful requests answered with a refusal,
//! half of them after the first words of a harmful answer given as a prefill (not
//! learned), so the model learns to recover into a refusal even once a harmful
//! answer has started — alignment deeper than the first few tokens.
//! Stackable with other data defenses (`safeinstr`) and with `constrained-sft`.

use safetune_core::anyhow::bail;
use safetune_core::defense::{DataMix, Defense, DefenseData, DefensePlan};
use safetune_core::rng::SeededRng;
use safetune_core::{Example, ExampleKind, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Options of `recovery-mix`; every default is the reference code's (README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryMixOptions {
    /// Examples added, as a fraction of the user's n.
    pub fraction: f64,
    /// Share of the added examples that start with a harmful prefix (the others: plain refusals).
    pub prefix_share: f64,
    /// The longest harmful prefix, in words (uniform from 1 to this, or the answer's length).
    pub max_prefix_words: usize,
}

impl Default for RecoveryMixOptions {
    fn default() -> Self {
        Self { fraction: 0.25, prefix_share: 0.5, max_prefix_words: 100 }
    }
}

pub struct RecoveryMix {
    pub options: RecoveryMixOptions,
}

impl RecoveryMix {
    pub fn new(options: RecoveryMixOptions) -> Result<Self> {
        if !(0.0..=10.0).contains(&options.fraction) {
            bail!("defense_options.recovery-mix.fraction: must be in [0, 10]");
        }
        if !(0.0..=1.0).contains(&options.prefix_share) {
            bail!("defense_options.recovery-mix.prefix_share: must be in [0, 1]");
        }
        if options.max_prefix_words == 0 {
            bail!("defense_options.recovery-mix.max_prefix_words: must be at least 1");
        }
        Ok(Self { options })
    }

    /// How many examples `n` user examples get.
    pub fn count(&self, n: usize) -> usize {
        (self.options.fraction * n as f64).round() as usize
    }
}

impl DataMix for RecoveryMix {
    fn name(&self) -> &str {
        "recovery-mix"
    }

    fn mix(&self, task: &mut Vec<Example>, data: &DefenseData, seed: u64) -> Result<()> {
        let k = self.count(task.len());
        if k == 0 {
            return Ok(());
        }
        if k > data.harmful.len() {
            bail!(
                "defense_options.recovery-mix.fraction: {k} recovery examples asked for, the defender's harmful pool has {}",
                data.harmful.len()
            );
        }
        if data.refusals.is_empty() {
            bail!("recovery-mix: the runtime gave no refusal texts");
        }
        let mut rng = SeededRng::derive(seed, "recovery-mix");
        for i in rng.sample_indices(data.harmful.len(), k) {
            let h = &data.harmful[i];
            let mut e = Example::new(
                format!("{}#recovery-mix", h.id),
                ExampleKind::Refusal,
                h.prompt.clone(),
                data.refusals[rng.below(data.refusals.len())],
            );
            e.system = h.system.clone();
            let words: Vec<&str> = h.response.split_whitespace().collect();
            if rng.next_f64() < self.options.prefix_share && !words.is_empty() {
                let cut = 1 + rng.below(words.len().min(self.options.max_prefix_words));
                e.prefill = Some(format!("{} ", words[..cut].join(" ")));
            }
            task.push(e);
        }
        rng.shuffle(task);
        Ok(())
    }
}

impl Defense for RecoveryMix {
    const NAME: &'static str = "recovery-mix";
    const DESCRIPTION: &'static str =
        "safety-recovery augmentation: add harmful requests answered by a refusal, half after a harmful prefix (Qi et al. 2025)";
    const DIFFERS: &'static str = "prefix cut in words, refusal from generic styles (reference: tokens, the same prompt's refusal)";
    type Options = RecoveryMixOptions;
    fn plan(options: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { mix: Some(Box::new(RecoveryMix::new(options)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(RecoveryMix);
