//! What the binary prints: progress lines on stderr (nothing when quiet), error
//! lines bounded in length, and the failure of a run whose sets were not measured.

use safetune_core::Result;
pub use safetune_eval::say;

/// A run or evaluation that finished and wrote its results, but where some
/// evaluation set is not a measurement (more than half its answers empty):
/// the binary prints `output` as usual, then the failures, and exits with 1.
#[derive(Debug)]
pub struct Unmeasured {
    pub output: String,
    pub failures: Vec<String>,
}

impl std::fmt::Display for Unmeasured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.failures.len();
        write!(
            f,
            "{n} evaluation set{} not measured, more than half the answers empty: {}",
            if n == 1 { "" } else { "s" },
            self.failures.join("; ")
        )
    }
}

impl std::error::Error for Unmeasured {}

/// `output`, or [`Unmeasured`] when the results in `dir` hold a set that is not a measurement.
pub(crate) fn checked(output: String, dir: &std::path::Path) -> Result<String> {
    let failures = crate::report::failures_in(dir)?;
    if failures.is_empty() {
        Ok(output)
    } else {
        Err(Unmeasured { output, failures }.into())
    }
}

/// `text` cut to about `2 × keep` characters: its first and last `keep`, with the
/// number of characters left out between them. An error that quotes a user's value
/// (a 10 MB name, a 10 MB string where a number belongs) stays one readable line.
pub fn elide(text: &str, keep: usize) -> String {
    let n = text.chars().count();
    if n <= 2 * keep + 40 {
        return text.to_string();
    }
    let head: String = text.chars().take(keep).collect();
    let tail: String = text.chars().skip(n - keep).collect();
    format!("{head} […{} characters left out…] {tail}", n - 2 * keep)
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_lines_keep_both_ends_and_say_how_much_is_cut() {
        assert_eq!(super::elide("short", 4), "short");
        let long = format!("spec.toml:3: n: invalid type: string \"{}\", expected usize", "y".repeat(10_000_000));
        let cut = super::elide(&long, 100);
        assert!(cut.starts_with("spec.toml:3: n: invalid type") && cut.ends_with("expected usize"), "{cut}");
        assert!(cut.contains("[…9999855 characters left out…]") && cut.len() < 300, "{cut}");
        // Multi-byte characters are cut on their boundaries.
        assert_eq!(super::elide(&"é".repeat(100), 10).chars().filter(|c| *c == 'é').count(), 20);
    }
}
