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
    /// The defenses of its stack that shape training (`Stack::training`).
    pub training: Vec<String>,
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
        let stacks: Vec<(Vec<String>, Option<String>, Vec<String>)> = spec
            .finetune
            .defenses
            .iter()
            .map(|names| {
                let stack = build_stack(&spec.defense_options, names)?;
                Ok((names.clone(), stack.align, stack.training))
            })
            .collect::<Result<_>>()?;
        for (_, align, _) in &stacks {
            if !alignments.contains(align) {
                alignments.push(align.clone());
            }
        }
        for method in &spec.finetune.methods {
            for (names, align, training) in &stacks {
                for regime in &spec.finetune.regimes {
                    cells.push(CellPlan {
                        method: method.clone(),
                        defenses: names.clone(),
                        regime: regime.clone(),
                        label: format!("{}__{regime}", label(method, names)),
                        align: align.clone(),
                        training: training.clone(),
                    });
                }
            }
        }
        Ok(Self { alignments, cells })
    }

    /// The cells' labels in groups that train alike — the same method, regime and alignment
    /// and the same defenses that shape training (`CellPlan::training`): a post-tuning
    /// repair's cell joins the cell it repairs. A worker (`--jobs`, a Slurm array task) gets
    /// whole groups, so a group trains once and its other cells reuse the weights rather
    /// than training the same thing beside it. Grid order throughout.
    pub fn training_groups(&self) -> Vec<Vec<String>> {
        let mut groups: Vec<(&CellPlan, Vec<String>)> = Vec::new();
        for c in &self.cells {
            let alike = |g: &CellPlan| (&g.method, &g.regime, &g.align, &g.training) == (&c.method, &c.regime, &c.align, &c.training);
            match groups.iter_mut().find(|(g, _)| alike(g)) {
                Some((_, labels)) => labels.push(c.label.clone()),
                None => groups.push((c, vec![c.label.clone()])),
            }
        }
        groups.into_iter().map(|(_, labels)| labels).collect()
    }

    /// The plan of `--cells`: those cells only, in grid order, and the aligned models they start
    /// from (`None`: the whole plan). A name that is not a cell of the plan is an error naming it.
    pub fn only(self, names: Option<&[String]>) -> Result<Self> {
        let Some(names) = names else { return Ok(self) };
        if names.is_empty() {
            return Err(anyhow!("--cells: no cell named"));
        }
        if let Some(bad) = names.iter().find(|n| !self.cells.iter().any(|c| c.label == **n)) {
            let known: Vec<&str> = self.cells.iter().map(|c| c.label.as_str()).collect();
            return Err(anyhow!("--cells: `{bad}` is not a cell of this run (its cells: {})", known.join(", ")));
        }
        let cells: Vec<CellPlan> = self.cells.into_iter().filter(|c| names.contains(&c.label)).collect();
        let alignments = self.alignments.into_iter().filter(|a| cells.iter().any(|c| c.align == *a)).collect();
        Ok(Self { alignments, cells })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_join_the_cell_they_repair_in_one_training_group() {
        let mut spec = RunSpec::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../presets/smoke.toml"))).unwrap();
        spec.finetune.regimes = vec!["benign".into(), "high-harm".into()];
        spec.finetune.defenses =
            vec![vec!["safelora".into()], vec![], vec!["lisa".into()], vec!["lisa".into(), "antidote".into()], vec!["antidote".into()]];
        let groups = RunPlan::of(&spec).unwrap().training_groups();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            groups,
            vec![
                g(&["sft-lora+safelora__benign", "sft-lora__benign", "sft-lora+antidote__benign"]),
                g(&["sft-lora+safelora__high-harm", "sft-lora__high-harm", "sft-lora+antidote__high-harm"]),
                g(&["sft-lora+lisa__benign", "sft-lora+lisa+antidote__benign"]),
                g(&["sft-lora+lisa__high-harm", "sft-lora+lisa+antidote__high-harm"]),
            ]
        );
    }

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
        // `--cells`: the cells named, in grid order, and only the aligned models they start from.
        let only = |names: &[&str]| p.clone().only(Some(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
        let vac = only(&["sft-full+vaccine+lisa__benign", "sft-lora+vaccine+lisa__high-harm"]).unwrap();
        assert_eq!(vac.alignments, vec![Some("vaccine".to_string())]);
        assert_eq!(
            vac.cells.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(),
            ["sft-lora+vaccine+lisa__high-harm", "sft-full+vaccine+lisa__benign"]
        );
        assert_eq!(only(&["sft-lora+lisa__benign"]).unwrap().alignments, vec![None]);
        let err = only(&["sft-lora__benign", "sft-lora+lisa__pure-bad"]).unwrap_err().to_string();
        assert!(err.starts_with("--cells: `sft-lora+lisa__pure-bad` is not a cell of this run (its cells: sft-lora__benign,"), "{err}");
        assert!(only(&[]).is_err());
        assert_eq!(p.clone().only(None).unwrap(), p);
        spec.finetune.regimes.push("2.0".into());
        assert!(RunPlan::of(&spec).unwrap_err().to_string().starts_with("finetune.regimes:"));
    }
}
