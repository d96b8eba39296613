//! Mechanism tests: each fails when the defense's rule is removed.
// template-only:begin
//! (The scaffold's tests: one block per stage, each kept by `new-defense --stage`.)
// template-only:end

use candle_core::Tensor;
use safetune_core::config::TrainConfig;
use safetune_core::training::{stream, StepContext};
use safetune_core::{Example, ExampleKind, Result};
use safetune_train::{with_context, StageData};

/// Tiny-model streams: `task`, `safety` and `harmful`, 4 examples each.
#[allow(dead_code)]
fn streams() -> StageData {
    let mut data = StageData::default();
    for (name, kind, answer) in [
        (stream::TASK, ExampleKind::Task, "positive"),
        (stream::SAFETY, ExampleKind::Refusal, "I cannot help with that."),
        (stream::HARMFUL, ExampleKind::Harmful, "Sure, here is how."),
    ] {
        let rows = (0..4).map(|i| Example::new(format!("{name}:{i}"), kind, format!("{name} question {i}?"), answer)).collect();
        data.streams.insert(name.to_string(), rows);
    }
    data
}

/// Runs `f` on a context over a tiny model and the streams above (same batches every call).
#[allow(dead_code)]
fn on_tiny<R>(f: impl FnOnce(&mut dyn StepContext) -> Result<R>) -> R {
    let model = safetune_model::tiny_model(3).unwrap();
    let cfg = TrainConfig { batch_size: 2, max_len: 384, ..Default::default() };
    with_context(&model, None, &streams(), &cfg, f).unwrap()
}

#[allow(dead_code)]
fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

// stage:alignment:begin
// template-only:begin
mod alignment {
    use super::*;
    use safetune_defense_template::alignment::*;
    // template-only:end
    // scaffold: use safetune_defense_template::*;
    use safetune_core::training::TrainStep;

    #[test]
    fn the_loss_adds_the_weighted_safety_loss() {
        let mut step = TemplateAlignment { options: TemplateAlignmentOptions { weight: 0.5 } };
        let got = on_tiny(|ctx| step.loss(ctx).map(|l| scalar(&l)));
        // The same batches drawn by hand: alignment data, then safety.
        let (task, safety) = on_tiny(|ctx| {
            let t = ctx.next_batch(stream::TASK)?.unwrap();
            let s = ctx.next_batch(stream::SAFETY)?.unwrap();
            Ok((scalar(&ctx.lm_loss(&t, None, false)?.0), scalar(&ctx.lm_loss(&s, None, false)?.0)))
        });
        assert!(safety > 0.1, "{safety}");
        assert!((got - (task + 0.5 * safety)).abs() < 1e-4, "{got} vs {task} + 0.5 * {safety}");
    }

    #[test]
    fn bad_options_name_their_key() {
        use safetune_core::defense::Defense;
        let err = TemplateAlignment::plan(TemplateAlignmentOptions { weight: -1.0 }).err().unwrap().to_string();
        assert!(err.starts_with("defense_options.template-alignment.weight:"), "{err}");
    }
    // template-only:begin
}
// template-only:end
// stage:alignment:end
// stage:finetune:begin
// template-only:begin
mod finetune {
    use super::*;
    use safetune_defense_template::finetune::*;
    // template-only:end
    // scaffold: use safetune_defense_template::*;
    use safetune_core::training::TrainStep;

    #[test]
    fn the_loss_subtracts_the_capped_harmful_loss() {
        let mut step = TemplateFinetune { options: TemplateFinetuneOptions { weight: 0.5, cap: 100.0 } };
        let got = on_tiny(|ctx| step.loss(ctx).map(|l| scalar(&l)));
        let (task, harmful) = on_tiny(|ctx| {
            let t = ctx.next_batch(stream::TASK)?.unwrap();
            let h = ctx.next_batch(stream::HARMFUL)?.unwrap();
            Ok((scalar(&ctx.lm_loss(&t, None, false)?.0), scalar(&ctx.lm_loss(&h, None, false)?.0)))
        });
        assert!(harmful > 0.1, "{harmful}");
        assert!((got - (task - 0.5 * harmful)).abs() < 1e-4, "{got} vs {task} - 0.5 * {harmful}");
        // The cap bounds the ascent.
        let mut capped = TemplateFinetune { options: TemplateFinetuneOptions { weight: 0.5, cap: 0.1 } };
        let got = on_tiny(|ctx| capped.loss(ctx).map(|l| scalar(&l)));
        assert!((got - (task - 0.05)).abs() < 1e-4, "{got}");
    }

    #[test]
    fn bad_options_name_their_key() {
        use safetune_core::defense::Defense;
        let err = TemplateFinetune::plan(TemplateFinetuneOptions { weight: 0.1, cap: f64::NAN }).err().unwrap().to_string();
        assert!(err.starts_with("defense_options.template-finetune.cap:"), "{err}");
    }
    // template-only:begin
}
// template-only:end
// stage:finetune:end
// stage:repair:begin
// template-only:begin
mod repair {
    use super::*;
    use safetune_defense_template::repair::*;
    // template-only:end
    // scaffold: use safetune_defense_template::*;
    use candle_core::Device;
    use safetune_core::repair::{Repair, WeightSets, Weights};

    #[test]
    fn the_most_changed_weights_go_back_to_aligned() {
        let t = |v: f32| Tensor::new(&[[v, 1.0], [1.0, 1.0]], &Device::Cpu).unwrap();
        let mut aligned = Weights::new();
        let mut ft = Weights::new();
        for (name, update) in [("a.weight", 0.1), ("b.weight", 2.0), ("c.weight", 0.5)] {
            aligned.insert(name.into(), t(1.0));
            ft.insert(name.into(), t(1.0 + update));
        }
        let w = WeightSets { base: &aligned, aligned: &aligned, finetuned: &ft };
        let r = TemplateRepair { options: TemplateRepairOptions { k: 2 } };
        let out = on_tiny(|ctx| r.repair(&w, ctx));
        assert_eq!(out.keys().collect::<Vec<_>>(), ["b.weight", "c.weight"]);
        for w in out.values() {
            assert_eq!(w.to_vec2::<f32>().unwrap(), aligned["a.weight"].to_vec2::<f32>().unwrap());
        }
    }

    #[test]
    fn bad_options_name_their_key() {
        use safetune_core::defense::Defense;
        let err = TemplateRepair::plan(TemplateRepairOptions { k: 0 }).err().unwrap().to_string();
        assert!(err.starts_with("defense_options.template-repair.k:"), "{err}");
    }
    // template-only:begin
}
// template-only:end
// stage:repair:end
