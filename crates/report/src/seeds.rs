//! Aggregating sub-runs across seeds: per task, each model row's every
//! estimate becomes the mean over seeds with a 95% t-interval across seeds
//! (n = the number of seeds), so the single-run tables and plots render it.
//! A row only one seed measured keeps that seed's estimates and their 95%
//! bootstrap intervals over prompts (n = prompts): one value has no spread.

use std::path::{Path, PathBuf};

use safetune_core::judge::Estimate;
use safetune_core::Result;

use super::stats::across;
use super::Row;

/// One aggregated row and the standard deviation of each of its estimates, by name.
pub struct SeedRow {
    pub task: String,
    pub row: Row,
    pub sd: Vec<(String, f64)>,
    pub seeds: Vec<u64>,
}

/// (task, model, method, regime).
type GroupKey = (String, String, String, String);

fn key(task: &str, r: &Row) -> GroupKey {
    (task.to_string(), r.model.clone(), r.method.clone(), r.regime.clone())
}

/// Groups the rows of every sub-run by (task, model, method, regime), in the
/// order first seen, and averages each estimate across seeds.
pub fn aggregate(runs: &[(String, u64, PathBuf)]) -> Result<Vec<SeedRow>> {
    let mut groups: Vec<(GroupKey, Vec<(u64, Row)>)> = Vec::new();
    for (task, seed, dir) in runs {
        for r in super::rows_from_dir(dir)? {
            let k = key(task, &r);
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, v)) => v.push((*seed, r)),
                None => groups.push((k, vec![(*seed, r)])),
            }
        }
    }
    let mut out = Vec::new();
    for ((task, ..), members) in groups {
        let mut row = members[0].1.clone();
        let mut sd = Vec::new();
        let mut avg = |name: String, pick: &dyn Fn(&Row) -> Option<f64>| -> Option<Estimate> {
            let values: Vec<f64> = members.iter().filter_map(|(_, r)| pick(r)).collect();
            if values.is_empty() {
                return None;
            }
            let (e, s) = across(&values);
            sd.push((name, s));
            Some(e)
        };
        for (i, s) in row.eval.safety.iter_mut().enumerate() {
            // A set some seed did not measure (most answers empty) has no mean: the
            // row shows that seed's failure instead.
            if let Some(f) = members.iter().filter_map(|(_, r)| r.eval.safety.get(i)).find(|x| x.failure().is_some()) {
                *s = f.clone();
                continue;
            }
            if let Some(e) = avg(format!("asr {}", s.set), &|r| r.eval.safety.get(i).map(|x| x.asr.value)) {
                s.asr = e;
            }
            s.harmful_score = s.harmful_score.as_ref().and_then(|_| {
                avg(format!("harmful-score {}", s.set), &|r| r.eval.safety.get(i).and_then(|x| x.harmful_score.as_ref().map(|e| e.value)))
            });
            s.asr_at_k = s.asr_at_k.as_ref().and_then(|_| {
                avg(format!("asr@k {}", s.set), &|r| r.eval.safety.get(i).and_then(|x| x.asr_at_k.as_ref().map(|e| e.value)))
            });
            s.variant_asr = s.variant_asr.as_ref().and_then(|_| {
                avg(format!("asr-any-variant {}", s.set), &|r| r.eval.safety.get(i).and_then(|x| x.variant_asr.as_ref().map(|e| e.value)))
            });
            s.refusal_consistency = s.refusal_consistency.as_ref().and_then(|_| {
                avg(format!("refusal-consistency {}", s.set), &|r| {
                    r.eval.safety.get(i).and_then(|x| x.refusal_consistency.as_ref().map(|e| e.value))
                })
            });
            for c in &mut s.by_category {
                let pick = |r: &Row| r.eval.safety.get(i).and_then(|x| named(&x.by_category, &c.name));
                if let Some(e) = avg(format!("asr {}/{}", s.set, c.name), &pick) {
                    c.estimate = e;
                }
            }
        }
        for (i, s) in row.eval.over_refusal.iter_mut().enumerate() {
            if let Some(f) = members.iter().filter_map(|(_, r)| r.eval.over_refusal.get(i)).find(|x| x.failure().is_some()) {
                *s = f.clone();
                continue;
            }
            if let Some(e) = avg(format!("over-refusal {}", s.set), &|r| r.eval.over_refusal.get(i).map(|x| x.refusal_rate.value)) {
                s.refusal_rate = e;
            }
            for c in &mut s.by_category {
                let pick = |r: &Row| r.eval.over_refusal.get(i).and_then(|x| named(&x.by_category, &c.name));
                if let Some(e) = avg(format!("over-refusal {}/{}", s.set, c.name), &pick) {
                    c.estimate = e;
                }
            }
        }
        if let Some(e) = avg(format!("{} score", row.eval.task.task), &|r| Some(r.eval.task.score.value)) {
            row.eval.task.score = e;
        }
        for a in &mut row.eval.task.also {
            if let Some(e) = avg(format!("{} {}", row.eval.task.task, a.name), &|r| named(&r.eval.task.also, &a.name)) {
                a.estimate = e;
            }
        }
        for m in &mut row.eval.mmlu {
            let pick = |r: &Row| r.eval.mmlu.iter().find(|x| x.shots == m.shots).map(|x| x.accuracy.value);
            if let Some(e) = avg(format!("mmlu-{}shot", m.shots), &pick) {
                m.accuracy = e;
            }
        }
        if let Some(m) = &mut row.eval.mt_bench {
            for (name, e, of) in [
                ("mt-bench", &mut m.score, (|b| b.score.value) as fn(&safetune_eval::results::MtBenchResult) -> f64),
                ("mt-bench turn 1", &mut m.turn1, |b| b.turn1.value),
                ("mt-bench turn 2", &mut m.turn2, |b| b.turn2.value),
            ] {
                if let Some(x) = avg(name.to_string(), &|r| r.eval.mt_bench.as_ref().map(of)) {
                    *e = x;
                }
            }
            for c in &mut m.by_category {
                if let Some(e) =
                    avg(format!("mt-bench {}", c.name), &|r| r.eval.mt_bench.as_ref().and_then(|b| named(&b.by_category, &c.name)))
                {
                    c.estimate = e;
                }
            }
        }
        row.eval.task.unparseable = members.iter().map(|(_, r)| r.eval.task.unparseable).sum::<usize>() / members.len();
        for (i, (set, e)) in row.retention.iter_mut().enumerate() {
            if let Some(x) = avg(format!("refusal-retention {set}"), &|r| r.retention.get(i).map(|(_, e)| e.value)) {
                *e = x;
            }
        }
        if let [(_, only)] = members.as_slice() {
            // One seed has no spread across seeds (a t-interval of [x, x] would read as
            // certainty): the row keeps that seed's own 95% intervals over prompts.
            row = only.clone();
            sd.iter_mut().for_each(|(_, s)| *s = f64::NAN);
        }
        out.push(SeedRow { task, row, sd, seeds: members.iter().map(|(s, _)| *s).collect() });
    }
    Ok(out)
}

/// The value of the estimate named `name`, if any.
fn named(list: &[safetune_eval::results::Named], name: &str) -> Option<f64> {
    list.iter().find(|n| n.name == name).map(|n| n.estimate.value)
}

/// Writes `<top>/summary.md` and `<top>/report/` (per task: a table and the
/// plots of the means; all tasks: CSV and JSON with standard deviations).
pub fn write(top: &Path, title: &str, runs: &[(String, u64, PathBuf)]) -> Result<String> {
    use safetune_eval::results::write_atomic;
    let rows = aggregate(runs)?;
    let dir = top.join("report");
    let mut md = String::new();
    let mut tasks: Vec<&str> = Vec::new();
    for r in &rows {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
    }
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["task", "model", "method", "regime", "metric", "mean", "sd", "ci_low", "ci_high", "seeds"])?;
    for task in &tasks {
        let these: Vec<&SeedRow> = rows.iter().filter(|r| r.task == *task).collect();
        let plain: Vec<Row> = these.iter().map(|r| r.row.clone()).collect();
        let n = these.iter().map(|r| r.seeds.len()).max().unwrap_or(0);
        let (heading, of) = match these.first().map(|r| r.seeds.as_slice()) {
            Some([seed]) if these.iter().all(|r| r.seeds == [*seed]) => {
                (format!("## {task}: seed {seed} alone [95% bootstrap interval over prompts] (n = prompts)"), format!("seed {seed}"))
            }
            _ if these.iter().any(|r| r.seeds.len() == 1) => (
                format!(
                    "## {task}: mean over {n} seeds [95% t-interval across seeds] (n = seeds); a row of one seed keeps that \
                     seed's figures [95% bootstrap interval over prompts] (n = prompts)"
                ),
                format!("mean of {n} seeds"),
            ),
            _ => (format!("## {task}: mean over {n} seeds [95% t-interval across seeds] (n = seeds)"), format!("mean of {n} seeds")),
        };
        md.push_str(&format!("{heading}\n\n{}\n", super::markdown_table(&plain)));
        for (file, bytes) in super::plots::all(&plain, &format!("{title} / {task} ({of})"))
            .map_err(|e| safetune_core::anyhow::anyhow!("{}: {e}", dir.display()))?
        {
            write_atomic(&dir.join(format!("{task}_{file}")), &bytes)?;
        }
        for r in &these {
            for (metric, sd) in &r.sd {
                let e = find(&r.row, metric);
                if let Some(e) = e {
                    // No standard deviation with one seed: an empty field, not NaN.
                    let numbers = [e.value, *sd, e.ci_low, e.ci_high].map(|x| if x.is_nan() { String::new() } else { x.to_string() });
                    let (row, n) = (&r.row, r.seeds.len().to_string());
                    csv.write_record([
                        *task,
                        &row.model,
                        &row.method,
                        &row.regime,
                        metric,
                        &numbers[0],
                        &numbers[1],
                        &numbers[2],
                        &numbers[3],
                        &n,
                    ])?;
                }
            }
        }
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({ "task": r.task, "seeds": r.seeds, "row": r.row, "sd": r.sd.iter().map(|(k, v)| (k.clone(), *v)).collect::<std::collections::BTreeMap<_, _>>() }))
        .collect();
    md.push_str(&super::steps::section(runs)?);
    md.push_str(&super::defenses::section(runs)?);
    md.push_str(&super::defenses::seed_order_markdown(&super::defenses::seed_orders(runs)?));
    md.push_str(&super::provenance::section(runs));
    write_atomic(&top.join("summary.md"), format!("# {title}\n\n{md}").as_bytes())?;
    write_atomic(&dir.join("table.md"), md.as_bytes())?;
    write_atomic(&dir.join("table.csv"), &csv.into_inner().map_err(|e| safetune_core::anyhow::anyhow!("{e}"))?)?;
    write_atomic(&dir.join("table.json"), (serde_json::to_string_pretty(&json)? + "\n").as_bytes())?;
    Ok(md)
}

/// The estimate a metric name of [`aggregate`] refers to.
fn find<'a>(row: &'a Row, metric: &str) -> Option<&'a Estimate> {
    let (kind, set) = metric.split_once(' ').unwrap_or((metric, ""));
    match kind {
        "asr" => row.eval.safety.iter().find(|s| s.set == set).map(|s| &s.asr),
        "harmful-score" => row.eval.safety.iter().find(|s| s.set == set).and_then(|s| s.harmful_score.as_ref()),
        "asr@k" => row.eval.safety.iter().find(|s| s.set == set).and_then(|s| s.asr_at_k.as_ref()),
        "asr-any-variant" => row.eval.safety.iter().find(|s| s.set == set).and_then(|s| s.variant_asr.as_ref()),
        "refusal-consistency" => row.eval.safety.iter().find(|s| s.set == set).and_then(|s| s.refusal_consistency.as_ref()),
        "over-refusal" => row.eval.over_refusal.iter().find(|s| s.set == set).map(|s| &s.refusal_rate),
        "refusal-retention" => row.retention.iter().find(|(s, _)| s == set).map(|(_, e)| e),
        _ => Some(&row.eval.task.score),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory holding one model whose every figure is `x` (a fraction).
    fn run(dir: &Path, x: f64) {
        let e = format!(r#"{{"value":{x},"n":20,"ci_low":0.0,"ci_high":1.0}}"#);
        let eval = format!(
            r#"{{"safety":[{{"set":"harm","asr":{e},"empty":0,"by_category":[{{"name":"crime","estimate":{e}}}]}}],
               "over_refusal":[{{"set":"xs","refusal_rate":{e},"empty":0,"by_category":[{{"name":"homonyms","estimate":{e}}}]}}],
               "mmlu":[{{"shots":5,"accuracy":{e}}}],
               "mt_bench":{{"score":{e},"turn1":{e},"turn2":{e},"unrated":0,"by_category":[{{"name":"writing","estimate":{e}}}],"grader":"g"}},
               "task":{{"task":"t","metric":"exact","score":{e},"unparseable":0,"also":[{{"name":"rouge1","estimate":{e}}}]}}}}"#
        );
        safetune_eval::results::write_atomic(&dir.join("models/aligned.json"), eval.as_bytes()).unwrap();
    }

    #[test]
    fn every_figure_of_a_row_is_the_mean_over_seeds_categories_and_types_too() {
        let top = std::env::temp_dir().join(format!("safetune-seeds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let runs: Vec<(String, u64, PathBuf)> = [(1, 0.2), (2, 0.4), (3, 0.9)]
            .iter()
            .map(|&(s, x)| {
                let dir = top.join(format!("s{s}"));
                run(&dir, x);
                ("t".to_string(), s, dir)
            })
            .collect();
        let rows = aggregate(&runs).unwrap();
        assert_eq!(rows.len(), 1);
        let e = &rows[0].row.eval;
        let mean = 0.5;
        let figures = [
            ("asr", e.safety[0].asr.value),
            ("asr per category", e.safety[0].by_category[0].estimate.value),
            ("over-refusal", e.over_refusal[0].refusal_rate.value),
            ("over-refusal per type", e.over_refusal[0].by_category[0].estimate.value),
            ("mmlu", e.mmlu[0].accuracy.value),
            ("task", e.task.score.value),
            ("task's other score", e.task.also[0].estimate.value),
        ];
        let m = e.mt_bench.as_ref().unwrap();
        let figures = figures.into_iter().chain([
            ("mt-bench", m.score.value),
            ("mt-bench turn 1", m.turn1.value),
            ("mt-bench turn 2", m.turn2.value),
            ("mt-bench per category", m.by_category[0].estimate.value),
        ]);
        for (what, v) in figures {
            assert!((v - mean).abs() < 1e-12, "{what}: {v}, not the mean over seeds");
        }
        // n = the seeds, as every other aggregated estimate.
        assert_eq!((e.safety[0].by_category[0].estimate.n, e.over_refusal[0].by_category[0].estimate.n), (3, 3));
        let md = crate::markdown_table(&rows.iter().map(|r| r.row.clone()).collect::<Vec<_>>());
        assert!(md.contains("Refused % per prompt type of xs:"), "{md}");
        assert!(md.contains("| homonyms | 50 (n=3) |"), "{md}");
        assert!(md.contains("| crime | 50 (n=3) |"), "{md}");
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_row_of_one_seed_keeps_its_interval_over_prompts_not_a_t_interval_of_nothing() {
        let top = std::env::temp_dir().join(format!("safetune-one-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let dir = top.join("s7");
        run(&dir, 0.3);
        let runs = vec![("t".to_string(), 7, dir)];
        let rows = aggregate(&runs).unwrap();
        let asr = &rows[0].row.eval.safety[0].asr;
        // The seed's own figure and its interval over its 20 prompts, not [0.3, 0.3] (n=1).
        assert_eq!((asr.value, asr.ci_low, asr.ci_high, asr.n), (0.3, 0.0, 1.0, 20), "{asr:?}");
        assert!(rows[0].sd.iter().all(|(_, s)| s.is_nan()) && !rows[0].sd.is_empty());
        let md = write(&top.join("out"), "one", &runs).unwrap();
        assert!(md.contains("## t: seed 7 alone [95% bootstrap interval over prompts] (n = prompts)"), "{md}");
        assert!(md.contains("30.0 [0.0, 100.0] (n=20)"), "{md}");
        let csv = std::fs::read_to_string(top.join("out/report/table.csv")).unwrap();
        // No standard deviation, and the last column counts seeds, not prompts.
        assert!(csv.lines().any(|l| l.ends_with(",asr harm,0.3,,0,1,1")), "{csv}");
        // A second seed that measured the aligned model only: that row is the mean of two seeds,
        // the other model's row stays seed 7's, and the heading names both kinds of row.
        let dir8 = top.join("s8");
        run(&dir8, 0.5);
        std::fs::copy(dir8.join("models/aligned.json"), top.join("s7/models/other.json")).unwrap();
        let runs = vec![("t".to_string(), 7, top.join("s7")), ("t".to_string(), 8, dir8)];
        let md = write(&top.join("out2"), "two", &runs).unwrap();
        assert!(md.contains("## t: mean over 2 seeds [95% t-interval across seeds] (n = seeds); a row of one seed keeps"), "{md}");
        assert!(
            md.contains("| aligned | - | - | 40.0 [0.0, 100.0] (n=2) |") && md.contains("| other | - | - | 50.0 [0.0, 100.0] (n=20) |"),
            "{md}"
        );
        std::fs::remove_dir_all(&top).unwrap();
    }
}
