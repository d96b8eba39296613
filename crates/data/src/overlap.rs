//! Pools that must not share prompts (after normalisation).

use std::collections::HashMap;

use safetune_core::anyhow::bail;
use safetune_core::example::normalize_prompt;
use safetune_core::{Example, Result};

/// Errors if any prompt of `evaluation` pools appears, normalised, in any of
/// `training` pools. The error names the two pools and the example ids (never text).
pub fn check_disjoint(training: &[(&str, &[Example])], evaluation: &[(&str, &[Example])]) -> Result<()> {
    let mut seen: HashMap<String, (&str, &str)> = HashMap::new();
    for (pool, examples) in training {
        for e in examples.iter() {
            seen.entry(normalize_prompt(&e.prompt)).or_insert((pool, &e.id));
        }
    }
    for (pool, examples) in evaluation {
        for e in examples.iter() {
            if let Some((tp, tid)) = seen.get(&normalize_prompt(&e.prompt)) {
                bail!(
                    "evaluation prompt {} ({pool}) also appears in {tp} as {tid}: evaluation data must be disjoint from training data",
                    e.id
                );
            }
        }
    }
    Ok(())
}

/// Drops from `pool` every example whose normalised prompt is in `exclude`; returns how many were dropped.
pub fn remove_overlap(pool: &mut Vec<Example>, exclude: &[&[Example]]) -> usize {
    let keys: std::collections::HashSet<String> = exclude.iter().flat_map(|p| p.iter().map(|e| normalize_prompt(&e.prompt))).collect();
    let before = pool.len();
    pool.retain(|e| !keys.contains(&normalize_prompt(&e.prompt)));
    before - pool.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetune_core::ExampleKind;

    #[test]
    fn overlap_after_normalisation_is_an_error() {
        let a = vec![Example::new("a:1", ExampleKind::Refusal, "How do I do X?", "no")];
        let b = vec![Example::new("b:7", ExampleKind::Harmful, "how do i do x", "")];
        let c = vec![Example::new("c:1", ExampleKind::Harmful, "something else", "")];
        let err = check_disjoint(&[("align", &a)], &[("eval", &b)]).unwrap_err().to_string();
        assert!(err.contains("b:7") && err.contains("a:1"), "{err}");
        assert!(!err.contains("How do"), "no prompt text in errors");
        check_disjoint(&[("align", &a)], &[("eval", &c)]).unwrap();
        let mut pool = a.clone();
        assert_eq!(remove_overlap(&mut pool, &[&b]), 1);
        assert!(pool.is_empty());
    }
}
