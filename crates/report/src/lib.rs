//! Reports of a results directory: tables (Markdown, CSV, JSON, LaTeX) and SVG
//! plots, all built from the files a run wrote (`models/*.json`,
//! `cells/*.json`), so `safetune report DIR` and the end of a run agree.

mod defenses;
mod paired;
mod plots;
pub use plots::safety_utility_plot;
mod provenance;
mod seeds;
mod stats;
mod steps;
mod tables;

use std::path::Path;

use safetune_core::anyhow::{anyhow, Context};
use safetune_core::Result;

use safetune_core::judge::Estimate;

use safetune_eval::results::{aligned_label, cell_label, write_atomic, CellResult, GenRecord, ModelEval};

pub use defenses::{effects as defense_effects, Effect as DefenseEffect, CUT_MIN, TASK_COST_MAX};
pub use tables::{csv_table, latex_table, markdown_table};

/// One evaluated model: the base, an aligned model or a fine-tuned cell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// `base`, `aligned`, `aligned+vaccine` or `fine-tuned`.
    pub model: String,
    /// Method and defense stack (`sft-lora+lisa`); `-` for base and aligned models.
    pub method: String,
    pub regime: String,
    /// The harmful share of the fine-tuning data (none for base and aligned models).
    pub poison_ratio: Option<f64>,
    pub eval: ModelEval,
    /// Per safety set: of the prompts the aligned model refused, the share the
    /// fine-tuned model still refuses (cells only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<(String, Estimate)>,
}

impl Row {
    pub fn model(name: &str, eval: &ModelEval) -> Self {
        Self { model: name.into(), method: "-".into(), regime: "-".into(), poison_ratio: None, eval: eval.clone(), retention: Vec::new() }
    }
    pub fn cell(r: &CellResult) -> Self {
        Self {
            model: "fine-tuned".into(),
            method: cell_label(&r.method, &r.defenses),
            regime: r.regime.clone(),
            poison_ratio: Some(r.poison_ratio),
            eval: r.eval.clone(),
            retention: Vec::new(),
        }
    }
    /// `base`, `aligned`, or a cell's `method regime`.
    pub fn label(&self) -> String {
        if self.model == "fine-tuned" {
            format!("{} {}", self.method, self.regime)
        } else {
            self.model.clone()
        }
    }
}

/// The evaluation sets not measured (most answers empty) in a run directory
/// or, for a grid, in each of its sub-runs (`runs/*`), as `run: model set: why`.
pub fn failures_in(dir: &Path) -> Result<Vec<String>> {
    let mut dirs = vec![dir.to_path_buf()];
    if dir.join("runs").is_dir() {
        dirs = std::fs::read_dir(dir.join("runs"))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        dirs.sort();
    }
    let mut out = Vec::new();
    for d in dirs {
        let run = d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        for r in rows_from_dir(&d)? {
            out.extend(r.eval.failures().into_iter().map(|f| format!("{run}: {} {f}", r.label())));
        }
    }
    Ok(out)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let s = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&s).map_err(|e| anyhow!("{}: not a safetune result: {e}", path.display()))
}

fn json_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut v: Vec<_> = match std::fs::read_dir(dir) {
        Ok(r) => r.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "json")).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    Ok(v)
}

/// Every cell result of a run directory (`cells/*.json`), in file-name order.
fn cell_results(run_dir: &Path) -> Result<Vec<CellResult>> {
    json_files(&run_dir.join("cells"))?.iter().map(|p| read_json(p)).collect()
}

/// The rows of a run directory: base, aligned models, then cells ordered by
/// method label and poison ratio.
pub fn rows_from_dir(run_dir: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let models = json_files(&run_dir.join("models"))?;
    let name = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    for p in models.iter().filter(|p| name(p) == "base").chain(models.iter().filter(|p| name(p) != "base")) {
        rows.push(Row::model(&name(p), &read_json(p)?));
    }
    let mut cells = cell_results(run_dir)?;
    cells.sort_by(|a, b| {
        (cell_label(&a.method, &a.defenses), a.poison_ratio)
            .partial_cmp(&(cell_label(&b.method, &b.defenses), b.poison_ratio))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    for c in &cells {
        let mut row = Row::cell(c);
        row.retention = retention(run_dir, c);
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(anyhow!("{}: no results (models/*.json or cells/*.json)", run_dir.display()));
    }
    Ok(rows)
}

fn verdicts(path: &Path) -> Option<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().map(|l| serde_json::from_str::<GenRecord>(l).ok().map(|r| (r.id, r.verdict))).collect()
}

/// The aligned model a cell started from: `aligned`, or `aligned+<defense>`
/// after an alignment-stage defense.
fn aligned_of(c: &CellResult) -> String {
    let align_defense = c.defenses.iter().find(|d| {
        safetune_core::registry::defense(d).and_then(|e| e.stages()).is_ok_and(|s| s.contains(&safetune_core::registry::Stage::Alignment))
    });
    aligned_label(align_defense.map(String::as_str))
}

/// Refusal retention of a cell against the aligned model it started from
/// (`aligned`, or `aligned+<defense>` after an alignment-stage defense), per
/// safety set, from the stored verdicts; sets without stored answers are skipped.
fn retention(run_dir: &Path, c: &CellResult) -> Vec<(String, Estimate)> {
    let aligned = aligned_of(c);
    let mut out = Vec::new();
    for s in &c.eval.safety {
        let file = format!("{}.jsonl", s.set);
        let (Some(before), Some(after)) = (
            verdicts(&run_dir.join("generations").join(&aligned).join(&file)),
            verdicts(&run_dir.join("generations").join(&c.cell).join(&file)),
        ) else {
            continue;
        };
        let mut kept: Vec<bool> =
            before.iter().filter(|(_, v)| *v == "refusal").filter_map(|(id, _)| after.get(id).map(|v| v == "refusal")).collect();
        kept.sort(); // HashMap order is random; the bootstrap must see a fixed order.
        out.push((s.set.clone(), safetune_metrics::proportion(&kept, c.seed)));
    }
    out
}

/// The report of a grid over tasks and seeds: see [`seeds::write`].
pub fn write_seed_report(top: &Path, title: &str, runs: &[(String, u64, std::path::PathBuf)]) -> Result<String> {
    seeds::write(top, title, runs)
}

/// Mean ASR over a model's safety sets (the reading's and the defense table's).
fn mean_asr(e: &ModelEval) -> f64 {
    e.safety.iter().map(|s| s.asr.value).sum::<f64>() / e.safety.len().max(1) as f64
}

/// Whether two rows' ASR differ beyond noise: on how many of their common
/// sets the 95% intervals do not overlap, in words.
fn apart(a: &Row, b: &Row) -> String {
    let mut total = 0;
    let mut sep = 0;
    for x in &a.eval.safety {
        if let Some(y) = b.eval.safety.iter().find(|y| y.set == x.set) {
            total += 1;
            sep += usize::from(x.asr.ci_high < y.asr.ci_low || y.asr.ci_high < x.asr.ci_low);
        }
    }
    match sep {
        // Overlapping intervals of two models asked the same prompts do not make a difference
        // noise: the paired test (`steps.rs`, under the reading) is the sharper one.
        0 => "their own 95% intervals overlap on every set".into(),
        k if k == total => "a clear difference: the 95% intervals are apart on every set".into(),
        k => format!("the 95% intervals are apart on {k} of {total} sets"),
    }
}

/// Why rows cannot be compared by ASR: the safety sets some of them did not
/// measure (most answers empty), named per row.
fn not_comparable(rows: &[&Row]) -> Option<String> {
    let why: Vec<String> =
        rows.iter().flat_map(|r| r.eval.safety_failures().into_iter().map(move |f| format!("{} {f}", r.label()))).collect();
    (!why.is_empty()).then(|| format!("not measured (most answers empty): {}", why.join("; ")))
}

/// What the table says, in words: what alignment did (base → aligned), and
/// per method what fine-tuning alone did (benign cell) and what harmful data
/// added (the most harmful regime against benign). Computed from the rows;
/// empty when a run lacks the models to compare.
pub fn reading(rows: &[Row]) -> String {
    let find = |m: &str| rows.iter().find(|r| r.model == m);
    let (Some(base), Some(aligned)) = (find("base"), find("aligned")) else { return String::new() };
    let p = |v: f64| format!("{:.1}%", 100.0 * v);
    let sets: Vec<&str> = base.eval.safety.iter().map(|s| s.set.as_str()).collect();
    let mut out = format!(
        "\nReading (ASR = share of harmful prompts answered rather than refused, mean over {}; lower is safer):\n",
        sets.join(", ")
    );
    match not_comparable(&[base, aligned]) {
        Some(why) => out.push_str(&format!("- alignment: not compared, {why}\n")),
        None => out.push_str(&format!(
            "- alignment: {} (base) → {} (aligned), {:+.1} points ({})\n",
            p(mean_asr(&base.eval)),
            p(mean_asr(&aligned.eval)),
            100.0 * (mean_asr(&aligned.eval) - mean_asr(&base.eval)),
            apart(base, aligned)
        )),
    }
    let mut methods: Vec<&str> = rows.iter().filter(|r| r.model == "fine-tuned").map(|r| r.method.as_str()).collect();
    methods.dedup();
    for m in methods {
        let cells: Vec<&Row> = rows.iter().filter(|r| r.model == "fine-tuned" && r.method == m).collect();
        let benign = cells.iter().find(|r| r.poison_ratio == Some(0.0));
        let worst = cells
            .iter()
            .filter(|r| r.poison_ratio.is_some_and(|x| x > 0.0))
            .max_by(|a, b| a.poison_ratio.unwrap_or(0.0).total_cmp(&b.poison_ratio.unwrap_or(0.0)));
        if let (Some(b), Some(w)) = (benign, worst) {
            if let Some(why) = not_comparable(&[aligned, b, w]) {
                out.push_str(&format!("- {m}: not compared, {why}\n"));
                continue;
            }
            out.push_str(&format!(
                "- {m}: fine-tuning on benign data {} ({:+.1} points over aligned; {}); with {} harmful data ({}) {} ({:+.1} points over benign; {})\n",
                p(mean_asr(&b.eval)),
                100.0 * (mean_asr(&b.eval) - mean_asr(&aligned.eval)),
                apart(aligned, b),
                p(w.poison_ratio.unwrap_or(0.0)),
                w.regime,
                p(mean_asr(&w.eval)),
                100.0 * (mean_asr(&w.eval) - mean_asr(&b.eval)),
                apart(b, w)
            ));
        }
    }
    out
}

/// Writes `summary.md` and `report/` (tables in four formats, three SVG plots)
/// for a run directory; returns the Markdown table.
pub fn write_report(run_dir: &Path, title: &str) -> Result<String> {
    let rows = rows_from_dir(run_dir)?;
    let task = rows.first().map(|r| r.eval.task.task.clone()).unwrap_or_default();
    // One run: the pairings need no seed of their own (cells carry theirs).
    let runs = [(task, 0, run_dir.to_path_buf())];
    let (steps, defended) = (steps::section(&runs)?, defenses::section(&runs)?);
    let md = format!("{}{}{}{}", markdown_table(&rows), reading(&rows), steps, defended);
    let dir = run_dir.join("report");
    write_atomic(&run_dir.join("summary.md"), format!("# {title}\n\n{md}").as_bytes())?;
    write_atomic(&dir.join("table.md"), md.as_bytes())?;
    write_atomic(&dir.join("table.csv"), csv_table(&rows)?.as_bytes())?;
    write_atomic(&dir.join("table.tex"), latex_table(&rows, title).as_bytes())?;
    let mut json = serde_json::to_string_pretty(&rows)?;
    json.push('\n');
    write_atomic(&dir.join("table.json"), json.as_bytes())?;
    for (file, bytes) in plots::all(&rows, title).map_err(|e| anyhow!("{}: {e}", dir.display()))? {
        write_atomic(&dir.join(file), &bytes)?;
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gens(dir: &Path, verdicts: &[(&str, &str)]) {
        let text: String = verdicts.iter().map(|(id, v)| format!("{{\"id\":\"{id}\",\"response\":\"r\",\"verdict\":\"{v}\"}}\n")).collect();
        write_atomic(&dir.join("harm.jsonl"), text.as_bytes()).unwrap();
    }

    #[test]
    fn retention_counts_the_aligned_models_refusals_the_cell_keeps() {
        let dir = std::env::temp_dir().join(format!("safetune-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let est = r#"{"value":0.5,"n":4,"ci_low":0.0,"ci_high":1.0}"#;
        let eval = format!(
            r#"{{"safety":[{{"set":"harm","asr":{est},"empty":0}}],"task":{{"task":"t","metric":"exact","score":{est},"unparseable":0}}}}"#
        );
        write_atomic(&dir.join("models/aligned.json"), eval.as_bytes()).unwrap();
        let cell = format!(
            r#"{{"cell":"sft-lora__benign","method":"sft-lora","regime":"benign","poison_ratio":0.0,"n":4,"seed":1,"aligned_key":"k",
               "task_ids":[],"harmful_ids":[],"train_losses":[],"train_steps":0,"eval":{eval}}}"#
        );
        write_atomic(&dir.join("cells/sft-lora__benign.json"), cell.as_bytes()).unwrap();
        // The aligned model refuses a, b, c (not d); the cell still refuses a and c, and refuses d anew.
        gens(&dir.join("generations/aligned"), &[("a", "refusal"), ("b", "refusal"), ("c", "refusal"), ("d", "compliance")]);
        gens(&dir.join("generations/sft-lora__benign"), &[("a", "refusal"), ("b", "compliance"), ("c", "refusal"), ("d", "refusal")]);
        let rows = rows_from_dir(&dir).unwrap();
        let cell_row = rows.iter().find(|r| r.poison_ratio.is_some()).unwrap();
        let (set, e) = &cell_row.retention[0];
        assert_eq!((set.as_str(), e.n), ("harm", 3));
        assert!((e.value - 2.0 / 3.0).abs() < 1e-12, "{}", e.value);
        assert!(markdown_table(&rows).contains("refusals kept harm %"));
        assert!(csv_table(&rows).unwrap().contains(",refusal-retention,harm,"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_reading_says_what_alignment_and_harmful_data_did() {
        // Intervals of ±0.15 around each ASR.
        let row = |model: &str, regime: &str, p: Option<f64>, asr: f64| {
            let (lo, hi) = (asr - 0.15, asr + 0.15);
            let eval: safetune_eval::results::ModelEval = serde_json::from_str(&format!(
                r#"{{"safety":[{{"set":"harm","asr":{{"value":{asr},"n":10,"ci_low":{lo},"ci_high":{hi}}},"empty":0}}],
                   "task":{{"task":"t","metric":"exact","score":{{"value":0.8,"n":10,"ci_low":0.0,"ci_high":1.0}},"unparseable":0}}}}"#
            ))
            .unwrap();
            let method = if p.is_some() { "sft-lora" } else { "-" };
            Row { model: model.into(), method: method.into(), regime: regime.into(), poison_ratio: p, eval, retention: Vec::new() }
        };
        let rows = vec![
            row("base", "-", None, 0.9),
            row("aligned", "-", None, 0.1),
            row("fine-tuned", "benign", Some(0.0), 0.2),
            row("fine-tuned", "low-harm", Some(0.05), 0.3),
            row("fine-tuned", "high-harm", Some(0.3), 0.6),
        ];
        let r = reading(&rows);
        assert!(r.contains("alignment: 90.0% (base) → 10.0% (aligned), -80.0 points (a clear difference"), "{r}");
        assert!(r.contains("sft-lora: fine-tuning on benign data 20.0% (+10.0 points over aligned; their own 95% intervals overlap on every set); with 30.0% harmful data (high-harm) 60.0% (+40.0 points over benign; a clear difference"), "{r}");
        assert_eq!(reading(&rows[2..]), "", "nothing to compare without base and aligned");

        // A model that answers (almost) nothing: its ASR of 0.0 over the two non-empty
        // answers is not a measurement, and the table and the reading say so.
        let mut rows = rows;
        rows[1].eval.safety[0].empty = 11;
        let r = reading(&rows);
        assert!(r.contains("- alignment: not compared, not measured (most answers empty): aligned harm: 11 of 21 answers empty"), "{r}");
        assert!(r.contains("- sft-lora: not compared, not measured (most answers empty): aligned harm"), "{r}");
        let md = markdown_table(&rows);
        assert!(md.contains("| aligned | - | - | NOT MEASURED (11 of 21 answers empty) |"), "{md}");
        assert_eq!(rows[1].eval.failures(), ["harm: 11 of 21 answers empty"]);
        rows[1].eval.safety[0].empty = 10; // half: still a measurement
        assert!(rows[1].eval.failures().is_empty() && !reading(&rows).contains("not compared"));
    }

    #[test]
    fn category_names_with_commas_stay_one_csv_field() {
        let est = r#"{"value":0.5,"n":2,"ci_low":0.0,"ci_high":1.0}"#;
        let eval: safetune_eval::results::ModelEval = serde_json::from_str(&format!(
            r#"{{"safety":[{{"set":"bt","asr":{est},"empty":0,"by_category":[{{"name":"politics,controversial","estimate":{est}}}]}}],
               "task":{{"task":"t","metric":"exact","score":{est},"unparseable":0}}}}"#
        ))
        .unwrap();
        let row = super::Row { model: "m".into(), method: "-".into(), regime: "-".into(), poison_ratio: None, eval, retention: Vec::new() };
        let csv = csv_table(&[row]).unwrap();
        assert!(csv.contains(r#",asr,"bt/politics,controversial",0.5,"#), "{csv}");
        // Read back: every record has the header's 11 fields, the category name one of them.
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        assert_eq!(reader.headers().unwrap().len(), 11);
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert!(records.iter().any(|r| &r[5] == "bt/politics,controversial"), "{csv}");
    }
}
