//! `cargo xtask new-defense NAME --stage alignment|finetune|repair`: a defense crate copied
//! from `crates/defense-template` (a crate that builds and tests in the workspace, so the
//! scaffold cannot rot), keeping the chosen stage's blocks; and the checks that keep defense
//! crates honest (they depend on the traits crate and general-purpose libraries only, and
//! every one is linked into the binary).

use std::path::{Path, PathBuf};

pub const STAGES: [&str; 3] = ["alignment", "finetune", "repair"];

/// Libraries a defense crate may depend on besides `safetune-core`.
const GENERAL: [&str; 8] = ["candle-core", "candle-nn", "serde", "serde_json", "schemars", "anyhow", "half", "rayon"];

/// The template's text for one stage: other stages' blocks and template-only blocks dropped,
/// markers removed, `// scaffold: X` lines made `X`, names changed to the new defense's.
pub fn specialise(text: &str, stage: &str, name: &str) -> String {
    let ty: String = name.split('-').filter(|w| !w.is_empty()).map(|w| w[..1].to_uppercase() + &w[1..]).collect();
    let ident = format!("safetune_defense_{}", name.replace('-', "_"));
    let mut out = Vec::new();
    let mut skip: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        let marker = t
            .strip_prefix("// ")
            .or_else(|| t.strip_prefix("<!-- ").and_then(|m| m.strip_suffix(" -->")))
            .filter(|m| m.starts_with("stage:") || m.starts_with("template-only:"));
        if let Some(m) = marker {
            let (block, edge) = m.rsplit_once(':').unwrap_or((m, ""));
            match (skip.as_deref(), edge) {
                (None, "begin") if block == "template-only" || block != format!("stage:{stage}") => skip = Some(block.to_string()),
                (Some(b), "end") if b == block => skip = None,
                _ => {}
            }
            continue;
        }
        if skip.is_some() {
            continue;
        }
        let line = match t.strip_prefix("// scaffold: ") {
            Some(code) => code.to_string(),
            None => line.to_string(),
        };
        out.push(line);
    }
    let mut s = out.join("\n") + "\n";
    for st in STAGES {
        let cap = st[..1].to_uppercase() + &st[1..];
        s = s.replace(&format!("template-{st}"), name).replace(&format!("Template{cap}"), &ty);
    }
    s.replace("safetune-defense-template", &format!("safetune-defense-{name}"))
        .replace("safetune_defense_template", &ident)
        .replace("# template\n", &format!("# {name}\n"))
        .replace("`template`", &format!("`{name}`"))
}

/// Writes `crates/defenses/NAME` for `stage` and links it into the binary.
pub fn new_defense(root: &Path, name: &str, stage: &str) -> Result<PathBuf, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') || name.starts_with('-') {
        return Err("usage: cargo xtask new-defense NAME --stage alignment|finetune|repair (NAME: lower-case letters, digits, '-')".into());
    }
    if !STAGES.contains(&stage) {
        return Err(format!("--stage: `{stage}` is not one of {}", STAGES.join(", ")));
    }
    let dir = root.join("crates/defenses").join(name);
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let template = root.join("crates/defense-template");
    let mut files = Vec::new();
    for rel in ["Cargo.toml", "README.md", "src/lib.rs", "tests/mechanism.rs"] {
        let text = std::fs::read_to_string(template.join(rel)).map_err(|e| format!("{}: {e}", template.join(rel).display()))?;
        let mut text = specialise(&text, stage, name);
        if rel == "Cargo.toml" {
            text = text
                .replace("publish = false\n", "")
                .replace(
                    "description = \"The scaffold `cargo xtask new-defense` copies: one toy defense per stage, built and tested in the workspace.\"",
                    &format!("description = \"The {name} defense for safetune.\""),
                );
        }
        files.push((rel, text));
    }
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap_or(&dir)).map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    sync_registration(root)?;
    Ok(dir)
}

/// The defense crates under `crates/defenses`, by directory name.
pub fn defense_crates(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("crates/defenses");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    Ok(v)
}

/// The generated lines that link every defense crate into the binary: per file, its markers
/// and the lines between them.
fn registration(names: &[String]) -> [(&'static str, &'static str, &'static str, String); 2] {
    let deps = names.iter().map(|n| format!("safetune-defense-{n} = {{ path = \"../defenses/{n}\" }}")).collect::<Vec<_>>().join("\n");
    let uses = names.iter().map(|n| format!("use safetune_defense_{} as _;", n.replace('-', "_"))).collect::<Vec<_>>().join("\n");
    [
        ("crates/runtime/Cargo.toml", "# defenses:begin", "# defenses:end", deps),
        ("crates/runtime/src/defenses.rs", "// defenses:begin", "// defenses:end", uses),
    ]
}

fn marked(text: &str, begin: &str, end: &str) -> Option<(usize, usize)> {
    let b = text.find(begin)? + begin.len() + 1;
    let e = text.find(end)?;
    (b <= e).then_some((b, e))
}

/// Rewrites the generated lists in `crates/runtime/Cargo.toml` and `crates/runtime/src/defenses.rs`
/// from the directory listing (the only lines outside a defense crate that name it).
pub fn sync_registration(root: &Path) -> Result<(), String> {
    for (rel, begin, end, body) in registration(&defense_crates(root)?) {
        let p = root.join(rel);
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let (b, e) = marked(&text, begin, end).ok_or_else(|| format!("{}: markers `{begin}`/`{end}` not found", p.display()))?;
        let new = format!("{}{body}\n{}", &text[..b], &text[e..]);
        if new != text {
            std::fs::write(&p, new).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    Ok(())
}

/// Every defense crate (and the template) depends on the traits crate and general-purpose
/// libraries only, and is linked into the binary: the problems found, one line each.
pub fn check(root: &Path) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    let names = defense_crates(root)?;
    let mut dirs: Vec<PathBuf> = names.iter().map(|n| root.join("crates/defenses").join(n)).collect();
    dirs.push(root.join("crates/defense-template"));
    for d in dirs {
        let manifest = d.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
        for dep in forbidden_dependencies(&text).map_err(|e| format!("{}: {e}", manifest.display()))? {
            problems.push(format!(
                "{}: depends on `{dep}`; a defense depends on safetune-core and general libraries ({}) only",
                manifest.display(),
                GENERAL.join(", ")
            ));
        }
    }
    for (rel, begin, end, want) in registration(&names) {
        let text = std::fs::read_to_string(root.join(rel)).map_err(|e| format!("{rel}: {e}"))?;
        let (b, e) = marked(&text, begin, end).ok_or_else(|| format!("{rel}: markers not found"))?;
        if text[b..e].trim_end() != want {
            problems.push(format!("{rel}: the linked defense crates differ from crates/defenses/*; run `cargo xtask sync-defenses`"));
        }
    }
    Ok(problems)
}

/// Dependencies of a crate manifest's `[dependencies]` table that a defense may not have.
fn forbidden_dependencies(manifest: &str) -> Result<Vec<String>, String> {
    let t: toml::Table = manifest.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let deps = t.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default();
    Ok(deps.keys().filter(|k| k.as_str() != "safetune-core" && !GENERAL.contains(&k.as_str())).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn a_scaffold_keeps_only_its_stage_under_the_new_name() {
        let lib = std::fs::read_to_string(root().join("crates/defense-template/src/lib.rs")).unwrap();
        let tests = std::fs::read_to_string(root().join("crates/defense-template/tests/mechanism.rs")).unwrap();
        let readme = std::fs::read_to_string(root().join("crates/defense-template/README.md")).unwrap();
        for (stage, part, other) in [
            ("alignment", "align_step", "repair: Some"),
            ("finetune", "step: Some", "align_step"),
            ("repair", "repair: Some", "step: Some"),
        ] {
            let s = specialise(&lib, stage, "my-guard");
            assert!(s.contains("const NAME: &'static str = \"my-guard\";") && s.contains("register_defense!(MyGuard)"), "{stage}:\n{s}");
            assert!(s.contains(part) && !s.contains(other), "{stage}:\n{s}");
            assert_eq!(s.matches("register_defense!").count(), 1, "{stage}");
            assert!(!s.contains("template") && !s.contains("Template") && !s.contains("stage:") && !s.contains("pub mod"), "{stage}:\n{s}");
            let t = specialise(&tests, stage, "my-guard");
            assert!(
                t.contains("use safetune_defense_my_guard::*;") && !t.contains("mod ") && !t.contains("super::") && !t.contains("template"),
                "{stage}:\n{t}"
            );
            assert_eq!(t.matches("#[test]").count(), 2, "{stage}");
            let r = specialise(&readme, stage, "my-guard");
            assert!(r.starts_with("# my-guard\n") && !r.contains("template") && !r.contains("<!--"), "{stage}:\n{r}");
        }
    }

    #[test]
    fn defense_crates_depend_on_the_traits_crate_and_general_libraries_only() {
        let mut crates: Vec<PathBuf> = defense_crates(&root()).unwrap().iter().map(|n| root().join("crates/defenses").join(n)).collect();
        crates.push(root().join("crates/defense-template"));
        assert!(crates.len() >= 6);
        for c in crates {
            let manifest = std::fs::read_to_string(c.join("Cargo.toml")).unwrap();
            assert_eq!(forbidden_dependencies(&manifest).unwrap(), Vec::<String>::new(), "{}", c.display());
        }
        // The check catches a defense that reaches into another workspace crate.
        let bad = "[package]\nname = \"x\"\n[dependencies]\nsafetune-core.workspace = true\nsafetune-train.workspace = true\nserde.workspace = true\n";
        assert_eq!(forbidden_dependencies(bad).unwrap(), ["safetune-train"]);
    }

    #[test]
    fn every_defense_crate_is_linked_into_the_binary_and_checks_out() {
        assert_eq!(check(&root()).unwrap(), Vec::<String>::new());
    }
}
