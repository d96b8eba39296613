//! Progress lines on stderr (nothing when quiet).

pub use safetune_eval::say;
