//! Resumable stages. Every few minutes the trainer saves what the rest of a
//! stage depends on — the trained tensors, AdamW's moments and step count, each
//! stream's shuffle, position and generator, the step's carried state
//! ([`safetune_core::training::TrainStep::save_state`]), the losses and token
//! count so far — so a stage stopped by a crash, a preemption or a time limit
//! resumes at its last save and ends with the weights of an uninterrupted run
//! (`tests/checkpoint.rs` checks this bit for bit, for every registered objective).
//!
//! Layout: `<dir>/step-NNNNNN/{state.json, tensors.safetensors}` and `<dir>/latest`,
//! which names the newest complete save (written last, by rename, so a save cut
//! short leaves the previous one in force).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{Device, Tensor};
use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;
use serde::{Deserialize, Serialize};

/// Where and how often a stage saves a checkpoint. The directory must be the
/// stage's own (the runtime names it by the stage's cache key): a checkpoint
/// found there is taken as this very computation's.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    pub dir: PathBuf,
    /// Time between two saves (zero: after every step).
    pub every: Duration,
}

/// The layout this build writes and reads.
pub(crate) const VERSION: u32 = 1;

/// A stream's place: its current epoch's batches, the next one's index, its shuffler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StreamState {
    pub pos: usize,
    pub rng: u64,
    pub batches: Vec<Vec<usize>>,
}

/// Everything but the tensors.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub version: u32,
    /// The first step still to take.
    pub next_step: usize,
    pub total: usize,
    pub adam_t: i32,
    /// Name and shape of every trained tensor, in the trainer's order.
    pub params: Vec<(String, Vec<usize>)>,
    /// Which of them have AdamW moments.
    pub moments: Vec<bool>,
    pub step_values: serde_json::Value,
    pub step_tensors: usize,
    pub losses: Vec<f64>,
    pub tokens: usize,
    /// Training seconds before this save (over every earlier process).
    pub seconds: f64,
    pub streams: BTreeMap<String, StreamState>,
}

/// A saved stage: its metadata and tensors (`param.i`, `m.i`, `v.i`, `step.j`).
pub(crate) struct Saved {
    pub meta: Meta,
    pub tensors: HashMap<String, Tensor>,
    pub from: PathBuf,
}

impl Saved {
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("{}: no tensor `{name}` (delete the directory to start over)", self.from.display()))
    }
}

/// Writes a new save and points `latest` at it, then removes older saves.
pub(crate) fn save(dir: &Path, meta: &Meta, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let name = format!("step-{:06}", meta.next_step);
    let target = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_vec(meta)?).with_context(|| format!("{}: cannot write", tmp.display()))?;
    candle_core::safetensors::save(tensors, tmp.join("tensors.safetensors")).with_context(|| format!("{}: cannot write", tmp.display()))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target).with_context(|| format!("{}: cannot write", target.display()))?;
    let latest_tmp = dir.join("latest.tmp");
    std::fs::write(&latest_tmp, &name)?;
    std::fs::rename(&latest_tmp, dir.join("latest")).with_context(|| format!("{}: cannot write", dir.display()))?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("step-") && n != name {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// The newest save in `dir`, if any.
pub(crate) fn load(dir: &Path, device: &Device) -> Result<Option<Saved>> {
    let latest = dir.join("latest");
    if !latest.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).with_context(|| format!("{}: cannot read", latest.display()))?;
    let from = dir.join(name.trim());
    let meta_path = from.join("state.json");
    let text = std::fs::read_to_string(&meta_path).with_context(|| format!("{}: cannot read", meta_path.display()))?;
    let meta: Meta =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e} (delete {} to start over)", meta_path.display(), dir.display()))?;
    if meta.version != VERSION {
        bail!(
            "{}: checkpoint version {} (this build reads {VERSION}; delete {} to start over)",
            meta_path.display(),
            meta.version,
            dir.display()
        );
    }
    let tensors = candle_core::safetensors::load(from.join("tensors.safetensors"), device)
        .with_context(|| format!("{}: cannot read the checkpoint's tensors", from.display()))?;
    Ok(Some(Saved { meta, tensors, from }))
}

/// Removes a stage's checkpoints (once its result is stored).
pub fn clear(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("{}: cannot remove: {e}", dir.display())),
    }
}
