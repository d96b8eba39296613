//! MT-Bench's grading material, as FastChat's `llm_judge` publishes it: the
//! judge prompts (`judge_prompts.jsonl`: `name`, `system_prompt`,
//! `prompt_template` with Python `str.format` fields, `output_format`) and
//! GPT-4's reference answers for the categories graded against one
//! (`reference_answer/gpt-4.jsonl`). Read from files the spec names, else
//! downloaded once from github.com/lm-sys/FastChat at a pinned commit into the
//! safetune cache (offline afterwards).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::hub::HubClient;

pub const FASTCHAT_REPO: &str = "lm-sys/FastChat";
/// The FastChat commit the files are read at (the repository head of 2025-04-12; `question.jsonl`
/// there equals `shared/data/mt_bench/question.jsonl` byte for byte).
pub const FASTCHAT_COMMIT: &str = "0e6d3e4beaab66f4d3f93db72541a4abab8af28d";
pub const JUDGE_PROMPTS_PATH: &str = "fastchat/llm_judge/data/judge_prompts.jsonl";
pub const REFERENCE_ANSWERS_PATH: &str = "fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl";
pub const QUESTIONS_PATH: &str = "fastchat/llm_judge/data/mt_bench/question.jsonl";
/// Categories graded against a reference answer (FastChat's `NEED_REF_CATS`).
pub const NEEDS_REFERENCE: [&str; 3] = ["math", "reasoning", "coding"];
/// The single-answer grading prompts used: (first turn, second turn), without and with a reference.
pub const SINGLE: (&str, &str) = ("single-v1", "single-v1-multi-turn");
pub const SINGLE_MATH: (&str, &str) = ("single-math-v1", "single-math-v1-multi-turn");

/// One grading prompt of `judge_prompts.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct JudgePrompt {
    pub name: String,
    pub system_prompt: String,
    pub prompt_template: String,
    pub output_format: String,
}

impl JudgePrompt {
    /// The template with its fields filled as Python's `str.format` fills them (`{{`/`}}` are
    /// braces); a field the template names but `fields` lacks is an error naming the prompt.
    pub fn render(&self, fields: &[(&str, &str)]) -> Result<String> {
        let t = &self.prompt_template;
        let mut out = String::with_capacity(t.len() + fields.iter().map(|(_, v)| v.len()).sum::<usize>());
        let mut rest = t.as_str();
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                out.push_str(&tail[..1]);
                rest = &tail[2..];
            } else if let Some(name) = tail.strip_prefix('{').and_then(|s| s.split_once('}')).map(|(n, _)| n) {
                let value = fields
                    .iter()
                    .find(|(k, _)| *k == name)
                    .ok_or_else(|| anyhow!("MT-Bench judge prompt `{}`: field `{{{name}}}` has no value", self.name))?;
                out.push_str(value.1);
                rest = &tail[name.len() + 2..];
            } else {
                bail!("MT-Bench judge prompt `{}`: unmatched `{}` in prompt_template", self.name, &tail[..1]);
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The prompts and reference answers MT-Bench is graded with.
#[derive(Debug, Clone)]
pub struct MtBenchJudging {
    pub prompts: BTreeMap<String, JudgePrompt>,
    /// Reference answers per question id (both turns).
    pub references: BTreeMap<u64, Vec<String>>,
    /// sha256 of the two files' contents (cache keys).
    pub sha256: String,
}

impl MtBenchJudging {
    /// The prompt of that name (loading checked the four single-answer ones exist).
    pub fn prompt(&self, name: &str) -> Result<&JudgePrompt> {
        self.prompts.get(name).ok_or_else(|| anyhow!("MT-Bench judge prompts: no prompt `{name}`"))
    }
}

/// Reads the judge prompts and reference answers: the given files, else FastChat's (downloaded
/// once into the cache). Errors name the file, line and field.
pub fn load_judging(prompts: Option<&Path>, references: Option<&Path>, hub: &HubClient) -> Result<MtBenchJudging> {
    let fetch = |given: Option<&Path>, path: &str| -> Result<PathBuf> {
        match given {
            Some(p) => Ok(p.to_path_buf()),
            None => hub.github_file(FASTCHAT_REPO, FASTCHAT_COMMIT, path),
        }
    };
    let prompts_file = fetch(prompts, JUDGE_PROMPTS_PATH)?;
    let refs_file = fetch(references, REFERENCE_ANSWERS_PATH)?;
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| anyhow!("{}: {e}", p.display()));
    let (ptext, rtext) = (read(&prompts_file)?, read(&refs_file)?);
    let mut h = Sha256::new();
    for t in [&ptext, &rtext] {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let mut all = BTreeMap::new();
    for (line, v) in json_lines(&prompts_file, &ptext)? {
        let field = |k: &str| -> Result<String> {
            v[k].as_str().map(str::to_string).ok_or_else(|| anyhow!("{}:{line}: field `{k}`: expected a string", prompts_file.display()))
        };
        let p = JudgePrompt {
            name: field("name")?,
            system_prompt: field("system_prompt")?,
            prompt_template: field("prompt_template")?,
            output_format: field("output_format")?,
        };
        all.insert(p.name.clone(), p);
    }
    for name in [SINGLE.0, SINGLE.1, SINGLE_MATH.0, SINGLE_MATH.1] {
        let p = all.get(name).ok_or_else(|| anyhow!("{}: no judge prompt named `{name}`", prompts_file.display()))?;
        if p.output_format != "[[rating]]" {
            bail!("{}: judge prompt `{name}`: output_format `{}`, expected `[[rating]]`", prompts_file.display(), p.output_format);
        }
    }
    let mut references = BTreeMap::new();
    for (line, v) in json_lines(&refs_file, &rtext)? {
        let shown = refs_file.display();
        let id = v["question_id"].as_u64().ok_or_else(|| anyhow!("{shown}:{line}: field `question_id`: expected a number"))?;
        let turns = v["choices"][0]["turns"]
            .as_array()
            .and_then(|t| t.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| anyhow!("{shown}:{line}: field `choices[0].turns`: expected a list of strings"))?;
        references.insert(id, turns);
    }
    Ok(MtBenchJudging { prompts: all, references, sha256 })
}

/// The non-blank lines of a JSONL file as JSON objects, with their line numbers.
fn json_lines(path: &Path, text: &str) -> Result<Vec<(usize, serde_json::Value)>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).map_err(|e| anyhow!("{}:{}: not JSON ({e})", path.display(), i + 1))?;
            if !v.is_object() {
                bail!("{}:{}: expected a JSON object", path.display(), i + 1);
            }
            Ok((i + 1, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(t: &str) -> JudgePrompt {
        JudgePrompt { name: "p".into(), system_prompt: String::new(), prompt_template: t.into(), output_format: "[[rating]]".into() }
    }

    #[test]
    fn templates_fill_as_python_format_does() {
        let p = prompt("Q: {question}\nA: {answer} as \"[[rating]]\" {{literal}}");
        assert_eq!(p.render(&[("question", "q {x}"), ("answer", "a")]).unwrap(), "Q: q {x}\nA: a as \"[[rating]]\" {literal}");
        let err = prompt("{question} {ref_answer_1}").render(&[("question", "q")]).unwrap_err().to_string();
        assert!(err.contains("ref_answer_1"), "{err}");
        assert!(prompt("a } b").render(&[]).is_err());
    }
}
