//! The remote grader: a chat model behind an OpenAI-compatible endpoint that
//! replies to grading conversations (MT-Bench's single-answer grading).
//! Registered as grader `remote`; options are an [`EndpointConfig`].

use safetune_core::judge::ChatGrader;
use safetune_core::registry::{inventory, options, GraderEntry};
use safetune_core::Result;

use crate::endpoint::{hash, Endpoint, EndpointConfig};

pub struct RemoteGrader {
    endpoint: Endpoint,
}

impl RemoteGrader {
    pub fn new(cfg: EndpointConfig) -> Result<Self> {
        Self::with_cache_dir(cfg, &safetune_core::cache_dir())
    }

    /// As [`RemoteGrader::new`], with replies cached under `<cache_root>/judge/`.
    pub fn with_cache_dir(cfg: EndpointConfig, cache_root: &std::path::Path) -> Result<Self> {
        Ok(Self { endpoint: Endpoint::new(cfg, "grader", "eval.mt_bench.grader_options", "grader", cache_root)? })
    }
}

impl ChatGrader for RemoteGrader {
    fn complete_all(&self, conversations: &[Vec<(String, String)>], max_tokens: usize) -> Result<Vec<String>> {
        self.endpoint.map(conversations, |conv| {
            let messages: Vec<serde_json::Value> =
                conv.iter().map(|(role, content)| serde_json::json!({ "role": role, "content": content })).collect();
            let messages = serde_json::Value::Array(messages);
            let key = hash(&[&messages.to_string(), &max_tokens.to_string()]);
            self.endpoint.reply(&key, messages, max_tokens)
        })
    }

    fn fingerprint(&self) -> String {
        format!("remote:{}:{}", self.endpoint.cfg.base_url, self.endpoint.cfg.model)
    }
}

fn build(v: &serde_json::Value) -> Result<Box<dyn ChatGrader>> {
    let cfg: EndpointConfig = options(v, "eval.mt_bench.grader_options")?;
    Ok(Box::new(RemoteGrader::new(cfg)?))
}

inventory::submit! {
    GraderEntry { name: "remote", description: "an OpenAI-compatible chat endpoint replies to grading prompts (eval.mt_bench.grader_options: base_url, model, api_key_env, concurrency, timeout_s, retries, cache)", build }
}
