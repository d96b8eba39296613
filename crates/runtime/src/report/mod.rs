//! Reports of a results directory: tables (Markdown, CSV, JSON, LaTeX) and SVG
//! plots, all built from the files a run wrote (`models/*.json`,
//! `cells/*.json`), so `safetune report DIR` and the end of a run agree.

mod plots;
mod svg;
mod tables;

use std::path::Path;

use safetune_core::anyhow::{anyhow, Context};
use safetune_core::Result;

use crate::evaluate::ModelEval;
use crate::hashing::write_atomic;
use crate::pipeline::CellResult;

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
}

impl Row {
    pub fn model(name: &str, eval: &ModelEval) -> Self {
        Self { model: name.into(), method: "-".into(), regime: "-".into(), poison_ratio: None, eval: eval.clone() }
    }
    pub fn cell(r: &CellResult) -> Self {
        Self {
            model: "fine-tuned".into(),
            method: crate::stack::label(&r.method, &r.defenses),
            regime: r.regime.clone(),
            poison_ratio: Some(r.poison_ratio),
            eval: r.eval.clone(),
        }
    }
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

/// The rows of a run directory: base, aligned models, then cells ordered by
/// method label and poison ratio.
pub fn rows_from_dir(run_dir: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let models = json_files(&run_dir.join("models"))?;
    let name = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    for p in models.iter().filter(|p| name(p) == "base").chain(models.iter().filter(|p| name(p) != "base")) {
        rows.push(Row::model(&name(p), &read_json(p)?));
    }
    let mut cells: Vec<CellResult> = json_files(&run_dir.join("cells"))?.iter().map(|p| read_json(p)).collect::<Result<_>>()?;
    cells.sort_by(|a, b| {
        (crate::stack::label(&a.method, &a.defenses), a.poison_ratio)
            .partial_cmp(&(crate::stack::label(&b.method, &b.defenses), b.poison_ratio))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    rows.extend(cells.iter().map(Row::cell));
    if rows.is_empty() {
        return Err(anyhow!("{}: no results (models/*.json or cells/*.json)", run_dir.display()));
    }
    Ok(rows)
}

/// Writes `summary.md` and `report/` (tables in four formats, three SVG plots)
/// for a run directory; returns the Markdown table.
pub fn write_report(run_dir: &Path, title: &str) -> Result<String> {
    let rows = rows_from_dir(run_dir)?;
    let md = markdown_table(&rows);
    let dir = run_dir.join("report");
    write_atomic(&run_dir.join("summary.md"), format!("# {title}\n\n{md}").as_bytes())?;
    write_atomic(&dir.join("table.md"), md.as_bytes())?;
    write_atomic(&dir.join("table.csv"), csv_table(&rows).as_bytes())?;
    write_atomic(&dir.join("table.tex"), latex_table(&rows, title).as_bytes())?;
    let mut json = serde_json::to_string_pretty(&rows)?;
    json.push('\n');
    write_atomic(&dir.join("table.json"), json.as_bytes())?;
    for (file, svg) in plots::all(&rows, title) {
        write_atomic(&dir.join(file), svg.as_bytes())?;
    }
    Ok(md)
}
