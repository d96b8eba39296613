//! Defense stacks: up to one alignment-stage, one fine-tuning-stage and one
//! post-tuning defense per cell, built from the registry by name.

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::DataMix;
use safetune_core::registry::{self, DefenseImpl, Stage};
use safetune_core::repair::Repair;
use safetune_core::training::TrainStep;
use safetune_core::Result;

use crate::spec::RunSpec;

/// A built stack.
#[derive(Default)]
pub struct Stack {
    pub names: Vec<String>,
    /// The alignment-stage defense's name (its step is built where alignment runs).
    pub align: Option<String>,
    pub step: Option<Box<dyn TrainStep>>,
    pub mix: Option<Box<dyn DataMix>>,
    pub repair: Option<Box<dyn Repair>>,
}

fn options<'a>(spec: &'a RunSpec, name: &str) -> &'a serde_json::Value {
    spec.defense_options.get(name).unwrap_or(&serde_json::Value::Null)
}

/// Builds one defense with the spec's options for it.
pub fn build_defense(spec: &RunSpec, name: &str) -> Result<(Stage, DefenseImpl)> {
    let entry = registry::defense(name)?;
    Ok((entry.stage, (entry.build)(options(spec, name))?))
}

/// Resolves and builds a stack, checking at most one defense per stage.
pub fn build_stack(spec: &RunSpec, names: &[String]) -> Result<Stack> {
    let mut s = Stack { names: names.to_vec(), ..Default::default() };
    let mut seen: Vec<Stage> = Vec::new();
    for name in names {
        let (stage, built) = build_defense(spec, name)?;
        if seen.contains(&stage) {
            bail!("stack {names:?}: more than one {}-stage defense", stage.as_str());
        }
        seen.push(stage);
        match (stage, built) {
            (Stage::Alignment, DefenseImpl::Step(_)) => s.align = Some(name.clone()),
            (Stage::Finetuning, DefenseImpl::Step(step)) => s.step = Some(step),
            (Stage::Finetuning, DefenseImpl::Mix(mix)) => s.mix = Some(mix),
            (Stage::PostTuning, DefenseImpl::Repair(r)) => s.repair = Some(r),
            (stage, _) => return Err(anyhow!("defense `{name}` does not fit the {} stage", stage.as_str())),
        }
    }
    Ok(s)
}

/// `sft-lora`, or `sft-lora+vaccine+lisa` with a stack.
pub fn label(method: &str, names: &[String]) -> String {
    std::iter::once(method.to_string()).chain(names.iter().cloned()).collect::<Vec<_>>().join("+")
}
