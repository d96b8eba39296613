//! Which code computed a grid's sub-runs: the train and eval code hashes each sub-run's
//! `manifest.json` records (per piece, for a sub-run joined from pieces with
//! `report --from`), so a reader of the means across seeds sees at once whether every seed
//! was computed by the same code, and by which build when not.

use std::path::PathBuf;

/// The code that computed one piece of a sub-run: train and eval code hashes, the build.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Code {
    train: String,
    eval: String,
    build: String,
}

fn code_of(m: &serde_json::Value) -> Option<Code> {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    Some(Code {
        train: s(&m["code_sha256"]["train"])?,
        eval: s(&m["code_sha256"]["eval"])?,
        build: s(&m["git_revision"]).unwrap_or_else(|| "unknown".into()),
    })
}

/// Each sub-run's codes (one per piece that recorded one, in order, without repeats);
/// sub-runs without a readable manifest are left out.
fn codes(runs: &[(String, u64, PathBuf)]) -> Vec<(String, Vec<Code>)> {
    let mut out = Vec::new();
    for (_, _, dir) in runs {
        let Ok(m) = super::read_json::<serde_json::Value>(&dir.join("manifest.json")) else { continue };
        let mut these: Vec<Code> = Vec::new();
        let pieces: Vec<&serde_json::Value> = match m["pieces"].as_array() {
            Some(p) if !p.is_empty() => p.iter().collect(),
            _ => vec![&m],
        };
        for c in pieces.into_iter().filter_map(code_of) {
            if !these.contains(&c) {
                these.push(c);
            }
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !these.is_empty() {
            out.push((name, these));
        }
    }
    out
}

fn short(s: &str) -> &str {
    s.get(..8).unwrap_or(s)
}

/// The section in Markdown: one sentence when every sub-run was computed by the same code,
/// else a table of which code computed which sub-run; empty without a recorded code.
pub fn section(runs: &[(String, u64, PathBuf)]) -> String {
    let codes = codes(runs);
    let mut distinct: Vec<(&str, &str)> = Vec::new();
    for c in codes.iter().flat_map(|(_, c)| c) {
        if !distinct.contains(&(c.train.as_str(), c.eval.as_str())) {
            distinct.push((&c.train, &c.eval));
        }
    }
    match distinct.len() {
        0 => String::new(),
        1 => format!(
            "\n## Code\n\nEvery sub-run was computed by the same code (train {}…, eval {}…; `manifest.json`).\n",
            short(distinct[0].0),
            short(distinct[0].1)
        ),
        n => {
            let mut md = format!(
                "\n## Code\n\nThe sub-runs were computed by {n} versions of the code (their train and eval code hashes differ; \
                 `manifest.json` of each): compare them only where the code changes between the builds leave the figures \
                 alike.\n\n| sub-run | train code | eval code | build |\n|---|---|---|---|\n"
            );
            for (name, cs) in &codes {
                for c in cs {
                    md.push_str(&format!("| {name} | {}… | {}… | {} |\n", short(&c.train), short(&c.eval), short(&c.build)));
                }
            }
            md
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &std::path::Path, m: serde_json::Value) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
    }

    #[test]
    fn sub_runs_computed_by_other_code_are_named() {
        let root = std::env::temp_dir().join(format!("safetune-provenance-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let code = |t: &str, e: &str, b: &str| serde_json::json!({ "code_sha256": { "train": t, "eval": e }, "git_revision": b });
        let (a, b, c) = (root.join("t-s1"), root.join("t-s2"), root.join("t-s3"));
        manifest(&a, code("aaaaaaaaaa", "eeeeeeeeee", "1111111111"));
        // Joined from two pieces built at different commits with the same code.
        let mut joined = code("aaaaaaaaaa", "eeeeeeeeee", "1111111111");
        joined["pieces"] =
            serde_json::json!([code("aaaaaaaaaa", "eeeeeeeeee", "1111111111"), code("aaaaaaaaaa", "eeeeeeeeee", "2222222222")]);
        manifest(&b, joined);
        let runs = vec![("t".to_string(), 1, a.clone()), ("t".to_string(), 2, b.clone())];
        assert_eq!(
            section(&runs),
            "\n## Code\n\nEvery sub-run was computed by the same code (train aaaaaaaa…, eval eeeeeeee…; `manifest.json`).\n"
        );
        // A third seed by other train code: every sub-run's code is listed.
        manifest(&c, code("bbbbbbbbbb", "eeeeeeeeee", "3333333333"));
        let mut runs = runs;
        runs.push(("t".to_string(), 3, c.clone()));
        let md = section(&runs);
        assert!(md.contains("computed by 2 versions of the code"), "{md}");
        assert!(md.contains("| t-s1 | aaaaaaaa… | eeeeeeee… | 11111111 |\n| t-s2 | aaaaaaaa… | eeeeeeee… | 11111111 |\n| t-s2 | aaaaaaaa… | eeeeeeee… | 22222222 |\n| t-s3 | bbbbbbbb… | eeeeeeee… | 33333333 |\n"), "{md}");
        // No manifest anywhere: nothing to say.
        assert_eq!(section(&[("t".to_string(), 9, root.join("none"))]), "");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
