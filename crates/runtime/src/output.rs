//! What the binary prints: progress lines on stderr (nothing when quiet), and
//! error lines bounded in length.

pub use safetune_eval::say;

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
