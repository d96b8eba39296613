//! One OpenAI-compatible chat-completions endpoint: requests with retries and
//! backoff, one-line errors, an on-disk reply cache, and bounded concurrency.
//! The remote judge and the remote grader both talk through it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a grading model is served and how to call it (`eval.mt_bench.grader_options`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:8080/v1` (`safetune serve`) or `https://api.openai.com/v1`.
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the API key (sent as a bearer token when set).
    pub api_key_env: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub timeout_s: f64,
    /// Extra attempts after a timeout, a connection error, 429 or 5xx.
    pub retries: usize,
    /// Cache replies under `<cache>/judge/` (the safetune cache directory).
    pub cache: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080/v1".into(),
            model: "default".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            concurrency: 4,
            timeout_s: 60.0,
            retries: 3,
            cache: true,
        }
    }
}

pub(crate) fn hash(parts: &[&str]) -> String {
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

pub(crate) struct Endpoint {
    pub cfg: EndpointConfig,
    /// Who is calling, in error messages (`remote judge`, `grader`).
    what: &'static str,
    key: Option<String>,
    agent: ureq::Agent,
    cache_file: Option<PathBuf>,
    cache: Mutex<std::collections::HashMap<String, String>>,
}

impl Endpoint {
    /// Checks the options (errors name `options.<field>`); replies are cached in
    /// `<cache_root>/judge/<hash of endpoint, model, tag>.jsonl`.
    pub fn new(cfg: EndpointConfig, what: &'static str, options: &str, tag: &str, cache_root: &Path) -> Result<Self> {
        if !cfg.base_url.starts_with("http://") && !cfg.base_url.starts_with("https://") {
            bail!("{options}.base_url: `{}` is not an http(s) URL", cfg.base_url);
        }
        if cfg.concurrency == 0 {
            bail!("{options}.concurrency: must be at least 1");
        }
        if !(cfg.timeout_s > 0.0 && cfg.timeout_s.is_finite()) {
            bail!("{options}.timeout_s: must be a positive number");
        }
        let key = std::env::var(&cfg.api_key_env).ok().filter(|k| !k.is_empty());
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let cache_file =
            cfg.cache.then(|| cache_root.join("judge").join(format!("{}.jsonl", &hash(&[&cfg.base_url, &cfg.model, tag])[..16])));
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
        Ok(Self { cfg, what, key, agent, cache_file, cache: Mutex::new(cache) })
    }

    pub fn url(&self) -> String {
        format!("{}/chat/completions", self.cfg.base_url.trim_end_matches('/'))
    }

    fn attempt(&self, body: &serde_json::Value) -> Result<Attempt> {
        let url = self.url();
        let what = self.what;
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
            401 | 403 => bail!("{what}: {url}: authentication failed (HTTP {status}); set {} to a valid key", self.cfg.api_key_env),
            429 | 500..=599 => return Ok(Attempt::Retry(format!("HTTP {status}"))),
            _ => bail!("{what}: {url}: HTTP {status}: {}", text.chars().take(200).collect::<String>()),
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("{what}: malformed reply from {url}: not JSON ({e})"))?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| anyhow!("{what}: malformed reply from {url}: no choices[0].message.content"))?;
        Ok(Attempt::Reply(content.to_string()))
    }

    /// The model's reply to `messages` (temperature 0): from the cache under `key`, else from the endpoint.
    pub fn reply(&self, key: &str, messages: serde_json::Value, max_tokens: usize) -> Result<String> {
        if let Some(r) = self.cache.lock().map_err(|_| anyhow!("{}: cache poisoned", self.what))?.get(key) {
            return Ok(r.clone());
        }
        let body = serde_json::json!({ "model": self.cfg.model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens });
        let mut last = String::new();
        for i in 0..=self.cfg.retries {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(250 << (i - 1).min(6)));
            }
            match self.attempt(&body)? {
                Attempt::Reply(r) => {
                    self.remember(key, &r)?;
                    return Ok(r);
                }
                Attempt::Retry(why) => last = why,
            }
        }
        bail!("{}: {}: {last} ({} attempts)", self.what, self.url(), self.cfg.retries + 1)
    }

    fn remember(&self, key: &str, reply: &str) -> Result<()> {
        let mut cache = self.cache.lock().map_err(|_| anyhow!("{}: cache poisoned", self.what))?;
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

    /// `f` over `items` on `concurrency` worker threads taking items in turn; results in
    /// input order; the first error (whatever its position) wins and stops the workers.
    pub fn map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<R>>>> = items.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..self.cfg.concurrency.min(items.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    let res = f(item);
                    let failed = res.is_err();
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(res);
                    }
                    if failed {
                        next.store(items.len(), Ordering::SeqCst);
                        break;
                    }
                });
            }
        });
        let what = self.what;
        let slots: Vec<Option<Result<R>>> =
            results.into_iter().map(|m| m.into_inner().map_err(|_| anyhow!("{what}: a worker panicked"))).collect::<Result<_>>()?;
        if let Some(Some(Err(e))) = slots.iter().find(|s| matches!(s, Some(Err(_)))) {
            return Err(anyhow!("{e}"));
        }
        slots.into_iter().map(|s| s.ok_or_else(|| anyhow!("{what}: a request was not made"))?).collect()
    }
}
