//! The Markdown summary table.

use crate::evaluate::ModelEval;
use crate::pipeline::CellResult;

pub struct Row {
    pub model: String,
    pub method: String,
    pub regime: String,
    pub eval: ModelEval,
}

impl Row {
    pub fn model(name: &str, eval: &ModelEval) -> Self {
        Self { model: name.into(), method: "-".into(), regime: "-".into(), eval: eval.clone() }
    }
    pub fn cell(r: &CellResult) -> Self {
        Self {
            model: "fine-tuned".into(),
            method: crate::stack::label(&r.method, &r.defenses),
            regime: r.regime.clone(),
            eval: r.eval.clone(),
        }
    }
}

fn pct(e: &safetune_core::judge::Estimate) -> String {
    format!("{:.1} [{:.1}, {:.1}] (n={})", 100.0 * e.value, 100.0 * e.ci_low, 100.0 * e.ci_high, e.n)
}

/// One row per model; ASR per safety set and task accuracy, percentages with 95% CIs.
pub fn markdown_table(rows: &[Row]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let mut head = vec!["model".to_string(), "method".into(), "regime".into()];
    head.extend(first.eval.safety.iter().map(|s| format!("ASR {} %", s.set)));
    let metric = match &first.eval.task.metric {
        safetune_core::judge::UtilityMetric::Labels(_) => "accuracy",
        safetune_core::judge::UtilityMetric::FinalNumber => "exact match",
        safetune_core::judge::UtilityMetric::RougeL => "ROUGE-L",
        safetune_core::judge::UtilityMetric::SqlExact => "SQL exact match",
        safetune_core::judge::UtilityMetric::Exact => "exact match",
    };
    head.push(format!("{} {metric} %", first.eval.task.task));
    head.push("unparseable".into());
    let mut out = format!("| {} |\n|{}|\n", head.join(" | "), vec!["---"; head.len()].join("|"));
    for r in rows {
        let mut cols = vec![r.model.clone(), r.method.clone(), r.regime.clone()];
        cols.extend(r.eval.safety.iter().map(|s| pct(&s.asr)));
        cols.push(pct(&r.eval.task.score));
        cols.push(r.eval.task.unparseable.to_string());
        out.push_str(&format!("| {} |\n", cols.join(" | ")));
    }
    out
}
