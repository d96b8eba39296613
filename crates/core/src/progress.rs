//! Progress of long steps (training, generation, embedding, downloads): an
//! indicatif bar with its ETA when stderr is a terminal; otherwise (CI, a log
//! file, a `--jobs` worker) a `tracing` line each time a twentieth of the way
//! is crossed at least [`LINE_GAP`] after the last line, so a log shows how far
//! a long step got and a short one adds nothing. Messages go through `tracing` (the
//! binary's subscriber filters them with `RUST_LOG`); [`write_stderr`] prints
//! them without tearing a bar that is being drawn.
//!
//! Code that does not know which step it serves (a model's generation loop)
//! moves the innermost step of its thread with [`advance`]; the step that
//! called it set itself current with [`Steps::current`].

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The least time between two lines of one step off a terminal.
pub const LINE_GAP: Duration = Duration::from_secs(10);

/// The bars on screen; log lines print above them.
pub fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Writes `buf` to stderr with any bar cleared first and redrawn after (the
/// writer of the binary's log subscriber).
pub fn write_stderr(buf: &[u8]) -> std::io::Result<()> {
    bars().suspend(|| std::io::stderr().lock().write_all(buf))
}

/// `1h02m` or `3m07s`.
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

struct Inner {
    label: String,
    unit: &'static str,
    total: usize,
    /// Done before this process (a resumed stage): the ETA counts only this process's.
    first: usize,
    done: AtomicUsize,
    start: Instant,
    bar: Option<ProgressBar>,
    quiet: bool,
    every: usize,
    /// When the last line was printed (off a terminal).
    last_line: std::sync::Mutex<Instant>,
}

/// A step of `total` units (optimiser steps, prompts, texts).
#[derive(Clone)]
pub struct Steps(Arc<Inner>);

thread_local! {
    static CURRENT: RefCell<Vec<Steps>> = const { RefCell::new(Vec::new()) };
}

impl Steps {
    /// `label` names the step in its lines (`align`, `eval aligned: advbench-test`).
    pub fn new(label: &str, total: usize, unit: &'static str, quiet: bool) -> Self {
        Self::starting_at(label, total, 0, unit, quiet)
    }

    /// As [`Steps::new`], with `first` units already done by an earlier process.
    pub fn starting_at(label: &str, total: usize, first: usize, unit: &'static str, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let style = ProgressStyle::with_template("[{prefix}] {bar:30} {pos}/{len} {wide_msg} {elapsed_precise} eta {eta}")
                .expect("a valid template")
                .progress_chars("=> ");
            let bar = bars().add(ProgressBar::new(total as u64).with_style(style).with_prefix(label.to_string()));
            bar.set_position(first as u64);
            bar.reset_eta();
            bar.enable_steady_tick(Duration::from_secs(1));
            bar
        });
        let every = (total / 20).max(1);
        Self(Arc::new(Inner {
            label: label.to_string(),
            unit,
            total,
            first,
            done: AtomicUsize::new(first),
            start: Instant::now(),
            bar,
            quiet,
            every,
            last_line: std::sync::Mutex::new(Instant::now()),
        }))
    }

    /// Sets the units done; `detail` (the loss, say) is computed only when shown.
    pub fn set(&self, done: usize, detail: impl FnOnce() -> String) {
        let before = self.0.done.swap(done, Ordering::Relaxed);
        self.show(before, done, detail);
    }

    /// Adds `n` units done.
    pub fn inc(&self, n: usize) {
        let before = self.0.done.fetch_add(n, Ordering::Relaxed);
        self.show(before, before + n, String::new);
    }

    fn show(&self, before: usize, done: usize, detail: impl FnOnce() -> String) {
        let s = &self.0;
        if s.quiet {
            return;
        }
        if let Some(bar) = &s.bar {
            bar.set_position(done as u64);
            bar.set_message(detail());
            return;
        }
        // A line when a twentieth is crossed (or the end reached) at least LINE_GAP after the last.
        if before / s.every == done / s.every && !(done >= s.total && before < s.total) {
            return;
        }
        {
            let mut last = s.last_line.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < LINE_GAP {
                return;
            }
            *last = Instant::now();
        }
        let el = s.start.elapsed().as_secs_f64();
        let rate = el / done.saturating_sub(s.first).max(1) as f64;
        let eta = rate * s.total.saturating_sub(done) as f64;
        let detail = detail();
        let sep = if detail.is_empty() { "" } else { " " };
        tracing::info!("[{}] {} {done}/{}{sep}{detail} elapsed {} eta {}", s.label, s.unit, s.total, fmt_secs(el), fmt_secs(eta));
    }

    /// Runs `f` with this step as its thread's current one (moved by [`advance`]).
    pub fn current<T>(&self, f: impl FnOnce() -> T) -> T {
        CURRENT.with(|c| c.borrow_mut().push(self.clone()));
        struct Pop;
        impl Drop for Pop {
            fn drop(&mut self) {
                CURRENT.with(|c| c.borrow_mut().pop());
            }
        }
        let _pop = Pop;
        f()
    }

    /// Ends the step: its bar stays on screen, full.
    pub fn finish(&self) {
        if let Some(bar) = &self.0.bar {
            bar.finish();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A step dropped early (an error) leaves no half bar behind.
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.finish_and_clear();
            }
        }
    }
}

/// Moves this thread's current step (see [`Steps::current`]) by `n` units; nothing when there is none.
pub fn advance(n: usize) {
    let top = CURRENT.with(|c| c.borrow().last().cloned());
    if let Some(s) = top {
        s.inc(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_the_innermost_current_step_and_nothing_outside_one() {
        advance(3); // no current step: nothing happens
        let outer = Steps::new("outer", 10, "prompts", true);
        let inner = Steps::new("inner", 4, "prompts", true);
        outer.current(|| {
            advance(2);
            inner.current(|| advance(3));
            advance(1);
        });
        advance(5);
        assert_eq!(outer.0.done.load(Ordering::Relaxed), 3);
        assert_eq!(inner.0.done.load(Ordering::Relaxed), 3);
        let resumed = Steps::starting_at("r", 10, 4, "steps", true);
        resumed.set(6, || unreachable!("quiet: the detail is never computed"));
        assert_eq!(resumed.0.done.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn durations_read_as_hours_and_minutes_or_minutes_and_seconds() {
        assert_eq!(fmt_secs(187.0), "3m07s");
        assert_eq!(fmt_secs(3720.0), "1h02m");
        assert_eq!(fmt_secs(-1.0), "0m00s");
    }
}
