use safetune_core::defense::{DataMix, DefenseData};
use safetune_core::{Example, ExampleKind};
use safetune_defense_safeinstr::{SafeInstr, SafeInstrConfig};

fn pool(kind: ExampleKind, p: &str, n: usize) -> Vec<Example> {
    (0..n).map(|i| Example::new(format!("{p}:{i}"), kind, format!("{p} {i}"), "r")).collect()
}

#[test]
fn mixes_exactly_the_configured_share_of_safety_examples() {
    let safety = pool(ExampleKind::Refusal, "s", 50);
    for (n, expect) in [(500, 15), (100, 3), (10, 0)] {
        let mut task = pool(ExampleKind::Task, "t", n);
        SafeInstr { cfg: SafeInstrConfig::default() }
            .mix(&mut task, &DefenseData { safety: &safety, harmful: &[], refusals: &[] }, 1)
            .unwrap();
        assert_eq!(task.len(), n + expect);
        assert_eq!(task.iter().filter(|e| e.kind == ExampleKind::Refusal).count(), expect);
        let ids: std::collections::HashSet<&String> = task.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), task.len());
    }
    let mut task = pool(ExampleKind::Task, "t", 1000);
    let err = SafeInstr { cfg: SafeInstrConfig { fraction: 0.1 } }
        .mix(&mut task, &DefenseData { safety: &safety, harmful: &[], refusals: &[] }, 1)
        .unwrap_err();
    assert!(err.to_string().contains("has 50"), "{err}");
}
