//! `safetune eval`: scores a checkpoint trained elsewhere (a GGUF file, a
//! Hugging Face directory, optionally with a PEFT LoRA adapter) on the safety
//! and utility suites, with the same tables, cache and manifest as a run.

use std::path::PathBuf;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

use crate::hashing::sha256_file;
use crate::hashing::write_json;
use crate::options::RunOptions;
use crate::prepare::{manifest_base, model_with_adapters, open_run_dir, prepare};
use crate::run::Run;
use crate::spec::{AlignmentStage, EvalSpec, FinetuneStage, ModelSpec, RunSpec};

pub const USAGE: &str = "  safetune eval --model PATH_OR_NAME [--adapter PEFT_DIR]... [--task TASK] [--task-split test|validation] [--suite SET,SET] [--over-refusal xstest-safe|xstest-dev] [--data-dir DIR]
                [--name NAME] [--label LABEL] [--out DIR] [--seed N] [--judge NAME] [--safety-limit N]
                [--task-limit N] [--safety-tokens N] [--task-tokens N] [--batch-size N] [--samples K] [--variants]
                [--consistency-sets SET,SET] [--consistency-limit N]
                [--mmlu N (questions; 0: all)] [--mmlu-shots 0,5] [--quiet] [--json]
      score a model (with PEFT adapters merged into it in order) without training; results in OUT/NAME/";

fn number(flag: &str, v: Option<&String>) -> Result<usize> {
    let v = v.ok_or_else(|| anyhow!("{flag} needs a number"))?;
    v.parse().map_err(|_| anyhow!("{flag}: `{v}` is not a non-negative integer"))
}

/// Parses `safetune eval` flags and runs it; returns what to print.
pub fn main(args: &[String]) -> Result<String> {
    let mut model = None;
    let mut adapters: Vec<PathBuf> = Vec::new();
    let mut data_dir = crate::options::env_data_dir();
    let mut out = PathBuf::from("results");
    let (mut name, mut label, mut quiet, mut json) = (None, None, false, false);
    let mut spec_data = crate::spec::DataSpec::default();
    let mut eval = EvalSpec::default();
    let mut seed = 42u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(val()?.clone()),
            "--adapter" => adapters.push(PathBuf::from(val()?)),
            "--task" => spec_data.task = val()?.clone(),
            "--task-split" => spec_data.task_split = val()?.clone(),
            "--over-refusal" => {
                spec_data.over_refusal = val()?.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
            }
            "--suite" => spec_data.safety_evals = val()?.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            "--data-dir" => data_dir = Some(PathBuf::from(val()?)),
            "--name" => name = Some(val()?.clone()),
            "--label" => label = Some(val()?.clone()),
            "--out" => out = PathBuf::from(val()?),
            "--seed" => seed = number(a, it.next())? as u64,
            "--judge" => eval.judge = val()?.clone(),
            "--safety-limit" => eval.safety_limit = number(a, it.next())?,
            "--task-limit" => eval.task_limit = number(a, it.next())?,
            "--safety-tokens" => eval.safety_max_new_tokens = number(a, it.next())?,
            "--task-tokens" => eval.task_max_new_tokens = number(a, it.next())?,
            "--batch-size" => eval.batch_size = number(a, it.next())?,
            "--samples" => eval.samples = number(a, it.next())?,
            "--variants" => eval.variants = true,
            "--consistency-limit" => eval.consistency_limit = number(a, it.next())?,
            "--consistency-sets" => {
                eval.consistency_sets = val()?.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
            }
            "--mmlu" => {
                spec_data.utility_evals = vec!["mmlu".into()];
                eval.mmlu_questions = number(a, it.next())?;
            }
            "--mmlu-shots" => {
                eval.mmlu_shots = val()?.split(',').map(|k| number("--mmlu-shots", Some(&k.trim().to_string()))).collect::<Result<_>>()?
            }
            "--quiet" => quiet = true,
            "--json" => json = true,
            f if f.starts_with('-') => bail!("eval: unknown flag `{f}`"),
            p => bail!("eval: unexpected argument `{p}` (the model goes after --model)"),
        }
    }
    let model = model.ok_or_else(|| anyhow!("eval: give --model (a known name, a .gguf file or a Hugging Face directory)"))?;
    for a in &adapters {
        if !a.join("adapter_config.json").is_file() || !a.join("adapter_model.safetensors").is_file() {
            bail!("--adapter {}: not a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)", a.display());
        }
    }
    let label = label.unwrap_or_else(|| match adapters.last() {
        Some(a) => a.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "adapter".into()),
        None => "model".into(),
    });
    if label.is_empty() || label.contains(['/', '\\']) || label.starts_with('.') {
        bail!("--label: must be a plain file name");
    }
    let spec = RunSpec {
        extends: None,
        name: name.unwrap_or_else(|| format!("eval-{label}")),
        seed,
        seeds: Vec::new(),
        model: ModelSpec { source: model },
        data: spec_data,
        alignment: AlignmentStage {
            refusals: None,
            safe_answers: 0,
            recovery: 0,
            benign: 0,
            benign_lookalikes: 0,
            task_examples: 0,
            full: false,
            train: Default::default(),
            lora: Default::default(),
        },
        finetune: FinetuneStage {
            n: 1,
            regimes: vec!["benign".into()],
            methods: Vec::new(),
            train: Default::default(),
            method_options: Default::default(),
            method_train: Default::default(),
            defenses: vec![vec![]],
        },
        eval,
        defense_options: Default::default(),
    };
    spec.validate()?;
    let opts = RunOptions::new(data_dir, out, quiet);
    let table = evaluate_checkpoint(&spec, &opts, &adapters, &label)?;
    let dir = opts.out.join(&spec.name);
    let output = if json { serde_json::to_string_pretty(&crate::report::rows_from_dir(&dir)?)? } else { table };
    crate::output::checked(output, &dir)
}

/// Evaluates `spec.model`, with each adapter merged in turn, under `label`.
pub fn evaluate_checkpoint(spec: &RunSpec, opts: &RunOptions, adapters: &[PathBuf], label: &str) -> Result<String> {
    let prepared = prepare(spec, opts)?;
    let mut adapter_sha = Vec::new();
    for a in adapters {
        safetune_lora::check_peft(a)?;
        adapter_sha.push(sha256_file(&a.join("adapter_model.safetensors"))? + &sha256_file(&a.join("adapter_config.json"))?);
    }
    let (run_dir, _lock, spec_hash) = open_run_dir(spec, &opts.out, true)?;
    let mut manifest = manifest_base(spec, opts, &spec_hash, &prepared);
    manifest["adapters"] =
        serde_json::json!({ "paths": adapters.iter().map(|a| a.display().to_string()).collect::<Vec<_>>(), "sha256": adapter_sha });
    let (model_path, model_sha) = (prepared.model_path.clone(), prepared.model_sha.clone());
    let mut r = Run::new(spec, opts, prepared, run_dir.clone(), Vec::new());
    let identity = if adapter_sha.is_empty() {
        serde_json::json!({ "base": model_sha })
    } else {
        serde_json::json!({ "base": model_sha, "peft": adapter_sha })
    };
    let template = spec.data.template;
    r.evaluate_once(label, identity, || model_with_adapters(&model_path, template, adapters))?;
    manifest["timings"] = serde_json::Value::Object(std::mem::take(&mut r.timings));
    write_json(&run_dir.join("manifest.json"), &manifest)?;
    crate::report::write_report(&run_dir, &spec.name)
}
