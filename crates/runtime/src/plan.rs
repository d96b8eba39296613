//! A run's grid resolved once: the aligned models it needs and its cells, in
//! grid order (method × defense stack × regime), each with its label and the
//! alignment it starts from. The pipeline walks this, never the spec's lists.

use safetune_core::anyhow::anyhow;
use safetune_core::Result;
use safetune_data::Regime;

use crate::spec::RunSpec;
use crate::stack::{build_stack, label};

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CellPlan {
    pub method: String,
    /// The defense stack (empty: undefended).
    pub defenses: Vec<String>,
    pub regime: String,
    /// `<method>[+<defense>...]__<regime>`: its file names in the run directory.
    pub label: String,
    /// The alignment-stage defense of its stack (none: the plain aligned model).
    pub align: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunPlan {
    /// One aligned model per alignment-stage defense in use, in first-use order (`None`:
    /// the plain one, included when some stack has no alignment-stage defense).
    pub alignments: Vec<Option<String>>,
    pub cells: Vec<CellPlan>,
}

impl RunPlan {
    /// Builds every stack once (an impossible stack or regime is an error naming it).
    pub fn of(spec: &RunSpec) -> Result<Self> {
        let mut alignments = Vec::new();
        let mut cells = Vec::new();
        for regime in &spec.finetune.regimes {
            Regime::parse(regime).map_err(|e| anyhow!("finetune.regimes: {e}"))?;
        }
        let stacks: Vec<(Vec<String>, Option<String>)> = spec
            .finetune
            .defenses
            .iter()
            .map(|names| Ok((names.clone(), build_stack(&spec.defense_options, names)?.align)))
            .collect::<Result<_>>()?;
        for (_, align) in &stacks {
            if !alignments.contains(align) {
                alignments.push(align.clone());
            }
        }
        for method in &spec.finetune.methods {
            for (names, align) in &stacks {
                for regime in &spec.finetune.regimes {
                    cells.push(CellPlan {
                        method: method.clone(),
                        defenses: names.clone(),
                        regime: regime.clone(),
                        label: format!("{}__{regime}", label(method, names)),
                        align: align.clone(),
                    });
                }
            }
        }
        Ok(Self { alignments, cells })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_in_grid_order_with_one_alignment_per_alignment_defense() {
        let mut spec = RunSpec::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../presets/smoke.toml"))).unwrap();
        spec.finetune.methods = vec!["sft-lora".into(), "sft-full".into()];
        spec.finetune.regimes = vec!["benign".into(), "high-harm".into()];
        spec.finetune.defenses = vec![vec![], vec!["vaccine".into(), "lisa".into()], vec!["lisa".into()]];
        let p = RunPlan::of(&spec).unwrap();
        assert_eq!(p.alignments, vec![None, Some("vaccine".to_string())]);
        let labels: Vec<&str> = p.cells.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            &labels[..4],
            ["sft-lora__benign", "sft-lora__high-harm", "sft-lora+vaccine+lisa__benign", "sft-lora+vaccine+lisa__high-harm"]
        );
        assert_eq!(p.cells.len(), 12);
        assert_eq!(p.cells[2].align.as_deref(), Some("vaccine"));
        assert_eq!(p.cells[4].align, None);
        spec.finetune.regimes.push("2.0".into());
        assert!(RunPlan::of(&spec).unwrap_err().to_string().starts_with("finetune.regimes:"));
    }
}
