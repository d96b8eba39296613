//! align → fine-tune → evaluate, for every method × regime of a spec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use safetune_core::anyhow::{anyhow, Context};
use safetune_core::config::TrainConfig;
use safetune_core::defense::DefenseData;
use safetune_core::registry::{self, Trainable};
use safetune_core::repair::{Repair, WeightSets, Weights};
use safetune_core::training::TrainStep;
use safetune_core::training::{stream, PlainSft};
use safetune_core::{CausalLm, Example, ExampleKind, Result};
use safetune_data::{alignment_set, builtin_pools, AlignmentPools, AlignmentSpec, DataDir, DataSource, HubClient, Pools, Regime};
use safetune_model::{load_model, Llama};
use safetune_train::{train, StageData, TrainReport};

use crate::evaluate::{evaluate, EvalInputs};
use crate::fetch::{cache_dir, resolve_model};
use crate::hashing::{sha256_file, sha256_json, write_atomic, write_json};
use crate::options::RunOptions;
use crate::output::say;
use crate::results::{CellResult, GenRecord, ModelEval};
use crate::spec::{DataSourceKind, RunSpec, TemplateChoice};
use crate::stack::{build_defense, build_stack, label, resolved_options};
use crate::stage_cache::StageCache;

fn load_pools(spec: &RunSpec, opts: &RunOptions) -> Result<(Pools, BTreeMap<String, String>)> {
    let sel = spec.data.selection();
    if sel.is_builtin() {
        return Ok((builtin_pools(&sel.task), BTreeMap::new()));
    }
    let mut hashes = BTreeMap::new();
    let pools = match spec.data.source {
        DataSourceKind::Hub => Pools::assemble(&DataSource::Hub(&HubClient::from_env()), &sel, &spec.data.custom)?,
        DataSourceKind::Dir => {
            let Some(root) = opts.data_dir.clone() else {
                if spec.data.custom.contains_key(&sel.task) {
                    return Ok((Pools::builtin_around_custom(&sel, &spec.data.custom)?, custom_hashes(spec)?));
                }
                return Err(anyhow!(
                    "data.task `{}` needs a data directory: pass --data-dir DIR or set SAFETUNE_DATA_DIR \
                     (or data.source = \"hub\", or data.task = \"builtin\")",
                    spec.data.task
                ));
            };
            let dir = DataDir::open(&root)?;
            let pools = Pools::assemble(&DataSource::Dir(&dir), &sel, &spec.data.custom)?;
            for f in &pools.files {
                hashes.insert(f.display().to_string(), sha256_file(&root.join(f))?);
            }
            pools
        }
    };
    Ok((pools, hashes))
}

/// sha256 of the user's dataset files.
fn custom_hashes(spec: &RunSpec) -> Result<BTreeMap<String, String>> {
    let mut h = BTreeMap::new();
    for c in spec.data.custom.values() {
        for p in std::iter::once(&c.path).chain(c.test_path.as_ref()) {
            h.insert(p.display().to_string(), sha256_file(p)?);
        }
    }
    Ok(h)
}

fn git_revision() -> String {
    let rev = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output();
    let dirty = std::process::Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]).output();
    match (rev, dirty) {
        (Ok(r), Ok(d)) if r.status.success() => {
            let mut s = String::from_utf8_lossy(&r.stdout).trim().to_string();
            if !d.stdout.is_empty() {
                s.push_str("-dirty");
            }
            s
        }
        _ => "unknown".into(),
    }
}

fn write_generations(dir: &Path, records: &[(String, Vec<GenRecord>)]) -> Result<()> {
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

/// The aligned model: base + the alignment adapters, trained once per
/// (model, alignment config, data) and cached under the cache directory.
pub(crate) fn open_model(path: &Path, template: TemplateChoice) -> Result<Llama> {
    let mut m = load_model(path, &safetune_model::default_device())?;
    if template == TemplateChoice::Alpaca {
        m.set_format(safetune_core::PromptFormat::Alpaca);
    }
    Ok(m)
}

fn aligned_model(model_path: &Path, aligned: &Aligned, template: TemplateChoice) -> Result<Llama> {
    if aligned.full {
        // Full-parameter alignment stores the whole aligned model as a Hugging Face directory.
        return open_model(&aligned.dir.join("model"), template);
    }
    model_with_adapters(model_path, template, std::slice::from_ref(&aligned.dir))
}

/// A model with PEFT adapters merged into its weights, in order.
pub(crate) fn model_with_adapters(model_path: &Path, template: TemplateChoice, adapters: &[PathBuf]) -> Result<Llama> {
    let mut m = open_model(model_path, template)?;
    for a in adapters {
        safetune_lora::load_peft(&mut m, a, &safetune_model::default_device())?;
        safetune_lora::merge_adapters(&mut m)?;
    }
    Ok(m)
}

/// Everything the stages of one run share.
pub(crate) struct Run<'a> {
    pub spec: &'a RunSpec,
    pub quiet: bool,
    pub pools: Pools,
    pub model_path: PathBuf,
    pub model_sha: String,
    pub run_dir: PathBuf,
    pub judge: Box<dyn safetune_core::judge::Judge>,
    pub align_set: Vec<Example>,
    pub timings: serde_json::Map<String, serde_json::Value>,
    /// Hashes of the pools the cache keys name, computed on first use.
    pub pool_hashes: std::cell::OnceCell<PoolHashes>,
}

/// sha256 of each pool a cache key depends on (hashing SST-2's 67k training
/// rows for every cell and evaluation would repeat the same work).
pub(crate) struct PoolHashes {
    safety: String,
    task_test: String,
    over_refusal: String,
    task_train: String,
    harmful: String,
    mmlu: Option<String>,
}

/// The weights a stage trains: LoRA adapters attached (seeded) or every weight unfrozen.
fn make_trainable(model: &mut Llama, t: &Trainable, seed: u64) -> Result<()> {
    match t {
        Trainable::Lora(l) => safetune_lora::attach_lora(model, l, seed).map(|_| ()),
        Trainable::Full => model.unfreeze_all().map(|_| ()),
    }
}

fn describe(t: &Trainable) -> String {
    match t {
        Trainable::Lora(l) => format!("LoRA r{} on {:?}", l.r, l.targets),
        Trainable::Full => "every weight".to_string(),
    }
}

/// A method's plan with the spec's options for it.
fn method_plan(spec: &RunSpec, method: &str) -> Result<registry::MethodPlan> {
    (registry::method(method)?.build)(spec.finetune.method_options.get(method).unwrap_or(&serde_json::Value::Null))
}

/// A cached aligned model: its content key and adapter directory.
#[derive(Clone)]
struct Aligned {
    key: String,
    dir: PathBuf,
    /// The directory holds a whole model (`model/`), not a LoRA adapter.
    full: bool,
}

impl Run<'_> {
    fn eval_inputs<'b>(
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
        }
    }

    /// Evaluates a model once per run directory (`models/<label>.json`), reusing an earlier
    /// result: the run directory's, else the evaluation cache's, which is keyed by the
    /// model's identity (`identity`: hashes of its weights) and everything the scores depend on.
    pub(crate) fn evaluate_once(
        &mut self,
        label: &str,
        identity: serde_json::Value,
        model: impl FnOnce() -> Result<Llama>,
    ) -> Result<ModelEval> {
        let file = self.run_dir.join("models").join(format!("{label}.json"));
        let gen_dir = self.run_dir.join("generations").join(label);
        if let Ok(s) = std::fs::read_to_string(&file) {
            say(self.quiet, format!("[eval {label}] reusing earlier result"));
            return serde_json::from_str(&s).map_err(|e| anyhow!("{}: {e}", file.display()));
        }
        let key = sha256_json(&serde_json::json!({ "model": identity, "eval": self.eval_key()? }))?;
        let rels = [PathBuf::from("models").join(format!("{label}.json")), PathBuf::from("generations").join(label)];
        let cache = StageCache::new("evals");
        if cache.restore(&key, &self.run_dir, &rels)? {
            say(self.quiet, format!("[eval {label}] reusing cached evaluation {}", &key[..16]));
            let s = std::fs::read_to_string(&file).with_context(|| format!("{}: cannot read", file.display()))?;
            return serde_json::from_str(&s).map_err(|e| anyhow!("{}: {e}", file.display()));
        }
        let t = crate::resources::StageMeter::start();
        let m = model()?;
        let inputs = self.eval_inputs(&self.pools.safety_evals, &self.pools.over_refusal, &self.pools.task_test);
        let (e, recs, times) = evaluate(&m, &inputs, &self.spec.eval, self.judge.as_ref(), self.spec.seed, label, self.quiet)?;
        write_generations(&gen_dir, &recs)?;
        write_json(&file, &e)?;
        let mut report = t.report();
        report["metrics_s"] = crate::evaluate::times_json(&times);
        self.timings.insert(format!("eval_{label}"), report);
        cache.publish(&key, &self.run_dir, &rels)?;
        Ok(e)
    }

    fn pool_hashes(&self) -> Result<&PoolHashes> {
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
        };
        Ok(self.pool_hashes.get_or_init(|| h))
    }

    /// The harmful pairs a defense may train on: none any regime of this run draws.
    fn defender_harmful(&self) -> Result<Vec<Example>> {
        let regimes = self.spec.finetune.regimes.iter().map(|r| Regime::parse(r)).collect::<Result<Vec<_>>>()?;
        self.pools.defender_harmful(&regimes, self.spec.finetune.n, self.spec.seed)
    }

    /// The refusal pairs of the alignment set (the `safety` stream of later stages).
    fn safety_pairs(&self) -> Vec<Example> {
        self.align_set.iter().filter(|e| e.kind == ExampleKind::Refusal).cloned().collect()
    }

    /// Everything evaluation scores depend on besides the model.
    fn eval_key(&self) -> Result<serde_json::Value> {
        let spec = self.spec;
        let h = self.pool_hashes()?;
        let mut key = serde_json::json!({
            "eval": spec.eval, "seed": spec.seed, "template": spec.data.template,
            "safety": h.safety, "task": h.task_test,
            "over_refusal": h.over_refusal,
            "utility": self.pools.utility, "version": env!("CARGO_PKG_VERSION"), "judge": self.judge.fingerprint(),
        });
        // Only runs that ask for MMLU carry it (keys of other runs stay as they were).
        if let Some(m) = &h.mmlu {
            key["mmlu"] = serde_json::json!(m);
        }
        Ok(key)
    }

    /// The files a cell writes, relative to the run directory.
    fn cell_files(&self, method: &str, cell: &str) -> Result<Vec<PathBuf>> {
        let plan = method_plan(self.spec, method)?;
        let mut rels = vec![
            PathBuf::from("cells").join(format!("{cell}.json")),
            PathBuf::from("timings").join(format!("{cell}.json")),
            PathBuf::from("generations").join(cell),
        ];
        if matches!(plan.trainable, Trainable::Lora(_)) {
            rels.push(PathBuf::from("adapters").join(cell));
        }
        Ok(rels)
    }

    /// The content key of a cell's trained weights: the aligned model, the
    /// method and its settings, the stack and its options, the data and the
    /// seed — everything but the evaluation (a cell evaluated another way
    /// reuses them).
    fn train_key_parts(&self, method: &str, names: &[String], regime: &str, aligned: &Aligned) -> Result<serde_json::Value> {
        let spec = self.spec;
        // With every default filled in: writing a default out gives the same key.
        let options: BTreeMap<&String, serde_json::Value> =
            names.iter().map(|n| Ok((n, resolved_options(&spec.defense_options, n)?))).collect::<Result<_>>()?;
        let mut key = serde_json::json!({
            "aligned": aligned.key, "method": method, "method_options": spec.finetune.method_options.get(method),
            "train": spec.method_train(method), "defenses": names, "defense_options": options,
            "regime": regime, "n": spec.finetune.n,
            "task_train": self.pool_hashes()?.task_train, "harmful": self.pool_hashes()?.harmful,
        });
        // The pure-bad regime trains on the pure-bad set alone (other cells' keys stay as they were).
        if Regime::parse(regime)? == Regime::PureBad {
            key["pure_bad"] = sha256_json(&self.pools.pure_bad)?.into();
        }
        // A defended cell may read the defender's harmful pairs (undefended keys stay as they were).
        if !names.is_empty() {
            key["defender_harmful"] = sha256_json(&self.defender_harmful()?)?.into();
        }
        Ok(key)
    }

    fn train_key(&self, method: &str, names: &[String], regime: &str, aligned: &Aligned) -> Result<String> {
        let mut key = self.train_key_parts(method, names, regime, aligned)?;
        // The cell key has these through its evaluation part.
        key["seed"] = self.spec.seed.into();
        key["template"] = serde_json::to_value(self.spec.data.template)?;
        key["version"] = env!("CARGO_PKG_VERSION").into();
        sha256_json(&key)
    }

    /// The content key of a cell: its trained weights and its evaluation.
    fn cell_key(&self, method: &str, names: &[String], regime: &str, aligned: &Aligned) -> Result<String> {
        let mut key = self.train_key_parts(method, names, regime, aligned)?;
        key["eval"] = self.eval_key()?;
        sha256_json(&key)
    }

    /// The aligned model for an alignment-stage defense (or none), trained once per content key and cached.
    fn aligned(&mut self, defense: Option<&str>) -> Result<Aligned> {
        let spec = self.spec;
        let mut train_cfg = spec.alignment.train.clone();
        train_cfg.seed = spec.seed;
        let mut key_parts = serde_json::json!({
            "model": self.model_sha, "lora": spec.alignment.lora, "train": train_cfg,
            "data": sha256_json(&self.align_set)?,
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
        let key = sha256_json(&key_parts)?;
        let dir = cache_dir().join("aligned").join(&key[..16]);
        let label = match defense {
            Some(d) => format!("align+{d}"),
            None => "align".into(),
        };
        let trainable = if full { Trainable::Full } else { Trainable::Lora(spec.alignment.lora.clone()) };
        let done = if full { dir.join("model/model.safetensors") } else { dir.join("adapter_model.safetensors") };
        if done.exists() {
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
        make_trainable(&mut model, &trainable, spec.seed)?;
        let mut data = StageData::default();
        data.streams.insert(stream::TASK.into(), self.align_set.clone());
        let mut step: Box<dyn TrainStep> = match defense {
            None => Box::new(PlainSft),
            Some(d) => {
                data.streams.insert(stream::SAFETY.into(), self.safety_pairs());
                data.streams.insert(stream::HARMFUL.into(), self.defender_harmful()?);
                build_defense(&spec.defense_options, d)?.align_step.ok_or_else(|| anyhow!("defense `{d}` has no alignment objective"))?
            }
        };
        // The base model, frozen, when the objective compares against it.
        let reference = if step.wants_reference() { Some(open_model(&self.model_path, spec.data.template)?) } else { None };
        let report =
            train(&mut model, &data, step.as_mut(), &train_cfg, reference.as_ref().map(|m| m as &dyn CausalLm), &label, self.quiet)?;
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        if full {
            model.freeze_all();
            safetune_model::export_hf(&model, &tmp.join("model"))?;
        } else {
            safetune_lora::save_peft(&model, &spec.alignment.lora, &tmp)?;
        }
        write_json(&tmp.join("train_report.json"), &report)?;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&tmp, &dir).with_context(|| format!("{}: cannot write", dir.display()))?;
        self.timings.insert(label.clone(), t.report());
        Ok(Aligned { key, dir, full })
    }

    /// The files of a cell's trained weights in the `trained` stage cache (LoRA methods only:
    /// full fine-tuning writes no weights).
    fn trained_files(cell: &str) -> Vec<PathBuf> {
        vec![PathBuf::from("adapters").join(cell), PathBuf::from("trained").join(format!("{cell}.json"))]
    }

    /// After a whole cell came from the cache: publishes its trained weights
    /// too (entries written before the `trained` cache existed have no
    /// `trained/<cell>.json`; it is rebuilt from the cell's result and timings).
    fn publish_trained_from_cell(&self, method: &str, names: &[String], regime: &str, aligned: &Aligned, cell: &str) -> Result<()> {
        if !self.cell_files(method, cell)?.iter().any(|r| r.starts_with("adapters")) {
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
        StageCache::new("trained").publish(&self.train_key(method, names, regime, aligned)?, &self.run_dir, &Self::trained_files(cell))
    }

    /// Fine-tunes one cell from the aligned model, applies its defenses, evaluates.
    fn cell(&mut self, method: &str, names: &[String], regime: &str, aligned: &Aligned) -> Result<CellResult> {
        let spec = self.spec;
        let cell = format!("{}__{regime}", label(method, names));
        let t = Instant::now();
        let mut stack = build_stack(&spec.defense_options, names)?;
        let parsed = Regime::parse(regime)?;
        let p = parsed.ratio();
        let variant = self.pools.variant(parsed, spec.finetune.n, spec.seed).map_err(|e| anyhow!("finetune ({cell}): {e}"))?;
        let safety = self.safety_pairs();
        let harmful = if names.is_empty() { Vec::new() } else { self.defender_harmful()? };
        let mut task = variant.examples.clone();
        if let Some(mix) = &stack.mix {
            mix.mix(&mut task, &DefenseData { safety: &safety, harmful: &harmful }, spec.seed)?;
        }
        let variant_ids: std::collections::HashSet<&String> = variant.examples.iter().map(|e| &e.id).collect();
        let added_ids: Vec<String> = task.iter().filter(|e| !variant_ids.contains(&e.id)).map(|e| e.id.clone()).collect();
        let mut plan = method_plan(spec, method)?;
        let mut model = aligned_model(&self.model_path, aligned, spec.data.template)?;
        let mut cfg = spec.method_train(method).clone();
        cfg.seed = spec.seed;
        let train_key = self.train_key(method, names, regime, aligned)?;
        let trained_rels = Self::trained_files(&cell);
        let adapter = self.run_dir.join("adapters").join(&cell);
        let trained_file = self.run_dir.join("trained").join(format!("{cell}.json"));
        let lora = matches!(plan.trainable, Trainable::Lora(_));
        // Trained weights of the same cell evaluated another way: evaluation only.
        let restored = lora && StageCache::new("trained").restore(&train_key, &self.run_dir, &trained_rels)?;
        let (report, train_stage) = if restored {
            say(self.quiet, format!("[{cell}] reusing cached trained weights {} (evaluation only)", &train_key[..16]));
            safetune_lora::load_peft(&mut model, &adapter, &safetune_model::default_device())?;
            safetune_lora::merge_adapters(&mut model)?;
            let text = std::fs::read_to_string(&trained_file).with_context(|| format!("{}: cannot read", trained_file.display()))?;
            let mut t: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", trained_file.display()))?;
            let report: TrainReport =
                serde_json::from_value(t["report"].take()).map_err(|e| anyhow!("{}: report: {e}", trained_file.display()))?;
            (report, t["train"].take())
        } else {
            make_trainable(&mut model, &plan.trainable, spec.seed.wrapping_add(1))?;
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
            let report: TrainReport =
                train(&mut model, &data, step, &cfg, reference.as_ref().map(|m| m as &dyn CausalLm), &cell, self.quiet)?;
            let train_stage = train_meter.report();
            write_json(&trained_file, &serde_json::json!({ "report": report, "train": train_stage }))?;
            if let Trainable::Lora(l) = &plan.trainable {
                safetune_lora::save_peft(&model, l, &adapter)?;
                safetune_lora::merge_adapters(&mut model)?;
                StageCache::new("trained").publish(&train_key, &self.run_dir, &trained_rels)?;
            } else {
                model.freeze_all();
            }
            (report, train_stage)
        };
        let repaired = match &stack.repair {
            Some(r) => {
                let mut data = StageData::default();
                data.streams.insert(stream::TASK.into(), variant.examples.clone());
                data.streams.insert(stream::SAFETY.into(), safety);
                data.streams.insert(stream::HARMFUL.into(), harmful);
                self.repair(r.as_ref(), &mut model, aligned, &data, &cfg)?
            }
            None => Vec::new(),
        };
        // A defense may set the system prompt at inference (BEA's trigger).
        let system = stack.system_prompt.as_ref().and_then(|f| f(model.info().format.default_system()));
        let with_system = |v: &[Example]| -> Vec<Example> {
            v.iter()
                .cloned()
                .map(|mut e| {
                    if system.is_some() {
                        e.system = system.clone();
                    }
                    e
                })
                .collect()
        };
        let sets: Vec<(String, Vec<Example>)> = self.pools.safety_evals.iter().map(|(n, v)| (n.clone(), with_system(v))).collect();
        let over: Vec<(String, Vec<Example>)> = self.pools.over_refusal.iter().map(|(n, v)| (n.clone(), with_system(v))).collect();
        let task_test = with_system(&self.pools.task_test);
        let inputs = self.eval_inputs(&sets, &over, &task_test);
        let eval_meter = crate::resources::StageMeter::start();
        let (eval, recs, times) = evaluate(&model, &inputs, &spec.eval, self.judge.as_ref(), spec.seed, &cell, self.quiet)?;
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
    fn repair(&self, r: &dyn Repair, model: &mut Llama, aligned: &Aligned, data: &StageData, cfg: &TrainConfig) -> Result<Vec<String>> {
        let linear: std::collections::HashSet<String> = model.linear_modules().into_iter().map(|m| format!("{m}.weight")).collect();
        let pick = |w: Vec<(String, candle_core::Tensor)>| -> Weights { w.into_iter().filter(|(n, _)| linear.contains(n)).collect() };
        let base = pick(open_model(&self.model_path, self.spec.data.template)?.weights());
        let aligned_model = aligned_model(&self.model_path, aligned, self.spec.data.template)?;
        let al = pick(aligned_model.weights());
        let ft = pick(model.weights());
        let sets = WeightSets { base: &base, aligned: &al, finetuned: &ft };
        let out = safetune_train::with_context(&*model, Some(&aligned_model), data, cfg, |ctx| r.repair(&sets, ctx))?;
        let names: Vec<String> = out.keys().cloned().collect();
        for (n, w) in out {
            model.set_weight(&n, w)?;
        }
        say(self.quiet, format!("[{}] replaced {} of {} weights", r.name(), names.len(), ft.len()));
        Ok(names)
    }
}

/// What every command that evaluates models resolves before it writes anything.
pub(crate) struct Prepared {
    pub pools: Pools,
    pub data_hashes: BTreeMap<String, String>,
    pub model_path: PathBuf,
    pub model_sha: String,
    pub judge: Box<dyn safetune_core::judge::Judge>,
}

pub(crate) fn prepare(spec: &RunSpec, opts: &RunOptions) -> Result<Prepared> {
    let (pools, data_hashes) = load_pools(spec, opts)?;
    let model_path = resolve_model(&spec.model.source, opts.quiet)?;
    let model_sha = if model_path.is_file() { sha256_file(&model_path)? } else { sha256_json(&model_path.display().to_string())? };
    let judge = (registry::judge(&spec.eval.judge)?.build)(&spec.eval.judge_options)?;
    Ok(Prepared { pools, data_hashes, model_path, model_sha, judge })
}

/// Creates and locks `<out>/<name>/`, refusing one that holds another spec's
/// results; writes `spec.json`. Returns the directory, its lock and the spec hash.
pub(crate) fn open_run_dir(spec: &RunSpec, out: &Path, lock: bool) -> Result<(PathBuf, Option<crate::lock::RunLock>, String)> {
    let run_dir = out.join(&spec.name);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("{}: cannot create", run_dir.display()))?;
    let lock = if lock { Some(crate::lock::RunLock::acquire(&run_dir)?) } else { None };
    let spec_hash = sha256_json(spec)?;
    let spec_file = run_dir.join("spec.json");
    if let Ok(old) = std::fs::read_to_string(&spec_file) {
        let old: RunSpec = serde_json::from_str(&old).map_err(|e| anyhow!("{}: {e}", spec_file.display()))?;
        if sha256_json(&old)? != spec_hash {
            return Err(anyhow!(
                "{}: holds results of a different spec named `{}`; choose another name or --out",
                run_dir.display(),
                spec.name
            ));
        }
    }
    write_json(&spec_file, spec)?;
    Ok((run_dir, lock, spec_hash))
}

/// The manifest fields every results directory records.
pub(crate) fn manifest_base(spec: &RunSpec, spec_hash: &str, p: &Prepared) -> serde_json::Value {
    serde_json::json!({
        "spec_sha256": spec_hash,
        "seed": spec.seed,
        "model": { "source": spec.model.source, "path": p.model_path.display().to_string(), "sha256": p.model_sha },
        "data": { "source": p.pools.source, "task": p.pools.task, "files_sha256": p.data_hashes, "task_holdout_ids": p.pools.holdout_ids },
        "safetune_version": env!("CARGO_PKG_VERSION"),
        "crate_versions": crate::resources::crate_versions(),
        "git_revision": git_revision(),
        "machine": { "os": std::env::consts::OS, "arch": std::env::consts::ARCH,
                     "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) },
    })
}

/// Runs a spec end to end; returns the summary table. A spec over several
/// tasks or seeds runs one sub-run each under `<out>/<name>/runs/` and
/// aggregates them across seeds.
pub fn run(spec: &RunSpec, opts: &RunOptions) -> Result<String> {
    let subs = spec.expand();
    if subs.is_empty() {
        return run_single(spec, opts);
    }
    // Every sub-run's input is checked before anything is written or trained, so that a
    // bad data file or an impossible budget in the last sub-run stops the grid at once.
    let mut plan = Vec::new();
    for s in &subs {
        let (_, align_set) = checked(s, opts).map_err(|e| anyhow!("{e} (task {}, seed {})", s.data.task, s.seed))?;
        plan.push(plan_line(s, align_set.len()));
    }
    if opts.dry_run {
        return Ok(format!(
            "{}: {} sub-runs under {}\n{}",
            spec.name,
            subs.len(),
            opts.out.join(&spec.name).join("runs").display(),
            plan.join("")
        ));
    }
    let (top, _lock, _) = open_run_dir(spec, &opts.out, opts.worker_cells.is_none())?;
    let runs = top.join("runs");
    let mut dirs = Vec::new();
    for s in &subs {
        say(opts.quiet, format!("[grid] {} of {}: task {}, seed {}", dirs.len() + 1, subs.len(), s.data.task, s.seed));
        let sub_opts = RunOptions { out: runs.clone(), worker_cells: None, ..opts.clone() };
        run_single(s, &sub_opts)?;
        dirs.push((s.data.task.clone(), s.seed, runs.join(&s.name)));
    }
    crate::report::write_seed_report(&top, &spec.name, &dirs)
}

/// One run's plan in a line: what it trains and scores.
fn plan_line(spec: &RunSpec, align_examples: usize) -> String {
    let cells = spec.finetune.methods.len() * spec.finetune.defenses.len() * spec.finetune.regimes.len();
    format!(
        "  {}: task {}, seed {}; alignment on {align_examples} examples; {cells} cells ({} × {} stacks × {}) on n = {}; safety sets {}\n",
        spec.name,
        spec.data.task,
        spec.seed,
        spec.finetune.methods.join(", "),
        spec.finetune.defenses.len(),
        spec.finetune.regimes.join(", "),
        spec.finetune.n,
        spec.data.safety_evals.join(", "),
    )
}

/// Everything that can reject one run's input — data, model, judge, the alignment set and
/// every regime's variant — checked before its results directory exists.
fn checked(spec: &RunSpec, opts: &RunOptions) -> Result<(Prepared, Vec<Example>)> {
    let prepared = prepare(spec, opts)?;
    let pools = &prepared.pools;
    let align_set = alignment_set(
        &AlignmentPools {
            harmful_prompts: &pools.align_prompts,
            safe_answers: &pools.safe_answers,
            benign: &pools.benign,
            task_rows: &pools.align_task,
        },
        &AlignmentSpec {
            refusals: spec.alignment.refusals,
            safe_answers: spec.alignment.safe_answers,
            recovery: spec.alignment.recovery,
            benign: spec.alignment.benign,
            task_examples: spec.alignment.task_examples,
            seed: spec.seed,
        },
    )?;
    for regime in &spec.finetune.regimes {
        pools.variant(Regime::parse(regime)?, spec.finetune.n, spec.seed).map_err(|e| anyhow!("finetune.n / regime `{regime}`: {e}"))?;
    }
    Ok((prepared, align_set))
}

fn run_single(spec: &RunSpec, opts: &RunOptions) -> Result<String> {
    let start = Instant::now();
    let quiet = opts.quiet;
    let (prepared, align_set) = checked(spec, opts)?;
    if opts.dry_run {
        return Ok(format!("{}: one run in {}\n{}", spec.name, opts.out.join(&spec.name).display(), plan_line(spec, align_set.len())));
    }
    let (run_dir, _lock, spec_hash) = open_run_dir(spec, &opts.out, opts.worker_cells.is_none())?;
    let mut manifest = manifest_base(spec, &spec_hash, &prepared);
    manifest["alignment"] =
        serde_json::json!({ "examples": align_set.len(), "ids": align_set.iter().map(|e| e.id.clone()).collect::<Vec<_>>() });
    let Prepared { pools, model_path, model_sha, judge, .. } = prepared;
    let mut r = Run {
        spec,
        quiet,
        pools,
        model_path,
        model_sha,
        run_dir,
        judge,
        align_set,
        timings: serde_json::Map::new(),
        pool_hashes: Default::default(),
    };

    let path = r.model_path.clone();
    let template = spec.data.template;
    let base_id = serde_json::json!({ "base": r.model_sha });
    r.evaluate_once("base", base_id, || open_model(&path, template))?;
    // One aligned model per alignment-stage defense in use (none included when a stack lacks one).
    let mut align_defenses: Vec<Option<String>> = Vec::new();
    for names in &spec.finetune.defenses {
        let a = build_stack(&spec.defense_options, names)?.align;
        if !align_defenses.contains(&a) {
            align_defenses.push(a);
        }
    }
    let mut aligned: BTreeMap<Option<String>, Aligned> = BTreeMap::new();
    let mut keys = serde_json::Map::new();
    for d in align_defenses {
        let a = r.aligned(d.as_deref())?;
        let label = d.as_ref().map(|d| format!("aligned+{d}")).unwrap_or_else(|| "aligned".into());
        let a2 = a.clone();
        let id = serde_json::json!({ "base": r.model_sha, "aligned": a.key });
        r.evaluate_once(&label, id, || aligned_model(&path, &a2, template))?;
        keys.insert(label, a.key.clone().into());
        aligned.insert(d, a);
    }
    manifest["alignment"]["keys"] = serde_json::Value::Object(keys);

    // Cells not finished in this directory nor in the cache, in grid order.
    let mut pending = Vec::new();
    for method in &spec.finetune.methods {
        for names in &spec.finetune.defenses {
            let a = &aligned[&build_stack(&spec.defense_options, names)?.align];
            for regime in &spec.finetune.regimes {
                let cell = format!("{}__{regime}", label(method, names));
                if opts.worker_cells.as_ref().is_some_and(|w| !w.contains(&cell)) {
                    continue;
                }
                let cell_file = r.run_dir.join("cells").join(format!("{cell}.json"));
                if let Ok(s) = std::fs::read_to_string(&cell_file) {
                    say(quiet, format!("[{cell}] already done"));
                    serde_json::from_str::<CellResult>(&s).map_err(|e| anyhow!("{}: {e}", cell_file.display()))?;
                    continue;
                }
                let key = r.cell_key(method, names, regime, a)?;
                let rels = r.cell_files(method, &cell)?;
                if StageCache::new("cells").restore(&key, &r.run_dir, &rels)? {
                    say(quiet, format!("[{cell}] reusing cached cell {}", &key[..16]));
                    r.publish_trained_from_cell(method, names, regime, a, &cell)?;
                    continue;
                }
                pending.push((method, names, regime, cell, key, rels));
            }
        }
    }
    if opts.jobs > 1 && pending.len() > 1 && opts.worker_cells.is_none() {
        let cells: Vec<String> = pending.iter().map(|p| p.3.clone()).collect();
        crate::jobs::run_workers(&r.run_dir.join("spec.json"), opts, &cells)?;
    } else {
        for (method, names, regime, cell, key, rels) in pending {
            let a = &aligned[&build_stack(&spec.defense_options, names)?.align];
            let res = r.cell(method, names, regime, a)?;
            write_json(&r.run_dir.join("cells").join(format!("{cell}.json")), &res)?;
            StageCache::new("cells").publish(&key, &r.run_dir, &rels)?;
        }
    }
    if opts.worker_cells.is_some() {
        return Ok(String::new());
    }
    r.timings.insert("run_s".into(), start.elapsed().as_secs_f64().into());
    manifest["timings"] = serde_json::Value::Object(std::mem::take(&mut r.timings));
    write_json(&r.run_dir.join("manifest.json"), &manifest)?;
    crate::report::write_report(&r.run_dir, &spec.name)
}
