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
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/code_hash.rs");
}
