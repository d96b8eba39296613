//! Hashes the sources of each cached stage (src/code_hash.rs) into
//! `SAFETUNE_CODE_<STAGE>`, so cache keys change when the code that computes
//! a stage does. Outside the workspace (a packaged crate) the sources are not
//! there and the hash is of the crate version.

#[path = "src/code_hash.rs"]
mod code_hash;

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("../..");
    let in_workspace = root.join("crates/runtime/build.rs").is_file();
    for (stage, paths) in code_hash::STAGES {
        let hash = if in_workspace {
            for p in paths.iter().filter(|p| !p.starts_with('!')) {
                println!("cargo:rerun-if-changed={}", root.join(p).display());
            }
            code_hash::hash_sources(&root, paths).expect("reading the workspace sources")
        } else {
            format!("version-{}", std::env::var("CARGO_PKG_VERSION").unwrap_or_default())
        };
        println!("cargo:rustc-env=SAFETUNE_CODE_{}={hash}", stage.to_uppercase());
    }
    // The commit the binary is built from, for every manifest it writes (not the commit of
    // whatever directory it later runs in): "-dirty" when its sources had uncommitted changes,
    // "unknown" outside a git checkout. Built again when HEAD moves or a source changes.
    let git =
        |args: &[&str]| std::process::Command::new("git").arg("-C").arg(&root).args(args).output().ok().filter(|o| o.status.success());
    let revision = match git(&["rev-parse", "HEAD"]) {
        Some(head) if in_workspace => {
            let mut rev = String::from_utf8_lossy(&head.stdout).trim().to_string();
            let status = git(&["status", "--porcelain", "--untracked-files=no", "--", "crates", "xtask", "Cargo.toml", "Cargo.lock"]);
            if status.is_some_and(|s| !s.stdout.is_empty()) {
                rev.push_str("-dirty");
            }
            for watched in [".git/HEAD", ".git/packed-refs", "crates", "xtask", "Cargo.toml", "Cargo.lock"] {
                println!("cargo:rerun-if-changed={}", root.join(watched).display());
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                println!("cargo:rerun-if-changed={}", root.join(".git").join(String::from_utf8_lossy(&branch.stdout).trim()).display());
            }
            rev
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=SAFETUNE_GIT_REVISION={revision}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/code_hash.rs");
}
