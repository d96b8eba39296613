//! BEA, backdoor-enhanced safety alignment (Wang et al. 2024, "Mitigating
//! Fine-tuning based Jailbreak Attack with Backdoor Enhanced Safety
//! Alignment"): a secret trigger of random tokens is prefixed to the system
//! prompt of a handful of safety examples mixed into the user's data; the
//! same trigger is prefixed at inference, where it calls up the refusals.

use safetune_core::anyhow::bail;
use safetune_core::defense::{DataMix, Defense, DefenseData, DefensePlan};
use safetune_core::rng::SeededRng;
use safetune_core::{Example, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BeaConfig {
    /// Safety examples carrying the trigger (the paper's 11).
    pub examples: usize,
    /// Random words in the trigger (each a few tokens; the option keeps its first name).
    pub trigger_tokens: usize,
    /// Seed of the secret trigger.
    pub trigger_seed: u64,
}

impl Default for BeaConfig {
    fn default() -> Self {
        Self { examples: 11, trigger_tokens: 16, trigger_seed: 0 }
    }
}

#[derive(Clone)]
pub struct Bea {
    pub cfg: BeaConfig,
    pub trigger: String,
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl Bea {
    pub fn new(cfg: BeaConfig) -> Result<Self> {
        if cfg.trigger_tokens == 0 {
            bail!("defense_options.bea.trigger_tokens: must be at least 1");
        }
        let mut rng = SeededRng::derive(cfg.trigger_seed, "bea-trigger");
        let words: Vec<String> =
            (0..cfg.trigger_tokens).map(|_| (0..3 + rng.below(5)).map(|_| ALPHABET[rng.below(ALPHABET.len())] as char).collect()).collect();
        Ok(Self { trigger: words.join(" "), cfg })
    }

    /// The system prompt with the trigger in front (at inference: the format's default).
    pub fn with_trigger(&self, system: Option<&str>) -> String {
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

    fn mix(&self, task: &mut Vec<Example>, data: &DefenseData, seed: u64) -> Result<()> {
        let safety = data.safety;
        if self.cfg.examples > safety.len() {
            bail!("defense_options.bea.examples: {} asked for, the safety pool has {}", self.cfg.examples, safety.len());
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
}

impl Defense for Bea {
    const NAME: &'static str = "bea";
    const DESCRIPTION: &'static str =
        "backdoor-enhanced alignment: safety examples under a secret system-prompt trigger, also used at inference (Wang et al. 2024)";
    const DIFFERS: &'static str =
        "the secret trigger is 16 random words (66 SmolLM2 tokens) so safety examples fit max_len 256; the paper uses a long random-token prompt";
    type Options = BeaConfig;
    fn plan(cfg: BeaConfig) -> Result<DefensePlan> {
        let bea = Bea::new(cfg)?;
        let at_inference = bea.clone();
        Ok(DefensePlan {
            mix: Some(Box::new(bea)),
            system_prompt: Some(Box::new(move |default| Some(at_inference.with_trigger(default)))),
            ..Default::default()
        })
    }
}

safetune_core::register_defense!(Bea);
