//! The defense contract. A defense crate implements [`Defense`] — typed options
//! (whose JSON Schema enters `safetune schema`) and the [`DefensePlan`] they
//! give: what the defense contributes to each stage it touches — and registers
//! it with `safetune_core::register_defense!`. The runtime fills
//! every data stream a step or mix may ask for, gives training steps a frozen
//! reference model when they ask, and gives repairs the model and data.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::repair::Repair;
use crate::training::TrainStep;
use crate::{Example, Result};

/// The stages of the pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Alignment,
    Finetuning,
    PostTuning,
    Inference,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Alignment => "alignment",
            Stage::Finetuning => "fine-tuning",
            Stage::PostTuning => "post-tuning",
            Stage::Inference => "inference",
        }
    }
}

/// Data the runtime hands a defense, disjoint from every evaluation prompt.
#[derive(Clone, Copy, Default)]
pub struct DefenseData<'a> {
    /// Harmful prompt → refusal pairs (the alignment set's refusals).
    pub safety: &'a [Example],
    /// Harmful prompt → harmful answer pairs the defender holds: the harmful pool minus every
    /// pair the attacker's variants draw (fine-tuning: this cell's variant; alignment: every
    /// regime's variant of the run).
    pub harmful: &'a [Example],
    /// Generic refusal texts (no request named in them), those the alignment set's templated
    /// refusals use: for data a defense writes (safety-recovery examples).
    pub refusals: &'a [&'a str],
    /// Curated safety demonstrations — harmful or risky requests with natural safe answers
    /// (Safety-Tuned LLaMAs) — that the alignment set did not draw; empty when the data source
    /// has none.
    pub demonstrations: &'a [Example],
}

/// Edits a stage's training data (SafeInstr's safety mix, BEA's triggered examples).
pub trait DataMix: Send {
    fn name(&self) -> &str;
    /// Edits the user's fine-tuning data.
    fn mix(&self, task: &mut Vec<Example>, data: &DefenseData, seed: u64) -> Result<()>;
}

/// The system prompt at inference, given the prompt format's default.
pub type SystemPrompt = Box<dyn Fn(Option<&str>) -> Option<String> + Send + Sync>;

/// What a defense contributes, part by part. A defense fills the parts it has; a stack holds
/// at most one defense per part.
#[derive(Default)]
pub struct DefensePlan {
    /// Alignment stage: the objective of every alignment step (plain SFT on the alignment set
    /// otherwise). The runtime adds the `safety` and `harmful` streams and, when the step asks,
    /// the base model as reference.
    pub align_step: Option<Box<dyn TrainStep>>,
    /// Fine-tuning stage: edits the user's data before training.
    pub mix: Option<Box<dyn DataMix>>,
    /// Fine-tuning stage: the objective of every step (the method's otherwise). The runtime
    /// fills the `task`, `safety` and `harmful` streams and, when the step asks, the aligned
    /// model as reference.
    pub step: Option<Box<dyn TrainStep>>,
    /// Inference: the system prompt every evaluation prompt gets.
    pub system_prompt: Option<SystemPrompt>,
    /// Post-tuning: edits the fine-tuned weights, with the model and data at hand.
    pub repair: Option<Box<dyn Repair>>,
}

/// The parts of a plan, for stack checks and listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    AlignStep,
    Mix,
    Step,
    SystemPrompt,
    Repair,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::AlignStep => "alignment objective",
            Part::Mix => "fine-tuning data mix",
            Part::Step => "fine-tuning objective",
            Part::SystemPrompt => "inference system prompt",
            Part::Repair => "post-tuning repair",
        }
    }

    pub fn stage(self) -> Stage {
        match self {
            Part::AlignStep => Stage::Alignment,
            Part::Mix | Part::Step => Stage::Finetuning,
            Part::SystemPrompt => Stage::Inference,
            Part::Repair => Stage::PostTuning,
        }
    }
}

impl DefensePlan {
    /// The parts this plan fills.
    pub fn parts(&self) -> Vec<Part> {
        let mut v = Vec::new();
        if self.align_step.is_some() {
            v.push(Part::AlignStep);
        }
        if self.mix.is_some() {
            v.push(Part::Mix);
        }
        if self.step.is_some() {
            v.push(Part::Step);
        }
        if self.system_prompt.is_some() {
            v.push(Part::SystemPrompt);
        }
        if self.repair.is_some() {
            v.push(Part::Repair);
        }
        v
    }

    /// The stages it touches, in pipeline order, each once.
    pub fn stages(&self) -> Vec<Stage> {
        let mut v: Vec<Stage> = Vec::new();
        for s in self.parts().into_iter().map(Part::stage) {
            if !v.contains(&s) {
                v.push(s);
            }
        }
        v.sort_by_key(|s| *s as u8);
        v
    }
}

/// A defense: its name, a line on what it does, its options and the plan they give.
pub trait Defense {
    /// The name specs use (`finetune.defenses`, `defense_options.<NAME>`).
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
    /// Where and why this implementation differs from the reference code it was read against
    /// (one line; `safetune list defenses` shows it; the README's fidelity table has the detail).
    const DIFFERS: &'static str;
    /// Options with their defaults (`#[serde(deny_unknown_fields, default)]`); every default is
    /// cited in the defense's README.
    type Options: DeserializeOwned + Serialize + JsonSchema + Default;
    /// The plan for these options; errors name `defense_options.<NAME>.<key>`.
    fn plan(options: Self::Options) -> Result<DefensePlan>;
}

/// Builds `D`'s plan from a spec table.
pub fn build_plan<D: Defense>(v: &serde_json::Value) -> Result<DefensePlan> {
    D::plan(crate::config::options(v, &format!("defense_options.{}", D::NAME))?)
}

/// `D`'s options with every default filled in: what cache keys see, so writing a default
/// out changes nothing.
pub fn resolve_options<D: Defense>(v: &serde_json::Value) -> Result<serde_json::Value> {
    let o: D::Options = crate::config::options(v, &format!("defense_options.{}", D::NAME))?;
    Ok(serde_json::to_value(o)?)
}

/// The JSON Schema of `D`'s options.
pub fn options_schema<D: Defense>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(D::Options)).unwrap_or_default()
}
