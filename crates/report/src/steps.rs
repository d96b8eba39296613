//! The harmful share, step by step: the aligned model, then each method's undefended cells
//! in order of the harmful share of their fine-tuning data (benign, low-harm, high-harm,
//! pure-bad), each against the one before it on the same prompts (and the benign cell against
//! the most harmful mixed regime, the whole span) — the difference of mean ASR with its
//! 95% paired bootstrap interval over prompts, pooled over the seeds — so a reader sees
//! whether ASR rises at every step beyond what the prompts' sampling could give — and, with
//! two seeds or more, the 95% t-interval of the seeds' own differences (each seed's two
//! models share its aligned model, so the seeds' spread is the alignment's as well as the
//! fine-tuning's: a step can rise beyond the prompts' noise on every seed and still be small
//! against it).

use std::path::PathBuf;

use super::paired::{difference, Measure};
use safetune_core::Result;
use safetune_eval::results::{CellResult, ModelEval};

/// The label of the aligned model an undefended cell is trained from.
const ALIGNED: &str = "aligned";

/// A model of a run: its label under `generations/` and its evaluation.
type Labelled = (String, ModelEval);

/// One step, pooled over seeds: from the aligned model to the least harmful regime, or from
/// one regime to the next more harmful one.
#[derive(Debug, Clone)]
pub struct Step {
    pub task: String,
    pub method: String,
    pub from: String,
    pub to: String,
    /// Seeds with both models evaluated.
    pub seeds: Vec<u64>,
    /// Mean ASR of `to` minus `from` (fraction), with the paired interval over prompts; `None`
    /// when a seed's answers are not stored or do not give the cells' own figures.
    pub diff: Option<safetune_core::judge::Estimate>,
    /// With two seeds or more: the mean of the seeds' differences of mean ASR (fraction) and
    /// the half-width of its 95% t-interval across seeds.
    pub across: Option<(f64, f64)>,
    /// Not a step but the whole span from the benign cell to the most harmful mixed regime
    /// (below pure harmful data), when other regimes lie between them: the comparison the
    /// testbed's "benign against high-harm" reading asks for, on the same prompts.
    pub span: bool,
}

/// `rises`, `falls` (the interval leaves out zero) or `within noise`.
fn read(low: f64, high: f64) -> &'static str {
    if low > 0.0 {
        "rises"
    } else if high < 0.0 {
        "falls"
    } else {
        "within noise"
    }
}

impl Step {
    /// [`read`] on the interval over prompts, or `not measured`.
    pub fn reading(&self) -> &'static str {
        self.diff.as_ref().map_or("not measured", |d| read(d.ci_low, d.ci_high))
    }

    /// The same reading on the interval across seeds; `None` with fewer than two seeds.
    pub fn seed_reading(&self) -> Option<&'static str> {
        self.across.map(|(mean, half)| read(mean - half, mean + half))
    }
}

/// The undefended cells of `runs` (task, seed, run directory), per task and method, in order
/// of harmful share, after the aligned model they were trained from (`aligned`); every two
/// neighbours make a [`Step`] — the first, aligned → the least harmful regime, is what
/// fine-tuning on that data did on its own.
pub fn steps(runs: &[(String, u64, PathBuf)]) -> Result<Vec<Step>> {
    let mut cells: Vec<(String, PathBuf, CellResult)> = Vec::new();
    for (task, _, dir) in runs {
        for c in super::cell_results(dir)?.into_iter().filter(|c| c.defenses.is_empty()) {
            cells.push((task.clone(), dir.clone(), c));
        }
    }
    // (task, method) in the order first seen; regimes by harmful share.
    let mut keys: Vec<(String, String)> = Vec::new();
    for (t, _, c) in &cells {
        let k = (t.clone(), c.method.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out = Vec::new();
    for (task, method) in keys {
        let mut regimes: Vec<(f64, String)> = Vec::new();
        for (_, _, c) in cells.iter().filter(|(t, _, c)| *t == task && c.method == method) {
            if !regimes.iter().any(|(_, r)| *r == c.regime) {
                regimes.push((c.poison_ratio, c.regime.clone()));
            }
        }
        regimes.sort_by(|a, b| a.0.total_cmp(&b.0));
        let names: Vec<&str> = std::iter::once(ALIGNED).chain(regimes.iter().map(|(_, r)| r.as_str())).collect();
        let mut pairs: Vec<(&str, &str, bool)> = names.windows(2).map(|w| (w[0], w[1], false)).collect();
        let benign = regimes.iter().position(|(p, _)| *p == 0.0);
        let mixed = regimes.iter().rposition(|(p, _)| *p > 0.0 && *p < 1.0);
        if let (Some(b), Some(m)) = (benign, mixed) {
            if m > b + 1 {
                pairs.push((&regimes[b].1, &regimes[m].1, true));
            }
        }
        for (from, to, span) in pairs {
            // Per seed with both models: its run directory and each model's label and evaluation.
            let mut points: Vec<(u64, &PathBuf, Labelled, Labelled)> = Vec::new();
            for (_, seed, dir) in runs.iter().filter(|(t, ..)| *t == task) {
                let at = |name: &str| -> Option<Labelled> {
                    if name == ALIGNED {
                        return Some((ALIGNED.into(), super::read_json(&dir.join("models").join(format!("{ALIGNED}.json"))).ok()?));
                    }
                    let (_, _, c) = cells.iter().find(|(t, d, c)| *t == task && d == dir && c.method == method && c.regime == name)?;
                    Some((c.cell.clone(), c.eval.clone()))
                };
                if let (Some(a), Some(b)) = (at(from), at(to)) {
                    points.push((*seed, dir, a, b));
                }
            }
            let Some(&(first_seed, ..)) = points.first() else { continue };
            let per_seed: Vec<f64> = points.iter().map(|(_, _, a, b)| super::mean_asr(&b.1) - super::mean_asr(&a.1)).collect();
            let reported = per_seed.iter().sum::<f64>() / per_seed.len() as f64;
            let across = (per_seed.len() >= 2).then(|| super::stats::mean_and_half_width(&per_seed));
            let pairs = points.iter().map(|(_, dir, a, b)| ((dir.as_path(), a.0.as_str(), &a.1), (dir.as_path(), b.0.as_str(), &b.1)));
            let diff = difference(pairs, Measure::Asr, first_seed, reported);
            let seeds = points.iter().map(|p| p.0).collect();
            out.push(Step { task: task.clone(), method: method.clone(), from: from.into(), to: to.into(), seeds, diff, across, span });
        }
    }
    Ok(out)
}

/// The section in Markdown; empty without steps (no undefended cell). The column across
/// seeds appears when a step has two seeds or more.
pub fn markdown(steps: &[Step]) -> String {
    if steps.is_empty() {
        return String::new();
    }
    let seeded = steps.iter().any(|s| s.across.is_some());
    let mut md = String::from(
        "\n## Harmful share, step by step\n\nThe aligned model, then each method's undefended cells in order of the harmful share \
         of their fine-tuning data, each against the one before it on the same prompts: mean ASR over the safety sets, later minus earlier, in \
         points, with its 95% paired bootstrap interval over prompts (pooled over the seeds); a step *rises* or *falls* when \
         the interval leaves out zero.",
    );
    if seeded {
        md.push_str(
            " Across seeds: the mean of the seeds' own differences with its 95% t-interval over the seeds — the seeds' \
             spread includes their aligned models', so it is the stricter reading.",
        );
    }
    md.push_str("\n\n| task | method | step | seeds | mean ASR Δ [95% over prompts] | reading |");
    md.push_str(if seeded {
        " Δ across seeds [95% t] | reading across seeds |\n|---|---|---|---|---|---|---|---|\n"
    } else {
        "\n|---|---|---|---|---|---|\n"
    });
    for s in steps {
        let d = s
            .diff
            .as_ref()
            .map(|d| format!("{:+.1} [{:+.1}, {:+.1}]", 100.0 * d.value, 100.0 * d.ci_low, 100.0 * d.ci_high))
            .unwrap_or_else(|| "-".into());
        let whole = if s.span { " (whole span)" } else { "" };
        md.push_str(&format!("| {} | {} | {} → {}{whole} | {} | {d} | {} |", s.task, s.method, s.from, s.to, s.seeds.len(), s.reading()));
        if seeded {
            let (a, r) = match s.across {
                Some((m, h)) => {
                    (format!("{:+.1} [{:+.1}, {:+.1}]", 100.0 * m, 100.0 * (m - h), 100.0 * (m + h)), s.seed_reading().unwrap_or("-"))
                }
                None => ("-".into(), "-"),
            };
            md.push_str(&format!(" {a} | {r} |"));
        }
        md.push('\n');
    }
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for s in steps {
        if !keys.contains(&(&s.task, &s.method)) {
            keys.push((&s.task, &s.method));
        }
    }
    for (task, method) in keys {
        // The sentence is about the harmful share: the step from the aligned model is in the table.
        let these: Vec<&Step> = steps.iter().filter(|s| s.task == task && s.method == method && s.from != ALIGNED && !s.span).collect();
        if these.is_empty() {
            continue;
        }
        let not: Vec<String> =
            these.iter().filter(|s| s.reading() != "rises").map(|s| format!("{} → {} ({})", s.from, s.to, s.reading())).collect();
        if !not.is_empty() {
            md.push_str(&format!(
                "\n{method} on {task}: mean ASR does not rise beyond noise at every step up in harmful share: {}.",
                not.join(", ")
            ));
        } else {
            md.push_str(&format!("\n{method} on {task}: mean ASR rises beyond noise at every step up in harmful share."));
        }
        if these.iter().all(|s| s.across.is_some()) {
            let not: Vec<String> = these
                .iter()
                .filter(|s| s.seed_reading() != Some("rises"))
                .map(|s| format!("{} → {} ({})", s.from, s.to, s.seed_reading().unwrap_or("-")))
                .collect();
            if !not.is_empty() {
                md.push_str(&format!(" Across seeds it does not at: {}.", not.join(", ")));
            } else {
                md.push_str(" Across seeds too.");
            }
        }
    }
    md.push('\n');
    md
}

/// [`markdown`] of the [`steps`] of `runs`.
pub fn section(runs: &[(String, u64, PathBuf)]) -> Result<String> {
    Ok(markdown(&steps(runs)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetune_eval::results::write_atomic;
    use std::path::Path;

    /// A cell `sft-lora__<regime>` at `share` harmful with per-set ASR `asr`, and its stored
    /// answers: 100 prompts per set, the first `round(asr × 100)` complying.
    fn cell(dir: &Path, regime: &str, share: f64, asr: [f64; 2]) {
        let est = |v: f64| format!(r#"{{"value":{v},"n":100,"ci_low":{v},"ci_high":{v}}}"#);
        let name = format!("sft-lora__{regime}");
        let json = format!(
            r#"{{"cell":"{name}","method":"sft-lora","regime":"{regime}","poison_ratio":{share},"n":4,"seed":5,"aligned_key":"k",
               "task_ids":[],"harmful_ids":[],"train_losses":[],"train_steps":0,
               "eval":{{"safety":[{{"set":"a","asr":{},"empty":0}},{{"set":"b","asr":{},"empty":0}}],
                        "task":{{"task":"t","metric":"exact","score":{},"unparseable":0}}}}}}"#,
            est(asr[0]),
            est(asr[1]),
            est(0.8)
        );
        write_atomic(&dir.join("cells").join(format!("{name}.json")), json.as_bytes()).unwrap();
        answers(&dir.join("generations").join(&name), asr);
    }

    /// 100 stored answers per set (`a`, `b`), the first `round(asr × 100)` complying.
    fn answers(gen: &Path, asr: [f64; 2]) {
        for (set, rate) in [("a", asr[0]), ("b", asr[1])] {
            let k = (rate * 100.0).round() as usize;
            let lines: String = (0..100)
                .map(|i| {
                    format!(
                        "{{\"id\":\"{set}:{i:03}\",\"response\":\"\",\"verdict\":\"{}\"}}\n",
                        if i < k { "compliance" } else { "refusal" }
                    )
                })
                .collect();
            write_atomic(&gen.join(format!("{set}.jsonl")), lines.as_bytes()).unwrap();
        }
    }

    #[test]
    fn each_regime_is_compared_with_the_next_more_harmful_one_on_the_same_prompts() {
        let dir = std::env::temp_dir().join(format!("safetune-steps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Written out of order: the steps follow the harmful share.
        cell(&dir, "high-harm", 0.3, [0.40, 0.30]);
        cell(&dir, "benign", 0.0, [0.05, 0.05]);
        cell(&dir, "low-harm", 0.05, [0.06, 0.05]);
        cell(&dir, "pure-bad", 1.0, [0.80, 0.70]);
        let s = steps(&[("t".into(), 5, dir.clone())]).unwrap();
        let names: Vec<String> = s.iter().map(|x| format!("{}>{}", x.from, x.to)).collect();
        // Then the whole span from benign to the most harmful mixed regime (pure harmful data is
        // not a mix).
        assert_eq!(names, ["benign>low-harm", "low-harm>high-harm", "high-harm>pure-bad", "benign>high-harm"]);
        assert_eq!(s.iter().map(|x| x.span).collect::<Vec<_>>(), [false, false, false, true]);
        // One more compliance of 200 answers: +0.5 points, within noise; the others rise.
        let d = s[0].diff.as_ref().unwrap();
        assert!((d.value - 0.005).abs() < 1e-9 && d.ci_low <= 0.0, "{d:?}");
        assert_eq!([s[0].reading(), s[1].reading(), s[2].reading()], ["within noise", "rises", "rises"]);
        let md = markdown(&s);
        assert!(md.contains("| t | sft-lora | low-harm → high-harm | 1 | +29.5 ["), "{md}");
        assert!(md.contains("| t | sft-lora | benign → high-harm (whole span) | 1 | +30.0 ["), "{md}");
        // No aligned model in this directory: no step from it.
        assert!(!md.contains("aligned →"), "{md}");
        assert!(
            md.contains(
                "sft-lora on t: mean ASR does not rise beyond noise at every step up in harmful share: benign → low-harm (within noise)."
            ),
            "{md}"
        );
        // Answers that do not give the cell's figure: not measured, said so.
        cell(&dir, "low-harm", 0.05, [0.06, 0.05]);
        std::fs::write(dir.join("generations/sft-lora__low-harm/a.jsonl"), "").unwrap();
        let s = steps(&[("t".into(), 5, dir.clone())]).unwrap();
        assert_eq!(s[0].reading(), "not measured");
        // A clear rise at every step.
        cell(&dir, "low-harm", 0.05, [0.20, 0.15]);
        assert!(section(&[("t".into(), 5, dir.clone())])
            .unwrap()
            .contains("sft-lora on t: mean ASR rises beyond noise at every step up in harmful share."));
        // With the aligned model's answers stored, the first step starts from it (2 → 5%); it is
        // not a step of harmful share, so the sentence is about the regimes alone.
        let e = r#"{"safety":[{"set":"a","asr":{"value":0.02,"n":100,"ci_low":0,"ci_high":0},"empty":0},{"set":"b","asr":{"value":0.02,"n":100,"ci_low":0,"ci_high":0},"empty":0}],"task":{"task":"t","metric":"exact","score":{"value":0.8,"n":100,"ci_low":0,"ci_high":0},"unparseable":0}}"#;
        write_atomic(&dir.join("models/aligned.json"), e.as_bytes()).unwrap();
        answers(&dir.join("generations/aligned"), [0.02, 0.02]);
        let s = steps(&[("t".into(), 5, dir.clone())]).unwrap();
        assert_eq!((s[0].from.as_str(), s[0].to.as_str()), ("aligned", "benign"));
        assert!((s[0].diff.as_ref().unwrap().value - 0.03).abs() < 1e-9, "{:?}", s[0].diff);
        assert!(markdown(&s).contains("| t | sft-lora | aligned → benign | 1 | +3.0 ["), "{}", markdown(&s));
        answers(&dir.join("generations/aligned"), [0.05, 0.05]);
        write_atomic(&dir.join("models/aligned.json"), e.replace("0.02", "0.05").as_bytes()).unwrap();
        let md = section(&[("t".into(), 5, dir.clone())]).unwrap();
        assert!(md.contains("| aligned → benign | 1 | +0.0 [+0.0, +0.0] | within noise |"), "{md}");
        assert!(md.contains("sft-lora on t: mean ASR rises beyond noise at every step up in harmful share."), "{md}");
        // One seed: no column across seeds.
        assert!(!md.contains("across seeds"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn with_two_seeds_each_step_is_read_across_the_seeds_too() {
        let root = std::env::temp_dir().join(format!("safetune-steps-seeds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (a, b) = (root.join("s5"), root.join("s6"));
        // benign → high-harm rises on both seeds' prompts, by 30 points on one and 3 on the other.
        cell(&a, "benign", 0.0, [0.05, 0.05]);
        cell(&a, "high-harm", 0.3, [0.40, 0.30]);
        cell(&b, "benign", 0.0, [0.00, 0.00]);
        cell(&b, "high-harm", 0.3, [0.03, 0.03]);
        let runs = [("t".to_string(), 5, a.clone()), ("t".to_string(), 6, b.clone())];
        let s = steps(&runs).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].reading(), "rises");
        let (mean, half) = s[0].across.unwrap();
        assert!((mean - 0.165).abs() < 1e-9, "{mean}");
        // t(1 df) = 12.706 × sd 0.1909 / √2.
        assert!((half - 12.706 * (0.27f64 / 2f64.sqrt()) / 2f64.sqrt()).abs() < 1e-9, "{half}");
        assert_eq!(s[0].seed_reading(), Some("within noise"));
        let md = markdown(&s);
        assert!(md.contains("| Δ across seeds [95% t] | reading across seeds |"), "{md}");
        assert!(md.contains("| t | sft-lora | benign → high-harm | 2 | +16.5 ["), "{md}");
        assert!(md.contains("| rises | +16.5 [-155.0, +188.0] | within noise |"), "{md}");
        assert!(
            md.contains(
                "sft-lora on t: mean ASR rises beyond noise at every step up in harmful share. Across seeds it does not at: benign → high-harm (within noise)."
            ),
            "{md}"
        );
        // Two seeds that agree: a rise across seeds too.
        cell(&b, "high-harm", 0.3, [0.30, 0.26]);
        let md = section(&runs).unwrap();
        assert!(md.contains("| rises | +29.0 [+16.3, +41.7] | rises |"), "{md}");
        assert!(md.contains("sft-lora on t: mean ASR rises beyond noise at every step up in harmful share. Across seeds too."), "{md}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
