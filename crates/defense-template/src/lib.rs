//! The `template` defense, scaffolded by `cargo xtask new-defense`: replace the toy rule
//! below with the defense's own, cite its paper and every default in README.md, and keep a
//! test that fails when the mechanism is removed.
// template-only:begin
//!
//! This crate is the scaffold itself. It holds one toy defense per stage and builds and
//! tests in the workspace, so what `new-defense` writes always compiles; `new-defense
//! --stage S` keeps S's blocks and renames them.
// template-only:end

use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
// stage:alignment:begin
// template-only:begin
pub mod alignment {
    use super::*;
    // template-only:end
    use candle_core::Tensor;
    use safetune_core::anyhow::{anyhow, bail};
    use safetune_core::training::{stream, StepContext, TrainStep};

    /// Options of `template-alignment`; every default is cited in README.md.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    pub struct TemplateAlignmentOptions {
        /// Weight of the loss on the `safety` stream.
        pub weight: f64,
    }

    impl Default for TemplateAlignmentOptions {
        fn default() -> Self {
            Self { weight: 1.0 }
        }
    }

    /// Alignment objective: the alignment loss plus `weight` × the loss on a `safety` batch.
    pub struct TemplateAlignment {
        pub options: TemplateAlignmentOptions,
    }

    impl TrainStep for TemplateAlignment {
        fn name(&self) -> &str {
            "template-alignment"
        }

        fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
            let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("template-alignment: no alignment data"))?;
            let safety = ctx.next_batch(stream::SAFETY)?.ok_or_else(|| anyhow!("template-alignment: no `safety` stream"))?;
            let loss = ctx.lm_loss(&batch, None, false)?.0;
            let safety_loss = ctx.lm_loss(&safety, None, false)?.0;
            Ok((loss + (safety_loss * self.options.weight)?)?)
        }
    }

    impl Defense for TemplateAlignment {
        const NAME: &'static str = "template-alignment";
        const DESCRIPTION: &'static str = "template-alignment (scaffolded): alignment loss plus weighted safety-stream loss";
        const DIFFERS: &'static str = "(scaffolded: say where and why this differs from the reference code, or `as the reference`)";
        type Options = TemplateAlignmentOptions;
        fn plan(options: Self::Options) -> Result<DefensePlan> {
            if !(options.weight >= 0.0 && options.weight.is_finite()) {
                bail!("defense_options.template-alignment.weight: must be a number ≥ 0");
            }
            Ok(DefensePlan { align_step: Some(Box::new(TemplateAlignment { options })), ..Default::default() })
        }
    }

    safetune_core::register_defense!(TemplateAlignment);
    // template-only:begin
}
// template-only:end
// stage:alignment:end
// stage:finetune:begin
// template-only:begin
pub mod finetune {
    use super::*;
    // template-only:end
    use candle_core::Tensor;
    use safetune_core::anyhow::{anyhow, bail};
    use safetune_core::training::{stream, StepContext, TrainStep};

    /// Options of `template-finetune`; every default is cited in README.md.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    pub struct TemplateFinetuneOptions {
        /// Weight of the (capped) ascent on the `harmful` stream.
        pub weight: f64,
        /// The harmful loss counts up to this value (bounded ascent).
        pub cap: f64,
    }

    impl Default for TemplateFinetuneOptions {
        fn default() -> Self {
            Self { weight: 0.1, cap: 5.0 }
        }
    }

    /// Fine-tuning objective: the task loss minus `weight` × min(loss on a `harmful` batch, `cap`).
    pub struct TemplateFinetune {
        pub options: TemplateFinetuneOptions,
    }

    impl TrainStep for TemplateFinetune {
        fn name(&self) -> &str {
            "template-finetune"
        }

        fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
            let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("template-finetune: no task data"))?;
            let harmful = ctx.next_batch(stream::HARMFUL)?.ok_or_else(|| anyhow!("template-finetune: no `harmful` stream"))?;
            let loss = ctx.lm_loss(&batch, None, false)?.0;
            let harmful_loss = ctx.lm_loss(&harmful, None, false)?.0.clamp(0.0, self.options.cap)?;
            Ok((loss - (harmful_loss * self.options.weight)?)?)
        }
    }

    impl Defense for TemplateFinetune {
        const NAME: &'static str = "template-finetune";
        const DESCRIPTION: &'static str = "template-finetune (scaffolded): task loss minus a capped ascent on harmful pairs";
        const DIFFERS: &'static str = "(scaffolded: say where and why this differs from the reference code, or `as the reference`)";
        type Options = TemplateFinetuneOptions;
        fn plan(options: Self::Options) -> Result<DefensePlan> {
            for (key, v) in [("weight", options.weight), ("cap", options.cap)] {
                if !(v >= 0.0 && v.is_finite()) {
                    bail!("defense_options.template-finetune.{key}: must be a number ≥ 0");
                }
            }
            Ok(DefensePlan { step: Some(Box::new(TemplateFinetune { options })), ..Default::default() })
        }
    }

    safetune_core::register_defense!(TemplateFinetune);
    // template-only:begin
}
// template-only:end
// stage:finetune:end
// stage:repair:begin
// template-only:begin
pub mod repair {
    use super::*;
    // template-only:end
    use safetune_core::anyhow::bail;
    use safetune_core::repair::{Repair, WeightSets, Weights};
    use safetune_core::training::StepContext;

    /// Options of `template-repair`; every default is cited in README.md.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    pub struct TemplateRepairOptions {
        /// Weights reset to their aligned values.
        pub k: usize,
    }

    impl Default for TemplateRepairOptions {
        fn default() -> Self {
            Self { k: 1 }
        }
    }

    /// Repair: the `k` weights whose update ‖W_ft − W_aligned‖ / ‖W_aligned‖ is largest go back
    /// to their aligned values.
    pub struct TemplateRepair {
        pub options: TemplateRepairOptions,
    }

    impl TemplateRepair {
        /// Each fine-tuned weight's relative update, largest first.
        pub fn ranked(&self, w: &WeightSets) -> Result<Vec<(String, f64)>> {
            let mut v = Vec::new();
            for (name, ft) in w.finetuned {
                let Some(al) = w.aligned.get(name) else { continue };
                let norm = |t: &candle_core::Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64) };
                let base = norm(al)?;
                v.push((name.clone(), if base > 0.0 { norm(&(ft - al)?)? / base } else { 0.0 }));
            }
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            Ok(v)
        }
    }

    impl Repair for TemplateRepair {
        fn name(&self) -> &str {
            "template-repair"
        }

        fn repair(&self, w: &WeightSets, _ctx: &mut dyn StepContext) -> Result<Weights> {
            let mut out = Weights::new();
            for (name, _) in self.ranked(w)?.into_iter().take(self.options.k) {
                out.insert(name.clone(), w.aligned[&name].clone());
            }
            Ok(out)
        }
    }

    impl Defense for TemplateRepair {
        const NAME: &'static str = "template-repair";
        const DESCRIPTION: &'static str = "template-repair (scaffolded): reset the most-changed weights to their aligned values";
        const DIFFERS: &'static str = "(scaffolded: say where and why this differs from the reference code, or `as the reference`)";
        type Options = TemplateRepairOptions;
        fn plan(options: Self::Options) -> Result<DefensePlan> {
            if options.k == 0 {
                bail!("defense_options.template-repair.k: must be at least 1");
            }
            Ok(DefensePlan { repair: Some(Box::new(TemplateRepair { options })), ..Default::default() })
        }
    }

    safetune_core::register_defense!(TemplateRepair);
    // template-only:begin
}
// template-only:end
// stage:repair:end
