//! align → fine-tune → evaluate, for every method × regime of a spec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use safetune_core::anyhow::{anyhow, Context};
use safetune_core::registry::{self, Trainable};
use safetune_core::training::{stream, PlainSft};
use safetune_core::{CausalLm, Result};
use safetune_data::{alignment_set, builtin_pools, harmful_variant, AlignmentSpec, DataDir, DataSource, HubClient, Pools, Regime};
use safetune_model::{load_model, Llama};
use safetune_train::{train, StageData, TrainReport};
use serde::{Deserialize, Serialize};

use crate::evaluate::{evaluate, EvalInputs, GenRecord, ModelEval};
use crate::fetch::{cache_dir, resolve_model};
use crate::hashing::{sha256_file, sha256_json, write_atomic};
use crate::report::{markdown_table, Row};
use crate::spec::{DataSourceKind, RunSpec, TemplateChoice};

pub struct RunOptions {
    pub data_dir: Option<PathBuf>,
    pub out: PathBuf,
    pub quiet: bool,
}

/// The result of one method × regime cell. Contains no wall times, so the
/// same spec and seed give byte-identical files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    pub cell: String,
    pub method: String,
    pub regime: String,
    pub poison_ratio: f64,
    pub n: usize,
    pub seed: u64,
    pub aligned_key: String,
    pub task_ids: Vec<String>,
    pub harmful_ids: Vec<String>,
    pub train_losses: Vec<f64>,
    pub train_steps: usize,
    pub eval: ModelEval,
}

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

fn say(quiet: bool, msg: impl AsRef<str>) {
    if !quiet {
        eprintln!("{}", msg.as_ref());
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
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
fn open_model(path: &Path, template: TemplateChoice) -> Result<Llama> {
    let mut m = load_model(path, &safetune_model::default_device())?;
    if template == TemplateChoice::Alpaca {
        m.set_format(safetune_core::PromptFormat::Alpaca);
    }
    Ok(m)
}

fn aligned_model(model_path: &Path, adapter_dir: &Path, template: TemplateChoice) -> Result<Llama> {
    let mut m = open_model(model_path, template)?;
    safetune_lora::load_peft(&mut m, adapter_dir, &safetune_model::default_device())?;
    safetune_lora::merge_adapters(&mut m)?;
    Ok(m)
}

/// Runs a spec end to end; returns the summary table.
pub fn run(spec: &RunSpec, opts: &RunOptions) -> Result<String> {
    let start = Instant::now();
    let quiet = opts.quiet;
    let (pools, data_hashes) = load_pools(spec, opts)?;
    let model_path = resolve_model(&spec.model.source, quiet)?;
    let model_sha = if model_path.is_file() { sha256_file(&model_path)? } else { sha256_json(&model_path.display().to_string())? };
    let judge = (registry::judge(&spec.eval.judge)?.build)(&serde_json::Value::Null)?;
    let run_dir = opts.out.join(&spec.name);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("{}: cannot create", run_dir.display()))?;
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

    let mut manifest = serde_json::json!({
        "spec_sha256": spec_hash,
        "seed": spec.seed,
        "model": { "source": spec.model.source, "path": model_path.display().to_string(), "sha256": model_sha },
        "data": { "source": pools.source, "task": pools.task, "files_sha256": data_hashes },
        "safetune_version": env!("CARGO_PKG_VERSION"),
        "git_revision": git_revision(),
        "machine": { "os": std::env::consts::OS, "arch": std::env::consts::ARCH,
                     "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) },
    });

    let eval_inputs = EvalInputs {
        safety: pools.safety_evals.iter().map(|(n, v)| (n.clone(), v.as_slice())).collect(),
        task_name: pools.task.clone(),
        task: &pools.task_test,
        utility: pools.utility.clone(),
    };
    let mut timings = serde_json::Map::new();

    // Stage 1: alignment (cached by content).
    let align_set = alignment_set(
        &pools.align_prompts,
        &pools.benign,
        &AlignmentSpec { refusals: spec.alignment.refusals, benign: spec.alignment.benign, seed: spec.seed },
    )?;
    let mut align_train = spec.alignment.train.clone();
    align_train.seed = spec.seed;
    let mut key_parts = serde_json::json!({
        "model": model_sha, "lora": spec.alignment.lora, "train": align_train,
        "data": sha256_json(&align_set)?,
    });
    // The prompt format shapes the training text; the model's own format is implied by its hash.
    if spec.data.template != TemplateChoice::Model {
        key_parts["template"] = serde_json::to_value(spec.data.template)?;
    }
    let aligned_key = sha256_json(&key_parts)?;
    let align_dir = cache_dir().join("aligned").join(&aligned_key[..16]);
    manifest["alignment"] = serde_json::json!({ "key": aligned_key, "adapter": align_dir.display().to_string(),
        "examples": align_set.len(), "ids": align_set.iter().map(|e| e.id.clone()).collect::<Vec<_>>() });

    // The base model is evaluated first (once per run directory).
    let base_file = run_dir.join("models/base.json");
    let mut base = open_model(&model_path, spec.data.template)?;
    let base_eval: ModelEval = if let Ok(s) = std::fs::read_to_string(&base_file) {
        say(quiet, "[eval base] reusing earlier result");
        serde_json::from_str(&s)?
    } else {
        let t = Instant::now();
        let (e, recs) = evaluate(&base, &eval_inputs, &spec.eval, judge.as_ref(), spec.seed, "base", quiet)?;
        write_generations(&run_dir.join("generations/base"), &recs)?;
        write_json(&base_file, &e)?;
        timings.insert("eval_base_s".into(), t.elapsed().as_secs_f64().into());
        e
    };

    if align_dir.join("adapter_model.safetensors").exists() {
        say(quiet, format!("[align] reusing cached alignment {}", &aligned_key[..16]));
    } else {
        say(
            quiet,
            format!(
                "[align] {} examples ({} refusals), LoRA r{} on {:?}",
                align_set.len(),
                align_set.iter().filter(|e| e.kind == safetune_core::ExampleKind::Refusal).count(),
                spec.alignment.lora.r,
                spec.alignment.lora.targets
            ),
        );
        let t = Instant::now();
        safetune_lora::attach_lora(&mut base, &spec.alignment.lora, spec.seed)?;
        let mut data = StageData::default();
        data.streams.insert(stream::TASK.into(), align_set.clone());
        let report = train(&mut base, &data, &mut PlainSft, &align_train, None, "align", quiet)?;
        let tmp = align_dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        safetune_lora::save_peft(&base, &spec.alignment.lora, &tmp)?;
        write_json(&tmp.join("train_report.json"), &report)?;
        if let Some(parent) = align_dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&tmp, &align_dir).with_context(|| format!("{}: cannot write", align_dir.display()))?;
        timings.insert("align_s".into(), t.elapsed().as_secs_f64().into());
    }
    drop(base);

    let aligned_file = run_dir.join("models/aligned.json");
    let aligned_eval: ModelEval = if let Ok(s) = std::fs::read_to_string(&aligned_file) {
        say(quiet, "[eval aligned] reusing earlier result");
        serde_json::from_str(&s)?
    } else {
        let t = Instant::now();
        let m = aligned_model(&model_path, &align_dir, spec.data.template)?;
        let (e, recs) = evaluate(&m, &eval_inputs, &spec.eval, judge.as_ref(), spec.seed, "aligned", quiet)?;
        write_generations(&run_dir.join("generations/aligned"), &recs)?;
        write_json(&aligned_file, &e)?;
        timings.insert("eval_aligned_s".into(), t.elapsed().as_secs_f64().into());
        e
    };

    // Stage 2 and 3 per cell: fine-tune on the harmful variant, evaluate.
    let mut rows = vec![Row::model("base", &base_eval), Row::model("aligned", &aligned_eval)];
    for method in &spec.finetune.methods {
        for regime in &spec.finetune.regimes {
            let cell = format!("{method}__{regime}");
            let cell_file = run_dir.join("cells").join(format!("{cell}.json"));
            if let Ok(s) = std::fs::read_to_string(&cell_file) {
                say(quiet, format!("[{cell}] already done"));
                let r: CellResult = serde_json::from_str(&s).map_err(|e| anyhow!("{}: {e}", cell_file.display()))?;
                rows.push(Row::cell(&r));
                continue;
            }
            let t = Instant::now();
            let p = Regime::parse(regime)?.ratio();
            let variant = harmful_variant(&pools.task_train, &pools.harmful_pairs, spec.finetune.n, p, spec.seed)
                .map_err(|e| anyhow!("finetune ({cell}): {e}"))?;
            let entry = registry::method(method)?;
            let mut plan = (entry.build)(spec.finetune.method_options.get(method).unwrap_or(&serde_json::Value::Null))?;
            let mut model = aligned_model(&model_path, &align_dir, spec.data.template)?;
            let mut cfg = spec.method_train(method).clone();
            cfg.seed = spec.seed;
            match &plan.trainable {
                Trainable::Lora(l) => {
                    safetune_lora::attach_lora(&mut model, l, spec.seed.wrapping_add(1))?;
                }
                Trainable::Full => {
                    model.unfreeze_all()?;
                }
            }
            say(quiet, format!("[{cell}] fine-tuning on n={} (harmful {})", variant.examples.len(), variant.harmful_ids.len()));
            let mut data = StageData::default();
            data.streams.insert(stream::TASK.into(), variant.examples.clone());
            let report: TrainReport = train(&mut model, &data, plan.step.as_mut(), &cfg, None, &cell, quiet)?;
            if let Trainable::Lora(l) = &plan.trainable {
                safetune_lora::save_peft(&model, l, &run_dir.join("adapters").join(&cell))?;
                safetune_lora::merge_adapters(&mut model)?;
            } else {
                model.freeze_all();
            }
            let (eval, recs) = evaluate(&model, &eval_inputs, &spec.eval, judge.as_ref(), spec.seed, &cell, quiet)?;
            write_generations(&run_dir.join("generations").join(&cell), &recs)?;
            let result = CellResult {
                cell: cell.clone(),
                method: method.clone(),
                regime: regime.clone(),
                poison_ratio: p,
                n: spec.finetune.n,
                seed: spec.seed,
                aligned_key: aligned_key.clone(),
                task_ids: variant.task_ids,
                harmful_ids: variant.harmful_ids,
                train_losses: report.losses.clone(),
                train_steps: report.steps,
                eval,
            };
            write_json(&cell_file, &result)?;
            write_json(
                &run_dir.join("timings").join(format!("{cell}.json")),
                &serde_json::json!({
                "train_s": report.seconds, "total_s": t.elapsed().as_secs_f64(), "tokens": report.tokens }),
            )?;
            rows.push(Row::cell(&result));
        }
    }
    timings.insert("run_s".into(), start.elapsed().as_secs_f64().into());
    manifest["timings"] = serde_json::Value::Object(timings);
    write_json(&run_dir.join("manifest.json"), &manifest)?;
    let table = markdown_table(&rows);
    write_atomic(&run_dir.join("summary.md"), format!("# {}\n\n{table}", spec.name).as_bytes())?;
    Ok(table)
}
