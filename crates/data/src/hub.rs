//! Downloading dataset files from the Hugging Face Hub into the standard HF
//! cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`):
//! `datasets--ORG--NAME/snapshots/<commit>/<path>` with `refs/<revision>`
//! holding the commit. A file already in the cache is used without network;
//! `HF_HUB_OFFLINE=1` forbids the network altogether.

use std::path::{Path, PathBuf};
use std::time::Duration;

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;

#[derive(Debug, Clone)]
pub struct HubClient {
    /// `https://huggingface.co` unless `HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    pub cache: PathBuf,
    pub token: Option<String>,
    pub offline: bool,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl HubClient {
    /// Settings from the usual Hugging Face environment variables.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            var("HF_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(var("HOME").unwrap_or_else(|| ".".into())).join(".cache/huggingface"))
                .join("hub")
        });
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string(),
            cache,
            token: var("HF_TOKEN"),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| v != "0"),
            timeout: Duration::from_secs(600),
        }
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache.join(format!("datasets--{}", repo.replace('/', "--")))
    }

    /// The cached copy of a file at `revision`, if any.
    pub fn cached(&self, repo: &str, revision: &str, path: &str) -> Option<PathBuf> {
        let dir = self.repo_dir(repo);
        let commit = std::fs::read_to_string(dir.join("refs").join(revision))
            .ok()
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| revision.to_string());
        let p = dir.join("snapshots").join(commit).join(path);
        p.is_file().then_some(p)
    }

    /// `{endpoint}/datasets/{repo}/resolve/{revision}/{path}`.
    pub fn url(&self, repo: &str, revision: &str, path: &str) -> String {
        format!("{}/datasets/{repo}/resolve/{revision}/{path}", self.endpoint)
    }

    /// A dataset file: from the cache, else downloaded into it.
    pub fn dataset_file(&self, repo: &str, revision: &str, path: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached(repo, revision, path) {
            return Ok(p);
        }
        let url = self.url(repo, revision, path);
        if self.offline {
            bail!(
                "dataset file `{path}` of `{repo}` is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; \
                 download it on a machine with network or give a data directory (--data-dir)",
                self.repo_dir(repo).display()
            );
        }
        let agent = ureq::Agent::config_builder().timeout_global(Some(self.timeout)).http_status_as_error(false).build().new_agent();
        let mut req = agent.get(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|e| anyhow!("{url}: {e} (offline? give a data directory with --data-dir)"))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            bail!("{url}: HTTP {status}: this dataset needs a Hugging Face token with access (set HF_TOKEN)");
        }
        if status != 200 {
            bail!("{url}: HTTP {status}");
        }
        let commit =
            resp.headers().get("x-repo-commit").and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_else(|| revision.to_string());
        let dir = self.repo_dir(repo);
        let dest = dir.join("snapshots").join(&commit).join(path);
        let parent = dest.parent().ok_or_else(|| anyhow!("bad path `{path}`"))?;
        std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
        let part = dest.with_extension(format!("part{}", std::process::id()));
        {
            let mut out = std::fs::File::create(&part).with_context(|| format!("{}: cannot write", part.display()))?;
            let mut body = resp.body_mut().as_reader();
            std::io::copy(&mut body, &mut out).map_err(|e| {
                let _ = std::fs::remove_file(&part);
                anyhow!("{url}: download interrupted: {e}")
            })?;
        }
        std::fs::rename(&part, &dest)?;
        write_ref(&dir, revision, &commit)?;
        Ok(dest)
    }
}

fn write_ref(dir: &Path, revision: &str, commit: &str) -> Result<()> {
    let refs = dir.join("refs");
    std::fs::create_dir_all(&refs)?;
    std::fs::write(refs.join(revision), commit)?;
    Ok(())
}
