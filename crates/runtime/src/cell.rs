//! One cell: draw the variant, mix, fine-tune (or reuse the cached trained
//! weights), repair, evaluate.

use std::path::PathBuf;
use std::time::Instant;

use safetune_core::anyhow::{anyhow, Context};
use safetune_core::config::TrainConfig;
use safetune_core::defense::DefenseData;
use safetune_core::registry::Trainable;
use safetune_core::repair::{Repair, WeightSets, Weights};
use safetune_core::training::stream;
use safetune_core::training::TrainStep;
use safetune_core::{CausalLm, Result};
use safetune_data::Regime;
use safetune_model::Checkpoint;
use safetune_train::{clear_checkpoints, StageData, StageRun, TrainReport};

use crate::evaluate::evaluate_resumable;
use crate::hashing::write_json;
use crate::output::say;
use crate::prepare::open_model;
use crate::results::CellResult;
use crate::run::{aligned_model, make_trainable, method_plan, write_generations, Aligned, Run};
use crate::stack::{build_stack, label};
use crate::stage_cache::StageCache;

impl Run<'_> {
    /// The files of a cell's trained weights in the `trained` stage cache (LoRA methods only:
    /// full fine-tuning writes no weights): `(name in the entry, path in the run directory)`.
    /// The entry's names do not hold the cell's, so cells that train alike (a post-tuning
    /// repair and the undefended cell; see `Run::train_key`) share one entry.
    pub(crate) fn trained_files(cell: &str) -> Vec<(PathBuf, PathBuf)> {
        vec![
            (PathBuf::from("adapter"), PathBuf::from("adapters").join(cell)),
            (PathBuf::from("trained.json"), PathBuf::from("trained").join(format!("{cell}.json"))),
        ]
    }

    /// After a whole cell came from the cache: publishes its trained weights
    /// too (entries written before the `trained` cache existed have no
    /// `trained/<cell>.json`; it is rebuilt from the cell's result and timings).
    pub(crate) fn publish_trained_from_cell(
        &self,
        method: &str,
        names: &[String],
        regime: &str,
        aligned: &Aligned,
        cell: &str,
    ) -> Result<()> {
        if !self.cell_files(method, names, cell)?.iter().any(|r| r.starts_with("adapters")) {
            return Ok(());
        }
        let trained = self.run_dir.join("trained").join(format!("{cell}.json"));
        if !trained.exists() {
            let read = |p: PathBuf| -> Result<serde_json::Value> {
                let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
                serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", p.display()))
            };
            let res = read(self.run_dir.join("cells").join(format!("{cell}.json")))?;
            let times = read(self.run_dir.join("timings").join(format!("{cell}.json")))?;
            let report = serde_json::json!({
                "steps": res["train_steps"], "losses": res["train_losses"], "tokens": times["tokens"],
                "seconds": times["train"]["seconds"],
            });
            write_json(&trained, &serde_json::json!({ "report": report, "train": times["train"] }))?;
        }
        StageCache::new("trained").publish_as(&self.train_key(method, names, regime, aligned)?, &self.run_dir, &Self::trained_files(cell))
    }

    /// Fine-tunes one cell from the aligned model, applies its defenses, evaluates.
    pub(crate) fn cell(&mut self, method: &str, names: &[String], regime: &str, aligned: &Aligned) -> Result<CellResult> {
        let spec = self.spec;
        let cell = format!("{}__{regime}", label(method, names));
        let t = Instant::now();
        let mut stack = build_stack(&spec.defense_options, names)?;
        let parsed = Regime::parse(regime)?;
        let p = parsed.ratio();
        let variant = self.pools.variant(parsed, spec.finetune.n, spec.seed).map_err(|e| anyhow!("finetune ({cell}): {e}"))?;
        let safety = self.safety_pairs();
        let harmful = if names.is_empty() { Vec::new() } else { self.defender_harmful()?.to_vec() };
        let mut task = variant.examples.clone();
        let demonstrations = self.spare_demonstrations();
        let data =
            DefenseData { safety: &safety, harmful: &harmful, refusals: safetune_data::REFUSAL_STYLES, demonstrations: &demonstrations };
        crate::stack::apply_mixes(&stack.mixes, &mut task, &data, spec.seed)?;
        let variant_ids: std::collections::HashSet<&String> = variant.examples.iter().map(|e| &e.id).collect();
        let added_ids: Vec<String> = task.iter().filter(|e| !variant_ids.contains(&e.id)).map(|e| e.id.clone()).collect();
        let mut plan = method_plan(spec, method)?;
        let mut model = aligned_model(&self.model_path, aligned, spec.data.template)?;
        let cfg = spec.cell_stage_train(method, regime)?;
        let train_key = self.train_key(method, names, regime, aligned)?;
        let trained_rels = Self::trained_files(&cell);
        let adapter = self.run_dir.join("adapters").join(&cell);
        let trained_file = self.run_dir.join("trained").join(format!("{cell}.json"));
        let lora = matches!(plan.trainable, Trainable::Lora(_));
        // Trained weights of the same cell evaluated another way: evaluation only.
        let restored = lora && StageCache::new("trained").restore_as(&train_key, &self.run_dir, &trained_rels)?;
        let (report, train_stage) = if restored {
            say(self.quiet, format!("[{cell}] reusing cached trained weights {} (evaluation only)", &train_key[..16]));
            safetune_lora::load_peft(&mut *model, &adapter, &safetune_model::default_device())?;
            safetune_lora::merge_adapters(&mut *model)?;
            let text = std::fs::read_to_string(&trained_file).with_context(|| format!("{}: cannot read", trained_file.display()))?;
            let mut t: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", trained_file.display()))?;
            let report: TrainReport =
                serde_json::from_value(t["report"].take()).map_err(|e| anyhow!("{}: report: {e}", trained_file.display()))?;
            (report, t["train"].take())
        } else {
            make_trainable(&mut *model, &plan.trainable, spec.seed.wrapping_add(1))?;
            say(
                self.quiet,
                format!("[{cell}] fine-tuning on n={} (harmful {}, added {})", task.len(), variant.harmful_ids.len(), added_ids.len()),
            );
            let mut data = StageData::default();
            data.streams.insert(stream::TASK.into(), task);
            data.streams.insert(stream::SAFETY.into(), safety.clone());
            data.streams.insert(stream::HARMFUL.into(), harmful.clone());
            let step: &mut dyn TrainStep = match stack.step.as_mut() {
                Some(s) => s.as_mut(),
                None => plan.step.as_mut(),
            };
            // The aligned model, frozen, when the objective compares against it.
            let reference = if step.wants_reference() { Some(aligned_model(&self.model_path, aligned, spec.data.template)?) } else { None };
            let train_meter = crate::resources::StageMeter::start();
            let checkpoints = self.checkpoints(&train_key, &plan.trainable, &cell);
            let stage = StageRun { label: &cell, quiet: self.quiet, checkpoints: checkpoints.as_ref() };
            let report: TrainReport =
                safetune_train::train_stage(&mut *model, &data, step, &cfg, reference.as_ref().map(|m| &**m as &dyn CausalLm), &stage)?;
            let train_stage = train_meter.report();
            write_json(&trained_file, &serde_json::json!({ "report": report, "train": train_stage }))?;
            if let Trainable::Lora(l) = &plan.trainable {
                safetune_lora::save_peft(&*model, l, &adapter)?;
                safetune_lora::merge_adapters(&mut *model)?;
                StageCache::new("trained").publish_as(&train_key, &self.run_dir, &trained_rels)?;
            } else {
                model.freeze_all();
            }
            if let Some(c) = &checkpoints {
                clear_checkpoints(&c.dir)?;
            }
            (report, train_stage)
        };
        let repaired = match &stack.repair {
            Some(r) => {
                let mut data = StageData::default();
                data.streams.insert(stream::TASK.into(), variant.examples.clone());
                data.streams.insert(stream::SAFETY.into(), safety);
                data.streams.insert(stream::HARMFUL.into(), harmful);
                self.repair(r.as_ref(), &mut *model, aligned, &data, &cfg)?
            }
            None => Vec::new(),
        };
        // The weights evaluated beyond the adapter, so the cell can be reproduced outside
        // safetune: a repair's replaced tensors (over the aligned model with the adapter merged),
        // or, without an adapter, every weight of the model.
        if !lora || stack.repair.is_some() {
            let all = model.weights();
            let keep: std::collections::HashSet<&String> = repaired.iter().collect();
            let tensors: std::collections::HashMap<String, candle_core::Tensor> =
                all.into_iter().filter(|(n, _)| !lora || keep.contains(n)).collect();
            safetune_lora::write_safetensors(&self.run_dir.join(Run::weights_file(&cell)), &tensors)?;
        }
        // A defense may set the system prompt at inference (BEA's trigger).
        let system = stack.system_prompt.as_ref().and_then(|f| f(model.info().format.default_system()));
        let asked = self.scored_prompts_under(system.as_deref());
        let inputs = self.eval_inputs(&asked.safety, &asked.over_refusal, &asked.task);
        let eval_meter = crate::resources::StageMeter::start();
        let parts = self.parts(self.cell_model(method, names, regime, aligned)?);
        let (eval, recs, times) =
            evaluate_resumable(&*model, &inputs, &spec.eval, self.judge.as_ref(), spec.seed, &cell, self.quiet, Some(&parts))?;
        write_generations(&self.run_dir.join("generations").join(&cell), &recs)?;
        write_json(
            &self.run_dir.join("timings").join(format!("{cell}.json")),
            &serde_json::json!({
                "train": train_stage, "trained_from_cache": restored, "eval": eval_meter.report(), "eval_metrics_s": crate::evaluate::times_json(&times),
                "total_s": t.elapsed().as_secs_f64(),
                "tokens": report.tokens, "steps": report.steps,
            }),
        )?;
        Ok(CellResult {
            cell,
            method: method.into(),
            defenses: names.to_vec(),
            regime: regime.into(),
            poison_ratio: p,
            n: variant.examples.len(),
            seed: spec.seed,
            aligned_key: aligned.key.clone(),
            task_ids: variant.task_ids,
            harmful_ids: variant.harmful_ids,
            added_ids,
            repaired,
            train_losses: report.losses,
            train_steps: report.steps,
            eval,
        })
    }

    /// Applies a post-tuning repair to the linear weights; returns the names it replaced.
    /// `data`: the streams the repair may run the model on (batched as `cfg` says).
    pub(crate) fn repair(
        &self,
        r: &dyn Repair,
        model: &mut dyn Checkpoint,
        aligned: &Aligned,
        data: &StageData,
        cfg: &TrainConfig,
    ) -> Result<Vec<String>> {
        let linear: std::collections::HashSet<String> = model.linear_modules().into_iter().map(|m| format!("{m}.weight")).collect();
        let pick = |w: Vec<(String, candle_core::Tensor)>| -> Weights { w.into_iter().filter(|(n, _)| linear.contains(n)).collect() };
        let base = pick(open_model(&self.model_path, self.spec.data.template)?.weights());
        let aligned_model = aligned_model(&self.model_path, aligned, self.spec.data.template)?;
        let al = pick(aligned_model.weights());
        let ft = pick(model.weights());
        let sets = WeightSets { base: &base, aligned: &al, finetuned: &ft };
        let out = safetune_train::with_context(&*model, Some(&*aligned_model), data, cfg, |ctx| r.repair(&sets, ctx))?;
        let names: Vec<String> = out.keys().cloned().collect();
        for (n, w) in out {
            model.set_weight(&n, w)?;
        }
        say(self.quiet, format!("[{}] replaced {} of {} weights", r.name(), names.len(), ft.len()));
        Ok(names)
    }
}
