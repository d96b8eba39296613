//! Progress lines on stderr (nothing when quiet).

/// One progress line.
pub fn say(quiet: bool, msg: impl AsRef<str>) {
    if !quiet {
        eprintln!("{}", msg.as_ref());
    }
}
