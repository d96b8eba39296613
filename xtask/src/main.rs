//! Project automation: `cargo xtask bench-all [--preset NAME]`.

mod perf;

use std::path::{Path, PathBuf};
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
  new-defense NAME
      Scaffolds crates/defenses/NAME: a crate that depends only on safetune-core
      and candle, registers a fine-tuning-stage defense NAME with a config
      struct, builds, and is linked into `safetune` (lists and grids see it).";

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
    flag.or_else(|| std::env::var_os("SAFETUNE_DATA_DIR").map(PathBuf::from))
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
        Some("new-defense") => new_defense(args.get(1).map(String::as_str).unwrap_or("")),
        Some("--help") | Some("-h") | None => println!("{USAGE}"),
        Some(other) => fail(&format!("unknown xtask `{other}`\n{USAGE}")),
    }
}

/// Replaces the lines between `begin` and `end` markers with `lines`, sorted.
fn update_marked(path: &Path, begin: &str, end: &str, add: String) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        fail(&format!("{}: markers `{begin}`/`{end}` not found", path.display()))
    };
    let body_start = b + begin.len() + 1;
    let mut lines: Vec<String> = text[body_start..e].lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect();
    lines.push(add);
    lines.sort();
    lines.dedup();
    let new = format!("{}{}\n{}", &text[..body_start], lines.join("\n"), &text[e..]);
    std::fs::write(path, new).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
}

fn new_defense(name: &str) {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') || name.starts_with('-') {
        fail("usage: cargo xtask new-defense NAME (lower-case letters, digits and '-')");
    }
    let dir = root().join("crates/defenses").join(name);
    if dir.exists() {
        fail(&format!("{} already exists", dir.display()));
    }
    let krate = format!("safetune-defense-{name}");
    let ident = krate.replace('-', "_");
    let ty: String = name.split('-').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
    std::fs::create_dir_all(dir.join("src")).unwrap_or_else(|e| fail(&e.to_string()));
    let cargo = format!(
        "[package]\nname = \"{krate}\"\ndescription = \"The {name} defense for safetune.\"\nversion.workspace = true\nedition.workspace = true\nlicense.workspace = true\n\n\
         [dependencies]\nsafetune-core.workspace = true\ncandle-core.workspace = true\nserde.workspace = true\nserde_json.workspace = true\nschemars.workspace = true\n"
    );
    let lib = LIB_TEMPLATE.replace("{name}", name).replace("{Type}", &ty);
    let readme = format!(
        "# {name}\n\nA fine-tuning-stage defense scaffolded by `cargo xtask new-defense`.\n\n\
         - Paper: (cite it here)\n- Update rule: the task loss scaled by `weight` (replace with the defense's rule)\n- Defaults: `weight = 1.0`\n"
    );
    for (p, text) in [("Cargo.toml", cargo), ("src/lib.rs", lib), ("README.md", readme)] {
        std::fs::write(dir.join(p), text).unwrap_or_else(|e| fail(&e.to_string()));
    }
    update_marked(
        &root().join("crates/runtime/Cargo.toml"),
        "# defenses:begin",
        "# defenses:end",
        format!("{krate} = {{ path = \"../defenses/{name}\" }}"),
    );
    update_marked(&root().join("crates/runtime/src/defenses.rs"), "// defenses:begin", "// defenses:end", format!("use {ident} as _;"));
    println!("created {} (registered as `{name}`); build with `cargo build`, see it in `safetune list defenses`", dir.display());
}

const LIB_TEMPLATE: &str = r#"//! The `{name}` defense (fine-tuning stage). Scaffolded by `cargo xtask new-defense`:
//! replace the loss below with the defense's update rule and cite its paper.

use candle_core::Tensor;
use safetune_core::anyhow::anyhow;
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::training::{stream, StepContext, TrainStep};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Hyperparameters; defaults are the paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct {Type}Config {
    /// Multiplies the task loss.
    pub weight: f64,
}

impl Default for {Type}Config {
    fn default() -> Self {
        Self { weight: 1.0 }
    }
}

pub struct {Type} {
    pub cfg: {Type}Config,
}

impl TrainStep for {Type} {
    fn name(&self) -> &str {
        "{name}"
    }

    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("{name} needs the task stream"))?;
        Ok((ctx.lm_loss(&batch, None, false)?.0 * self.cfg.weight)?)
    }
}

impl Defense for {Type} {
    const NAME: &'static str = "{name}";
    const DESCRIPTION: &'static str = "{name} (scaffolded)";
    type Options = {Type}Config;
    fn plan(cfg: {Type}Config) -> Result<DefensePlan> {
        Ok(DefensePlan { step: Some(Box::new({Type} { cfg })), ..Default::default() })
    }
}

safetune_core::register_defense!({Type});
"#;
