//! The summary table in Markdown, CSV and LaTeX.

use safetune_core::anyhow::anyhow;
use safetune_core::judge::{Estimate, UtilityMetric};
use safetune_core::Result;

use super::Row;
use safetune_eval::results::{Named, SafetyResult};

fn pct(e: &Estimate) -> String {
    format!("{:.1} [{:.1}, {:.1}] (n={})", 100.0 * e.value, 100.0 * e.ci_low, 100.0 * e.ci_high, e.n)
}

/// A rating on MT-Bench's 1–10 scale with its interval.
fn rating(e: &Estimate) -> String {
    format!("{:.2} [{:.2}, {:.2}] (n={})", e.value, e.ci_low, e.ci_high, e.n)
}

/// A set's rate, or why it is not a measurement (most answers empty).
fn rate(e: &Estimate, failure: Option<String>, show: impl Fn(&Estimate) -> String) -> String {
    match failure {
        Some(why) => format!("NOT MEASURED ({why})"),
        None => show(e),
    }
}

/// One row per model; ASR per safety set and task utility, percentages with 95% CIs.
pub fn markdown_table(rows: &[Row]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let mut head = vec!["model".to_string(), "method".into(), "regime".into()];
    head.extend(first.eval.safety.iter().map(|s| format!("ASR {} %", s.set)));
    head.extend(first.eval.safety.iter().filter(|s| s.harmful_score.is_some()).map(|s| format!("harmful score {} %", s.set)));
    head.extend(first.eval.safety.iter().filter(|s| s.asr_at_k.is_some()).map(|s| format!("ASR@K {} %", s.set)));
    head.extend(first.eval.safety.iter().filter(|s| s.variant_asr.is_some()).map(|s| format!("ASR any variant {} %", s.set)));
    head.extend(first.eval.safety.iter().filter(|s| s.refusal_consistency.is_some()).map(|s| format!("refusal consistency {} %", s.set)));
    head.extend(first.eval.over_refusal.iter().map(|s| format!("over-refusal {} %", s.set)));
    head.push(format!("{} {} %", first.eval.task.task, UtilityMetric::name(&first.eval.task.metric)));
    head.extend(first.eval.task.also.iter().map(|a| format!("{} {} %", first.eval.task.task, a.name)));
    head.push("unparseable".into());
    head.extend(first.eval.mmlu.iter().map(|m| format!("MMLU {}-shot %", m.shots)));
    if first.eval.mt_bench.is_some() {
        head.push("MT-Bench (1-10)".into());
    }
    let retention_sets: Vec<String> =
        rows.iter().find(|r| !r.retention.is_empty()).map(|r| r.retention.iter().map(|(s, _)| s.clone()).collect()).unwrap_or_default();
    head.extend(retention_sets.iter().map(|s| format!("refusals kept {s} %")));
    let mut out = format!("| {} |\n|{}|\n", head.join(" | "), vec!["---"; head.len()].join("|"));
    for r in rows {
        let mut cols = vec![r.model.clone(), r.method.clone(), r.regime.clone()];
        cols.extend(r.eval.safety.iter().map(|s| rate(&s.asr, s.failure(), pct)));
        cols.extend(
            r.eval.safety.iter().filter(|s| s.harmful_score.is_some()).map(|s| s.harmful_score.as_ref().map(pct).unwrap_or_default()),
        );
        let picks: [fn(&SafetyResult) -> &Option<Estimate>; 3] = [|s| &s.asr_at_k, |s| &s.variant_asr, |s| &s.refusal_consistency];
        for pick in picks {
            // Columns follow the first row's sets; a row without the figure shows "-".
            for f in first.eval.safety.iter().filter(|f| pick(f).is_some()) {
                let e = r.eval.safety.iter().find(|s| s.set == f.set).and_then(|s| pick(s).as_ref());
                cols.push(e.map(pct).unwrap_or_else(|| "-".into()));
            }
        }
        cols.extend(r.eval.over_refusal.iter().map(|s| rate(&s.refusal_rate, s.failure(), pct)));
        cols.push(pct(&r.eval.task.score));
        for a in &first.eval.task.also {
            cols.push(r.eval.task.also.iter().find(|b| b.name == a.name).map(|b| pct(&b.estimate)).unwrap_or_else(|| "-".into()));
        }
        cols.push(r.eval.task.unparseable.to_string());
        for m in &first.eval.mmlu {
            cols.push(r.eval.mmlu.iter().find(|x| x.shots == m.shots).map(|x| pct(&x.accuracy)).unwrap_or_else(|| "-".into()));
        }
        if first.eval.mt_bench.is_some() {
            cols.push(r.eval.mt_bench.as_ref().map(|m| rating(&m.score)).unwrap_or_else(|| "-".into()));
        }
        for set in &retention_sets {
            cols.push(r.retention.iter().find(|(s, _)| s == set).map(|(_, e)| pct(e)).unwrap_or_else(|| "-".into()));
        }
        out.push_str(&format!("| {} |\n", cols.join(" | ")));
    }
    out.push_str(&category_table(rows));
    out
}

/// ASR per harm category and the share refused per prompt type (sets whose prompts carry
/// one), one column per model.
fn category_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let Some(first) = rows.first() else { return out };
    for s in first.eval.safety.iter().filter(|s| !s.by_category.is_empty()) {
        out.push_str(&per_category_table(rows, &format!("ASR % per category of {}", s.set), "category", &s.by_category, |r| {
            r.eval.safety.iter().find(|x| x.set == s.set).map(|x| x.by_category.as_slice())
        }));
    }
    for s in first.eval.over_refusal.iter().filter(|s| !s.by_category.is_empty()) {
        out.push_str(&per_category_table(rows, &format!("Refused % per prompt type of {}", s.set), "prompt type", &s.by_category, |r| {
            r.eval.over_refusal.iter().find(|x| x.set == s.set).map(|x| x.by_category.as_slice())
        }));
    }
    out
}

/// One table: a line per category of `categories` (first column headed `what`), a column per
/// row (`of` gives a row's figures for the set; "-" where it has none).
fn per_category_table(rows: &[Row], title: &str, what: &str, categories: &[Named], of: impl Fn(&Row) -> Option<&[Named]>) -> String {
    let names: Vec<String> = rows.iter().map(|r| format!("{} {} {}", r.model, r.method, r.regime).trim().to_string()).collect();
    let mut out = format!("\n{title}:\n\n| {what} | {} |\n|---|{}|\n", names.join(" | "), vec!["---"; names.len()].join("|"));
    for c in categories {
        let cols: Vec<String> = rows
            .iter()
            .map(|r| {
                of(r)
                    .and_then(|x| x.iter().find(|y| y.name == c.name))
                    .map(|y| format!("{:.0} (n={})", 100.0 * y.estimate.value, y.estimate.n))
                    .unwrap_or_else(|| "-".into())
            })
            .collect();
        out.push_str(&format!("| {} | {} |\n", c.name, cols.join(" | ")));
    }
    out
}

/// Long format, one line per model × metric: fractions in [0, 1] with their interval
/// (MT-Bench ratings on their 1–10 scale).
pub fn csv_table(rows: &[Row]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["model", "method", "regime", "poison_ratio", "metric", "set", "value", "ci_low", "ci_high", "n", "unparseable"])?;
    for r in rows {
        let p = r.poison_ratio.map(|p| p.to_string()).unwrap_or_default();
        // `unparseable` is empty where it does not apply.
        let mut line = |metric: &str, set: &str, e: &Estimate, unparseable: &str| {
            let (value, low, high, n) = (e.value.to_string(), e.ci_low.to_string(), e.ci_high.to_string(), e.n.to_string());
            w.write_record([&r.model, &r.method, &r.regime, &p, metric, set, &value, &low, &high, &n, unparseable])
        };
        for s in &r.eval.safety {
            line("asr", &s.set, &s.asr, "")?;
        }
        for s in &r.eval.safety {
            for (metric, e) in [
                ("harmful-score", &s.harmful_score),
                ("asr@k", &s.asr_at_k),
                ("asr-any-variant", &s.variant_asr),
                ("refusal-consistency", &s.refusal_consistency),
            ] {
                if let Some(e) = e {
                    line(metric, &s.set, e, "")?;
                }
            }
        }
        for s in &r.eval.over_refusal {
            line("over-refusal", &s.set, &s.refusal_rate, "")?;
            for c in &s.by_category {
                line("over-refusal", &format!("{}/{}", s.set, c.name), &c.estimate, "")?;
            }
        }
        for (set, e) in &r.retention {
            line("refusal-retention", set, e, "")?;
        }
        for s in &r.eval.safety {
            for c in &s.by_category {
                line("asr", &format!("{}/{}", s.set, c.name), &c.estimate, "")?;
            }
        }
        for m in &r.eval.mmlu {
            line(&format!("mmlu-{}shot", m.shots), "mmlu", &m.accuracy, "0")?;
        }
        if let Some(m) = &r.eval.mt_bench {
            for (set, e) in [("mt-bench", &m.score), ("mt-bench/turn1", &m.turn1), ("mt-bench/turn2", &m.turn2)] {
                line("mt-bench-rating", set, e, &m.unrated.to_string())?;
            }
            for c in &m.by_category {
                line("mt-bench-rating", &format!("mt-bench/{}", c.name), &c.estimate, "")?;
            }
        }
        let t = &r.eval.task;
        for a in &t.also {
            line(&a.name, &t.task, &a.estimate, "")?;
        }
        line(UtilityMetric::name(&t.metric), &t.task, &t.score, &t.unparseable.to_string())?;
    }
    Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow!("{e}"))?)?)
}

fn tex(s: &str) -> String {
    s.replace('\\', "\\textbackslash{}").replace('_', "\\_").replace('%', "\\%").replace('&', "\\&").replace('#', "\\#")
}

/// A `booktabs` table: value with its interval in a smaller font.
pub fn latex_table(rows: &[Row], caption: &str) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let mut head = vec!["model".to_string(), "method".into(), "regime".into()];
    head.extend(first.eval.safety.iter().map(|s| format!("ASR {} (\\%)", tex(&s.set))));
    head.push(format!("{} {} (\\%)", tex(&first.eval.task.task), tex(UtilityMetric::name(&first.eval.task.metric))));
    let cell = |e: &Estimate| format!("{:.1} {{\\scriptsize [{:.1}, {:.1}]}}", 100.0 * e.value, 100.0 * e.ci_low, 100.0 * e.ci_high);
    let mut out = String::from("% needs \\usepackage{booktabs}\n\\begin{table}[t]\n\\centering\n");
    out.push_str(&format!("\\begin{{tabular}}{{lll{}}}\n\\toprule\n", "r".repeat(head.len() - 3)));
    out.push_str(&format!("{} \\\\\n\\midrule\n", head.join(" & ")));
    for r in rows {
        let mut cols = vec![tex(&r.model), tex(&r.method), tex(&r.regime)];
        cols.extend(r.eval.safety.iter().map(|s| rate(&s.asr, s.failure(), cell)));
        cols.push(cell(&r.eval.task.score));
        out.push_str(&format!("{} \\\\\n", cols.join(" & ")));
    }
    out.push_str(&format!(
        "\\bottomrule\n\\end{{tabular}}\n\\caption{{{}: attack success rate and task utility, 95\\% bootstrap intervals.}}\n\\end{{table}}\n",
        tex(caption)
    ));
    out
}
