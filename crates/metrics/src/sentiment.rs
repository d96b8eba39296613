//! Reading a sentiment label out of a generated answer.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentimentOutcome {
    Label(&'static str),
    /// Neither or both labels: counted wrong, and reported.
    Unparseable,
}

/// The label an answer gives: the first of `positive`/`negative` to appear
/// (case-insensitive) when only one of them appears.
pub fn parse_sentiment(answer: &str) -> SentimentOutcome {
    let a = answer.to_lowercase();
    match (a.find("positive"), a.find("negative")) {
        (Some(_), None) => SentimentOutcome::Label("positive"),
        (None, Some(_)) => SentimentOutcome::Label("negative"),
        _ => SentimentOutcome::Unparseable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_unparseable() {
        assert_eq!(
            parse_sentiment("Positive"),
            SentimentOutcome::Label("positive")
        );
        assert_eq!(
            parse_sentiment("The sentiment is negative."),
            SentimentOutcome::Label("negative")
        );
        assert_eq!(
            parse_sentiment("It is positive and negative"),
            SentimentOutcome::Unparseable
        );
        assert_eq!(parse_sentiment("I like it"), SentimentOutcome::Unparseable);
    }
}
