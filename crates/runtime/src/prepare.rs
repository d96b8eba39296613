//! What a run resolves before it writes anything: its pools (data directory,
//! Hub, user files or the built-in suite), the model, the judge, MT-Bench's grader; the results
//! directory (locked) and the manifest fields every run records; opening models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::registry::{self};
use safetune_core::Result;
use safetune_data::{DataDir, DataSource, HubClient, Pools};
use safetune_model::{open_checkpoint, Checkpoint};

use crate::fetch::resolve_model;
use crate::hashing::{sha256_file, sha256_json, write_json};
use crate::options::RunOptions;
use crate::spec::{DataSourceKind, RunSpec, TemplateChoice};

pub(crate) fn load_pools(spec: &RunSpec, opts: &RunOptions) -> Result<(Pools, BTreeMap<String, String>)> {
    let sel = &spec.data;
    if sel.is_builtin() {
        return Ok((Pools::builtin(sel)?, BTreeMap::new()));
    }
    let mut hashes = BTreeMap::new();
    let pools = match spec.data.source {
        DataSourceKind::Hub => Pools::assemble(&DataSource::Hub(&HubClient::from_env()), sel)?,
        DataSourceKind::Dir => {
            let Some(root) = opts.data_dir.clone() else {
                if spec.data.custom.contains_key(&sel.task) {
                    return Ok((Pools::builtin_around_custom(sel)?, custom_hashes(spec)?));
                }
                return Err(anyhow!(
                    "data.task `{}` needs a data directory: pass --data-dir DIR or set SAFETUNE_DATA_DIR \
                     (or data.source = \"hub\", or data.task = \"builtin\")",
                    spec.data.task
                ));
            };
            let dir = DataDir::open(&root)?;
            let pools = Pools::assemble(&DataSource::Dir(&dir), sel)?;
            for f in &pools.files {
                hashes.insert(f.display().to_string(), sha256_file(&root.join(f))?);
            }
            pools
        }
    };
    Ok((pools, hashes))
}

/// sha256 of the user's dataset files.
pub(crate) fn custom_hashes(spec: &RunSpec) -> Result<BTreeMap<String, String>> {
    let mut h = BTreeMap::new();
    for c in spec.data.custom.values() {
        for p in std::iter::once(&c.path).chain(c.test_path.as_ref()) {
            h.insert(p.display().to_string(), sha256_file(p)?);
        }
    }
    Ok(h)
}

/// A model file opened in the prompt format the spec asks for, named as the user names it:
/// a known model's name (`smollm2-135m-instruct`: `safetune model export --model` makes its
/// Hugging Face directory), else its path. Saved adapters carry that name as
/// `base_model_name_or_path`.
pub(crate) fn open_model(path: &Path, template: TemplateChoice) -> Result<Box<dyn Checkpoint>> {
    let mut m = open_checkpoint(path, &safetune_model::default_device())?;
    let known = crate::fetch::KNOWN_MODELS.iter().find(|k| crate::fetch::model_path(k.name).is_ok_and(|p| p == path));
    m.set_name(&known.map_or_else(|| path.display().to_string(), |k| k.name.to_string()));
    let format = prompt_format(m.info().format, template);
    m.set_format(format);
    Ok(m)
}

/// The prompt format a run formats examples with: the model's own, unless the spec chooses
/// Alpaca's.
pub(crate) fn prompt_format(model: safetune_core::PromptFormat, template: TemplateChoice) -> safetune_core::PromptFormat {
    match template {
        TemplateChoice::Alpaca => safetune_core::PromptFormat::Alpaca,
        TemplateChoice::Model => model,
    }
}

/// What `eval`, `serve` and `model export` put on top of their model: PEFT adapters merged in
/// order, then weights replaced from safetensors files (what a cell evaluated beyond its
/// adapter).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AddedWeights {
    /// A PEFT LoRA adapter directory, merged in order (repeatable): for a cell, the aligned
    /// model's adapter first, then the cell's
    #[arg(long, value_name = "PEFT_DIR")]
    pub adapter: Vec<PathBuf>,
    /// A safetensors file whose tensors replace the model's weights of the same names once the
    /// adapters are merged (repeatable): a cell's `weights/<cell>.safetensors` (a repair's
    /// tensors, a full fine-tuning's model)
    #[arg(long, value_name = "FILE")]
    pub weights: Vec<PathBuf>,
}

impl AddedWeights {
    /// Checks every part against the model's configuration without loading it: each adapter a
    /// PEFT directory, each weights file a safetensors file of the model's weights with their
    /// shapes. Errors name the flag and the file.
    pub(crate) fn check(&self, config: &safetune_model::LlamaConfig) -> Result<()> {
        self.check_present()?;
        for a in &self.adapter {
            safetune_lora::check_peft(a).map_err(|e| anyhow!("--adapter: {e}"))?;
        }
        for w in &self.weights {
            safetune_model::check_replacements(w, config).map_err(|e| anyhow!("--weights: {e}"))?;
        }
        Ok(())
    }

    /// Checks that every part is there (before anything else is read): each adapter a directory
    /// with a PEFT adapter's two files, each weights path a file.
    pub(crate) fn check_present(&self) -> Result<()> {
        for a in &self.adapter {
            if !a.join("adapter_config.json").is_file() || !a.join("adapter_model.safetensors").is_file() {
                bail!("--adapter {}: not a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)", a.display());
            }
        }
        if let Some(w) = self.weights.iter().find(|w| !w.is_file()) {
            bail!("--weights {}: no such file", w.display());
        }
        Ok(())
    }

    /// The sha256 of each part: adapters (weights and config) then weights files, in order.
    pub(crate) fn hashes(&self) -> Result<serde_json::Value> {
        let mut peft = Vec::new();
        for a in &self.adapter {
            peft.push(sha256_file(&a.join("adapter_model.safetensors"))? + &sha256_file(&a.join("adapter_config.json"))?);
        }
        let weights = self.weights.iter().map(|w| sha256_file(w)).collect::<Result<Vec<_>>>()?;
        Ok(serde_json::json!({ "peft": peft, "weights": weights }))
    }
}

/// A model with its parts: adapters merged into its weights in order, then weights replaced.
pub(crate) fn model_with(model_path: &Path, template: TemplateChoice, parts: &AddedWeights) -> Result<Box<dyn Checkpoint>> {
    let mut m = open_model(model_path, template)?;
    for a in &parts.adapter {
        safetune_lora::load_peft(&mut *m, a, &safetune_model::default_device())?;
        safetune_lora::merge_adapters(&mut *m)?;
    }
    for w in &parts.weights {
        safetune_model::replace_weights(&mut *m, w).map_err(|e| anyhow!("--weights: {e}"))?;
    }
    Ok(m)
}

/// What every command that evaluates models resolves before it writes anything.
pub(crate) struct Prepared {
    pub pools: Pools,
    pub data_hashes: BTreeMap<String, String>,
    pub model_path: PathBuf,
    pub model_sha: String,
    /// The model's configuration, tokenizer and the prompt format the run uses (read without the
    /// weights).
    pub config: safetune_model::LlamaConfig,
    pub tokenizer: safetune_model::TextTokenizer,
    pub format: safetune_core::PromptFormat,
    pub judge: Box<dyn safetune_core::judge::Judge>,
    /// MT-Bench's grader and grading prompts, when `data.utility_evals` names it.
    pub mt_bench: Option<MtBenchGrading>,
}

/// What grades MT-Bench answers: FastChat's prompts and reference answers, and the grader.
pub(crate) struct MtBenchGrading {
    pub judging: safetune_data::mt_bench::MtBenchJudging,
    pub grader: Box<dyn safetune_core::judge::ChatGrader>,
}

/// MT-Bench's grading, when the pools hold its questions (the spec check made `eval.mt_bench` present).
fn mt_bench_grading(spec: &RunSpec, pools: &Pools) -> Result<Option<MtBenchGrading>> {
    if pools.mt_bench.is_none() {
        return Ok(None);
    }
    let m = spec.eval.mt_bench.clone().unwrap_or_default();
    let grader = (registry::grader(&m.grader).map_err(|e| anyhow!("eval.mt_bench.grader: {e}"))?.build)(&m.grader_options)?;
    let judging = safetune_data::mt_bench::load_judging(m.judge_prompts.as_deref(), m.reference_answers.as_deref(), &HubClient::from_env())
        .map_err(|e| anyhow!("eval.mt_bench: {e}"))?;
    Ok(Some(MtBenchGrading { judging, grader }))
}

pub(crate) fn prepare(spec: &RunSpec, opts: &RunOptions) -> Result<Prepared> {
    let (pools, data_hashes) = load_pools(spec, opts)?;
    let model_path = resolve_model(&spec.model.source, opts.quiet)?;
    // A model that would fail to load fails here, before anything is written.
    let safetune_model::CheckedModel { config, tokenizer, format } = safetune_model::check_model(&model_path)?;
    let format = prompt_format(format, spec.data.template);
    check_against_model(spec, &config).map_err(|e| anyhow!("{e} ({})", model_path.display()))?;
    let model_sha = if model_path.is_file() { sha256_file(&model_path)? } else { sha256_json(&model_path.display().to_string())? };
    let judge = (registry::judge(&spec.eval.judge)?.build)(&spec.eval.judge_options)?;
    let mt_bench = mt_bench_grading(spec, &pools)?;
    Ok(Prepared { pools, data_hashes, model_path, model_sha, config, tokenizer, format, judge, mt_bench })
}

/// The spec values the model bounds, checked before anything is written: every
/// training `max_len` within the model's positions, and every LoRA (alignment's and
/// each method's) targeting some linear module with a rank no larger than the
/// smaller side of each module it targets. Errors name the spec key.
pub(crate) fn check_against_model(spec: &RunSpec, config: &safetune_model::LlamaConfig) -> Result<()> {
    let positions = config.rope_positions();
    let mut lengths = vec![("alignment.train.max_len".to_string(), spec.alignment.train.max_len)];
    let mut loras = Vec::new();
    if !spec.alignment.full {
        loras.push(("alignment.lora".to_string(), spec.alignment.lora.clone()));
    }
    for m in &spec.finetune.methods {
        let key = if spec.finetune.method_train.contains_key(m) { format!("finetune.method_train.{m}") } else { "finetune.train".into() };
        lengths.push((format!("{key}.max_len"), spec.method_train(m).max_len));
        for r in spec.finetune.regime_train.keys() {
            lengths.push((format!("finetune.regime_train.{r}.max_len"), spec.cell_train(m, r)?.max_len));
        }
        let options = spec.finetune.method_options.get(m).unwrap_or(&serde_json::Value::Null);
        if let registry::Trainable::Lora(l) = (registry::method(m)?.build)(options)?.trainable {
            loras.push((format!("finetune.method_options.{m}"), l));
        }
    }
    for (key, len) in lengths {
        if len > positions {
            bail!("{key}: {len} exceeds the model's {positions} positions");
        }
    }
    let shapes: BTreeMap<String, Vec<usize>> = config.weight_shapes().into_iter().collect();
    for (key, lora) in loras {
        let mut matched = 0;
        for module in config.linear_modules().into_iter().filter(|m| lora.targets_module(m)) {
            matched += 1;
            let side = shapes.get(&format!("{module}.weight")).and_then(|s| s.iter().min().copied()).unwrap_or(0);
            if lora.r > side {
                bail!("{key}.r: {} exceeds the rank of `{module}` ({side})", lora.r);
            }
        }
        if matched == 0 {
            bail!("{key}.targets: {:?} matches no linear module of the model", lora.targets);
        }
    }
    Ok(())
}

/// Creates and locks `<out>/<name>/`, refusing one that holds another spec's
/// results; writes `spec.json`. Returns the directory, its lock and the spec hash.
pub(crate) fn open_run_dir(spec: &RunSpec, out: &Path, lock: bool) -> Result<(PathBuf, Option<crate::lock::RunLock>, String)> {
    let run_dir = out.join(&spec.name);
    if !run_dir.exists() {
        NEW_DIRS.with(|d| d.borrow_mut().push(run_dir.clone()));
    }
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

thread_local! {
    /// Results directories this invocation created (see [`undo_new_dirs`]).
    static NEW_DIRS: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// After a failed `run` or `eval`: removes every results directory this invocation
/// created that holds no result yet (no `models/*.json` or `cells/*.json` at any
/// depth), so a model that fails to load, or a bad value found late, leaves nothing
/// behind. Directories with results stay: a rerun resumes from them.
pub fn undo_new_dirs() {
    fn has_results(dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else { return false };
        entries.filter_map(|e| e.ok()).any(|e| {
            let p = e.path();
            if p.is_dir() {
                has_results(&p)
            } else {
                let parent = dir.file_name().and_then(|n| n.to_str());
                matches!(parent, Some("models" | "cells")) && p.extension().is_some_and(|x| x == "json")
            }
        })
    }
    for dir in NEW_DIRS.with(|d| std::mem::take(&mut *d.borrow_mut())).into_iter().rev() {
        if dir.is_dir() && !has_results(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// The manifest fields every results directory records.
pub(crate) fn manifest_base(spec: &RunSpec, opts: &RunOptions, spec_hash: &str, p: &Prepared) -> serde_json::Value {
    serde_json::json!({
        "spec_sha256": spec_hash,
        "seed": spec.seed,
        "model": { "source": spec.model.source, "path": p.model_path.display().to_string(), "sha256": p.model_sha },
        "data": { "source": p.pools.source, "task": p.pools.task, "files_sha256": p.data_hashes, "task_holdout_ids": p.pools.holdout_ids },
        "safetune_version": env!("CARGO_PKG_VERSION"),
        "crate_versions": crate::resources::crate_versions(),
        // The commit this binary was built from (build.rs), wherever it runs.
        "git_revision": env!("SAFETUNE_GIT_REVISION"),
        "code_sha256": { "train": opts.code.train, "eval": opts.code.eval },
        "machine": { "os": std::env::consts::OS, "arch": std::env::consts::ARCH,
                     "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) },
    })
}
