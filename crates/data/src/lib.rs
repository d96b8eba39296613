//! safetune-data: datasets, harmful-variant regimes and alignment sets.
//!
//! Reads the layout of a local data directory (`--data-dir`,
//! `SAFETUNE_DATA_DIR`), turns rows into [`safetune_core::Example`]s with
//! stable ids, and builds the pools a run needs: the user's harmful variant
//! (n, p, seed), the alignment set (harmful prompts with the project's own
//! refusals, plus benign instructions) and evaluation sets, checked disjoint.
//! It never prints example text.

mod builtin;
mod csv;
mod dir;
mod overlap;
mod pools;
mod refusals;
mod registry;
mod sets;
mod variant;

pub use builtin::builtin_pools;
pub use csv::parse_csv;
pub use dir::DataDir;
pub use overlap::{check_disjoint, remove_overlap};
pub use pools::Pools;
pub use refusals::{refusal_for, REFUSAL_STYLES};
pub use sets::{alignment_set, AlignmentSpec};
pub use variant::{harmful_variant, Regime, Variant};
