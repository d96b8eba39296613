//! A local data directory in the layout of `shared/data`.

use std::path::{Path, PathBuf};

use safetune_core::anyhow::bail;
use safetune_core::Result;

#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    /// Opens a directory; errors if it does not exist.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!("{}: data directory not found (pass --data-dir DIR or set SAFETUNE_DATA_DIR)", root.display());
        }
        Ok(Self { root: root.to_path_buf() })
    }

    /// Path of a dataset file, or an error naming the dataset, the place looked and how to provide it.
    pub fn file(&self, dataset: &str, rel: &str) -> Result<PathBuf> {
        let p = self.root.join(rel);
        if !p.is_file() {
            bail!(
                "dataset `{dataset}`: {} not found (put the file there, point --data-dir / SAFETUNE_DATA_DIR at a directory with `{rel}`, \
                 or use the Hugging Face Hub where the machine is online)",
                p.display()
            );
        }
        Ok(p)
    }

    /// Path of a dataset directory (per-subject files), with the same kind of error.
    pub fn dir(&self, dataset: &str, rel: &str) -> Result<PathBuf> {
        let p = self.root.join(rel);
        if !p.is_dir() {
            bail!("dataset `{dataset}`: directory {} not found (point --data-dir at a directory with `{rel}/`)", p.display());
        }
        Ok(p)
    }
}
