//! Reading a spec: TOML files, overlays merged key by key, paths resolved against
//! the file that names them, training tables resolved, and errors that name the
//! file, line and key.

use std::path::{Path, PathBuf};

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;

use super::RunSpec;

/// A file that drives several runs over a base spec (a calibration sweep, an attack
/// search): its table, the directory its relative paths start from, and its name (the
/// file's stem, else `default_name`) for the results directory.
pub(crate) fn read_driver<T: serde::de::DeserializeOwned>(path: &Path, default_name: &str) -> Result<(T, PathBuf, String)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let table: T = toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.message()))?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| default_name.into());
    Ok((table, dir, name))
}

impl RunSpec {
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with_overlays(path, &[])
    }

    /// Reads a base spec and applies overlays in order: tables merge key by
    /// key, any other value replaces the base's. Relative file paths in
    /// `data.custom` (a judge's `rubric_file`, MT-Bench's grading files) are relative to the file that names them.
    pub fn load_with_overlays(base: &Path, overlays: &[PathBuf]) -> Result<Self> {
        if base.extension().is_some_and(|e| e == "json") && overlays.is_empty() {
            // A resolved spec as a results directory keeps it (`spec.json`).
            let text = std::fs::read_to_string(base).with_context(|| format!("{}: cannot read", base.display()))?;
            let spec: RunSpec = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", base.display()))?;
            spec.validate().map_err(|e| anyhow!("{}: {e}", base.display()))?;
            return Ok(spec);
        }
        let mut merged = read_table(base)?;
        for o in overlays {
            merge(&mut merged, read_table(o)?);
        }
        let shown = if overlays.is_empty() { base.display().to_string() } else { format!("{} (with overlays)", base.display()) };
        let text = std::fs::read_to_string(base).with_context(|| format!("{}: cannot read", base.display()))?;
        if overlays.is_empty() && !text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("extends")) {
            // Parsed once from text so that an error carries its line number.
            toml::from_str::<RunSpec>(&text).map_err(|e| located(base, &text, &e))?;
        }
        // An error about a key the files set points at the line that sets it (the last file
        // that does: overlays win).
        let locate = |e: safetune_core::anyhow::Error| {
            let msg = e.to_string();
            let key = msg.split_once(": ").map(|(k, _)| k).filter(|k| !k.contains(' ') && k.contains('.'));
            let files = std::iter::once(base).chain(overlays.iter().map(PathBuf::as_path)).rev();
            let at = key.and_then(|k| {
                let path: Vec<&str> = k.split('.').collect();
                files.filter_map(|f| Some((f, locate_key(&std::fs::read_to_string(f).ok()?, &path)?))).next()
            });
            match at {
                Some((f, line)) => anyhow!("{}:{line}: {msg}", f.display()),
                None => anyhow!("{shown}: {msg}"),
            }
        };
        resolve_train_tables(&mut merged).map_err(locate)?;
        // The merged table has no lines of its own: an error names the key's path, and
        // `locate` finds the line that sets it in the files.
        let spec: RunSpec = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let at = e.path().to_string();
            let msg = e.into_inner().message().to_string();
            if at == "." {
                anyhow!("{shown}: {msg}")
            } else {
                locate(anyhow!("{at}: {msg}"))
            }
        })?;
        spec.validate().map_err(locate)?;
        Ok(spec)
    }
}

/// Training tables as written: a `seed` in one (`alignment.train`, `finetune.train`,
/// `finetune.method_train.<m>`, `finetune.regime_train.<r>`) is an error (the run's top-level
/// `seed` sets it), and `finetune.method_train.<m>` is an overlay on `finetune.train` (keys it leaves out keep
/// `finetune.train`'s values, not the defaults).
fn resolve_train_tables(spec: &mut toml::Table) -> Result<()> {
    let table = |v: Option<&toml::Value>| v.and_then(|v| v.as_table()).cloned();
    let mut tables: Vec<(String, toml::Table)> = Vec::new();
    if let Some(t) = table(spec.get("alignment").and_then(|a| a.get("train"))) {
        tables.push(("alignment.train".into(), t));
    }
    let finetune = table(spec.get("finetune")).unwrap_or_default();
    let base = table(finetune.get("train")).unwrap_or_default();
    if finetune.contains_key("train") {
        tables.push(("finetune.train".into(), base.clone()));
    }
    let mut merged_methods = toml::Table::new();
    for (m, t) in table(finetune.get("method_train")).unwrap_or_default() {
        let own = t.as_table().cloned().unwrap_or_default();
        tables.push((format!("finetune.method_train.{m}"), own.clone()));
        let mut full = base.clone();
        full.extend(own);
        merged_methods.insert(m, toml::Value::Table(full));
    }
    for (r, t) in table(finetune.get("regime_train")).unwrap_or_default() {
        tables.push((format!("finetune.regime_train.{r}"), t.as_table().cloned().unwrap_or_default()));
    }
    for (path, t) in &tables {
        if t.contains_key("seed") {
            bail!("{path}.seed: set by the run's top-level `seed` (or `seeds`); remove it here");
        }
    }
    if !merged_methods.is_empty() {
        if let Some(toml::Value::Table(f)) = spec.get_mut("finetune") {
            f.insert("method_train".into(), toml::Value::Table(merged_methods));
        }
    }
    Ok(())
}

fn read_table(path: &Path) -> Result<toml::Table> {
    read_table_within(path, 0)
}

/// A spec file's table; `extends = "other.toml"` (relative to the file) reads
/// that file first and applies this one on top as an overlay.
fn read_table_within(path: &Path, depth: usize) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut t: toml::Table = text.parse().map_err(|e| located(path, &text, &e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(parent) = t.remove("extends") {
        let Some(parent) = parent.as_str() else {
            bail!("{}: extends: must be the path of another spec file", path.display());
        };
        if depth >= 8 {
            bail!("{}: extends: more than 8 levels (a cycle?)", path.display());
        }
        let mut base = read_table_within(&dir.join(parent), depth + 1).map_err(|e| anyhow!("{}: extends: {e}", path.display()))?;
        merge(&mut base, resolve_paths(t, dir));
        return Ok(base);
    }
    Ok(resolve_paths(t, dir))
}

/// Makes the relative data paths of `data.custom`, a remote judge's `rubric_file` and
/// MT-Bench's `judge_prompts` and `reference_answers` relative to `dir`.
fn resolve_paths(mut t: toml::Table, dir: &Path) -> toml::Table {
    let relative = |v: &mut toml::Value| {
        if let Some(p) = v.as_str().filter(|p| Path::new(p).is_relative()) {
            *v = toml::Value::String(dir.join(p).display().to_string());
        }
    };
    if let Some(v) = t.get_mut("eval").and_then(|e| e.get_mut("judge_options")).and_then(|o| o.get_mut("rubric_file")) {
        relative(v);
    }
    if let Some(m) = t.get_mut("eval").and_then(|e| e.get_mut("mt_bench")) {
        for key in ["judge_prompts", "reference_answers"] {
            if let Some(v) = m.get_mut(key) {
                relative(v);
            }
        }
    }
    if let Some(toml::Value::Table(custom)) = t.get_mut("data").and_then(|d| d.get_mut("custom")) {
        for (_, ds) in custom.iter_mut() {
            for key in ["path", "test_path"] {
                if let Some(v) = ds.get_mut(key) {
                    if let Some(p) = v.as_str().filter(|p| Path::new(p).is_relative()) {
                        *v = toml::Value::String(dir.join(p).display().to_string());
                    }
                }
            }
        }
    }
    t
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `file:line: key: message` for a TOML error (the key when the line assigns one).
/// The 1-based line of a TOML file that sets the key `path` (`["defense_options", "lisa",
/// "rho"]`): its own line, else the line of the inline table or table header holding it.
fn locate_key(text: &str, path: &[&str]) -> Option<usize> {
    let split = |k: &str| -> Vec<String> { k.split('.').map(|p| p.trim().trim_matches('"').to_string()).collect() };
    let mut table: Vec<String> = Vec::new();
    let mut best: Option<(usize, usize)> = None; // (matched parts, line)
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let full = if let Some(h) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = split(h.trim_start_matches('['));
            table.clone()
        } else if let Some((k, _)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            [table.clone(), split(k)].concat()
        } else {
            continue;
        };
        let n = full.iter().zip(path).take_while(|(a, b)| a == b).count();
        if n == full.len() && n > 0 && best.is_none_or(|(m, _)| n > m) {
            best = Some((n, i + 1));
        }
    }
    best.map(|(_, line)| line)
}

fn located(path: &Path, text: &str, e: &toml::de::Error) -> safetune_core::anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow!("{}: {}", path.display(), e.message());
    };
    let line_no = text[..span.start].lines().count().max(1);
    let line_start = text[..span.start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    match line.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty() && !k.starts_with('[')) {
        Some(key) => anyhow!("{}:{line_no}: {key}: {}", path.display(), e.message()),
        None => anyhow!("{}:{line_no}: {}", path.display(), e.message()),
    }
}
#[cfg(test)]
mod tests {
    #[test]
    fn method_train_overlays_finetune_train_and_a_train_seed_is_refused() {
        let dir = std::env::temp_dir().join(format!("safetune-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = "name = \"t\"\n[model]\nsource = \"m\"\n[alignment]\nbenign = 1\n[finetune]\nn = 4\nregimes = [\"benign\"]\n\
                    methods = [\"sft-lora\", \"sft-full\"]\ntrain = { learning_rate = 1e-4, epochs = 3, batch_size = 2 }\n\
                    [finetune.method_train.sft-full]\nlearning_rate = 2e-5\n";
        let p = dir.join("s.toml");
        std::fs::write(&p, spec).unwrap();
        let s = super::RunSpec::load(&p).unwrap();
        let full = s.method_train("sft-full");
        assert_eq!((full.learning_rate, full.epochs, full.batch_size), (2e-5, 3, 2));
        assert_eq!(s.method_train("sft-lora").learning_rate, 1e-4);
        // A bad method option names its key and line.
        std::fs::write(&p, format!("{spec}[finetune.method_options.sft-lora]\nr = \"eight\"\n")).unwrap();
        let err = super::RunSpec::load(&p).unwrap_err().to_string();
        assert!(err.contains("s.toml:14: finetune.method_options.sft-lora.r: invalid type: string \"eight\""), "{err}");
        std::fs::write(&p, format!("{spec}seed = 3\n")).unwrap();
        let err = super::RunSpec::load(&p).unwrap_err().to_string();
        assert!(
            err.ends_with("s.toml:13: finetune.method_train.sft-full.seed: set by the run's top-level `seed` (or `seeds`); remove it here"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn regime_train_overlays_the_methods_settings_and_bad_overlays_are_refused() {
        let dir = std::env::temp_dir().join(format!("safetune-spec-regime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec =
            "name = \"t\"\n[model]\nsource = \"m\"\n[alignment]\nbenign = 1\n[finetune]\nn = 4\nregimes = [\"benign\", \"pure-bad\"]\n\
                    methods = [\"sft-lora\", \"sft-full\"]\ntrain = { learning_rate = 1e-4, epochs = 2, batch_size = 2 }\n\
                    [finetune.method_train.sft-full]\nlearning_rate = 2e-5\n";
        let p = dir.join("s.toml");
        std::fs::write(&p, format!("{spec}[finetune.regime_train.pure-bad]\nepochs = 5\n")).unwrap();
        let s = super::RunSpec::load(&p).unwrap();
        let cell = |m: &str, r: &str| {
            let t = s.cell_train(m, r).unwrap();
            (t.learning_rate, t.epochs, t.batch_size)
        };
        // The regime's keys on top of each method's own settings; other regimes untouched.
        assert_eq!(cell("sft-lora", "pure-bad"), (1e-4, 5, 2));
        assert_eq!(cell("sft-full", "pure-bad"), (2e-5, 5, 2));
        assert_eq!(cell("sft-lora", "benign"), (1e-4, 2, 2));
        assert_eq!(s.cell_train("sft-full", "benign").unwrap(), *s.method_train("sft-full"));
        // A named regime this run does not train (settings of a spec it extends and narrows) loads.
        std::fs::write(&p, format!("{spec}[finetune.regime_train.high-harm]\nepochs = 5\n")).unwrap();
        assert_eq!(super::RunSpec::load(&p).unwrap().cell_train("sft-lora", "high-harm").unwrap().epochs, 5);
        for (extra, want) in [
            ("[finetune.regime_train.purebad]\nepochs = 5\n", "s.toml:13: finetune.regime_train.purebad: unknown regime `purebad`"),
            ("[finetune.regime_train.\"0.2\"]\nepochs = 5\n", "s.toml:13: finetune.regime_train.0.2: `0.2` is not in finetune.regimes"),
            ("[finetune.regime_train.pure-bad]\nepochs = 0\n", "s.toml:14: finetune.regime_train.pure-bad.epochs: must be at least 1"),
            ("[finetune.regime_train.pure-bad]\nepoch = 5\n", "s.toml:14: finetune.regime_train.pure-bad.epoch: unknown field `epoch`"),
            ("[finetune.regime_train.pure-bad]\nseed = 5\n", "finetune.regime_train.pure-bad.seed: set by the run's top-level `seed`"),
        ] {
            std::fs::write(&p, format!("{spec}{extra}")).unwrap();
            let err = super::RunSpec::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{extra}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `precision = "bf16"` loads for LoRA training and is refused, by name, where a stage
    /// trains every weight (nothing frozen to multiply in bf16) or when misspelt.
    #[test]
    fn bf16_precision_loads_for_lora_and_is_refused_for_full_training() {
        let dir = std::env::temp_dir().join(format!("safetune-spec-precision-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let head = "name = \"t\"\n[model]\nsource = \"m\"\n";
        let ft = "[finetune]\nn = 4\nregimes = [\"benign\", \"pure-bad\"]\n";
        let p = dir.join("s.toml");
        std::fs::write(&p, format!("{head}[alignment]\nbenign = 1\ntrain = {{ precision = \"bf16\" }}\n{ft}methods = [\"sft-lora\"]\ntrain = {{ precision = \"bf16\" }}\n")).unwrap();
        let s = super::RunSpec::load(&p).unwrap();
        assert!(!s.cell_train("sft-lora", "benign").unwrap().precision.is_f32());
        assert!(!s.alignment_stage_train().precision.is_f32());
        for (text, want) in [
            (
                format!("{head}[alignment]\nbenign = 1\n{ft}methods = [\"sft-lora\", \"sft-full\"]\n[finetune.regime_train.pure-bad]\nprecision = \"bf16\"\n"),
                "precision = \"bf16\" for `sft-full` (regime pure-bad), which trains every weight",
            ),
            (
                format!("{head}[alignment]\nbenign = 1\nfull = true\ntrain = {{ precision = \"bf16\" }}\n{ft}methods = [\"sft-lora\"]\n"),
                "alignment.train.precision: \"bf16\" is for frozen weights, and alignment.full trains every weight",
            ),
            (format!("{head}[alignment]\nbenign = 1\n{ft}methods = [\"sft-lora\"]\ntrain = {{ precision = \"fp16\" }}\n"), "unknown variant `fp16`"),
        ] {
            std::fs::write(&p, &text).unwrap();
            let err = super::RunSpec::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        // Through an overlay (a merged table, no lines of its own) the error still names the
        // overlay file, the line and the key's path.
        std::fs::write(&p, format!("{head}[alignment]\nbenign = 1\n{ft}methods = [\"sft-lora\"]\n")).unwrap();
        let o = dir.join("o.toml");
        std::fs::write(&o, "[finetune]\ntrain = { precision = \"fp16\" }\n").unwrap();
        let err = super::RunSpec::load_with_overlays(&p, std::slice::from_ref(&o)).unwrap_err().to_string();
        assert!(err.ends_with("o.toml:2: finetune.train.precision: unknown variant `fp16`, expected `f32` or `bf16`"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_is_found_on_its_line_in_a_table_or_inline() {
        let text = "name = \"x\"\n[finetune]\nn = 0\n\n[defense_options.lisa]\nrho = \"a\"\n[defense_options]\nbea = { examples = 1 }\n";
        assert_eq!(super::locate_key(text, &["finetune", "n"]), Some(3));
        assert_eq!(super::locate_key(text, &["defense_options", "lisa", "rho"]), Some(6));
        assert_eq!(super::locate_key(text, &["defense_options", "lisa", "warmup_ratio"]), Some(5));
        assert_eq!(super::locate_key(text, &["defense_options", "bea", "examples"]), Some(8));
        assert_eq!(super::locate_key(text, &["eval", "batch_size"]), None);
    }
}
