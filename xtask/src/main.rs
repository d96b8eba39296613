//! Project automation: `cargo xtask bench-all [--preset NAME]`.

mod perf;
mod scaffold;

use std::path::PathBuf;
use std::process::{exit, Command};

const USAGE: &str = "cargo xtask <command>

  bench-all [--preset NAME|FILE.toml] [--overlay FILE.toml]... [--data-dir DIR] [--out DIR] [--quiet]
      Fetches SmolLM2-135M-Instruct if missing, then runs presets/NAME.toml
      (default: smoke) with any overlays merged in (for example a user dataset). Data: --data-dir, else $SAFETUNE_DATA_DIR, else
      ../shared/data beside the repository; with none, the built-in offline suite.
  calibrate [--sweep FILE.toml] [--data-dir DIR] [--out DIR] [--only CANDIDATE]...
      Runs the candidate protocols of presets/calibrate/sweep.toml on validation data
      and writes results/<sweep>/sweep.md (figures, targets missed, the choice).
  presets   list the presets
  perf [--reps N] [--quick] [--compare-torch]
      Times training steps, batched decoding and prefill on SmolLM2-135M (fused
      kernels against plain compositions; with --compare-torch also PyTorch + PEFT
      from a venv in target/perf-venv) and prints medians, ratios and peak memory.
  new-defense NAME --stage alignment|finetune|repair
      Scaffolds crates/defenses/NAME from crates/defense-template (a crate that builds
      and tests in the workspace): the chosen stage's toy defense renamed NAME, its
      options, README and mechanism tests; links it into `safetune` (lists, grids, schema).
  sync-defenses
      Rewrites the generated list of defense crates the binary links (after removing one).
  check-defenses
      Fails when a defense crate depends on anything but safetune-core and general-purpose
      libraries, or is not linked into the binary (also a test of `cargo test --workspace`).";

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

fn bench_all(args: &[String]) {
    let mut preset = "smoke".to_string();
    let mut data_dir = None;
    let mut out = root().join("results");
    let mut quiet = false;
    let mut overlays = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().cloned().unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match a.as_str() {
            "--preset" => preset = value("--preset"),
            "--data-dir" => data_dir = Some(absolute(PathBuf::from(value("--data-dir")))),
            "--out" => out = absolute(PathBuf::from(value("--out"))),
            "--quiet" => quiet = true,
            "--overlay" => overlays.push(absolute(PathBuf::from(value("--overlay")))),
            other => fail(&format!("bench-all: unknown argument `{other}`")),
        }
    }
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
    run(&mut cmd);
}

/// Builds `safetune`, fetches the model, and returns the binary's path.
fn safetune_bin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).current_dir(root()).args(["build", "--quiet", "-p", "safetune-runtime", "--bin", "safetune"]));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let bin = target.join("debug/safetune");
    run(Command::new(&bin).args(["model", "fetch", "smollm2-135m-instruct"]).stdout(std::process::Stdio::null()));
    bin
}

/// The data directory: the flag, else $SAFETUNE_DATA_DIR, else ../shared/data beside the repository.
fn data_dir_or_shared(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("SAFETUNE_DATA_DIR").filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| Some(root().join("../shared/data")).filter(|p| p.is_dir()))
}

fn calibrate(args: &[String]) {
    let mut sweep = root().join("presets/calibrate/sweep.toml");
    let mut data_dir = None;
    let mut rest: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().cloned().unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match a.as_str() {
            "--sweep" => sweep = absolute(PathBuf::from(value("--sweep"))),
            "--data-dir" => data_dir = Some(absolute(PathBuf::from(value("--data-dir")))),
            "--out" => rest.extend(["--out".to_string(), absolute(PathBuf::from(value("--out"))).display().to_string()]),
            "--only" => rest.extend(["--only".to_string(), value("--only")]),
            "--quiet" => rest.push("--quiet".into()),
            other => fail(&format!("calibrate: unknown argument `{other}`")),
        }
    }
    let Some(data_dir) = data_dir_or_shared(data_dir) else {
        fail("calibrate needs real data: pass --data-dir DIR or set SAFETUNE_DATA_DIR")
    };
    let bin = safetune_bin();
    let mut cmd = Command::new(&bin);
    cmd.current_dir(root()).arg("calibrate").arg(&sweep).arg("--data-dir").arg(&data_dir);
    if !rest.iter().any(|a| a == "--out") {
        cmd.arg("--out").arg(root().join("results"));
    }
    run(cmd.args(&rest));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench-all") => bench_all(&args[1..]),
        Some("presets") => println!("{}", presets().join("\n")),
        Some("calibrate") => calibrate(&args[1..]),
        Some("perf") => perf::perf(&args[1..]),
        Some("new-defense") => {
            let mut name = "";
            let mut stage = "";
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--stage" => {
                        stage = it.next().map(String::as_str).unwrap_or_else(|| fail("--stage needs alignment, finetune or repair"))
                    }
                    f if f.starts_with('-') => fail(&format!("new-defense: unknown flag `{f}`")),
                    n => name = n,
                }
            }
            if stage.is_empty() {
                fail("new-defense: give --stage alignment|finetune|repair");
            }
            match scaffold::new_defense(&root(), name, stage) {
                Ok(dir) => {
                    run(Command::new("cargo").args(["fmt", "-p", &format!("safetune-defense-{name}")]).current_dir(root()));
                    println!(
                        "created {} ({stage}-stage defense `{name}`, linked into `safetune`); `cargo test -p safetune-defense-{name}` runs its mechanism tests",
                        dir.display()
                    );
                }
                Err(e) => fail(&e),
            }
        }
        Some("sync-defenses") => scaffold::sync_registration(&root()).unwrap_or_else(|e| fail(&e)),
        Some("check-defenses") => {
            let problems = scaffold::check(&root()).unwrap_or_else(|e| fail(&e));
            if !problems.is_empty() {
                fail(&problems.join("\n"));
            }
            println!(
                "{} defense crates: dependencies and registration ok",
                scaffold::defense_crates(&root()).map(|v| v.len()).unwrap_or(0)
            );
        }
        Some("--help") | Some("-h") | None => println!("{USAGE}"),
        Some(other) => fail(&format!("unknown xtask `{other}`\n{USAGE}")),
    }
}
