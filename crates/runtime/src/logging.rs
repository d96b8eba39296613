//! The binary's log subscriber: `tracing` events (every crate's progress and
//! result lines) on stderr as plain lines — the level in front of those that
//! are not info (`warn: …`, `debug: …`) — filtered by `RUST_LOG` (default `info`; `RUST_LOG=warn`
//! keeps only warnings, `RUST_LOG=safetune_train=debug,info` one crate's
//! details), printed above any progress bar that is being drawn.

use std::fmt;
use std::io::Write;

use safetune_core::anyhow::anyhow;
use safetune_core::tracing::{Event, Level, Subscriber};
use safetune_core::Result;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber once per process; a bad `RUST_LOG` is an error naming it.
pub fn init() -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).map_err(|e| anyhow!("RUST_LOG: `{v}` is not a log filter ({e})"))?,
        _ => EnvFilter::new("info"),
    };
    // A second call (a test calling `main_with` twice) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).event_format(Plain).with_writer(|| AboveBars).try_init();
    Ok(())
}

/// The message alone, with the level in front when it is not info.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = *event.metadata().level();
        if level != Level::INFO {
            write!(w, "{}: ", level.as_str().to_lowercase())?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Stderr, with the progress bars cleared while a line is written.
struct AboveBars;

impl Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        safetune_core::progress::write_stderr(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
