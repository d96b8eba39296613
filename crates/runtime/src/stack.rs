//! Defense stacks: the plans of a cell's defenses, built from the registry by
//! name, at most one defense per part (alignment objective, fine-tuning
//! objective, inference system prompt, repair) — except data mixes, which stack:
//! each adds its examples to the user's data.

use safetune_core::anyhow::bail;
use std::collections::{BTreeMap, BTreeSet};

use safetune_core::defense::{DataMix, DefenseData, DefensePlan, Part, SystemPrompt};
use safetune_core::registry;
use safetune_core::repair::Repair;
use safetune_core::rng::SeededRng;
use safetune_core::training::TrainStep;
use safetune_core::Example;
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
    /// Data mixes in stack order (each adds examples to the user's data; see [`apply_mixes`]).
    pub mixes: Vec<Box<dyn DataMix>>,
    pub system_prompt: Option<SystemPrompt>,
    pub repair: Option<Box<dyn Repair>>,
    /// The defenses that change what fine-tuning trains — an alignment objective, a data
    /// mix, a fine-tuning objective — in stack order. A post-tuning repair or an inference
    /// system prompt alone leaves the trained weights as they are without it, so cache keys
    /// of trained weights name these only.
    pub training: Vec<String>,
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

/// Resolves and builds a stack, checking that no two defenses fill the same part (data mixes
/// excepted: they stack).
pub fn build_stack(all: &DefenseOptions, names: &[String]) -> Result<Stack> {
    let mut s = Stack { names: names.to_vec(), ..Default::default() };
    let mut filled: Vec<(Part, &String)> = Vec::new();
    for name in names {
        let plan = build_defense(all, name)?;
        for part in plan.parts() {
            if let Some((_, other)) = filled.iter().find(|(p, _)| *p == part && part != Part::Mix) {
                bail!("stack {names:?}: `{other}` and `{name}` both give the {} (one per stack)", part.as_str());
            }
            filled.push((part, name));
        }
        if plan.parts().iter().any(|p| matches!(p, Part::AlignStep | Part::Mix | Part::Step)) {
            s.training.push(name.clone());
        }
        let DefensePlan { align_step, mix, step, system_prompt, repair } = plan;
        if align_step.is_some() {
            s.align = Some(name.clone());
        }
        s.mixes.extend(mix);
        s.step = s.step.or(step);
        s.system_prompt = s.system_prompt.or(system_prompt);
        s.repair = s.repair.or(repair);
    }
    Ok(s)
}

/// The user's data with every mix's additions. One mix edits the data as it likes (its own
/// order); several each run on the user's data alone and must keep it whole, and their
/// additions (ids distinct across mixes) join it in one seeded shuffle.
pub fn apply_mixes(mixes: &[Box<dyn DataMix>], task: &mut Vec<Example>, data: &DefenseData, seed: u64) -> Result<()> {
    match mixes {
        [] => Ok(()),
        [one] => one.mix(task, data, seed),
        several => {
            let user: BTreeSet<String> = task.iter().map(|e| e.id.clone()).collect();
            let mut added: Vec<Example> = Vec::new();
            let mut seen: BTreeMap<String, String> = BTreeMap::new();
            for m in several {
                let mut t = task.clone();
                m.mix(&mut t, data, seed)?;
                let kept = t.iter().filter(|e| user.contains(&e.id)).count();
                if kept != user.len() {
                    bail!("defense `{}` removes user examples, so it cannot be stacked with another data defense", m.name());
                }
                for e in t.into_iter().filter(|e| !user.contains(&e.id)) {
                    if let Some(other) = seen.insert(e.id.clone(), m.name().to_string()) {
                        bail!("defenses `{other}` and `{}` both add example `{}`", m.name(), e.id);
                    }
                    added.push(e);
                }
            }
            task.extend(added);
            SeededRng::derive(seed, "stacked-mixes").shuffle(task);
            Ok(())
        }
    }
}

pub use safetune_eval::results::cell_label as label;
