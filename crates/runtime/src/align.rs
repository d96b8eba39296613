//! The alignment stage: the aligned model (per alignment-stage defense),
//! trained once per content key and cached.

use safetune_core::anyhow::{anyhow, Context};
use safetune_core::registry::Trainable;
use safetune_core::training::TrainStep;
use safetune_core::training::{stream, PlainSft};
use safetune_core::{CausalLm, ExampleKind, Result};
use safetune_train::{clear_checkpoints, train_stage, StageData, StageRun};

use crate::hashing::{sha256_json, write_json};
use crate::output::say;
use crate::prepare::open_model;
use crate::run::{describe, make_trainable, Aligned, Run};
use crate::spec::TemplateChoice;
use crate::stack::{build_defense, resolved_options};

/// The alignment-stage defense whose objective trains an aligned model: the stack's own, else
/// the run's `alignment.objective`, else none (plain supervised fine-tuning).
fn objective<'a>(spec: &'a crate::spec::RunSpec, stack: Option<&'a str>) -> Option<&'a str> {
    stack.or(spec.alignment.objective.as_deref())
}

impl Run<'_> {
    /// The cache key and directory of the aligned model for an alignment-stage defense (or
    /// none), and whether that model is already there.
    pub(crate) fn alignment_entry(&self, defense: Option<&str>) -> Result<(Aligned, bool)> {
        let spec = self.spec;
        let defense = objective(spec, defense);
        let train_cfg = self.spec.alignment_stage_train();
        let mut key_parts = serde_json::json!({
            "model": self.model_sha, "lora": spec.alignment.lora, "train": train_cfg,
            "data": sha256_json(&self.align_set)?, "code": self.code.train,
        });
        // The prompt format shapes the training text; the model's own format is implied by its hash.
        if spec.data.template != TemplateChoice::Model {
            key_parts["template"] = serde_json::to_value(spec.data.template)?;
        }
        if let Some(d) = defense {
            key_parts["defense"] = serde_json::json!({
                "name": d, "options": resolved_options(&spec.defense_options, d)?, "harmful": sha256_json(&self.defender_harmful()?)?,
            });
        }
        let full = spec.alignment.full;
        if full {
            key_parts["full"] = true.into();
        }
        let aligned = Aligned::in_cache(sha256_json(&key_parts)?, full);
        let cached = aligned.is_cached();
        Ok((aligned, cached))
    }

    /// The aligned model for an alignment-stage defense (or none), trained once per content key and cached.
    pub(crate) fn aligned(&mut self, defense: Option<&str>) -> Result<Aligned> {
        let spec = self.spec;
        let (Aligned { key, dir, full }, cached) = self.alignment_entry(defense)?;
        let defense = objective(spec, defense);
        let train_cfg = self.spec.alignment_stage_train();
        let label = match defense {
            Some(d) => format!("align+{d}"),
            None => "align".into(),
        };
        let trainable = if full { Trainable::Full } else { Trainable::Lora(spec.alignment.lora.clone()) };
        if cached {
            say(self.quiet, format!("[{label}] reusing cached alignment {}", &key[..16]));
            return Ok(Aligned { key, dir, full });
        }
        say(
            self.quiet,
            format!(
                "[{label}] {} examples ({} refusals), {}",
                self.align_set.len(),
                self.align_set.iter().filter(|e| e.kind == ExampleKind::Refusal).count(),
                describe(&trainable)
            ),
        );
        let t = crate::resources::StageMeter::start();
        let mut model = open_model(&self.model_path, spec.data.template)?;
        make_trainable(&mut *model, &trainable, spec.seed)?;
        let mut data = StageData::default();
        data.streams.insert(stream::TASK.into(), self.align_set.clone());
        let mut step: Box<dyn TrainStep> = match defense {
            None => Box::new(PlainSft),
            Some(d) => {
                data.streams.insert(stream::SAFETY.into(), self.safety_pairs());
                data.streams.insert(stream::HARMFUL.into(), self.defender_harmful()?.to_vec());
                build_defense(&spec.defense_options, d)?.align_step.ok_or_else(|| anyhow!("defense `{d}` has no alignment objective"))?
            }
        };
        // The base model, frozen, when the objective compares against it.
        let reference = if step.wants_reference() { Some(open_model(&self.model_path, spec.data.template)?) } else { None };
        let checkpoints = self.checkpoints(&key, &trainable, &label);
        let stage = StageRun { label: &label, quiet: self.quiet, checkpoints: checkpoints.as_ref() };
        let report = train_stage(&mut *model, &data, step.as_mut(), &train_cfg, reference.as_ref().map(|m| &**m as &dyn CausalLm), &stage)?;
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        if full {
            model.freeze_all();
            model.export_hf(&tmp.join(Aligned::MODEL))?;
        } else {
            safetune_lora::save_peft(&*model, &spec.alignment.lora, &tmp)?;
        }
        write_json(&tmp.join("train_report.json"), &report)?;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&tmp, &dir).with_context(|| format!("{}: cannot write", dir.display()))?;
        if let Some(c) = &checkpoints {
            clear_checkpoints(&c.dir)?;
        }
        self.timings.insert(label.clone(), t.report());
        Ok(Aligned { key, dir, full })
    }
}

/// Copies a LoRA alignment's adapter from the cache into the run directory
/// (`adapters/<label>/`), so a cell's adapter can be stacked on it outside safetune
/// (`safetune model export --adapter adapters/aligned --adapter adapters/<cell>`, or peft)
/// from the results alone. A full-parameter alignment is a whole model; it stays in the
/// cache (its path is in the manifest's alignment keys).
pub(crate) fn publish_aligned_adapter(run_dir: &std::path::Path, label: &str, a: &Aligned) -> Result<()> {
    let dest = run_dir.join("adapters").join(label);
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        crate::stage_cache::copy_tree(&a.dir.join(f), &dest.join(f))?;
    }
    Ok(())
}

/// `adapters/README.md`: how the run's adapters reproduce its models outside safetune (the
/// base as a Hugging Face directory, then the aligned adapter merged, then a cell's).
pub(crate) fn write_adapters_readme(run_dir: &std::path::Path, source: &str, aligned: &[String]) -> Result<()> {
    let Some(first) = aligned.first() else { return Ok(()) };
    let text = format!(
        "# Adapters of this run\n\n\
PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), loadable by\n\
Python `peft`. `base_model_name_or_path` names the base as the run's spec does: `{source}`.\n\
Aligned model(s): {}. Each cell's adapter (`<method>__<regime>`) was trained on top of\n\
its aligned model, so a cell is the base with the aligned adapter merged first and the\n\
cell's adapter second; on the bare base it gives other answers.\n\n\
In safetune, the cell's evaluation again — everything taken from the run (model, adapters,\n\
weights file, sets, settings, seed, and how its defense asks at inference):\n\n\
```sh\n\
safetune eval --run <this run's directory> --cell <cell>\n\
```\n\n\
or piece by piece:\n\n\
```sh\n\
safetune eval --model {source} --adapter adapters/{first} --adapter adapters/<cell>\n\
```\n\n\
A cell that evaluated more than its adapter has `weights/<cell>.safetensors` in the run\n\
directory (a post-tuning repair's replaced tensors, a full fine-tuning's whole model): add\n\
`--weights weights/<cell>.safetensors`, which replaces those weights after the adapters.\n\
A cell whose defense acts at inference (BEA: its secret trigger before the system prompt)\n\
was asked as that defense asks: add `--defense <name>`, and `--defense-options '<options>'`\n\
when `spec.json`'s `defense_options` sets any for it.\n\n\
Outside it: make the base a Hugging Face directory (for a GGUF model, the f32 weights\n\
the run dequantized and used), then stack with transformers and peft:\n\n\
```sh\n\
safetune model export --model {source} --out base\n\
```\n\n\
```python\n\
from transformers import AutoModelForCausalLM\n\
from peft import PeftModel\n\
model = AutoModelForCausalLM.from_pretrained(\"base\")\n\
model = PeftModel.from_pretrained(model, \"adapters/{first}\").merge_and_unload()\n\
model = PeftModel.from_pretrained(model, \"adapters/<cell>\")\n\
```\n\n\
(or `safetune model export --model {source} --adapter adapters/{first} --adapter adapters/<cell> --out cell`\n\
for the merged cell, with `--weights weights/<cell>.safetensors` when the cell has one: the\n\
exported directory then holds exactly the weights the cell evaluated). `cargo xtask interop --adapter adapters/{first} --adapter adapters/<cell>`\n\
checks that peft's greedy answers equal safetune's.\n",
        aligned.iter().map(|a| format!("`{a}/`")).collect::<Vec<_>>().join(", ")
    );
    crate::hashing::write_atomic(&run_dir.join("adapters").join("README.md"), text.as_bytes())
}
