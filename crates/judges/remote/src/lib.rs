//! safetune-judge-remote: a judge that asks an OpenAI-compatible
//! chat-completions endpoint (`POST {base_url}/chat/completions`) to grade
//! each answer with a rubric ([`Rubric`]). Requests run with bounded
//! concurrency, retry with exponential backoff on timeouts, connection errors,
//! 429 and 5xx, and are cached on disk by a hash of (endpoint model, rubric,
//! prompt, answer), so a rerun or a rejudge asks nothing twice. Errors are
//! one line: authentication, timeout, malformed reply. Registered as `remote`;
//! options come from the spec's `eval.judge_options`.

mod endpoint;
mod grader;
mod rubric;

use std::path::PathBuf;

use safetune_core::anyhow::anyhow;
use safetune_core::judge::{Judge, Judgement, Verdict};
use safetune_core::registry::{inventory, options, JudgeEntry};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use endpoint::EndpointConfig;
use endpoint::{hash, Endpoint};
pub use grader::RemoteGrader;
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
        let e = EndpointConfig::default();
        Self {
            base_url: e.base_url,
            model: e.model,
            api_key_env: e.api_key_env,
            rubric: Rubric::QiHarmfulness,
            rubric_file: None,
            concurrency: e.concurrency,
            timeout_s: e.timeout_s,
            retries: e.retries,
            cache: e.cache,
        }
    }
}

impl RemoteConfig {
    /// The endpoint part of the options.
    pub fn endpoint(&self) -> EndpointConfig {
        EndpointConfig {
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key_env: self.api_key_env.clone(),
            concurrency: self.concurrency,
            timeout_s: self.timeout_s,
            retries: self.retries,
            cache: self.cache,
        }
    }
}

/// How answers are graded: a built-in rubric, or a rubric file and its sha256.
enum Grading {
    BuiltIn(Rubric),
    File(RubricFile, String),
}

impl Grading {
    /// Names the rubric in cache file names and the fingerprint.
    fn id(&self) -> String {
        match self {
            Grading::BuiltIn(r) => format!("{r:?}"),
            Grading::File(_, sha) => format!("file:{sha}"),
        }
    }
    fn messages(&self, prompt: &str, response: &str) -> serde_json::Value {
        match self {
            Grading::BuiltIn(r) => r.messages(prompt, response),
            Grading::File(f, _) => f.messages(prompt, response),
        }
    }
    fn max_tokens(&self) -> usize {
        match self {
            Grading::BuiltIn(_) => 64,
            Grading::File(f, _) => f.max_tokens() as usize,
        }
    }
    fn parse(&self, reply: &str) -> Result<Judgement> {
        match self {
            Grading::BuiltIn(r) => r.parse(reply),
            Grading::File(f, _) => f.parse(reply),
        }
    }
}

pub struct RemoteJudge {
    endpoint: Endpoint,
    grading: Grading,
}

impl RemoteJudge {
    pub fn new(cfg: RemoteConfig) -> Result<Self> {
        Self::with_cache_dir(cfg, &safetune_core::cache_dir())
    }

    /// As [`RemoteJudge::new`], with replies cached under `<cache_root>/judge/`.
    pub fn with_cache_dir(cfg: RemoteConfig, cache_root: &std::path::Path) -> Result<Self> {
        let grading = match &cfg.rubric_file {
            Some(p) => {
                let (r, text) = RubricFile::read(p)?;
                Grading::File(r, hash(&[&text]))
            }
            None => Grading::BuiltIn(cfg.rubric),
        };
        let endpoint = Endpoint::new(cfg.endpoint(), "remote judge", "judges.remote", &grading.id(), cache_root)?;
        Ok(Self { endpoint, grading })
    }

    /// The grader's reply for one answer: from the cache, else from the endpoint.
    fn reply(&self, prompt: &str, response: &str) -> Result<String> {
        self.endpoint.reply(&hash(&[prompt, response]), self.grading.messages(prompt, response), self.grading.max_tokens())
    }
}

impl Judge for RemoteJudge {
    fn name(&self) -> &str {
        "remote"
    }

    fn fingerprint(&self) -> String {
        let id = match &self.grading {
            Grading::File(_, sha) => format!("file:{}", &sha[..16]),
            Grading::BuiltIn(r) => format!("{r:?}"),
        };
        format!("remote:{}:{}:{id}", self.endpoint.cfg.base_url, self.endpoint.cfg.model)
    }

    fn judge(&self, prompt: &str, response: &str) -> Result<Verdict> {
        Ok(self.judge_scored(prompt, response)?.verdict)
    }

    fn judge_scored(&self, prompt: &str, response: &str) -> Result<Judgement> {
        if response.trim().is_empty() {
            return Ok(Judgement { verdict: Verdict::Empty, harm: None });
        }
        let reply = self.reply(prompt, response)?;
        self.grading.parse(&reply).map_err(|e| anyhow!("remote judge: malformed reply from {}: {e}", self.endpoint.url()))
    }

    /// `concurrency` requests in flight; the first error wins.
    fn judge_all(&self, pairs: &[(String, String)]) -> Result<Vec<Judgement>> {
        self.endpoint.map(pairs, |(p, r)| self.judge_scored(p, r))
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn Judge>> {
    let cfg: RemoteConfig = options(v, "eval.judge_options")?;
    Ok(Box::new(RemoteJudge::new(cfg)?))
}

inventory::submit! {
    JudgeEntry { name: "remote", description: "an OpenAI-compatible chat endpoint grades each answer (eval.judge_options: base_url, model, rubric qi-harmfulness|strongreject, api_key_env, concurrency, timeout_s, retries)", build }
}
