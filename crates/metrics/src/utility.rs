//! Scoring one answer against its reference: the scorers of the utility
//! metrics this crate registers (`registry.rs`).

pub use safetune_core::judge::UtilityScore;

fn yes(ok: bool) -> UtilityScore {
    UtilityScore { score: if ok { 1.0 } else { 0.0 }, parsed: true }
}

const UNREAD: UtilityScore = UtilityScore { score: 0.0, parsed: false };

/// `labels`: the one label the answer names, compared with the reference.
pub fn label_score(labels: &[String], answer: &str, reference: &str) -> UtilityScore {
    read_label(answer, labels).map_or(UNREAD, |l| yes(l.eq_ignore_ascii_case(reference.trim())))
}

/// `final-number`: the answer's final number equals the reference's.
pub fn final_number_score(_: &[String], answer: &str, reference: &str) -> UtilityScore {
    final_number(answer).map_or(UNREAD, |n| yes(same_number(&n, reference)))
}

/// `rouge-l`: ROUGE-L F1.
pub fn rouge_l_score(_: &[String], answer: &str, reference: &str) -> UtilityScore {
    UtilityScore { score: rouge_l(answer, reference), parsed: true }
}

/// `sql-exact`: the answer's SQL equals the reference after normalisation.
pub fn sql_exact_score(_: &[String], answer: &str, reference: &str) -> UtilityScore {
    yes(normalize_sql(&crate::sql::extract_sql(answer)) == normalize_sql(reference))
}

/// `exact`: equal after trimming and lower-casing.
pub fn exact_score(_: &[String], answer: &str, reference: &str) -> UtilityScore {
    yes(answer.trim().to_lowercase() == reference.trim().to_lowercase())
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

/// ROUGE-N F1 over lower-cased word tokens (n-gram counts clipped).
pub fn rouge_n(candidate: &str, reference: &str, n: usize) -> f64 {
    let grams = |s: &str| -> std::collections::HashMap<Vec<String>, usize> {
        let w = words(s);
        let mut m = std::collections::HashMap::new();
        for g in w.windows(n) {
            *m.entry(g.to_vec()).or_insert(0) += 1;
        }
        m
    };
    let (c, r) = (grams(candidate), grams(reference));
    let (cn, rn) = (c.values().sum::<usize>(), r.values().sum::<usize>());
    let overlap: usize = c.iter().map(|(g, k)| (*k).min(r.get(g).copied().unwrap_or(0))).sum();
    if overlap == 0 || cn == 0 || rn == 0 {
        return 0.0;
    }
    let (p, rec) = (overlap as f64 / cn as f64, overlap as f64 / rn as f64);
    2.0 * p * rec / (p + rec)
}

/// ROUGE-1 and ROUGE-2, reported beside ROUGE-L.
pub fn rouge_secondary(answer: &str, reference: &str, _: Option<&str>) -> Vec<(&'static str, Option<f64>)> {
    vec![("ROUGE-1", Some(rouge_n(answer, reference, 1))), ("ROUGE-2", Some(rouge_n(answer, reference, 2)))]
}

/// Execution accuracy beside SQL exact match (`schema`: the task's CREATE TABLE
/// statements); `None` when the gold query does not run or there is no schema.
pub fn sql_secondary(answer: &str, reference: &str, schema: Option<&str>) -> Vec<(&'static str, Option<f64>)> {
    let exec = schema.and_then(|s| crate::sql::same_execution(s, reference, &crate::sql::extract_sql(answer)));
    vec![("execution accuracy", exec.map(|ok| if ok { 1.0 } else { 0.0 }))]
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
    use safetune_core::judge::UtilityMetric;

    fn score(m: &UtilityMetric, answer: &str, reference: &str) -> UtilityScore {
        m.score(answer, reference).unwrap()
    }

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
        assert_eq!(score(&UtilityMetric::named("final-number"), "The final answer is: 18.", "18").score, 1.0);
        // Textbook ROUGE-L: "police killed the gunman" vs "the police kill the gunman": LCS 3 (police, the, gunman).
        let f = rouge_l("police killed the gunman", "the police kill the gunman");
        let (p, r) = (3.0 / 4.0, 3.0 / 5.0);
        assert!((f - 2.0 * p * r / (p + r)).abs() < 1e-12);
        assert_eq!(rouge_l("a b c", "a b c"), 1.0);
        assert_eq!(rouge_l("", "a"), 0.0);
        assert_eq!(normalize_sql("SELECT COUNT(*) FROM head WHERE age > 56;"), normalize_sql("select count( * ) from head where age>56"));
        assert_ne!(normalize_sql("SELECT a FROM t"), normalize_sql("SELECT b FROM t"));
        assert_eq!(score(&UtilityMetric::named("sql-exact"), "```sql\nselect a from t;\n```", "SELECT a FROM t").score, 1.0);
    }

    #[test]
    fn rouge_n_textbook_example() {
        // Lin (2004)-style example: candidate "the cat was under the bed",
        // reference "the cat was found under the bed".
        let (c, r) = ("the cat was under the bed", "the cat was found under the bed");
        let f = |p: f64, r: f64| 2.0 * p * r / (p + r);
        assert!((rouge_n(c, r, 1) - f(6.0 / 6.0, 6.0 / 7.0)).abs() < 1e-12);
        assert!((rouge_n(c, r, 2) - f(4.0 / 5.0, 4.0 / 6.0)).abs() < 1e-12);
        // Counts are clipped: "the the the" against "the cat" has one matching unigram.
        assert!((rouge_n("the the the", "the cat", 1) - f(1.0 / 3.0, 1.0 / 2.0)).abs() < 1e-12);
        assert_eq!(rouge_n("a", "a", 2), 0.0, "no bigrams");
        let s = (UtilityMetric::named("rouge-l").scorer().unwrap().secondary)(c, r, None);
        assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), ["ROUGE-1", "ROUGE-2"]);
        let sql = (UtilityMetric::named("sql-exact").scorer().unwrap().secondary)(
            "SELECT count(*) FROM t WHERE 3 < x",
            "SELECT COUNT(*) FROM t WHERE x > 3",
            Some("CREATE TABLE t (x INTEGER)"),
        );
        assert_eq!(sql, vec![("execution accuracy", Some(1.0))]);
    }
}
