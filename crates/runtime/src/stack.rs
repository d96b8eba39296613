//! Defense stacks: the plans of a cell's defenses, built from the registry by
//! name, at most one defense per part (alignment objective, data mix,
//! fine-tuning objective, inference system prompt, repair).

use safetune_core::anyhow::bail;
use safetune_core::defense::{DataMix, DefensePlan, Part, SystemPrompt};
use safetune_core::registry;
use safetune_core::repair::Repair;
use safetune_core::training::TrainStep;
use safetune_core::Result;

/// A spec's `defense_options` table.
pub type DefenseOptions = std::collections::BTreeMap<String, serde_json::Value>;

/// A built stack.
#[derive(Default)]
pub struct Stack {
    pub names: Vec<String>,
    /// The defense with an alignment objective (its step is built where alignment runs).
    pub align: Option<String>,
    pub step: Option<Box<dyn TrainStep>>,
    pub mix: Option<Box<dyn DataMix>>,
    pub system_prompt: Option<SystemPrompt>,
    pub repair: Option<Box<dyn Repair>>,
}

fn options<'a>(all: &'a DefenseOptions, name: &str) -> &'a serde_json::Value {
    all.get(name).unwrap_or(&serde_json::Value::Null)
}

/// Builds one defense's plan with the spec's options for it.
pub fn build_defense(all: &DefenseOptions, name: &str) -> Result<DefensePlan> {
    (registry::defense(name)?.build)(options(all, name))
}

/// A defense's options with every default filled in (what cache keys see).
pub fn resolved_options(all: &DefenseOptions, name: &str) -> Result<serde_json::Value> {
    (registry::defense(name)?.resolve)(options(all, name))
}

/// Resolves and builds a stack, checking that no two defenses fill the same part.
pub fn build_stack(all: &DefenseOptions, names: &[String]) -> Result<Stack> {
    let mut s = Stack { names: names.to_vec(), ..Default::default() };
    let mut filled: Vec<(Part, &String)> = Vec::new();
    for name in names {
        let plan = build_defense(all, name)?;
        for part in plan.parts() {
            if let Some((_, other)) = filled.iter().find(|(p, _)| *p == part) {
                bail!("stack {names:?}: `{other}` and `{name}` both give the {} (one per stack)", part.as_str());
            }
            filled.push((part, name));
        }
        let DefensePlan { align_step, mix, step, system_prompt, repair } = plan;
        if align_step.is_some() {
            s.align = Some(name.clone());
        }
        s.mix = s.mix.or(mix);
        s.step = s.step.or(step);
        s.system_prompt = s.system_prompt.or(system_prompt);
        s.repair = s.repair.or(repair);
    }
    Ok(s)
}

pub use safetune_eval::results::cell_label as label;
