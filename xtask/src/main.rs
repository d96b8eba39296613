//! Project automation: `cargo xtask bench-all [--preset NAME]`.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const USAGE: &str = "cargo xtask <command>

  bench-all [--preset NAME|FILE.toml] [--overlay FILE.toml]... [--data-dir DIR] [--out DIR] [--quiet]
      Fetches SmolLM2-135M-Instruct if missing, then runs presets/NAME.toml
      (default: smoke) with any overlays merged in (for example a user dataset). Data: --data-dir, else $SAFETUNE_DATA_DIR, else
      ../shared/data beside the repository; with none, the built-in offline suite.
  presets   list the presets";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
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
    let mut data_dir = std::env::var_os("SAFETUNE_DATA_DIR").map(PathBuf::from);
    let mut out = root().join("results");
    let mut quiet = false;
    let mut overlays = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().cloned().unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match a.as_str() {
            "--preset" => preset = value("--preset"),
            "--data-dir" => data_dir = Some(PathBuf::from(value("--data-dir"))),
            "--out" => out = PathBuf::from(value("--out")),
            "--quiet" => quiet = true,
            "--overlay" => overlays.push(PathBuf::from(value("--overlay"))),
            other => fail(&format!("bench-all: unknown argument `{other}`")),
        }
    }
    // A preset name, or the path of any spec file.
    let spec = if preset.ends_with(".toml") { PathBuf::from(&preset) } else { root().join("presets").join(format!("{preset}.toml")) };
    if !spec.exists() {
        fail(&format!("unknown preset `{preset}` (known: {})", presets().join(", ")));
    }
    if data_dir.is_none() {
        let shared = root().join("../shared/data");
        if shared.is_dir() {
            data_dir = Some(shared);
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).current_dir(root()).args(["build", "--quiet", "-p", "safetune-runtime", "--bin", "safetune"]));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let bin = target.join("debug/safetune");
    run(Command::new(&bin).args(["model", "fetch", "smollm2-135m-instruct"]).stdout(std::process::Stdio::null()));
    let mut cmd = Command::new(&bin);
    cmd.current_dir(root()).arg("run").arg(&spec).arg("--out").arg(&out);
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench-all") => bench_all(&args[1..]),
        Some("presets") => println!("{}", presets().join("\n")),
        Some("--help") | Some("-h") | None => println!("{USAGE}"),
        Some(other) => fail(&format!("unknown xtask `{other}`\n{USAGE}")),
    }
}
