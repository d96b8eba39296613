//! Scoring one answer against its reference for each utility metric.

use safetune_core::judge::UtilityMetric;

/// The score of an answer (1/0 for accuracy-like metrics, F1 for ROUGE-L)
/// and whether an answer could be read at all (an unreadable one scores 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UtilityScore {
    pub score: f64,
    pub parsed: bool,
}

pub fn score(metric: &UtilityMetric, answer: &str, reference: &str) -> UtilityScore {
    let yes = |ok: bool| UtilityScore { score: if ok { 1.0 } else { 0.0 }, parsed: true };
    match metric {
        UtilityMetric::Labels(labels) => match read_label(answer, labels) {
            Some(l) => yes(l.eq_ignore_ascii_case(reference.trim())),
            None => UtilityScore { score: 0.0, parsed: false },
        },
        UtilityMetric::FinalNumber => match final_number(answer) {
            Some(n) => yes(same_number(&n, reference)),
            None => UtilityScore { score: 0.0, parsed: false },
        },
        UtilityMetric::RougeL => UtilityScore { score: rouge_l(answer, reference), parsed: true },
        UtilityMetric::SqlExact => yes(normalize_sql(answer) == normalize_sql(reference)),
        UtilityMetric::Exact => yes(answer.trim().to_lowercase() == reference.trim().to_lowercase()),
    }
}

/// The one label the answer names (case-insensitive, as a whole word); none or several → `None`.
pub fn read_label<'a>(answer: &str, labels: &'a [String]) -> Option<&'a str> {
    let a = answer.to_lowercase();
    let found: Vec<&str> = labels.iter().filter(|l| contains_word(&a, &l.to_lowercase())).map(String::as_str).collect();
    (found.len() == 1).then(|| found[0])
}

fn contains_word(hay: &str, word: &str) -> bool {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
    hay.match_indices(word).any(|(i, _)| !is_word(hay[..i].chars().last()) && !is_word(hay[i + word.len()..].chars().next()))
}

/// The final number of an answer: after "final answer is" or "####", else the last number.
pub fn final_number(answer: &str) -> Option<String> {
    let lower = answer.to_lowercase();
    let tail = ["the final answer is", "####"].iter().filter_map(|m| lower.rfind(m).map(|i| &answer[i + m.len()..])).next();
    let numbers = |s: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for c in s.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_digit() || (c == '.' && !cur.is_empty()) || (c == '-' && cur.is_empty()) {
                cur.push(c);
            } else if c == ',' && !cur.is_empty() {
                continue;
            } else {
                let t = cur.trim_end_matches('.').to_string();
                if t.chars().any(|c| c.is_ascii_digit()) {
                    out.push(t);
                }
                cur.clear();
            }
        }
        out
    };
    match tail {
        Some(t) => numbers(t).into_iter().next(),
        None => numbers(answer).pop(),
    }
}

fn same_number(a: &str, b: &str) -> bool {
    let clean = |s: &str| s.trim().replace([',', '$'], "");
    match (clean(a).parse::<f64>(), clean(b).parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() < 1e-6,
        _ => clean(a) == clean(b),
    }
}

fn words(s: &str) -> Vec<String> {
    s.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

/// ROUGE-L F1 over lower-cased word tokens (longest common subsequence).
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (c, r) = (words(candidate), words(reference));
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0usize; r.len() + 1];
    for cw in &c {
        let mut cur = vec![0usize; r.len() + 1];
        for (j, rw) in r.iter().enumerate() {
            cur[j + 1] = if cw == rw { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        prev = cur;
    }
    let lcs = prev[r.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, rec) = (lcs / c.len() as f64, lcs / r.len() as f64);
    2.0 * p * rec / (p + rec)
}

/// Lower case, single spaces, no trailing semicolon, double quotes as single.
pub fn normalize_sql(s: &str) -> String {
    let s = s.trim().trim_end_matches(';').replace('"', "'").to_lowercase();
    let spaced: String = s.chars().flat_map(|c| if "(),=<>".contains(c) { vec![' ', c, ' '] } else { vec![c] }).collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_numbers_rouge_and_sql() {
        let l: Vec<String> = ["World", "Sports", "Business", "Sci/Tech"].iter().map(|s| s.to_string()).collect();
        assert_eq!(read_label("The category is Sports.", &l), Some("Sports"));
        assert_eq!(read_label("Sports or Business", &l), None);
        assert_eq!(read_label("sci/tech", &l), Some("Sci/Tech"));
        let pn: Vec<String> = vec!["positive".into(), "negative".into()];
        assert_eq!(read_label("nonpositive", &pn), None, "whole words only");
        assert_eq!(final_number("Janet sells 9 eggs.\nThe final answer is: 18"), Some("18".into()));
        assert_eq!(final_number("so 3,000 dollars"), Some("3000".into()));
        assert_eq!(final_number("#### -4.5"), Some("-4.5".into()));
        assert_eq!(final_number("no digits"), None);
        assert_eq!(score(&UtilityMetric::FinalNumber, "The final answer is: 18.", "18").score, 1.0);
        // Textbook ROUGE-L: "police killed the gunman" vs "the police kill the gunman": LCS 3 (police, the, gunman).
        let f = rouge_l("police killed the gunman", "the police kill the gunman");
        let (p, r) = (3.0 / 4.0, 3.0 / 5.0);
        assert!((f - 2.0 * p * r / (p + r)).abs() < 1e-12);
        assert_eq!(rouge_l("a b c", "a b c"), 1.0);
        assert_eq!(rouge_l("", "a"), 0.0);
        assert_eq!(normalize_sql("SELECT COUNT(*) FROM head WHERE age > 56;"), normalize_sql("select count( * ) from head where age>56"));
        assert_ne!(normalize_sql("SELECT a FROM t"), normalize_sql("SELECT b FROM t"));
    }
}
