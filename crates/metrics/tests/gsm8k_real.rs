//! GSM8K's final-number extraction on the 1,319 real test answers (from
//! `../shared/data` beside the repository or `SAFETUNE_DATA_DIR`; skipped
//! without it): the number after `####`, also when the answer is rewritten in
//! safetune's `The final answer is: N` form, and never one from the working.

use std::path::PathBuf;

use safetune_core::judge::UtilityMetric;
use safetune_metrics::utility::final_number;

#[test]
fn final_numbers_of_real_gsm8k_answers() {
    let root = std::env::var_os("SAFETUNE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let Ok(text) = std::fs::read_to_string(root.join("gsm8k/test.jsonl")) else {
        eprintln!("skipped: no gsm8k/test.jsonl under {}", root.display());
        return;
    };
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let answer = v["answer"].as_str().unwrap();
        let (work, gold) = answer.rsplit_once("####").unwrap();
        let gold = gold.trim().replace(',', "");
        assert_eq!(final_number(answer).as_deref(), Some(gold.as_str()), "{answer}");
        let rewritten = format!("{}\nThe final answer is: {gold}", work.trim_end());
        assert_eq!(UtilityMetric::named("final-number").score(&rewritten, &gold).unwrap().score, 1.0);
        // The working alone ends with some other number in most answers: a
        // wrong reference must not match by accident through the extraction.
        assert_eq!(UtilityMetric::named("final-number").score(answer, &format!("{gold}1")).unwrap().score, 0.0);
        n += 1;
    }
    assert_eq!(n, 1319);
}
