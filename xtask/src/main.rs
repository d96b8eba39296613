//! Project automation: `cargo xtask bench-all [--preset NAME]` and the checks (clap, derive).

mod build_reuse;
mod interop;
mod perf;
mod scaffold;
mod slurm;

use std::path::PathBuf;
use std::process::{exit, Command};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "safetune's project automation: reproducible end-to-end runs and checks")]
struct Xtask {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Fetch SmolLM2-135M-Instruct if missing, then run presets/NAME.toml (default: smoke) with any
    /// overlays merged in. Data: --data-dir, else $SAFETUNE_DATA_DIR, else ../shared/data beside the
    /// repository; with none, the built-in offline suite.
    BenchAll {
        /// A preset name (see `cargo xtask presets`) or a spec file
        #[arg(long, value_name = "NAME|FILE.toml", default_value = "smoke")]
        preset: String,
        /// A TOML file merged into the preset (repeatable; e.g. a user dataset)
        #[arg(long, value_name = "FILE.toml")]
        overlay: Vec<PathBuf>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Where results go [default: results/ in the repository]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[arg(long)]
        quiet: bool,
        /// Train aligned models and cells in N processes at once (`safetune run --jobs`)
        /// [default: 2 on a machine with 2 or more cores, else 1: on 2 cores two one-thread
        /// workers train ~1.5x as fast as one process, with the same results]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        jobs: Option<u16>,
    },
    /// Run the candidate protocols of a sweep on validation data and write results/<sweep>/sweep.md
    Calibrate {
        /// The sweep file [default: presets/calibrate/sweep.toml]
        #[arg(long, value_name = "FILE.toml")]
        sweep: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Run only this candidate (repeatable)
        #[arg(long, value_name = "CANDIDATE")]
        only: Vec<String>,
        #[arg(long)]
        quiet: bool,
    },
    /// List the presets
    Presets,
    /// Time training steps, batched decoding and prefill on SmolLM2-135M (fused kernels against plain
    /// compositions; with --compare-torch also PyTorch + PEFT from a venv in target/perf-venv)
    Perf(perf::PerfArgs),
    /// Check safetune through the tools users bring: the official openai client against
    /// `safetune serve` (whole and streamed), transformers loading `safetune model export`'s
    /// directory and peft loading adapters, all giving the server's greedy answers (a venv in
    /// target/perf-venv with openai, torch, transformers, peft from PyPI)
    Interop(interop::InteropArgs),
    /// Scaffold crates/defenses/NAME from crates/defense-template and link it into `safetune`
    NewDefense {
        name: String,
        #[arg(long, value_parser = ["alignment", "finetune", "repair"])]
        stage: String,
    },
    /// Rewrite the generated list of defense crates the binary links (after removing one)
    SyncDefenses,
    /// Fail when a defense crate depends on anything but safetune-core and general-purpose
    /// libraries, or is not linked into the binary
    CheckDefenses,
    /// Fail when `cargo test --workspace` would compile a dependency of the `safetune` binary
    /// again (another feature set than `bench-all`'s build), naming each such package
    CheckBuildReuse,
    /// Start a real one-node Slurm cluster (apt's slurm-wlm + munge; needs root) and run
    /// `safetune run --slurm`'s test against it (crates/runtime/tests/slurm.rs)
    SlurmTest,
}

/// The workspace root: from `cargo run`'s environment (the checkout being run), else where xtask was built.
fn root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().expect("xtask lives in the workspace").to_path_buf()
}

/// A path given on the command line, made absolute against the caller's directory.
fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

/// `cargo` for a nested build, test, run or tree, in the workspace root, without the
/// variables `cargo run` set for xtask itself (`CARGO_MANIFEST_*`, `CARGO_PKG_*`, ...).
/// Build scripts watch some of them (ring: `rerun-if-env-changed=CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, ...), so a build made here with them set looks stale to the
/// user's own `cargo test` from a shell: ring, rustls, ureq and every safetune crate
/// would compile a second time.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let set_by_cargo_run = k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(k, "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE");
        if set_by_cargo_run {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(root());
    cmd
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(2)
}

fn run(cmd: &mut Command) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => exit(s.code().unwrap_or(1)),
        Err(e) => fail(&format!("cannot run {cmd:?}: {e}")),
    }
}

fn presets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("presets"))
        .map(|d| d.filter_map(|e| e.ok()?.path().file_stem().map(|s| s.to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn bench_all(preset: String, overlays: Vec<PathBuf>, data_dir: Option<PathBuf>, out: Option<PathBuf>, quiet: bool, jobs: Option<u16>) {
    let overlays: Vec<PathBuf> = overlays.into_iter().map(absolute).collect();
    let data_dir = data_dir.map(absolute);
    let out = out.map(absolute).unwrap_or_else(|| root().join("results"));
    // A preset name, or the path of any spec file.
    let spec =
        if preset.ends_with(".toml") { absolute(PathBuf::from(&preset)) } else { root().join("presets").join(format!("{preset}.toml")) };
    if !spec.exists() {
        fail(&format!("unknown preset `{preset}` (known: {})", presets().join(", ")));
    }
    let data_dir = data_dir_or_shared(data_dir);
    let bin = safetune_bin();
    let mut cmd = Command::new(&bin);
    cmd.current_dir(root()).arg("run").arg(&spec).arg("--out").arg(&out);
    for o in &overlays {
        cmd.arg("--overlay").arg(o);
    }
    match &data_dir {
        Some(d) => {
            cmd.arg("--data-dir").arg(d);
        }
        None => {
            eprintln!("no data directory: running on the built-in offline suite (pass --data-dir or set SAFETUNE_DATA_DIR for real data)");
            cmd.args(["--task", "builtin"]);
        }
    }
    if quiet {
        cmd.arg("--quiet");
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let jobs = jobs.unwrap_or(if cores >= 2 { 2 } else { 1 });
    cmd.arg("--jobs").arg(jobs.to_string());
    run(&mut cmd);
}

/// Where cargo puts what it builds: `$CARGO_TARGET_DIR` (relative to the workspace root, where
/// every nested cargo runs) or `target/`.
fn target_dir() -> PathBuf {
    root().join(std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()).unwrap_or_else(|| "target".into()))
}

/// Builds `safetune`, fetches the model, and returns the binary's path.
fn safetune_bin() -> PathBuf {
    run(cargo().args(["build", "--quiet", "-p", "safetune-runtime", "--bin", "safetune"]));
    let bin = target_dir().join("debug/safetune");
    run(Command::new(&bin).args(["model", "fetch", "smollm2-135m-instruct"]).stdout(std::process::Stdio::null()));
    bin
}

/// The data directory: the flag, else $SAFETUNE_DATA_DIR, else ../shared/data beside the repository.
fn data_dir_or_shared(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("SAFETUNE_DATA_DIR").filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| Some(root().join("../shared/data")).filter(|p| p.is_dir()))
}

fn calibrate(sweep: Option<PathBuf>, data_dir: Option<PathBuf>, out: Option<PathBuf>, only: Vec<String>, quiet: bool) {
    let sweep = sweep.map(absolute).unwrap_or_else(|| root().join("presets/calibrate/sweep.toml"));
    let data_dir = data_dir.map(absolute);
    let Some(data_dir) = data_dir_or_shared(data_dir) else {
        fail("calibrate needs real data: pass --data-dir DIR or set SAFETUNE_DATA_DIR")
    };
    let bin = safetune_bin();
    let mut cmd = Command::new(&bin);
    cmd.current_dir(root()).arg("calibrate").arg(&sweep).arg("--data-dir").arg(&data_dir);
    cmd.arg("--out").arg(out.map(absolute).unwrap_or_else(|| root().join("results")));
    for o in &only {
        cmd.arg("--only").arg(o);
    }
    if quiet {
        cmd.arg("--quiet");
    }
    run(&mut cmd);
}

fn main() {
    // Invoked as `cargo xtask …`: clap sees the program name and the task.
    let xtask = match Xtask::try_parse() {
        Ok(x) => x,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                print!("{e}");
                return;
            }
            _ => {
                let text = e.to_string();
                let message = text.split("\n\nUsage:").next().unwrap_or("").split("\nFor more information").next().unwrap_or("");
                let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
                fail(&format!("{} (see `cargo xtask --help`)", message.strip_prefix("error: ").unwrap_or(&message)))
            }
        },
    };
    match xtask.command {
        Task::BenchAll { preset, overlay, data_dir, out, quiet, jobs } => bench_all(preset, overlay, data_dir, out, quiet, jobs),
        Task::Presets => println!("{}", presets().join("\n")),
        Task::Calibrate { sweep, data_dir, out, only, quiet } => calibrate(sweep, data_dir, out, only, quiet),
        Task::Perf(args) => perf::perf(args),
        Task::NewDefense { name, stage } => match scaffold::new_defense(&root(), &name, &stage) {
            Ok(dir) => {
                run(cargo().args(["fmt", "-p", &format!("safetune-defense-{name}")]));
                println!(
                    "created {} ({stage}-stage defense `{name}`, linked into `safetune`); `cargo test -p safetune-defense-{name}` runs its mechanism tests",
                    dir.display()
                );
            }
            Err(e) => fail(&e),
        },
        Task::SlurmTest => slurm::slurm_test(),
        Task::CheckBuildReuse => build_reuse::check_build_reuse(),
        Task::Interop(args) => interop::interop(args),
        Task::SyncDefenses => scaffold::sync_registration(&root()).unwrap_or_else(|e| fail(&e)),
        Task::CheckDefenses => {
            let problems = scaffold::check(&root()).unwrap_or_else(|e| fail(&e));
            if !problems.is_empty() {
                fail(&problems.join("\n"));
            }
            println!(
                "{} defense crates: dependencies and registration ok",
                scaffold::defense_crates(&root()).map(|v| v.len()).unwrap_or(0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    /// `cargo test` runs this with `CARGO_PKG_NAME` and `CARGO_MANIFEST_DIR` set, as
    /// `cargo run` runs xtask: a nested cargo must not see them.
    #[test]
    fn nested_cargo_runs_without_the_variables_cargo_run_set() {
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some() && std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let cmd = super::cargo();
        let removed: Vec<String> = cmd.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        for k in ["CARGO_PKG_NAME", "CARGO_PKG_VERSION_MAJOR", "CARGO_MANIFEST_DIR"] {
            assert!(removed.iter().any(|r| r == k), "{k} reaches the nested cargo: {removed:?}");
        }
        assert!(!removed.iter().any(|r| r == "CARGO_TARGET_DIR" || r == "CARGO_HOME"));
    }
}
