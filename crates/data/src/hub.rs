//! Downloading dataset files from the Hugging Face Hub into the standard HF
//! cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`):
//! `datasets--ORG--NAME/snapshots/<commit>/<path>` with `refs/<revision>`
//! holding the commit; and raw files of a GitHub repository at a pinned commit
//! (datasets published on GitHub only, e.g. Safety-Tuned LLaMAs) into
//! `<safetune cache>/github/OWNER--NAME/<commit>/<path>`. A file already in
//! the cache is used without network; `HF_HUB_OFFLINE=1` forbids the network
//! altogether.

use std::path::{Path, PathBuf};
use std::time::Duration;

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;

/// Where a dataset's upstream files are downloaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// A Hugging Face Hub dataset repository (`{endpoint}/datasets/{repo}/resolve/{revision}/{path}`).
    HfDataset,
    /// A GitHub repository at a pinned commit (`{endpoint}/{repo}/{revision}/{path}`, raw files).
    GitHub,
}

#[derive(Debug, Clone)]
pub struct HubClient {
    /// `https://huggingface.co` unless `HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    pub cache: PathBuf,
    /// `https://raw.githubusercontent.com` unless `SAFETUNE_GITHUB_ENDPOINT` says otherwise.
    pub github_endpoint: String,
    pub github_cache: PathBuf,
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
            github_endpoint: var("SAFETUNE_GITHUB_ENDPOINT")
                .unwrap_or_else(|| "https://raw.githubusercontent.com".into())
                .trim_end_matches('/')
                .to_string(),
            github_cache: safetune_core::cache_dir().join("github"),
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

    /// A file of a dataset's upstream repository: from the cache, else downloaded into it.
    pub fn file(&self, host: Host, repo: &str, revision: &str, path: &str) -> Result<PathBuf> {
        match host {
            Host::HfDataset => self.dataset_file(repo, revision, path),
            Host::GitHub => self.github_file(repo, revision, path),
        }
    }

    /// A raw file of a GitHub repository at `commit` (a pinned commit, so the cached copy never goes stale).
    pub fn github_file(&self, repo: &str, commit: &str, path: &str) -> Result<PathBuf> {
        let dest = self.github_cache.join(repo.replace('/', "--")).join(commit).join(path);
        if dest.is_file() {
            return Ok(dest);
        }
        let url = format!("{}/{repo}/{commit}/{path}", self.github_endpoint);
        if self.offline {
            bail!(
                "dataset file `{path}` of github.com/{repo} is not in the cache ({}) and HF_HUB_OFFLINE is set; \
                 download it on a machine with network or give a data directory (--data-dir)",
                dest.display()
            );
        }
        let resp = self.get(&url, false)?;
        download_to(resp, &url, &dest, path)?;
        Ok(dest)
    }

    /// GET `url`: the response when 200, else an error naming the URL and status.
    fn get(&self, url: &str, with_token: bool) -> Result<ureq::http::Response<ureq::Body>> {
        let agent = ureq::Agent::config_builder().timeout_global(Some(self.timeout)).http_status_as_error(false).build().new_agent();
        let mut req = agent.get(url);
        if let (true, Some(t)) = (with_token, &self.token) {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| anyhow!("{url}: {e} (offline? give a data directory with --data-dir)"))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            bail!("{url}: HTTP {status}: this dataset needs a Hugging Face token with access (set HF_TOKEN)");
        }
        if status != 200 {
            bail!("{url}: HTTP {status}");
        }
        Ok(resp)
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
        let resp = self.get(&url, true)?;
        let commit =
            resp.headers().get("x-repo-commit").and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_else(|| revision.to_string());
        let dir = self.repo_dir(repo);
        let dest = dir.join("snapshots").join(&commit).join(path);
        download_to(resp, &url, &dest, path)?;
        write_ref(&dir, revision, &commit)?;
        Ok(dest)
    }
}

/// Streams a response body to `dest` through a temporary file renamed into place, so a
/// cut download never leaves a file that looks complete.
fn download_to(mut resp: ureq::http::Response<ureq::Body>, url: &str, dest: &Path, path: &str) -> Result<()> {
    let parent = dest.parent().ok_or_else(|| anyhow!("bad path `{path}`"))?;
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    let part = dest.with_extension(format!("part{}", std::process::id()));
    {
        let mut out = std::fs::File::create(&part).with_context(|| format!("{}: cannot write", part.display()))?;
        let kib = resp.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).map_or(0, |b| b.div_ceil(1024));
        let steps = safetune_core::progress::Steps::new(&format!("download {path}"), kib as usize, "KiB", false);
        let mut body = Counted { inner: resp.body_mut().as_reader(), bytes: 0, steps: &steps };
        std::io::copy(&mut body, &mut out).map_err(|e| {
            let _ = std::fs::remove_file(&part);
            anyhow!("{url}: download interrupted: {e}")
        })?;
    }
    std::fs::rename(&part, dest)?;
    Ok(())
}

/// A body reader that moves a download's progress (in KiB) as bytes arrive.
struct Counted<'a, R> {
    inner: R,
    bytes: u64,
    steps: &'a safetune_core::progress::Steps,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.bytes / 1024;
        self.bytes += n as u64;
        if self.bytes / 1024 > before {
            self.steps.inc((self.bytes / 1024 - before) as usize);
        }
        Ok(n)
    }
}

fn write_ref(dir: &Path, revision: &str, commit: &str) -> Result<()> {
    let refs = dir.join("refs");
    std::fs::create_dir_all(&refs)?;
    std::fs::write(refs.join(revision), commit)?;
    Ok(())
}
