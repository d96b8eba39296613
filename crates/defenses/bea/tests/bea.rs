use safetune_core::defense::{DataMix, Defense, DefenseData};
use safetune_core::{Example, ExampleKind};
use safetune_defense_bea::{Bea, BeaConfig};

fn pool(kind: ExampleKind, p: &str, n: usize) -> Vec<Example> {
    (0..n).map(|i| Example::new(format!("{p}:{i}"), kind, format!("{p} {i}"), "r")).collect()
}

#[test]
fn trigger_marks_exactly_the_safety_examples_and_inference() {
    let bea = Bea::new(BeaConfig::default()).unwrap();
    assert_eq!(bea.trigger.split(' ').count(), 16);
    let mut task = pool(ExampleKind::Task, "t", 100);
    bea.mix(&mut task, &DefenseData { safety: &pool(ExampleKind::Refusal, "s", 40), ..Default::default() }, 3).unwrap();
    assert_eq!(task.len(), 111);
    let triggered: Vec<&Example> = task.iter().filter(|e| e.system.as_deref().is_some_and(|s| s.starts_with(&bea.trigger))).collect();
    assert_eq!(triggered.len(), 11);
    assert!(triggered.iter().all(|e| e.kind == ExampleKind::Refusal));
    // At inference the trigger precedes the default system prompt; without BEA the prompt is the default.
    let plan = Bea::plan(BeaConfig::default()).unwrap();
    let sys = (plan.system_prompt.as_ref().unwrap())(Some("You are helpful")).unwrap();
    assert_eq!(sys, format!("{} You are helpful", bea.trigger));
    let plain = safetune_core::PromptFormat::Chatml.prompt(None, "q");
    let with = safetune_core::PromptFormat::Chatml.prompt(Some(&sys), "q");
    assert!(with.contains(&bea.trigger) && !plain.contains(&bea.trigger));
    // The trigger is secret but reproducible from its seed.
    assert_eq!(Bea::new(BeaConfig::default()).unwrap().trigger, bea.trigger);
    assert_ne!(Bea::new(BeaConfig { trigger_seed: 1, ..Default::default() }).unwrap().trigger, bea.trigger);
}
