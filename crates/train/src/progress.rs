//! A progress line with loss and ETA on stderr.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    label: String,
    total: usize,
    start: Instant,
    tty: bool,
    quiet: bool,
    every: usize,
    /// Steps done before this process (a resumed stage).
    first: usize,
}

pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

impl Progress {
    pub fn new(label: &str, total: usize, quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self { label: label.to_string(), total, start: Instant::now(), tty, quiet, every: (total / 20).max(1), first: 0 }
    }

    /// The stage resumed with `first` steps already done (the ETA counts only this process's).
    pub fn resumed_at(mut self, first: usize) -> Self {
        self.first = first;
        self
    }

    /// Reports that `done` of `total` steps are finished.
    pub fn update(&self, done: usize, loss: f64, lr: f64) {
        if self.quiet || !(self.tty || done.is_multiple_of(self.every) || done == self.total) {
            return;
        }
        let el = self.start.elapsed().as_secs_f64();
        let eta = el / done.saturating_sub(self.first).max(1) as f64 * (self.total - done.min(self.total)) as f64;
        let line = format!(
            "[{}] step {done}/{} loss {loss:.4} lr {lr:.2e} elapsed {} eta {}",
            self.label,
            self.total,
            fmt_secs(el),
            fmt_secs(eta)
        );
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r{line}\x1b[K");
            if done == self.total {
                let _ = writeln!(e);
            }
        } else {
            let _ = writeln!(e, "{line}");
        }
    }
}
