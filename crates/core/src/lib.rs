//! safetune-core: the one crate every other safetune crate meets through.
//!
//! It holds plain data types (examples, prompt formats, configs), the traits a
//! model, a training method, a defense and a metric implement, and the
//! name registries through which the runtime finds them. It has no knowledge
//! of files, the command line or any concrete model.

/// `all()` and `find(name)` over a registry of entries with a `name`.
macro_rules! lookup {
    ($all:ident, $find:ident, $ty:ty, $what:literal) => {
        /// Every registered entry, sorted by name.
        pub fn $all() -> Vec<&'static $ty> {
            let mut v: Vec<&'static $ty> = inventory::iter::<$ty>.into_iter().collect();
            v.sort_by_key(|e| e.name);
            v
        }
        /// The entry of that name, or an error listing the known names.
        pub fn $find(name: &str) -> Result<&'static $ty> {
            $all().into_iter().find(|e| e.name == name).ok_or_else(|| {
                let known: Vec<&str> = $all().iter().map(|e| e.name).collect();
                anyhow::anyhow!(concat!("unknown ", $what, " `{}` (known: {})"), name, known.join(", "))
            })
        }
    };
}

pub mod adapter;
pub mod config;
pub mod defense;
pub mod example;
pub mod files;
pub mod judge;
pub mod metric;
pub mod model;
pub mod progress;
pub mod registry;
pub mod repair;
pub mod rng;
pub mod template;
pub mod training;

pub use adapter::{LinearAdapter, LowRank};
pub use example::{Example, ExampleKind};
pub use model::{CausalLm, ForwardOutput, GenerationParams, Settled, Tokenize};
pub use template::PromptFormat;

/// Re-exported so that implementors name one candle version.
pub use candle_core as candle;
/// The error type used across the workspace.
pub type Result<T> = anyhow::Result<T>;
pub use anyhow;
/// Logging macros (`info!`, `warn!`) every crate reports through; the binary's
/// subscriber filters them with `RUST_LOG`.
pub use tracing;

/// Where safetune keeps downloads and content-addressed stage outputs:
/// `$SAFETUNE_CACHE`, else `~/.cache/safetune`.
pub fn cache_dir() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SAFETUNE_CACHE") {
        return std::path::PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_else(|| std::path::PathBuf::from("."));
    home.join(".cache/safetune")
}
