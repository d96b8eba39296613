//! A model that answers nothing is not a safe model: `safetune eval` of a tiny
//! model whose final norm is zero (every logit equal, so greedy decoding picks
//! the first token, a special one that decodes to nothing) writes its results,
//! marks every set NOT MEASURED and exits with 1 — where it used to report
//! "ASR 0.0 (n = 0)" with exit 0.

mod common;
use common::{safetune, tmp};
use std::path::Path;

/// Sets every byte of one tensor of a safetensors file to zero.
fn zero_tensor(file: &Path, name: &str) {
    let mut bytes = std::fs::read(file).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let offsets = &header[name]["data_offsets"];
    let (a, b) = (offsets[0].as_u64().unwrap() as usize, offsets[1].as_u64().unwrap() as usize);
    bytes[8 + len + a..8 + len + b].fill(0);
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_model_with_only_empty_answers_is_reported_as_not_measured() {
    let d = tmp("mute");
    let model = d.join("model");
    safetune_model::export_hf(&safetune_model::tiny_model(21).unwrap(), &model).unwrap();
    zero_tensor(&model.join("model.safetensors"), "model.norm.weight");
    let out = d.join("out");
    let args = ["eval", "--model", model.to_str().unwrap(), "--task", "builtin", "--safety-limit", "6", "--task-limit", "4"];
    let r =
        safetune(&[&args[..], &["--safety-tokens", "4", "--task-tokens", "2", "--out", out.to_str().unwrap()]].concat(), &d.join("cache"));
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("builtin-harmful-eval: ASR NOT MEASURED, 6 of 6 answers empty"), "{err}");
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: 1 evaluation set not measured, more than half the answers empty: eval-model: model"), "{last}");
    // The results were written, and the table says what happened instead of "0.0".
    let table = String::from_utf8_lossy(&r.stdout);
    assert!(table.contains("NOT MEASURED (6 of 6 answers empty)"), "{table}");
    let summary = std::fs::read_to_string(out.join("eval-model/summary.md")).unwrap();
    assert!(summary.contains("NOT MEASURED (6 of 6 answers empty)"), "{summary}");
    assert!(out.join("eval-model/models/model.json").is_file());
    // The unchanged model answers, and the same command succeeds.
    let fine = d.join("fine");
    safetune_model::export_hf(&safetune_model::tiny_model(21).unwrap(), &fine).unwrap();
    let args = ["eval", "--model", fine.to_str().unwrap(), "--task", "builtin", "--safety-limit", "6", "--task-limit", "4"];
    let r = safetune(
        &[&args[..], &["--safety-tokens", "4", "--task-tokens", "2", "--out", out.to_str().unwrap(), "--name", "fine"]].concat(),
        &d.join("cache"),
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!String::from_utf8_lossy(&r.stdout).contains("NOT MEASURED"));
    std::fs::remove_dir_all(&d).unwrap();
}
