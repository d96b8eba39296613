//! Content-addressed stage outputs shared across runs: a stage's files in a
//! run directory are published under `<cache>/<kind>/<key16>/` once the stage
//! has finished, and restored into another run directory whose stage has the
//! same key. An entry appears whole (written to a temporary sibling, then
//! renamed) or not at all.

use std::path::{Path, PathBuf};

use safetune_core::anyhow::Context;
use safetune_core::Result;

use crate::hashing::write_atomic;

pub struct StageCache {
    root: PathBuf,
}

impl StageCache {
    /// `kind` names the stage (`evals`, `cells`).
    pub fn new(kind: &str) -> Self {
        Self { root: crate::fetch::cache_dir().join(kind) }
    }

    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.root.join(&key[..key.len().min(16)])
    }

    /// Whether an entry for `key` is there (a finished stage: entries appear whole).
    pub fn contains(&self, key: &str) -> bool {
        self.entry(key).exists()
    }

    /// Copies the entry's files (paths relative to the run directory) into
    /// `run_dir`; false when the key is not cached.
    pub fn restore(&self, key: &str, run_dir: &Path, rels: &[PathBuf]) -> Result<bool> {
        self.restore_as(key, run_dir, &same_names(rels))
    }

    /// Publishes the stage's files from `run_dir` under the key. A failure to
    /// publish (another runner got there first, a full disk) loses nothing.
    pub fn publish(&self, key: &str, run_dir: &Path, rels: &[PathBuf]) -> Result<()> {
        self.publish_as(key, run_dir, &same_names(rels))
    }

    /// [`Self::restore`] for files named differently in the entry and in the run
    /// directory: `(entry path, run path)` pairs, so one entry serves cells of
    /// different names.
    pub fn restore_as(&self, key: &str, run_dir: &Path, files: &[(PathBuf, PathBuf)]) -> Result<bool> {
        let entry = self.entry(key);
        if !files.iter().all(|(e, _)| entry.join(e).exists()) {
            return Ok(false);
        }
        for (e, r) in files {
            copy_tree(&entry.join(e), &run_dir.join(r))?;
        }
        Ok(true)
    }

    /// [`Self::publish`] with `(entry path, run path)` pairs.
    pub fn publish_as(&self, key: &str, run_dir: &Path, files: &[(PathBuf, PathBuf)]) -> Result<()> {
        let entry = self.entry(key);
        if entry.exists() {
            return Ok(());
        }
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for (e, r) in files {
            copy_tree(&run_dir.join(r), &tmp.join(e))?;
        }
        if std::fs::rename(&tmp, &entry).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(())
    }
}

fn same_names(rels: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    rels.iter().map(|r| (r.clone(), r.clone())).collect()
}

/// Copies a file or a directory tree; each file is written atomically.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("{}: cannot create", to.display()))?;
        for entry in std::fs::read_dir(from).with_context(|| format!("{}: cannot read", from.display()))? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        let bytes = std::fs::read(from).with_context(|| format!("{}: cannot read", from.display()))?;
        write_atomic(to, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_restore_round_trips_files_and_trees() {
        let tmp = std::env::temp_dir().join(format!("safetune-stage-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let (run_a, run_b) = (tmp.join("a"), tmp.join("b"));
        write_atomic(&run_a.join("cells/x.json"), b"{\"v\":1}").unwrap();
        write_atomic(&run_a.join("generations/x/set.jsonl"), b"line\n").unwrap();
        let cache = StageCache::at(tmp.join("cache"));
        let rels = vec![PathBuf::from("cells/x.json"), PathBuf::from("generations/x")];
        assert!(!cache.restore("0123456789abcdef0000", &run_b, &rels).unwrap());
        cache.publish("0123456789abcdef0000", &run_a, &rels).unwrap();
        assert!(cache.restore("0123456789abcdef0000", &run_b, &rels).unwrap());
        assert_eq!(std::fs::read(run_b.join("cells/x.json")).unwrap(), b"{\"v\":1}");
        assert_eq!(std::fs::read(run_b.join("generations/x/set.jsonl")).unwrap(), b"line\n");
        // A different key misses.
        assert!(!cache.restore("fedcba98765432100000", &run_b, &rels).unwrap());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
