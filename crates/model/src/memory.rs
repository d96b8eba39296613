//! The process's peak resident memory (Linux `VmHWM`): what model workloads,
//! run stages and the fuzz harnesses measure and bound. One place for it.

/// Peak resident set since the process started or the last [`reset_peak_rss`], in MiB
/// (`None` where `/proc/self/status` cannot be read).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Starts a new peak measurement: writing 5 to clear_refs resets VmHWM (Linux ≥ 4.0);
/// harmless elsewhere.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
