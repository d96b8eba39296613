//! safetune-judge-remote: a judge that asks an OpenAI-compatible
//! chat-completions endpoint (`POST {base_url}/chat/completions`) to grade
//! each answer with a rubric ([`Rubric`]). Requests run with bounded
//! concurrency, retry with exponential backoff on timeouts, connection errors,
//! 429 and 5xx, and are cached on disk by a hash of (endpoint model, rubric,
//! prompt, answer), so a rerun or a rejudge asks nothing twice. Errors are
//! one line: authentication, timeout, malformed reply. Registered as `remote`;
//! options come from the spec's `eval.judge_options`.

mod rubric;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::judge::{Judge, Judgement, Verdict};
use safetune_core::registry::{inventory, options, JudgeEntry};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use rubric::{Rubric, RubricFile};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:8080/v1` (`safetune serve`) or `https://api.openai.com/v1`.
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the API key (sent as a bearer token when set).
    pub api_key_env: String,
    pub rubric: Rubric,
    /// A rubric file (TOML: `user` prompt with `{request}` and `{answer}`, optional `system`,
    /// `scale`, `score_field`, `max_tokens`; see [`RubricFile`]) used instead of `rubric`, e.g.
    /// a paper's published grading prompt. Relative to the spec file that names it.
    pub rubric_file: Option<PathBuf>,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub timeout_s: f64,
    /// Extra attempts after a timeout, a connection error, 429 or 5xx.
    pub retries: usize,
    /// Cache replies under `<cache>/judge/` (the safetune cache directory).
    pub cache: bool,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080/v1".into(),
            model: "default".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            rubric: Rubric::QiHarmfulness,
            rubric_file: None,
            concurrency: 4,
            timeout_s: 60.0,
            retries: 3,
            cache: true,
        }
    }
}

pub struct RemoteJudge {
    cfg: RemoteConfig,
    /// The rubric file's contents and their sha256 (cache keys and the fingerprint see them).
    file: Option<(RubricFile, String)>,
    key: Option<String>,
    agent: ureq::Agent,
    cache_file: Option<PathBuf>,
    cache: Mutex<std::collections::HashMap<String, String>>,
}

fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Outcome of one HTTP attempt.
enum Attempt {
    Reply(String),
    Retry(String),
}

impl RemoteJudge {
    pub fn new(cfg: RemoteConfig) -> Result<Self> {
        Self::with_cache_dir(cfg, &safetune_core::cache_dir())
    }

    /// As [`RemoteJudge::new`], with replies cached under `<cache_root>/judge/`.
    pub fn with_cache_dir(cfg: RemoteConfig, cache_root: &std::path::Path) -> Result<Self> {
        if !cfg.base_url.starts_with("http://") && !cfg.base_url.starts_with("https://") {
            bail!("judges.remote.base_url: `{}` is not an http(s) URL", cfg.base_url);
        }
        if cfg.concurrency == 0 {
            bail!("judges.remote.concurrency: must be at least 1");
        }
        if !(cfg.timeout_s > 0.0 && cfg.timeout_s.is_finite()) {
            bail!("judges.remote.timeout_s: must be a positive number");
        }
        let file = match &cfg.rubric_file {
            Some(p) => {
                let (r, text) = RubricFile::read(p)?;
                Some((r, hash(&[&text])))
            }
            None => None,
        };
        let key = std::env::var(&cfg.api_key_env).ok().filter(|k| !k.is_empty());
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let cache_file = cfg.cache.then(|| {
            let rubric = match &file {
                Some((_, sha)) => format!("file:{sha}"),
                None => format!("{:?}", cfg.rubric),
            };
            cache_root.join("judge").join(format!("{}.jsonl", &hash(&[&cfg.base_url, &cfg.model, &rubric])[..16]))
        });
        let mut cache = std::collections::HashMap::new();
        if let Some(f) = &cache_file {
            if let Ok(text) = std::fs::read_to_string(f) {
                for line in text.lines() {
                    if let Ok((k, v)) = serde_json::from_str::<(String, String)>(line) {
                        cache.insert(k, v);
                    }
                }
            }
        }
        Ok(Self { cfg, file, key, agent, cache_file, cache: Mutex::new(cache) })
    }

    fn url(&self) -> String {
        format!("{}/chat/completions", self.cfg.base_url.trim_end_matches('/'))
    }

    fn attempt(&self, body: &serde_json::Value) -> Result<Attempt> {
        let url = self.url();
        let mut req = self.agent.post(&url).header("Content-Type", "application/json");
        if let Some(k) = &self.key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let resp = match req.send(body.to_string().as_bytes()) {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => return Ok(Attempt::Retry(format!("timed out after {}s", self.cfg.timeout_s))),
            Err(e) => return Ok(Attempt::Retry(format!("{e}"))),
        };
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        match status {
            200..=299 => {}
            401 | 403 => bail!("remote judge: {url}: authentication failed (HTTP {status}); set {} to a valid key", self.cfg.api_key_env),
            429 | 500..=599 => return Ok(Attempt::Retry(format!("HTTP {status}"))),
            _ => bail!("remote judge: {url}: HTTP {status}: {}", text.chars().take(200).collect::<String>()),
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("remote judge: malformed reply from {url}: not JSON ({e})"))?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| anyhow!("remote judge: malformed reply from {url}: no choices[0].message.content"))?;
        Ok(Attempt::Reply(content.to_string()))
    }

    /// The grader's reply for one answer: from the cache, else from the endpoint.
    fn reply(&self, prompt: &str, response: &str) -> Result<String> {
        let key = hash(&[prompt, response]);
        if let Some(r) = self.cache.lock().map_err(|_| anyhow!("remote judge: cache poisoned"))?.get(&key) {
            return Ok(r.clone());
        }
        let (messages, max_tokens) = match &self.file {
            Some((r, _)) => (r.messages(prompt, response), r.max_tokens()),
            None => (self.cfg.rubric.messages(prompt, response), 64),
        };
        let body = serde_json::json!({ "model": self.cfg.model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens });
        let mut last = String::new();
        for i in 0..=self.cfg.retries {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(250 << (i - 1).min(6)));
            }
            match self.attempt(&body)? {
                Attempt::Reply(r) => {
                    self.remember(&key, &r)?;
                    return Ok(r);
                }
                Attempt::Retry(why) => last = why,
            }
        }
        bail!("remote judge: {}: {last} ({} attempts)", self.url(), self.cfg.retries + 1)
    }

    fn remember(&self, key: &str, reply: &str) -> Result<()> {
        let mut cache = self.cache.lock().map_err(|_| anyhow!("remote judge: cache poisoned"))?;
        cache.insert(key.to_string(), reply.to_string());
        if let Some(f) = &self.cache_file {
            if let Some(dir) = f.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut out = std::fs::OpenOptions::new().create(true).append(true).open(f)?;
            writeln!(out, "{}", serde_json::to_string(&(key, reply))?)?;
        }
        Ok(())
    }
}

impl Judge for RemoteJudge {
    fn name(&self) -> &str {
        "remote"
    }

    fn fingerprint(&self) -> String {
        match &self.file {
            Some((_, sha)) => format!("remote:{}:{}:file:{}", self.cfg.base_url, self.cfg.model, &sha[..16]),
            None => format!("remote:{}:{}:{:?}", self.cfg.base_url, self.cfg.model, self.cfg.rubric),
        }
    }

    fn judge(&self, prompt: &str, response: &str) -> Result<Verdict> {
        Ok(self.judge_scored(prompt, response)?.verdict)
    }

    fn judge_scored(&self, prompt: &str, response: &str) -> Result<Judgement> {
        if response.trim().is_empty() {
            return Ok(Judgement { verdict: Verdict::Empty, harm: None });
        }
        let reply = self.reply(prompt, response)?;
        let parsed = match &self.file {
            Some((r, _)) => r.parse(&reply),
            None => self.cfg.rubric.parse(&reply),
        };
        parsed.map_err(|e| anyhow!("remote judge: malformed reply from {}: {e}", self.url()))
    }

    /// `concurrency` worker threads take answers in turn; the first error wins.
    fn judge_all(&self, pairs: &[(String, String)]) -> Result<Vec<Judgement>> {
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<Judgement>>>> = pairs.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..self.cfg.concurrency.min(pairs.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((p, r)) = pairs.get(i) else { break };
                    let res = self.judge_scored(p, r);
                    let failed = res.is_err();
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(res);
                    }
                    if failed {
                        next.store(pairs.len(), Ordering::SeqCst);
                        break;
                    }
                });
            }
        });
        let slots: Vec<Option<Result<Judgement>>> =
            results.into_iter().map(|m| m.into_inner().map_err(|_| anyhow!("remote judge: a worker panicked"))).collect::<Result<_>>()?;
        // The first error, whatever its position; then every slot must be filled.
        if let Some(Some(Err(e))) = slots.iter().find(|s| matches!(s, Some(Err(_)))) {
            return Err(anyhow!("{e}"));
        }
        slots.into_iter().map(|s| s.ok_or_else(|| anyhow!("remote judge: an answer was not judged"))?).collect()
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Judge>> {
    let cfg: RemoteConfig = options(v, "eval.judge_options")?;
    Ok(Box::new(RemoteJudge::new(cfg)?))
}

inventory::submit! {
    JudgeEntry { name: "remote", description: "an OpenAI-compatible chat endpoint grades each answer (eval.judge_options: base_url, model, rubric qi-harmfulness|strongreject, api_key_env, concurrency, timeout_s, retries)", build }
}
