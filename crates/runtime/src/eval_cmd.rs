//! `safetune eval`: scores a checkpoint trained elsewhere (a GGUF file, a
//! Hugging Face directory, optionally with a PEFT LoRA adapter) on the safety
//! and utility suites, with the same tables, cache and manifest as a run.

use std::path::PathBuf;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

use crate::hashing::write_json;
use crate::options::RunOptions;
use crate::prepare::{manifest_base, model_with, open_run_dir, prepare, AddedWeights};
use crate::run::Run;
use crate::spec::{AlignmentStage, EvalSpec, FinetuneStage, ModelSpec, RunSpec};

/// `safetune eval`'s flags.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A known model name, a .gguf file or a Hugging Face directory
    #[arg(long, value_name = "PATH_OR_NAME", required_unless_present = "run")]
    model: Option<String>,
    #[command(flatten)]
    parts: AddedWeights,
    /// A finished run's directory (one with spec.json and cells/; for a grid, one of its
    /// runs/<name>): evaluate one of its models again as the run did, with --cell
    #[arg(long, value_name = "RUN_DIR", requires = "cell", conflicts_with_all = FROM_RUN_CONFLICTS)]
    run: Option<PathBuf>,
    /// The model of --run to evaluate: `base`, an aligned model (`aligned`, `aligned+DEFENSE`) or
    /// a cell (`METHOD[+DEFENSE…]__REGIME`) — its model, adapters, weights file, data, evaluation
    /// settings, seed and the way its defense asks at inference all come from the run
    #[arg(long, value_name = "LABEL", requires = "run")]
    cell: Option<String>,
    /// The task scored for utility
    #[arg(long)]
    task: Option<String>,
    /// The task's split: test or validation
    #[arg(long, value_name = "SPLIT")]
    task_split: Option<String>,
    /// Safety sets, comma-separated
    #[arg(long, value_name = "SET,SET")]
    suite: Option<String>,
    /// Over-refusal sets, comma-separated (xstest-safe, xstest-dev)
    #[arg(long, value_name = "SET,SET")]
    over_refusal: Option<String>,
    /// The data directory [default: $SAFETUNE_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The results directory's name [default: eval-LABEL]
    #[arg(long)]
    name: Option<String>,
    /// The model's row label [default: the last weights file's name, else the last adapter's directory name, else `model`]
    #[arg(long)]
    label: Option<String>,
    /// Where results go (OUT/NAME/)
    #[arg(long, value_name = "DIR", default_value = "results")]
    out: PathBuf,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The safety judge (see `safetune list judges`)
    #[arg(long)]
    judge: Option<String>,
    #[arg(long, value_name = "N")]
    safety_limit: Option<usize>,
    #[arg(long, value_name = "N")]
    task_limit: Option<usize>,
    /// New tokens per safety answer
    #[arg(long, value_name = "N")]
    safety_tokens: Option<usize>,
    /// New tokens per task answer
    #[arg(long, value_name = "N")]
    task_tokens: Option<usize>,
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Sampled answers per prompt for ASR@K
    #[arg(long, value_name = "K")]
    samples: Option<usize>,
    /// Also ask each prompt in its surface variants
    #[arg(long)]
    variants: bool,
    /// Sets whose refusal consistency is measured, comma-separated
    #[arg(long, value_name = "SET,SET")]
    consistency_sets: Option<String>,
    #[arg(long, value_name = "N")]
    consistency_limit: Option<usize>,
    /// Also score MMLU on N questions (0: all)
    #[arg(long, value_name = "N")]
    mmlu: Option<usize>,
    /// MMLU shot counts, comma-separated
    #[arg(long, value_name = "0,5", value_delimiter = ',')]
    mmlu_shots: Option<Vec<usize>>,
    /// Also answer MT-Bench's N questions (0: all 80) and have a chat model grade them
    #[arg(long, value_name = "N", requires = "grader_url")]
    mt_bench: Option<usize>,
    /// The grader's OpenAI-compatible endpoint, up to /v1 (e.g. `safetune serve`'s or https://api.openai.com/v1)
    #[arg(long, value_name = "URL")]
    grader_url: Option<String>,
    /// The grader's model name at that endpoint (FastChat grades with gpt-4)
    #[arg(long, value_name = "NAME", default_value = "gpt-4")]
    grader_model: String,
    /// New tokens per MT-Bench answer (FastChat: 1024)
    #[arg(long, value_name = "N")]
    mt_bench_tokens: Option<usize>,
    /// Tokens of each grader reply (FastChat: 2048)
    #[arg(long, value_name = "N")]
    grader_max_tokens: Option<usize>,
    /// Ask every prompt under this system prompt (an empty one: none) instead of the model's default
    #[arg(long, value_name = "TEXT", conflicts_with = "defense")]
    system: Option<String>,
    /// Ask every prompt as this defense does at inference (BEA: its trigger before the system prompt)
    #[arg(long, value_name = "NAME")]
    defense: Option<String>,
    /// The defense's options as a spec's `[defense_options.NAME]` table says them, e.g. 'trigger_tokens = 36' [default: its defaults]
    #[arg(long, value_name = "TOML", requires = "defense")]
    defense_options: Option<String>,
    /// No progress lines
    #[arg(long)]
    quiet: bool,
    /// Print the rows as JSON
    #[arg(long)]
    json: bool,
}

/// The flags `--run` sets from the run itself (the evaluation's size, where it goes and how it
/// is printed stay the user's).
const FROM_RUN_CONFLICTS: [&str; 19] = [
    "model",
    "adapter",
    "weights",
    "task",
    "task_split",
    "suite",
    "over_refusal",
    "seed",
    "judge",
    "safety_tokens",
    "task_tokens",
    "samples",
    "variants",
    "consistency_sets",
    "mmlu",
    "mmlu_shots",
    "mt_bench",
    "system",
    "defense",
];

/// One of a finished run's models as the run evaluated it (`--run`, `--cell`): the run's spec,
/// the model (the base, or a full-parameter alignment's aligned model from the stage cache),
/// the adapters and weights file on top, and how its prompts were asked.
struct FromRun {
    spec: RunSpec,
    model: String,
    parts: AddedWeights,
    asked: Asked,
}

fn from_run(dir: &std::path::Path, label: &str) -> Result<FromRun> {
    let at = |what: &str| anyhow!("--run {}: {what}", dir.display());
    if dir.join("runs").is_dir() {
        return Err(at("a grid of runs; pass one of them (runs/<name>)"));
    }
    let spec_file = dir.join("spec.json");
    if !spec_file.is_file() {
        return Err(at("no spec.json (not a results directory)"));
    }
    let spec = RunSpec::load(&spec_file).map_err(|e| anyhow!("--run: {e}"))?;
    let plan = crate::plan::RunPlan::of(&spec).map_err(|e| anyhow!("--run: {e}"))?;
    let aligned_dir = |defense: Option<&str>| -> Result<(Option<String>, Vec<PathBuf>)> {
        let name = safetune_eval::results::aligned_label(defense);
        if !spec.alignment.full {
            return Ok((None, vec![dir.join("adapters").join(&name)]));
        }
        // A full-parameter alignment's model is not in the results: the stage cache has it
        // under the key the manifest records.
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).map_err(|e| at(&format!("manifest.json: {e}")))?)
                .map_err(|e| at(&format!("manifest.json: {e}")))?;
        let key = manifest["alignment"]["keys"][&name]
            .as_str()
            .filter(|k| k.len() >= 16 && k.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| at(&format!("manifest.json records no key for `{name}`")))?;
        let aligned = crate::run::Aligned::in_cache(key.to_string(), true);
        if !aligned.is_cached() {
            return Err(at(&format!(
                "`{name}` was aligned in full and its model is not in the stage cache ({})",
                aligned.model_dir().display()
            )));
        }
        Ok((Some(aligned.model_dir().display().to_string()), Vec::new()))
    };
    let (model, adapter, weights, asked) = if label == "base" {
        (None, Vec::new(), Vec::new(), Asked::Default)
    } else if let Some(d) = plan.alignments.iter().find(|d| safetune_eval::results::aligned_label(d.as_deref()) == label) {
        let (model, adapter) = aligned_dir(d.as_deref())?;
        (model, adapter, Vec::new(), Asked::Default)
    } else if let Some(c) = plan.cells.iter().find(|c| c.label == label) {
        let (model, mut adapter) = aligned_dir(c.align.as_deref())?;
        let own = dir.join("adapters").join(label);
        let file = dir.join("weights").join(format!("{label}.safetensors"));
        if !own.is_dir() && !file.is_file() {
            return Err(at(&format!("cell `{label}` has neither an adapter nor a weights file (not finished?)")));
        }
        if own.is_dir() {
            adapter.push(own);
        }
        let weights = if file.is_file() { vec![file] } else { Vec::new() };
        // The member of its stack that acts at inference, with the run's options for it.
        let mut asked = Asked::Default;
        for name in &c.defenses {
            if crate::stack::build_defense(&spec.defense_options, name)?.system_prompt.is_some() {
                asked = Asked::Defense(name.clone(), spec.defense_options.get(name).cloned());
            }
        }
        (model, adapter, weights, asked)
    } else {
        let mut known = vec!["base".to_string()];
        known.extend(plan.alignments.iter().map(|d| safetune_eval::results::aligned_label(d.as_deref())));
        known.extend(plan.cells.iter().map(|c| c.label.clone()));
        return Err(anyhow!("--cell {label}: not a model of {} (one of: {})", dir.display(), known.join(", ")));
    };
    Ok(FromRun { model: model.unwrap_or_else(|| spec.model.source.clone()), parts: AddedWeights { adapter, weights }, asked, spec })
}

/// A comma-separated list with blanks trimmed and empty items dropped.
fn list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// Runs `safetune eval`; returns what to print.
pub fn main(a: EvalArgs) -> Result<String> {
    let data_dir = a.data_dir.clone().or_else(crate::options::env_data_dir);
    let from = match (&a.run, &a.cell) {
        (Some(dir), Some(cell)) => Some(from_run(dir, cell)?),
        _ => None,
    };
    let (out, name, quiet, json, seed) = (a.out, a.name, a.quiet, a.json, a.seed);
    // From a run, the label defaults to the model's (`--cell`).
    let (label, parts) = match &from {
        Some(f) => (a.label.or(a.cell), f.parts.clone()),
        None => (a.label, a.parts),
    };
    let flagged = match (a.system, a.defense) {
        (Some(text), _) => Asked::System(text),
        (None, Some(name)) => {
            let options = match &a.defense_options {
                Some(text) => {
                    let table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("--defense-options: {}", e.message().trim()))?;
                    Some(serde_json::to_value(table)?)
                }
                None => None,
            };
            Asked::Defense(name, options)
        }
        (None, None) => Asked::Default,
    };
    // From a run: its data, evaluation settings, seed, model and way of asking; the flags left
    // to the user (sizes, where results go) apply on top.
    let (mut spec_data, mut eval, seed, model, asked) = match from {
        Some(f) => (f.spec.data, f.spec.eval, f.spec.seed, f.model, f.asked),
        None => (crate::spec::DataSpec::default(), EvalSpec::default(), seed, a.model.unwrap_or_default(), flagged),
    };
    if let Some(t) = a.task {
        spec_data.task = t;
    }
    if let Some(t) = a.task_split {
        spec_data.task_split = t;
    }
    if let Some(v) = a.over_refusal {
        spec_data.over_refusal = list(&v);
    }
    if let Some(v) = a.suite {
        spec_data.safety_evals = list(&v);
    }
    if let Some(j) = a.judge {
        eval.judge = j;
    }
    let set = |slot: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut eval.safety_limit, a.safety_limit);
    set(&mut eval.task_limit, a.task_limit);
    set(&mut eval.safety_max_new_tokens, a.safety_tokens);
    set(&mut eval.task_max_new_tokens, a.task_tokens);
    set(&mut eval.batch_size, a.batch_size);
    set(&mut eval.samples, a.samples);
    set(&mut eval.consistency_limit, a.consistency_limit);
    eval.variants |= a.variants;
    if let Some(v) = a.consistency_sets {
        eval.consistency_sets = list(&v);
    }
    if let Some(n) = a.mmlu {
        spec_data.utility_evals = vec!["mmlu".into()];
        eval.mmlu_questions = n;
    }
    if let Some(shots) = a.mmlu_shots {
        eval.mmlu_shots = shots;
    }
    if let Some(n) = a.mt_bench {
        spec_data.utility_evals.push("mt-bench".into());
        let mut m = safetune_eval::mt_bench::MtBenchSpec { questions: n, ..Default::default() };
        m.grader_options = serde_json::json!({ "base_url": a.grader_url.clone().unwrap_or_default(), "model": a.grader_model });
        set(&mut m.max_new_tokens, a.mt_bench_tokens);
        set(&mut m.grader_max_tokens, a.grader_max_tokens);
        eval.mt_bench = Some(m);
    }
    parts.check_present()?;
    let label = label.unwrap_or_else(|| match (parts.weights.last(), parts.adapter.last()) {
        (Some(w), _) => w.file_stem().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "weights".into()),
        (None, Some(a)) => a.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "adapter".into()),
        (None, None) => "model".into(),
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
            objective: None,
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
            regime_train: Default::default(),
            defenses: vec![vec![]],
        },
        eval,
        defense_options: Default::default(),
    };
    spec.validate()?;
    let opts = RunOptions::new(data_dir, out, quiet);
    let table = evaluate_checkpoint(&spec, &opts, &parts, &label, &asked)?;
    let dir = opts.out.join(&spec.name);
    let output = if json { serde_json::to_string_pretty(&crate::report::rows_from_dir(&dir)?)? } else { table };
    crate::output::checked(output, &dir)
}

/// The system prompt the evaluated prompts are asked under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// Each prompt's own (the format's default).
    Default,
    /// This one for every prompt (`--system`).
    System(String),
    /// The named defense's at inference, with these options (`--defense`, `--defense-options`;
    /// none: its defaults).
    Defense(String, Option<serde_json::Value>),
}

/// Evaluates `spec.model` with its `parts` (each adapter merged in turn, then the weights
/// replaced) under `label`, its prompts asked as `asked` says.
pub fn evaluate_checkpoint(spec: &RunSpec, opts: &RunOptions, parts: &AddedWeights, label: &str, asked: &Asked) -> Result<String> {
    // A defense without an inference-time part would evaluate as no defense at all.
    let inference = match asked {
        Asked::Defense(name, options) => {
            let plan = match options {
                None => crate::stack::build_defense(&Default::default(), name)?,
                Some(o) => {
                    crate::stack::build_defense(&[(name.clone(), o.clone())].into(), name).map_err(|e| anyhow!("--defense-options: {e}"))?
                }
            };
            match plan.system_prompt {
                Some(f) => Some(f),
                None => bail!("--defense {name}: acts in training or repair only, not at inference (eval trains and repairs nothing)"),
            }
        }
        _ => None,
    };
    let prepared = prepare(spec, opts)?;
    parts.check(&prepared.config)?;
    let hashes = parts.hashes()?;
    let (run_dir, _lock, spec_hash) = open_run_dir(spec, &opts.out, true)?;
    let mut manifest = manifest_base(spec, opts, &spec_hash, &prepared);
    let paths = |ps: &[PathBuf]| ps.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
    manifest["adapters"] = serde_json::json!({ "paths": paths(&parts.adapter), "sha256": hashes["peft"] });
    if !parts.weights.is_empty() {
        manifest["weights"] = serde_json::json!({ "paths": paths(&parts.weights), "sha256": hashes["weights"] });
    }
    let (model_path, model_sha) = (prepared.model_path.clone(), prepared.model_sha.clone());
    let mut r = Run::new(spec, opts, prepared, run_dir.clone(), Vec::new());
    // The evaluated weights' identity: the base, then (when given) the adapters and weights files.
    let mut identity = serde_json::json!({ "base": model_sha });
    if !parts.adapter.is_empty() {
        identity["peft"] = hashes["peft"].clone();
    }
    if !parts.weights.is_empty() {
        identity["weights"] = hashes["weights"].clone();
    }
    let template = spec.data.template;
    // The default system prompt a defense builds on is the model's format's: the model is
    // opened first then (the closure below hands it over).
    let mut opened = None;
    let system = match (asked, inference) {
        (Asked::System(text), _) => Some(text.clone()),
        (Asked::Defense(..), Some(f)) => {
            let m = model_with(&model_path, template, parts)?;
            let s = f(m.info().format.default_system());
            opened = Some(m);
            s
        }
        _ => None,
    };
    r.ask_under_system(system.as_deref());
    manifest["asked"] = match asked {
        Asked::Default => serde_json::json!("default system prompt"),
        Asked::System(_) => serde_json::json!({ "system": system }),
        Asked::Defense(name, options) => serde_json::json!({ "defense": name, "options": options, "system": system }),
    };
    r.evaluate_once(label, identity, || match opened {
        Some(m) => Ok(m),
        None => model_with(&model_path, template, parts),
    })?;
    manifest["timings"] = serde_json::Value::Object(std::mem::take(&mut r.timings));
    write_json(&run_dir.join("manifest.json"), &manifest)?;
    crate::report::write_report(&run_dir, &spec.name)
}
