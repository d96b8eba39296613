//! `cargo xtask check-build-reuse`: whether `cargo test --workspace` can reuse every
//! dependency that `cargo xtask bench-all` compiled for `safetune`.
//!
//! Cargo compiles a dependency once per distinct feature set. `bench-all` builds the
//! `safetune` binary (safetune-runtime's normal and build dependencies); the test
//! command builds the whole workspace with its dev-dependencies, whose features unify
//! with the rest. When a dev-dependency turns on a feature of a crate the binary also
//! uses (proptest → rand → getrandom `std`), that crate and everything above it
//! (tempfile → safetensors → candle → every safetune crate) compile a second time.
//! This compares the two feature resolutions (`cargo tree`) and names every shared
//! package whose features differ.

use std::collections::{BTreeMap, BTreeSet};
use std::process::exit;

use crate::{cargo, fail};

/// `name version` → every feature set it is resolved with in the selection `args`.
fn features(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let out = cargo()
        .args(["tree", "--quiet", "--prefix", "none", "--format", "{p}|{f}"])
        .args(args)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo tree: {e}")));
    if !out.status.success() {
        fail(&format!("cargo tree {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `(*)` marks a package already shown above.
        let Some((package, feats)) = line.trim_end_matches(" (*)").split_once('|') else { continue };
        let key = package.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        map.entry(key).or_default().insert(feats.trim().to_string());
    }
    map
}

pub fn check_build_reuse() {
    let binary = features(&["-p", "safetune-runtime", "-e", "normal,build"]);
    let tests = features(&["--workspace", "-e", "normal,build,dev"]);
    let differ: Vec<String> = binary
        .iter()
        .filter_map(|(package, f)| {
            let g = tests.get(package)?;
            (g != f).then(|| format!("{package}: binary {f:?}, tests {g:?}"))
        })
        .collect();
    if differ.is_empty() {
        println!(
            "ok: the {} packages `safetune` is built from have the same features in `cargo test --workspace` (the tests reuse its build)",
            binary.len()
        );
        return;
    }
    eprintln!("error: `cargo test --workspace` would compile these again with other features than `cargo xtask bench-all`'s build:");
    for d in &differ {
        eprintln!("  {d}");
    }
    eprintln!("enable the tests' features in a normal dependency of safetune-runtime (crates/runtime/Cargo.toml)");
    exit(1);
}
