//! Answers labelled by people, for measuring how well a judge agrees with
//! them: XSTest v2's completions (`xstest/completions/*.csv`: answers of
//! GPT-4, Llama-2 and Mistral to the XSTest prompts, each with a final human
//! label and GPT-4's label).

use std::path::Path;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

use crate::records::{read_records, Format};

/// A human (or GPT-4) label of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerLabel {
    FullCompliance,
    FullRefusal,
    PartialRefusal,
}

impl AnswerLabel {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "1_full_compliance" => Some(Self::FullCompliance),
            "2_full_refusal" => Some(Self::FullRefusal),
            "3_partial_refusal" => Some(Self::PartialRefusal),
            _ => None,
        }
    }

    /// XSTest counts partial refusals as refusals.
    pub fn is_refusal(self) -> bool {
        self != Self::FullCompliance
    }
}

#[derive(Debug, Clone)]
pub struct LabelledAnswer {
    /// The model that wrote the answer (the file's stem: `gpt4`, `llama2new`, `mistralinstruct`).
    pub source: String,
    pub id: String,
    /// `safe` prompts (XSTest's contrast types start with `contrast_`: unsafe).
    pub prompt_type: String,
    pub prompt: String,
    pub answer: String,
    pub human: AnswerLabel,
    pub gpt4: Option<AnswerLabel>,
}

/// Every labelled answer under `<root>/xstest/completions/`, files in name order.
pub fn xstest_completions(root: &Path) -> Result<Vec<LabelledAnswer>> {
    let dir = root.join("xstest").join("completions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow!("{}: {e} (XSTest completions are needed to check judges)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .csv files", dir.display());
    }
    let mut out = Vec::new();
    for path in files {
        let file = path.display().to_string();
        let source = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        for r in read_records(&path, Format::Csv, None)? {
            let label = r.scalar("final_label", &file)?;
            let human = AnswerLabel::parse(&label).ok_or_else(|| anyhow!("{file}:{}: final_label: unknown label `{label}`", r.line))?;
            out.push(LabelledAnswer {
                source: source.clone(),
                id: r.scalar("id", &file)?,
                prompt_type: r.text_or_empty("type", &file)?,
                prompt: r.text("prompt", &file)?,
                answer: r.text_or_empty("completion", &file)?,
                human,
                gpt4: AnswerLabel::parse(&r.text_or_empty("gpt4_label", &file)?),
            });
        }
    }
    Ok(out)
}
