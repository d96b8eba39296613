//! `cargo xtask perf [--reps N] [--quick] [--only WORKLOAD]... [--compare-torch]`: times the
//! training step (LoRA q,v; LoRA all-linear; full), batched decoding (batch
//! 1, 8, 32 × 64 new tokens), prefill (512 tokens) and the machine's matrix-product
//! ceiling (GFLOP/s of `x · Wᵀ` at the MLP's training shape) on SmolLM2-135M with the
//! fused kernels and with the plain compositions (`SAFETUNE_COMPOSED_OPS=1`),
//! runs alternating, and prints medians, peak memory and ratios. With
//! `--compare-torch` it also runs the same workloads through PyTorch + PEFT
//! (`xtask/perf/torch_ref.py`, in a venv under `target/perf-venv` installed
//! from PyPI: dev tooling, never a runtime dependency) and prints
//! candle / PyTorch, and for the training steps and the product also against PyTorch in
//! bfloat16 (`--dtype bf16`). Rows `lora-qv bf16`, `lora-all bf16` and `gemm bf16` run
//! safetune's bf16 path (`train.precision = "bf16"`) against PyTorch bf16 only (their
//! PyTorch peak memory is bf16's). Before the table it prints one core's multiply-add ceiling
//! with f32 FMAs and with AVX-512 BF16 dot products. Timings belong to a quiet machine: nothing else running.

use std::path::PathBuf;
use std::process::Command;

use crate::{cargo, fail, root, run};

struct Workload {
    name: &'static str,
    args: Vec<String>,
    /// Lower is better (seconds) or higher is better (tokens or GFLOP per second).
    lower_better: bool,
    unit: &'static str,
    /// With `--compare-torch`, PyTorch also runs it in bfloat16 (training steps and the product).
    torch_bf16: bool,
    /// With `--compare-torch`, PyTorch runs it in f32 (not for safetune's bf16 rows, whose
    /// f32 counterpart is the row above them).
    torch_f32: bool,
}

/// A workload's arguments for the PyTorch script: safetune's `--precision` left out (PyTorch's
/// precision is its `--dtype`).
fn torch_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--precision" {
            it.next();
        } else {
            out.push(a.clone());
        }
    }
    out
}

fn workloads(quick: bool) -> Vec<Workload> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let steps = if quick { "2" } else { "3" };
    vec![
        Workload {
            name: "lora-qv",
            args: s(&["lora-qv", "--batch", "4", "--tokens", "128", "--steps", steps]),
            lower_better: true,
            unit: "s/step",
            torch_bf16: true,
            torch_f32: true,
        },
        Workload {
            name: "lora-all",
            args: s(&["lora-all", "--batch", "4", "--tokens", "128", "--steps", steps]),
            lower_better: true,
            unit: "s/step",
            torch_bf16: true,
            torch_f32: true,
        },
        Workload {
            name: "full",
            args: s(&["full", "--batch", "4", "--tokens", "128", "--steps", steps]),
            lower_better: true,
            unit: "s/step",
            torch_bf16: true,
            torch_f32: true,
        },
        Workload {
            name: "decode b1",
            args: s(&["decode", "--batch", "1", "--new", "64"]),
            lower_better: false,
            unit: "tok/s",
            torch_bf16: false,
            torch_f32: true,
        },
        Workload {
            name: "decode b8",
            args: s(&["decode", "--batch", "8", "--new", "64"]),
            lower_better: false,
            unit: "tok/s",
            torch_bf16: false,
            torch_f32: true,
        },
        Workload {
            name: "decode b32",
            args: s(&["decode", "--batch", "32", "--new", "64"]),
            lower_better: false,
            unit: "tok/s",
            torch_bf16: false,
            torch_f32: true,
        },
        Workload {
            name: "prefill 512",
            args: s(&["prefill", "--tokens", "512"]),
            lower_better: false,
            unit: "tok/s",
            torch_bf16: false,
            torch_f32: true,
        },
        // safetune's bf16 path (`train.precision = "bf16"`): frozen weights' products in bf16.
        Workload {
            name: "lora-qv bf16",
            args: s(&["lora-qv", "--batch", "4", "--tokens", "128", "--steps", steps, "--precision", "bf16"]),
            lower_better: true,
            unit: "s/step",
            torch_bf16: true,
            torch_f32: false,
        },
        Workload {
            name: "lora-all bf16",
            args: s(&["lora-all", "--batch", "4", "--tokens", "128", "--steps", steps, "--precision", "bf16"]),
            lower_better: true,
            unit: "s/step",
            torch_bf16: true,
            torch_f32: false,
        },
        Workload {
            name: "gemm bf16 512x576x1536",
            args: s(&["gemm", "--m", "512", "--k", "576", "--n", "1536", "--precision", "bf16"]),
            lower_better: false,
            unit: "GFLOP/s",
            torch_bf16: true,
            torch_f32: false,
        },
        Workload {
            name: "gemm 512x576x1536",
            args: s(&["gemm", "--m", "512", "--k", "576", "--n", "1536"]),
            lower_better: false,
            unit: "GFLOP/s",
            torch_bf16: true,
            torch_f32: true,
        },
    ]
}

fn json_line(out: &[u8]) -> Option<(f64, f64)> {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().rev().find(|l| l.starts_with('{'))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some((v["value"].as_f64()?, v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn measure(cmd: &mut Command, what: &str) -> (f64, f64) {
    let out = cmd.output().unwrap_or_else(|e| fail(&format!("{what}: {e}")));
    if !out.status.success() {
        fail(&format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")));
    }
    json_line(&out.stdout).unwrap_or_else(|| fail(&format!("{what}: no result line")))
}

/// A venv with torch, transformers and peft from PyPI, or
/// `SAFETUNE_PERF_PYTHON` names an interpreter that already has them.
fn torch_python() -> PathBuf {
    python_with(&["torch", "transformers", "peft"])
}

/// A Python with `packages`: `SAFETUNE_PERF_PYTHON` if set (it must have them), else the
/// venv in target/perf-venv, created and given what it lacks from PyPI.
pub(crate) fn python_with(packages: &[&str]) -> PathBuf {
    if let Some(py) = std::env::var_os("SAFETUNE_PERF_PYTHON") {
        return PathBuf::from(py);
    }
    let venv = crate::target_dir().join("perf-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        eprintln!("[python] creating {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new(&py).args(["-c", &format!("import {p}")]).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("[python] installing {} from PyPI into {}", missing.join(", "), venv.display());
        run(Command::new(&py).args(["-m", "pip", "install", "--quiet"]).args(&missing));
    }
    py
}

/// `cargo xtask perf`'s flags.
#[derive(clap::Args)]
pub struct PerfArgs {
    /// Repetitions of each workload (the median is reported)
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Fewer, smaller workloads
    #[arg(long)]
    quick: bool,
    /// Only this workload (repeatable)
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Also time PyTorch + PEFT (a venv in target/perf-venv)
    #[arg(long)]
    compare_torch: bool,
}

pub fn perf(args: PerfArgs) {
    let PerfArgs { reps, quick, only, compare_torch: torch } = args;
    let root = root();
    run(cargo().args(["build", "--quiet", "--release", "-p", "safetune-train", "--example", "perf"]));
    let exe = crate::target_dir().join("release/examples/perf");
    let bin = crate::safetune_bin();
    let model = String::from_utf8(
        Command::new(&bin)
            .args(["model", "path", "smollm2-135m-instruct"])
            .output()
            .unwrap_or_else(|e| fail(&format!("model path: {e}")))
            .stdout,
    )
    .unwrap_or_default()
    .trim()
    .to_string();
    let hf_dir = crate::target_dir().join("perf-hf");
    let py = torch.then(|| {
        if !hf_dir.join("config.json").exists() {
            measure(Command::new(&exe).arg(&model).arg("export").arg(&hf_dir), "export");
        }
        torch_python()
    });
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string();
    // One core's multiply-add ceiling: f32 FMAs, and the AVX-512 BF16 dot product a bf16
    // path would be built on (absent on most CPUs).
    let ceiling = |w: &str| {
        let out = Command::new(&exe).arg(&model).arg(w).output().ok()?;
        if out.status.success() {
            json_line(&out.stdout).map(|(v, _)| format!("{v:.1} GFLOP/s"))
        } else {
            None
        }
    };
    println!(
        "One core's ceiling: f32 FMA {}, AVX-512 BF16 dot product {}.\n",
        ceiling("peak-f32").unwrap_or_else(|| "not measured (no AVX-512)".into()),
        ceiling("peak-bf16").unwrap_or_else(|| "absent".into())
    );
    println!(
        "| workload | fused | plain compositions | plain / fused | PyTorch | candle / PyTorch | PyTorch bf16 | candle / PyTorch bf16 | peak RSS fused / plain / PyTorch (MB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for w in workloads(quick).into_iter().filter(|w| only.is_empty() || only.iter().any(|o| *o == w.name)) {
        let (mut fused, mut plain, mut reference, mut reference_bf16) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut mem_f, mut mem_p, mut mem_t) = (0f64, 0f64, 0f64);
        for _ in 0..reps {
            let (v, m) = measure(Command::new(&exe).arg(&model).args(&w.args).env("SAFETUNE_COMPOSED_OPS", "0"), w.name);
            fused.push(v);
            mem_f = mem_f.max(m);
            let (v, m) = measure(Command::new(&exe).arg(&model).args(&w.args).env("SAFETUNE_COMPOSED_OPS", "1"), w.name);
            plain.push(v);
            mem_p = mem_p.max(m);
            if let Some(py) = &py {
                let script = root.join("xtask/perf/torch_ref.py");
                let targs = torch_args(&w.args);
                if w.torch_f32 {
                    let (v, m) = measure(Command::new(py).arg(&script).arg(&hf_dir).args(&targs).args(["--threads", &threads]), w.name);
                    reference.push(v);
                    mem_t = mem_t.max(m);
                }
                if w.torch_bf16 {
                    let (v, m) = measure(
                        Command::new(py).arg(&script).arg(&hf_dir).args(&targs).args(["--threads", &threads, "--dtype", "bf16"]),
                        w.name,
                    );
                    if !w.torch_f32 {
                        mem_t = mem_t.max(m);
                    }
                    reference_bf16.push(v);
                }
            }
        }
        let (f, p, t, tb) = (median(fused), median(plain), median(reference), median(reference_bf16));
        let unit = w.unit;
        // Ratios > 1 mean the first is slower.
        let slower = |a: f64, b: f64| if w.lower_better { a / b } else { b / a };
        let torch_cols = |t: f64| {
            if py.is_some() && !t.is_nan() {
                (format!("{t:.3} {unit}"), format!("{:.2}", slower(f, t)))
            } else {
                ("-".into(), "-".into())
            }
        };
        let (torch_f32, torch_bf16) = (torch_cols(t), torch_cols(tb));
        println!(
            "| {} | {f:.3} {unit} | {p:.3} {unit} | {:.2} | {} | {} | {} | {} | {mem_f:.0} / {mem_p:.0} / {} |",
            w.name,
            slower(p, f),
            torch_f32.0,
            torch_f32.1,
            torch_bf16.0,
            torch_bf16.1,
            if py.is_some() { format!("{mem_t:.0}") } else { "-".into() }
        );
    }
}
