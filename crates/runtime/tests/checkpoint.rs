//! A stage stopped after a checkpoint and resumed ends with exactly the weights and
//! losses of an uninterrupted one, for plain SFT and every registered defense's
//! training objective (alignment and fine-tuning stage): the trainer saves the
//! weights, AdamW's moments, the streams' places and each objective's carried state
//! (`TrainStep::save_state`). An objective that forgets part of its state fails here.

use candle_core::Tensor;
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::training::{PlainSft, StepContext, StepState, TrainStep};
use safetune_core::{CausalLm, Example, ExampleKind, Result};
use safetune_runtime as _;
use safetune_train::{train_stage, Checkpoints, StageData, StageRun, TrainReport};

mod common;

const STEPS: usize = 8;
/// Mid-phase for Lisa (switches at 0, 2, 5, 7) and T-Vaccine's scoring (0, 3, 6).
const STOP_AT: usize = 4;

/// Options that make each schedule turn within [`STEPS`] steps (defaults elsewhere).
fn options(name: &str) -> serde_json::Value {
    match name {
        "lisa" => serde_json::json!({ "alignment_step": 2, "finetune_step": 3, "warmup_ratio": 0.0 }),
        "t-vaccine" => serde_json::json!({ "activated_layers": 1, "interval_steps": 2, "probability_steps": 3 }),
        _ => serde_json::Value::Null,
    }
}

fn examples(kind: ExampleKind, prefix: &str, answer: &str) -> Vec<Example> {
    (0..10).map(|i| Example::new(format!("{prefix}:{i}"), kind, format!("{prefix} request number {i}"), format!("{answer} {i}"))).collect()
}

fn data() -> StageData {
    let mut d = StageData::default();
    d.streams.insert("task".into(), examples(ExampleKind::Task, "task", "positive"));
    d.streams.insert("safety".into(), examples(ExampleKind::Refusal, "harm", "I cannot help with that."));
    d.streams.insert("harmful".into(), examples(ExampleKind::Harmful, "harm", "Sure, here is how"));
    d
}

fn cfg() -> TrainConfig {
    TrainConfig { epochs: 1, max_steps: STEPS, batch_size: 3, max_len: 256, learning_rate: 5e-3, ..Default::default() }
}

/// Stops the stage with an error when it reaches `at` (a crash after the last save).
struct Stop {
    inner: Box<dyn TrainStep>,
    at: usize,
}

impl TrainStep for Stop {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn wants_reference(&self) -> bool {
        self.inner.wants_reference()
    }
    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        if ctx.step() == self.at {
            safetune_core::anyhow::bail!("stopped at step {}", self.at);
        }
        self.inner.loss(ctx)
    }
    fn save_state(&self) -> Result<StepState> {
        self.inner.save_state()
    }
    fn load_state(&mut self, state: StepState) -> Result<()> {
        self.inner.load_state(state)
    }
}

/// Trains a fresh LoRA tiny model with `step`, from the checkpoint in `ck` if there is one.
fn run(step: &mut dyn TrainStep, ck: Option<&Checkpoints>) -> Result<(TrainReport, Vec<Vec<f32>>)> {
    let mut m = safetune_model::tiny_model(7)?;
    let lora = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()] };
    safetune_lora::attach_lora(&mut m, &lora, 3)?;
    let reference = safetune_model::tiny_model(7)?;
    let r = if step.wants_reference() { Some(&reference as &dyn CausalLm) } else { None };
    let report = train_stage(&mut m, &data(), step, &cfg(), r, &StageRun { label: "t", quiet: true, checkpoints: ck })?;
    let weights = m.trainable().iter().map(|(_, v)| v.as_tensor().flatten_all()?.to_vec1::<f32>()).collect::<candle_core::Result<_>>()?;
    Ok((report, weights))
}

type Build = Box<dyn Fn() -> Box<dyn TrainStep>>;

/// Every objective: plain SFT, then each defense's alignment and fine-tuning steps.
fn objectives() -> Vec<(String, Build)> {
    let mut all: Vec<(String, Build)> = vec![("sft".into(), Box::new(|| Box::new(PlainSft) as Box<dyn TrainStep>))];
    for e in safetune_core::registry::defenses() {
        let plan = (e.build)(&options(e.name)).unwrap();
        let build = e.build;
        let opts = options(e.name);
        if plan.align_step.is_some() {
            let o = opts.clone();
            all.push((format!("{} (alignment)", e.name), Box::new(move || build(&o).unwrap().align_step.unwrap())));
        }
        if plan.step.is_some() {
            all.push((format!("{} (fine-tuning)", e.name), Box::new(move || build(&opts).unwrap().step.unwrap())));
        }
    }
    all
}

#[test]
fn a_resumed_stage_ends_as_an_uninterrupted_one_for_every_objective() {
    let objectives = objectives();
    // The four objectives that carry state or draw noise by step are among them.
    for name in ["lisa (fine-tuning)", "t-vaccine (alignment)", "repnoise (alignment)", "booster (alignment)"] {
        assert!(objectives.iter().any(|(n, _)| n == name), "{name} is not registered");
    }
    let root = common::tmp("checkpoint-resume");
    for (name, build) in &objectives {
        let (whole, w_whole) = run(build().as_mut(), None).unwrap();
        let ck = Checkpoints { dir: root.join(name.replace([' ', '(', ')'], "_")), every: std::time::Duration::ZERO };
        let mut stopped = Stop { inner: build(), at: STOP_AT };
        let err = run(&mut stopped, Some(&ck)).unwrap_err().to_string();
        assert!(err.contains("stopped at step"), "{name}: {err}");
        assert!(ck.dir.join("latest").is_file(), "{name}: no checkpoint saved");
        let (resumed, w_resumed) = run(build().as_mut(), Some(&ck)).unwrap();
        assert_eq!(resumed.steps, STEPS, "{name}");
        assert_eq!(resumed.losses, whole.losses, "{name}: the losses differ after resuming");
        assert_eq!(resumed.tokens, whole.tokens, "{name}: the token count differs after resuming");
        assert!(w_resumed == w_whole, "{name}: the trained weights differ after resuming");
    }
}

#[test]
fn resuming_without_the_carried_state_differs_so_the_test_above_can_fail() {
    // Lisa's anchor and switch history, dropped on resume: the weights come out different.
    struct Forgetful(Box<dyn TrainStep>);
    impl TrainStep for Forgetful {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
            self.0.loss(ctx)
        }
    }
    let build = || (safetune_core::registry::defense("lisa").unwrap().build)(&options("lisa")).unwrap().step.unwrap();
    let (_, w_whole) = run(build().as_mut(), None).unwrap();
    let ck = Checkpoints { dir: common::tmp("checkpoint-forgetful"), every: std::time::Duration::ZERO };
    run(&mut Stop { inner: Box::new(Forgetful(build())), at: STOP_AT }, Some(&ck)).unwrap_err();
    let (_, w_resumed) = run(&mut Forgetful(build()), Some(&ck)).unwrap();
    assert!(w_resumed != w_whole, "Lisa resumed without its state and still matched: the test cannot fail");
}

#[test]
fn a_checkpoint_of_another_stage_is_refused_with_its_path() {
    let ck = Checkpoints { dir: common::tmp("checkpoint-other"), every: std::time::Duration::ZERO };
    run(&mut Stop { inner: Box::new(PlainSft), at: 3 }, Some(&ck)).unwrap_err();
    // Same directory, a model with other trained tensors.
    let mut m = safetune_model::tiny_model(7).unwrap();
    let lora = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["q_proj".into()] };
    safetune_lora::attach_lora(&mut m, &lora, 3).unwrap();
    let err = train_stage(&mut m, &data(), &mut PlainSft, &cfg(), None, &StageRun { label: "t", quiet: true, checkpoints: Some(&ck) })
        .unwrap_err()
        .to_string();
    assert!(err.contains("another stage") && err.contains(&ck.dir.display().to_string()), "{err}");
}
