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

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::judge::{Judge, Judgement, Verdict};
use safetune_core::registry::{inventory, options, JudgeEntry};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use endpoint::EndpointConfig;
use endpoint::{hash, Endpoint};
pub use grader::RemoteGrader;
pub use rubric::{Rubric, RubricFile};

/// The remote judge's options (`eval.judge_options`): where the grading model is served
/// ([`EndpointConfig`], the same keys as the MT-Bench grader's) and how it grades.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RemoteConfig {
    #[serde(flatten)]
    pub endpoint: EndpointConfig,
    pub rubric: Rubric,
    /// A rubric file (TOML: `user` prompt with `{request}` and `{answer}`, optional `system`,
    /// `scale`, `score_field`, `max_tokens`; see [`RubricFile`]) used instead of `rubric`, e.g.
    /// a paper's published grading prompt. Relative to the spec file that names it.
    pub rubric_file: Option<PathBuf>,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self { endpoint: EndpointConfig::default(), rubric: Rubric::QiHarmfulness, rubric_file: None }
    }
}

/// The keys of [`RemoteConfig`] that are not the endpoint's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GradingOptions {
    rubric: Rubric,
    rubric_file: Option<PathBuf>,
}

impl Default for GradingOptions {
    fn default() -> Self {
        let d = RemoteConfig::default();
        Self { rubric: d.rubric, rubric_file: d.rubric_file }
    }
}

impl RemoteConfig {
    /// Reads the options table at `path` of a spec (`null`: the defaults). serde cannot deny
    /// unknown keys through `flatten`: the keys are checked against this type's schema, then
    /// the table is split into the grading keys and the endpoint's.
    pub fn from_options(v: &serde_json::Value, path: &str) -> Result<Self> {
        let (mut grading, mut rest) = (serde_json::Map::new(), serde_json::Map::new());
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Object(m) => {
                let schema = safetune_core::registry::schema_of::<Self>();
                let known: Vec<&String> = schema["properties"].as_object().map(|p| p.keys().collect()).unwrap_or_default();
                if let Some(k) = m.keys().find(|k| !known.contains(k)) {
                    let known: Vec<&str> = known.iter().map(|k| k.as_str()).collect();
                    bail!("{path}.{k}: unknown key (known: {})", known.join(", "));
                }
                for (k, x) in m {
                    let part = if k == "rubric" || k == "rubric_file" { &mut grading } else { &mut rest };
                    part.insert(k.clone(), x.clone());
                }
            }
            other => bail!("{path}: expected a table of options, found `{other}`"),
        }
        let endpoint: EndpointConfig = options(&serde_json::Value::Object(rest), path)?;
        let g: GradingOptions = options(&serde_json::Value::Object(grading), path)?;
        Ok(Self { endpoint, rubric: g.rubric, rubric_file: g.rubric_file })
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
        let endpoint = Endpoint::new(cfg.endpoint, "remote judge", "judges.remote", &grading.id(), cache_root)?;
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
    let cfg = RemoteConfig::from_options(v, "eval.judge_options")?;
    Ok(Box::new(RemoteJudge::new(cfg)?))
}

inventory::submit! {
    JudgeEntry { name: "remote", description: "an OpenAI-compatible chat endpoint grades each answer (eval.judge_options: base_url, model, rubric qi-harmfulness|strongreject, api_key_env, concurrency, timeout_s, retries)", build }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_both_parts_and_name_an_unknown_key() {
        let v = serde_json::json!({ "base_url": "http://h/v1", "retries": 7, "rubric": "strongreject" });
        let c = RemoteConfig::from_options(&v, "eval.judge_options").unwrap();
        assert_eq!((c.endpoint.base_url.as_str(), c.endpoint.retries, c.rubric), ("http://h/v1", 7, Rubric::Strongreject));
        assert_eq!(c.endpoint.concurrency, EndpointConfig::default().concurrency);
        assert_eq!(RemoteConfig::from_options(&serde_json::Value::Null, "x").unwrap(), RemoteConfig::default());
        let typo = RemoteConfig::from_options(&serde_json::json!({ "retires": 2 }), "eval.judge_options").unwrap_err().to_string();
        assert!(typo.starts_with("eval.judge_options.retires: unknown key (known: "), "{typo}");
        assert!(typo.contains("retries") && typo.contains("rubric_file"), "{typo}");
        let bad = RemoteConfig::from_options(&serde_json::json!({ "rubric": "nope" }), "eval.judge_options").unwrap_err().to_string();
        assert!(bad.starts_with("eval.judge_options.rubric"), "{bad}");
        let not_table = RemoteConfig::from_options(&serde_json::json!(3), "eval.judge_options").unwrap_err().to_string();
        assert!(not_table.starts_with("eval.judge_options: expected a table"), "{not_table}");
    }
}
