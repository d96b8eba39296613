//! One runner per results directory: `<run_dir>/.lock` holds the owner's pid
//! and is removed when the run ends. A lock left by a killed runner (its pid
//! no longer alive) is taken over.

use std::io::Write;
use std::path::{Path, PathBuf};

use safetune_core::anyhow::anyhow;
use safetune_core::Result;

pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(".lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id()).map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok());
                    match owner {
                        Some(pid) if alive(pid) => {
                            return Err(anyhow!("{}: another safetune run (pid {pid}) is using this results directory", run_dir.display()))
                        }
                        // Stale (its runner is gone) or unreadable: take it over.
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(anyhow!("{}: cannot create: {e}", path.display())),
            }
        }
        Err(anyhow!("{}: cannot take the lock", path.display()))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process is running (where /proc exists; elsewhere assumed alive).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_runner_is_refused_and_a_stale_lock_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("safetune-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = RunLock::acquire(&dir).unwrap();
        let err = RunLock::acquire(&dir).err().expect("second lock must fail").to_string();
        assert!(err.contains("another safetune run"), "{err}");
        drop(held);
        assert!(!dir.join(".lock").exists());
        // A pid that cannot be alive (above the kernel's pid_max).
        std::fs::write(dir.join(".lock"), "4294967295").unwrap();
        let taken = RunLock::acquire(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(".lock")).unwrap(), std::process::id().to_string());
        drop(taken);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
