//! One run's shared state (`Run`) and the content keys of its stages: pool
//! hashes, evaluation, trained weights, cells; the defender's data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetune_core::anyhow::{anyhow, Context};
use safetune_core::registry::{self, Trainable};
use safetune_core::{CausalLm, Example, ExampleKind, Result};
use safetune_data::{Pools, Regime};
use safetune_model::Checkpoint;
use safetune_train::Checkpoints;

use crate::evaluate::{evaluate_resumable, EvalInputs};
use crate::fetch::cache_dir;
use crate::hashing::{sha256_json, write_atomic, write_json};
use crate::options::{CodeKeys, RunOptions};
use crate::output::say;
use crate::prepare::{model_with, open_model, AddedWeights, Prepared};
use crate::results::{GenRecord, ModelEval};
use crate::spec::{RunSpec, TemplateChoice};
use crate::stack::resolved_options;
use crate::stage_cache::StageCache;
use safetune_eval::mt_bench::MtBenchInputs;

/// Everything the stages of one run share.
pub(crate) struct Run<'a> {
    pub spec: &'a RunSpec,
    pub quiet: bool,
    pub pools: Pools,
    pub model_path: PathBuf,
    pub model_sha: String,
    pub run_dir: PathBuf,
    pub judge: Box<dyn safetune_core::judge::Judge>,
    pub mt_bench: Option<crate::prepare::MtBenchGrading>,
    pub align_set: Vec<Example>,
    pub timings: serde_json::Map<String, serde_json::Value>,
    /// Hashes of the pools the cache keys name, computed on first use.
    pub pool_hashes: std::cell::OnceCell<PoolHashes>,
    /// The defender's harmful pairs, drawn on first use.
    pub defender: std::cell::OnceCell<Vec<Example>>,
    /// Hashes of the code behind each stage (part of its keys).
    pub code: CodeKeys,
    /// Time between two checkpoints of a training stage (`None`: none).
    pub checkpoint_every: Option<std::time::Duration>,
}

impl<'a> Run<'a> {
    pub(crate) fn new(spec: &'a RunSpec, opts: &RunOptions, prepared: Prepared, run_dir: PathBuf, align_set: Vec<Example>) -> Self {
        let Prepared { pools, model_path, model_sha, judge, mt_bench, .. } = prepared;
        Run {
            spec,
            quiet: opts.quiet,
            pools,
            model_path,
            model_sha,
            run_dir,
            judge,
            mt_bench,
            align_set,
            timings: serde_json::Map::new(),
            pool_hashes: Default::default(),
            defender: Default::default(),
            code: opts.code.clone(),
            checkpoint_every: opts.checkpoint_every,
        }
    }

    /// Where the training stage of cache key `key` keeps its checkpoints, if this run saves
    /// them and the stage resumes exactly: LoRA dropout draws its masks from generators
    /// inside the adapters, which a checkpoint does not hold, so such stages are not saved.
    pub(crate) fn checkpoints(&self, key: &str, trainable: &Trainable, label: &str) -> Option<Checkpoints> {
        let every = self.checkpoint_every?;
        if let Trainable::Lora(l) = trainable {
            if l.dropout > 0.0 {
                say(self.quiet, format!("[{label}] no checkpoints: LoRA dropout {} cannot be resumed exactly", l.dropout));
                return None;
            }
        }
        Some(Checkpoints { dir: cache_dir().join("partial").join(&key[..16]), every })
    }

    /// Where the evaluations of the model `identity` (everything its weights depend on) keep
    /// their finished parts ([`ModelParts`]).
    pub(crate) fn parts(&self, identity: serde_json::Value) -> ModelParts {
        ModelParts { model: identity, code: self.code.eval.clone() }
    }
}

/// The finished parts of one model's evaluations (a safety set with its samples and
/// variants, an over-refusal set, the task, an MMLU shot count), in the cache's
/// `evalparts/`, each under the sha256 of the model's identity, the evaluation code and
/// what the part depends on. They stay after the evaluation: a run stopped mid-evaluation
/// resumes at its first unfinished part, and another evaluation of the same model that
/// asks the same part — the next task's evaluation of the base and aligned models, of a
/// pure-bad cell's weights, a run with other task limits, the next seed's evaluation of
/// the base model (greedy parts hold no seed) — reuses it.
pub(crate) struct ModelParts {
    model: serde_json::Value,
    code: String,
}

impl safetune_eval::evaluate::PartStore for ModelParts {
    fn file(&self, what: &serde_json::Value) -> Result<PathBuf> {
        let key = sha256_json(&serde_json::json!({ "model": self.model, "code": self.code, "part": what }))?;
        Ok(cache_dir().join("evalparts").join(format!("{key}.json")))
    }
}

/// sha256 of each pool a cache key depends on (hashing SST-2's 67k training
/// rows for every cell and evaluation would repeat the same work).
pub(crate) struct PoolHashes {
    pub safety: String,
    pub task_test: String,
    pub over_refusal: String,
    pub task_train: String,
    pub harmful: String,
    mmlu: Option<String>,
    mt_bench: Option<String>,
}

/// The weights a stage trains: LoRA adapters attached (seeded) or every weight unfrozen.
pub(crate) fn make_trainable(model: &mut dyn CausalLm, t: &Trainable, seed: u64) -> Result<()> {
    match t {
        Trainable::Lora(l) => safetune_lora::attach_lora(model, l, seed).map(|_| ()),
        Trainable::Full => model.unfreeze_all().map(|_| ()),
    }
}

pub(crate) fn describe(t: &Trainable) -> String {
    match t {
        Trainable::Lora(l) => format!("LoRA r{} on {:?}", l.r, l.targets),
        Trainable::Full => "every weight".to_string(),
    }
}

/// A method's plan with the spec's options for it.
pub(crate) fn method_plan(spec: &RunSpec, method: &str) -> Result<registry::MethodPlan> {
    (registry::method(method)?.build)(spec.finetune.method_options.get(method).unwrap_or(&serde_json::Value::Null))
}

pub(crate) fn aligned_model(model_path: &Path, aligned: &Aligned, template: TemplateChoice) -> Result<Box<dyn Checkpoint>> {
    if aligned.full {
        // Full-parameter alignment stores the whole aligned model as a Hugging Face directory.
        return open_model(&aligned.model_dir(), template);
    }
    model_with(model_path, template, &AddedWeights { adapter: vec![aligned.dir.clone()], weights: Vec::new() })
}

/// A cached aligned model: its content key and adapter directory.
#[derive(Clone)]
pub(crate) struct Aligned {
    pub key: String,
    pub dir: PathBuf,
    /// The directory holds a whole model (`model/`), not a LoRA adapter.
    pub full: bool,
}

impl Aligned {
    /// The subdirectory a full-parameter alignment's model is in (a Hugging Face directory).
    pub(crate) const MODEL: &'static str = "model";

    /// The aligned model of content key `key` (at least 16 characters) in the stage cache.
    pub(crate) fn in_cache(key: String, full: bool) -> Self {
        let dir = cache_dir().join("aligned").join(&key[..16]);
        Self { key, dir, full }
    }

    /// A full-parameter alignment's model, a Hugging Face directory.
    pub(crate) fn model_dir(&self) -> PathBuf {
        self.dir.join(Self::MODEL)
    }

    /// Whether its files are in the cache.
    pub(crate) fn is_cached(&self) -> bool {
        if self.full { self.model_dir().join("model.safetensors") } else { self.dir.join("adapter_model.safetensors") }.exists()
    }
}

/// The refusal pairs of an alignment set (the `safety` stream of later stages).
pub(crate) fn refusal_pairs(align_set: &[Example]) -> Vec<Example> {
    align_set.iter().filter(|e| e.kind == ExampleKind::Refusal).cloned().collect()
}

/// The curated safety demonstrations (the safe-answer pool) an alignment set did not draw.
pub(crate) fn spare_demonstrations(pools: &Pools, align_set: &[Example]) -> Vec<Example> {
    let drawn: std::collections::HashSet<&str> = align_set.iter().map(|e| e.id.as_str()).collect();
    pools.safe_answers.iter().filter(|e| !drawn.contains(e.id.as_str())).cloned().collect()
}

/// The harmful pairs a defense may train on: none any regime of the spec draws.
pub(crate) fn defender_harmful(spec: &RunSpec, pools: &Pools) -> Result<Vec<Example>> {
    let regimes = spec.finetune.regimes.iter().map(|r| Regime::parse(r)).collect::<Result<Vec<_>>>()?;
    pools.defender_harmful(&regimes, spec.finetune.n, spec.seed)
}

/// `prompts` asked under the system prompt `system` (`None`: each keeps its own) — a
/// defense's at inference (BEA's trigger) or `safetune eval --system`.
pub(crate) fn under_system(prompts: &[Example], system: Option<&str>) -> Vec<Example> {
    prompts
        .iter()
        .cloned()
        .map(|mut e| {
            if let Some(s) = system {
                e.system = Some(s.to_string());
            }
            e
        })
        .collect()
}

/// The prompts a model is scored on: safety sets, over-refusal sets, the task's test rows.
pub(crate) struct ScoredPrompts {
    pub safety: Vec<(String, Vec<Example>)>,
    pub over_refusal: Vec<(String, Vec<Example>)>,
    pub task: Vec<Example>,
}

impl Run<'_> {
    /// Every prompt scored for safety, over-refusal and the task, asked under `system` (see
    /// [`under_system`]): what a system prompt at inference applies to.
    pub(crate) fn scored_prompts_under(&self, system: Option<&str>) -> ScoredPrompts {
        let sets = |v: &[(String, Vec<Example>)]| v.iter().map(|(n, v)| (n.clone(), under_system(v, system))).collect();
        ScoredPrompts {
            safety: sets(&self.pools.safety_evals),
            over_refusal: sets(&self.pools.over_refusal),
            task: under_system(&self.pools.task_test, system),
        }
    }

    /// [`Self::scored_prompts_under`] made the run's pools, before the first key is made (the
    /// pools' hashes then name the system prompt).
    pub(crate) fn ask_under_system(&mut self, system: Option<&str>) {
        assert!(self.pool_hashes.get().is_none(), "the pools are hashed already");
        let ScoredPrompts { safety, over_refusal, task } = self.scored_prompts_under(system);
        (self.pools.safety_evals, self.pools.over_refusal, self.pools.task_test) = (safety, over_refusal, task);
    }

    pub(crate) fn eval_inputs<'b>(
        &'b self,
        sets: &'b [(String, Vec<Example>)],
        over: &'b [(String, Vec<Example>)],
        task: &'b [Example],
    ) -> EvalInputs<'b> {
        EvalInputs {
            safety: sets.iter().map(|(n, v)| (n.clone(), v.as_slice())).collect(),
            over_refusal: over.iter().map(|(n, v)| (n.clone(), v.as_slice())).collect(),
            task_name: self.pools.task.clone(),
            task,
            utility: self.pools.utility.clone(),
            mmlu: self.pools.mmlu.as_ref(),
            mt_bench: match (&self.pools.mt_bench, &self.mt_bench) {
                (Some(questions), Some(g)) => Some(MtBenchInputs { questions, judging: &g.judging, grader: g.grader.as_ref() }),
                _ => None,
            },
        }
    }

    /// The content key of a model's evaluation in this run: what the model is made of
    /// (`identity`) and everything the evaluation reads.
    pub(crate) fn evaluation_key(&self, identity: &serde_json::Value) -> Result<String> {
        sha256_json(&serde_json::json!({ "model": identity, "eval": self.eval_key()? }))
    }

    /// Evaluates a model once per run directory (`models/<label>.json`), reusing an earlier
    /// result made under the same key: the run directory's, else the evaluation cache's. The
    /// key is the model's identity (`identity`: hashes of its weights) and everything the
    /// scores depend on, the evaluation code included.
    pub(crate) fn evaluate_once(
        &mut self,
        label: &str,
        identity: serde_json::Value,
        model: impl FnOnce() -> Result<Box<dyn Checkpoint>>,
    ) -> Result<ModelEval> {
        let file = self.run_dir.join("models").join(format!("{label}.json"));
        let gen_dir = self.run_dir.join("generations").join(label);
        let key = self.evaluation_key(&identity)?;
        if let Some(e) = reuse_here(&self.run_dir, "models", label, &file, &key)? {
            say(self.quiet, format!("[eval {label}] reusing earlier result"));
            return Ok(e);
        }
        let rels = [PathBuf::from("models").join(format!("{label}.json")), PathBuf::from("generations").join(label)];
        let cache = StageCache::new("evals");
        if cache.restore(&key, &self.run_dir, &rels)? {
            say(self.quiet, format!("[eval {label}] reusing cached evaluation {}", &key[..16]));
            let s = std::fs::read_to_string(&file).with_context(|| format!("{}: cannot read", file.display()))?;
            mark_done(&self.run_dir, "models", label, &key)?;
            return serde_json::from_str(&s).map_err(|e| anyhow!("{}: {e}", file.display()));
        }
        let t = crate::resources::StageMeter::start();
        let m = model()?;
        let inputs = self.eval_inputs(&self.pools.safety_evals, &self.pools.over_refusal, &self.pools.task_test);
        let parts = self.parts(identity);
        let (e, recs, times) =
            evaluate_resumable(&*m, &inputs, &self.spec.eval, self.judge.as_ref(), self.spec.seed, label, self.quiet, Some(&parts))?;
        write_generations(&gen_dir, &recs)?;
        // The key first: a result is done once its file exists under the key.
        mark_done(&self.run_dir, "models", label, &key)?;
        write_json(&file, &e)?;
        let mut report = t.report();
        report["metrics_s"] = crate::evaluate::times_json(&times);
        self.timings.insert(format!("eval_{label}"), report);
        cache.publish(&key, &self.run_dir, &rels)?;
        Ok(e)
    }

    pub(crate) fn pool_hashes(&self) -> Result<&PoolHashes> {
        if let Some(h) = self.pool_hashes.get() {
            return Ok(h);
        }
        let p = &self.pools;
        let h = PoolHashes {
            safety: sha256_json(&p.safety_evals)?,
            task_test: sha256_json(&p.task_test)?,
            over_refusal: sha256_json(&p.over_refusal)?,
            task_train: sha256_json(&p.task_train)?,
            harmful: sha256_json(&p.harmful_pairs)?,
            mmlu: p.mmlu.as_ref().map(sha256_json).transpose()?,
            mt_bench: p.mt_bench.as_ref().map(sha256_json).transpose()?,
        };
        Ok(self.pool_hashes.get_or_init(|| h))
    }

    /// The harmful pairs a defense may train on: none any regime of this run draws.
    pub(crate) fn defender_harmful(&self) -> Result<&[Example]> {
        if let Some(d) = self.defender.get() {
            return Ok(d);
        }
        let d = defender_harmful(self.spec, &self.pools)?;
        Ok(self.defender.get_or_init(|| d))
    }

    /// The curated safety demonstrations (the safe-answer pool) the alignment set did not draw.
    pub(crate) fn spare_demonstrations(&self) -> Vec<Example> {
        spare_demonstrations(&self.pools, &self.align_set)
    }

    /// The refusal pairs of the alignment set (the `safety` stream of later stages).
    pub(crate) fn safety_pairs(&self) -> Vec<Example> {
        refusal_pairs(&self.align_set)
    }

    /// Everything evaluation scores depend on besides the model.
    pub(crate) fn eval_key(&self) -> Result<serde_json::Value> {
        let spec = self.spec;
        let h = self.pool_hashes()?;
        let mut key = serde_json::json!({
            "eval": spec.eval, "seed": spec.seed, "template": spec.data.template,
            "safety": h.safety, "task": h.task_test,
            "over_refusal": h.over_refusal,
            "utility": self.pools.utility, "code": self.code.eval, "judge": self.judge.fingerprint(),
        });
        // Only runs that ask for MMLU carry it (keys of other runs stay as they were).
        if let Some(m) = &h.mmlu {
            key["mmlu"] = serde_json::json!(m);
        }
        // MT-Bench: its questions, the grading prompts and reference answers, and the grader.
        if let (Some(q), Some(g)) = (&h.mt_bench, &self.mt_bench) {
            key["mt_bench"] = serde_json::json!({ "questions": q, "judging": g.judging.sha256, "grader": g.grader.fingerprint() });
        }
        Ok(key)
    }

    /// The files a cell writes, relative to the run directory.
    pub(crate) fn cell_files(&self, method: &str, names: &[String], cell: &str) -> Result<Vec<PathBuf>> {
        let plan = method_plan(self.spec, method)?;
        let mut rels = vec![
            PathBuf::from("cells").join(format!("{cell}.json")),
            PathBuf::from("timings").join(format!("{cell}.json")),
            PathBuf::from("generations").join(cell),
        ];
        let lora = matches!(plan.trainable, Trainable::Lora(_));
        if lora {
            rels.push(PathBuf::from("adapters").join(cell));
        }
        if !lora || crate::stack::build_stack(&self.spec.defense_options, names)?.repair.is_some() {
            rels.push(Self::weights_file(cell));
        }
        Ok(rels)
    }

    /// The weights a cell evaluated beyond its adapter (relative to the run directory): a
    /// repair's replaced tensors, or a full fine-tuning's whole model.
    pub(crate) fn weights_file(cell: &str) -> PathBuf {
        PathBuf::from("weights").join(format!("{cell}.safetensors"))
    }

    /// What a cell's keys hold besides the evaluation: the aligned model, the
    /// method and its settings, the stack `names` and its options, the data.
    pub(crate) fn train_key_parts(&self, method: &str, names: &[String], regime: &str, aligned: &Aligned) -> Result<serde_json::Value> {
        let spec = self.spec;
        // With every default filled in: writing a default out gives the same key.
        let options: BTreeMap<&String, serde_json::Value> =
            names.iter().map(|n| Ok((n, resolved_options(&spec.defense_options, n)?))).collect::<Result<_>>()?;
        let mut key = serde_json::json!({
            "aligned": aligned.key, "method": method, "method_options": spec.finetune.method_options.get(method),
            "train": spec.cell_train(method, regime)?, "defenses": names, "defense_options": options,
            "regime": regime, "n": spec.finetune.n, "code": self.code.train,
            "task_train": self.pool_hashes()?.task_train, "harmful": self.pool_hashes()?.harmful,
        });
        // The pure-bad regime trains on the pure-bad set alone, no row of the task's training
        // pool, so its weights are every task's (other cells' keys stay as they were).
        if Regime::parse(regime)? == Regime::PureBad {
            key["pure_bad"] = sha256_json(&self.pools.pure_bad)?.into();
            if let Some(o) = key.as_object_mut() {
                o.remove("task_train");
            }
        }
        // A defended cell may read the defender's harmful pairs (undefended keys stay as they were).
        if !names.is_empty() {
            key["defender_harmful"] = sha256_json(&self.defender_harmful()?)?.into();
        }
        Ok(key)
    }

    /// The content key of a cell's trained weights: [`Self::train_key_parts`] of the
    /// defenses that shape training only, and the seed — everything but the evaluation
    /// and a post-tuning repair (a cell evaluated or repaired another way reuses them: a
    /// SafeLoRA cell's adapter is the undefended cell's).
    pub(crate) fn train_key(&self, method: &str, names: &[String], regime: &str, aligned: &Aligned) -> Result<String> {
        let training = crate::stack::build_stack(&self.spec.defense_options, names)?.training;
        let mut key = self.train_key_parts(method, &training, regime, aligned)?;
        // The cell key has these through its evaluation part.
        key["seed"] = self.spec.seed.into();
        key["template"] = serde_json::to_value(self.spec.data.template)?;
        sha256_json(&key)
    }

    /// What a cell's evaluated model depends on: [`Self::train_key_parts`] of the whole stack
    /// (a post-tuning repair included), the seed and the template — its content key without
    /// the evaluation. The cells of two tasks' runs that train on the same data (pure-bad)
    /// are one model.
    pub(crate) fn cell_model(&self, method: &str, names: &[String], regime: &str, aligned: &Aligned) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "cell": self.train_key_parts(method, names, regime, aligned)?,
            "seed": self.spec.seed, "template": self.spec.data.template,
        }))
    }

    /// The content key of a cell: its trained weights and its evaluation.
    pub(crate) fn cell_key(&self, method: &str, names: &[String], regime: &str, aligned: &Aligned) -> Result<String> {
        let mut key = self.train_key_parts(method, names, regime, aligned)?;
        key["eval"] = self.eval_key()?;
        sha256_json(&key)
    }
}

/// The run directory's result `kind/name` (`models/<label>`, `cells/<cell>`; its file
/// `file`) when it was made under `key` (recorded in `keys/<kind>/<name>`). A result made
/// under another key (the code, data or options changed since), before keys were recorded,
/// or not finished is removed, so that it cannot count as done while it is made again.
pub(crate) fn reuse_here<T: serde::de::DeserializeOwned>(
    run_dir: &Path,
    kind: &str,
    name: &str,
    file: &Path,
    key: &str,
) -> Result<Option<T>> {
    let same_key = std::fs::read_to_string(run_dir.join("keys").join(kind).join(name)).is_ok_and(|k| k.trim() == key);
    if same_key {
        if let Ok(s) = std::fs::read_to_string(file) {
            return serde_json::from_str(&s).map(Some).map_err(|e| anyhow!("{}: {e}", file.display()));
        }
    }
    remove_stale(file)?;
    Ok(None)
}

/// Records the key a run-directory result is made under: written before the result file
/// when computing (a kill in between leaves no file, so the result is made again), after
/// the files when restoring them from the cache.
pub(crate) fn mark_done(run_dir: &Path, kind: &str, name: &str, key: &str) -> Result<()> {
    write_atomic(&run_dir.join("keys").join(kind).join(name), format!("{key}\n").as_bytes())
}

fn remove_stale(file: &Path) -> Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow!("{}: cannot remove: {e}", file.display())),
        _ => Ok(()),
    }
}

/// Every answer of an evaluation, one JSON line each, per set.
pub(crate) fn write_generations(dir: &Path, records: &[(String, Vec<GenRecord>)]) -> Result<()> {
    for (set, recs) in records {
        let mut s = String::new();
        for r in recs {
            s.push_str(&serde_json::to_string(r)?);
            s.push('\n');
        }
        write_atomic(&dir.join(format!("{set}.jsonl")), s.as_bytes())?;
    }
    Ok(())
}
