use safetune_core::defense::{DataMix, DefenseData};
use safetune_core::{Example, ExampleKind};
use safetune_defense_safeinstr::{SafeInstr, SafeInstrConfig, SafetyPool};

fn pool(kind: ExampleKind, p: &str, n: usize) -> Vec<Example> {
    (0..n).map(|i| Example::new(format!("{p}:{i}"), kind, format!("{p} {i}"), "r")).collect()
}

#[test]
fn mixes_exactly_the_configured_share_of_safety_examples() {
    let safety = pool(ExampleKind::Refusal, "s", 50);
    for (n, expect) in [(500, 15), (100, 3), (10, 0)] {
        let mut task = pool(ExampleKind::Task, "t", n);
        SafeInstr { cfg: SafeInstrConfig::default() }.mix(&mut task, &DefenseData { safety: &safety, ..Default::default() }, 1).unwrap();
        assert_eq!(task.len(), n + expect);
        assert_eq!(task.iter().filter(|e| e.kind == ExampleKind::Refusal).count(), expect);
        let ids: std::collections::HashSet<&String> = task.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), task.len());
    }
    let mut task = pool(ExampleKind::Task, "t", 1000);
    let err = SafeInstr { cfg: SafeInstrConfig { fraction: 0.1, ..Default::default() } }
        .mix(&mut task, &DefenseData { safety: &safety, ..Default::default() }, 1)
        .unwrap_err();
    assert!(err.to_string().contains("100 safety examples asked for") && err.to_string().contains("number 50"), "{err}");
}

#[test]
fn the_demonstrations_pool_mixes_only_curated_demonstrations() {
    let safety = pool(ExampleKind::Refusal, "s", 50);
    let demos = pool(ExampleKind::Refusal, "demo", 40);
    let data = DefenseData { safety: &safety, demonstrations: &demos, ..Default::default() };
    let paper = SafeInstr { cfg: SafeInstrConfig { pool: SafetyPool::Demonstrations, ..Default::default() } };
    let mut task = pool(ExampleKind::Task, "t", 500);
    paper.mix(&mut task, &data, 1).unwrap();
    let added: Vec<&str> = task.iter().filter(|e| !e.id.starts_with("t:")).map(|e| e.id.as_str()).collect();
    assert_eq!(added.len(), 15);
    assert!(added.iter().all(|id| id.starts_with("demo:")), "{added:?}");
    // The default draws from the alignment set's pairs.
    let mut task = pool(ExampleKind::Task, "t", 500);
    SafeInstr { cfg: SafeInstrConfig::default() }.mix(&mut task, &data, 1).unwrap();
    assert!(task.iter().filter(|e| !e.id.starts_with("t:")).all(|e| e.id.starts_with("s:")));
    // A source without demonstrations is named.
    let err = paper.mix(&mut pool(ExampleKind::Task, "t", 500), &DefenseData { safety: &safety, ..Default::default() }, 1).unwrap_err();
    assert!(err.to_string().contains("curated demonstrations") && err.to_string().contains("number 0"), "{err}");
    // Options as a spec spells them.
    let cfg: SafeInstrConfig = serde_json::from_value(serde_json::json!({ "pool": "demonstrations" })).unwrap();
    assert_eq!(cfg.pool, SafetyPool::Demonstrations);
    assert!(serde_json::from_value::<SafeInstrConfig>(serde_json::json!({ "pool": "curated" })).is_err());
}
