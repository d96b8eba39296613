//! `cargo xtask interop`: safetune through the tools its users bring. `safetune model
//! export` writes SmolLM2-135M-Instruct (with adapters, if given) as a Hugging Face
//! directory, `safetune serve` serves it on loopback, and xtask/interop/check.py (in a
//! venv with openai, torch, transformers and peft from PyPI) checks the official `openai`
//! client against the server (whole and streamed answers) and transformers/peft against
//! the server's greedy answers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{fail, root, run};

/// `cargo xtask interop`'s flags.
#[derive(clap::Args)]
pub struct InteropArgs {
    /// PEFT adapter directories (e.g. a run's adapters/aligned and adapters/<cell>), merged
    /// in order: also check the model with them merged (exported and served) and peft
    /// loading them on the exported base
    #[arg(long, value_name = "PEFT_DIR")]
    adapter: Vec<PathBuf>,
}

/// A `safetune serve` child, killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `model` (with `adapters`) on a free loopback port; returns it and its `/v1` URL.
fn serve(bin: &Path, model: &Path, adapters: &[PathBuf]) -> (Served, String) {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--port", "0", "--model"]).arg(model).stderr(Stdio::piped());
    for a in adapters {
        cmd.arg("--adapter").arg(a);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| fail(&format!("cannot start safetune serve: {e}")));
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let served = Served(child);
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
            let url = url.to_string();
            // Keep draining its log so it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return (served, url);
        }
    }
    fail("safetune serve ended without saying where it listens")
}

fn export(bin: &Path, adapters: &[PathBuf], out: &Path) {
    let _ = std::fs::remove_dir_all(out);
    let mut cmd = Command::new(bin);
    cmd.args(["model", "export", "--model", "smollm2-135m-instruct", "--out"]).arg(out).stdout(Stdio::null());
    for a in adapters {
        cmd.arg("--adapter").arg(a);
    }
    run(&mut cmd);
}

pub fn interop(args: InteropArgs) {
    let adapters: Vec<PathBuf> = args.adapter.into_iter().map(crate::absolute).collect();
    if let Some(a) = adapters.iter().find(|a| !a.join("adapter_config.json").is_file()) {
        fail(&format!("--adapter: {} is not a PEFT adapter directory (no adapter_config.json)", a.display()));
    }
    let bin = crate::safetune_bin();
    let py = crate::perf::python_with(&["openai", "torch", "transformers", "peft"]);
    let dir = crate::target_dir().join("interop");
    let script = root().join("xtask/interop/check.py");
    let base = dir.join("base-hf");
    export(&bin, &[], &base);
    eprintln!("[interop] the exported base model, served: openai client and transformers");
    let (server, url) = serve(&bin, &base, &[]);
    run(Command::new(&py).arg(&script).arg("--url").arg(&url).arg("--hf").arg(&base));
    drop(server);
    if !adapters.is_empty() {
        let merged = dir.join("merged-hf");
        export(&bin, &adapters, &merged);
        eprintln!("[interop] the base with {} adapter(s) merged, served: openai client, transformers, peft", adapters.len());
        let model = Command::new(&bin).args(["model", "path", "smollm2-135m-instruct"]).output().expect("safetune model path");
        let gguf = PathBuf::from(String::from_utf8_lossy(&model.stdout).trim());
        let (server, url) = serve(&bin, &gguf, &adapters);
        let mut cmd = Command::new(&py);
        cmd.arg(&script).arg("--url").arg(&url).arg("--hf").arg(&merged).arg("--peft-base").arg(&base);
        for a in &adapters {
            cmd.arg("--adapter").arg(a);
        }
        run(&mut cmd);
        drop(server);
    }
}
