//! Cache keys cover the code that computes each stage: after an edit, a rerun
//! recomputes the edited stage and the stages after it, and only those.

use std::path::Path;

use safetune_runtime::code_hash::{hash_sources, listed_files, without_comments, STAGES};
use safetune_runtime::options::{CodeKeys, RunOptions};

fn entries(cache: &Path, kind: &str) -> usize {
    std::fs::read_dir(cache.join(kind)).map(|d| d.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).count()).unwrap_or(0)
}

fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh directory under the system's temp dir holding `files` (path, contents).
fn source_tree(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("safetune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    for (path, text) in files {
        let p = d.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

#[test]
fn the_build_hashed_these_sources() {
    let built = CodeKeys::built();
    let stage = |name: &str| STAGES.iter().find(|(s, _)| *s == name).unwrap().1;
    assert_eq!(built.train, hash_sources(&workspace(), stage("train")).unwrap());
    assert_eq!(built.eval, hash_sources(&workspace(), stage("eval")).unwrap());
    assert_ne!(built.train, built.eval);
}

#[test]
fn every_listed_source_exists_and_every_crate_is_placed() {
    let root = workspace();
    for (stage, paths) in STAGES {
        for p in *paths {
            let p = p.trim_start_matches('!');
            assert!(root.join(p).exists(), "{stage}: {p} does not exist (renamed? update src/code_hash.rs)");
        }
    }
    // A crate is stage code or named here with the reason it is not.
    let not_stage_code = [
        "crates/data",             // its output (every example) is hashed into the keys
        "crates/report",           // tables and plots from finished results
        "crates/serve",            // the chat server
        "crates/defense-template", // the scaffold's template, not linked into runs
        "crates/test-support",     // tests' loopback server, a dev-dependency only
        "crates/runtime",          // its training and evaluation files are listed one by one
    ];
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let rel = format!("crates/{}", entry.unwrap().file_name().to_string_lossy());
        let listed = STAGES.iter().any(|(_, ps)| ps.iter().any(|p| *p == rel || p.starts_with(&format!("{rel}/"))));
        assert!(listed || not_stage_code.contains(&rel.as_str()), "{rel} is neither stage code nor listed as outside it");
    }
}

#[test]
fn a_changed_file_changes_the_hash_and_an_unlisted_one_does_not() {
    let d = source_tree("codehash", &[("a/src/lib.rs", "fn f() {}"), ("a/src/inner/m.rs", "fn g() {}"), ("b/other.rs", "fn h() {}")]);
    let h = || hash_sources(&d, &["a/src", "one.rs"]).unwrap();
    let first = h();
    assert_eq!(first, h());
    std::fs::write(d.join("b/other.rs"), "fn h2() {}").unwrap();
    assert_eq!(first, h(), "an unlisted file entered the hash");
    std::fs::write(d.join("a/src/inner/m.rs"), "fn g2() {}").unwrap();
    let second = h();
    assert_ne!(first, second, "an edit deep in a listed directory was missed");
    std::fs::write(d.join("one.rs"), "").unwrap();
    assert_ne!(second, h(), "a listed file that appears must change the hash");
    // A file listed after `!` is left out of its directory.
    let without = || hash_sources(&d, &["a/src", "!a/src/inner/m.rs"]).unwrap();
    let kept = without();
    std::fs::write(d.join("a/src/inner/m.rs"), "fn g3() {}").unwrap();
    assert_eq!(kept, without(), "a file left out with `!` entered the hash");
    assert_ne!(second, h());
    let _ = std::fs::remove_dir_all(&d);
}

/// The train hash leaves out the model's decoding (`!crates/model/src/generate.rs`): that holds
/// only while no training source generates text. The model's `CausalLm` implementation and the
/// trait itself name generation without training calling it.
#[test]
fn no_training_source_generates_text() {
    let root = workspace();
    let train = STAGES.iter().find(|(s, _)| *s == "train").unwrap().1;
    assert!(train.contains(&"!crates/model/src/generate.rs"), "{train:?}");
    let defining =
        [root.join("crates/model/src/causal_lm.rs"), root.join("crates/model/src/lib.rs"), root.join("crates/core/src/model.rs")];
    let files = listed_files(&root, train).unwrap();
    assert!(files.len() > 50, "{}", files.len());
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "rs") && !defining.contains(f)) {
        let code = String::from_utf8(without_comments(&std::fs::read(f).unwrap())).unwrap();
        for call in ["generate(", "generate_until(", "generate_with(", "generate::"] {
            assert!(!code.contains(call), "{} calls `{call}`: training generates text, so list generate.rs in the train hash", f.display());
        }
    }
}

#[test]
fn comments_docs_and_tests_do_not_enter_the_hash_and_literals_do() {
    let strip = |s: &str| String::from_utf8(without_comments(s.as_bytes())).unwrap();
    // Line, doc and nested block comments go; a block comment leaves a space between tokens.
    assert_eq!(strip("//! crate doc\n/// item doc\nfn f() {} // trailing\n"), "\n\nfn f() {} \n");
    assert_eq!(strip("let a/* x /* nested */ y */= 1;"), "let a = 1;");
    // Literals are copied whole, whatever they hold.
    for kept in [
        r#"let u = "https://example.org/*x*/";"#,
        r#"let e = "a \" // still a string";"#,
        r###"let r = r#"raw "// kept" /* kept */"#;"###,
        r#"let b = br"//"; let c = b"/*";"#,
        r#"let q = '"'; let s = "//";"#,
        "let c = ['/', '\\'', '\\\\', 'é', '\\u{1F600}']; let d = \"//\";",
        "fn f<'a>(x: &'a str) -> &'a str { 'outer: loop { break 'outer x; } }",
        "let r#type = 1; let x = 2 / 3 * 4;",
    ] {
        assert_eq!(strip(kept), kept, "{kept}");
    }
    // A lifetime does not start a char literal that would swallow a comment after it.
    assert_eq!(strip("fn f<'a>() {} // c"), "fn f<'a>() {} ");

    let d = source_tree(
        "codehash-c",
        &[("c/src/lib.rs", "/// Adds.\nfn add(a: u8) -> u8 { a + 1 } // one\n"), ("c/Cargo.toml", "[package]\nname = \"c\"\n")],
    );
    std::fs::create_dir_all(d.join("c/tests")).unwrap();
    let h = || hash_sources(&d, &["c"]).unwrap();
    let first = h();
    std::fs::write(d.join("c/src/lib.rs"), "/// Adds one.\nfn add(a: u8) -> u8 { a + 1 } // the increment\n").unwrap();
    assert_eq!(first, h(), "a comment edit changed the hash");
    std::fs::write(d.join("c/README.md"), "# c").unwrap();
    std::fs::write(d.join("c/tests/t.rs"), "#[test] fn t() {}").unwrap();
    assert_eq!(first, h(), "a README or a test entered the hash");
    std::fs::write(d.join("c/src/lib.rs"), "/// Adds one.\nfn add(a: u8) -> u8 { a + 2 } // the increment\n").unwrap();
    let second = h();
    assert_ne!(first, second, "a code edit was missed");
    std::fs::write(d.join("c/src/lib.rs"), "/// Adds one.\nfn add(a: u8) -> u8 { a + 2 } // the increment\nconst S: &str = \"//x\";\n")
        .unwrap();
    let third = h();
    assert_ne!(second, third);
    std::fs::write(d.join("c/src/lib.rs"), "/// Adds one.\nfn add(a: u8) -> u8 { a + 2 } // the increment\nconst S: &str = \"//y\";\n")
        .unwrap();
    assert_ne!(third, h(), "an edit inside a string after `//` was missed");
    let fourth = h();
    std::fs::write(d.join("c/Cargo.toml"), "[package]\nname = \"c\"\n[features]\nx = []\n").unwrap();
    assert_ne!(fourth, h(), "a manifest edit was missed");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_edit_recomputes_its_stage_and_the_later_ones_only() {
    let dir = std::env::temp_dir().join(format!("safetune-codekeys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The only test in this binary that runs the pipeline: the cache is its own.
    let cache = dir.join("cache");
    std::env::set_var("SAFETUNE_CACHE", &cache);
    let model = dir.join("model");
    safetune_model::export_hf(&safetune_model::tiny_model(21).unwrap(), &model).unwrap();
    let spec = format!(
        "name = \"edit\"\nseed = 3\n[model]\nsource = \"{}\"\n[data]\ntask = \"builtin\"\n[alignment]\nrefusals = 6\nbenign = 2\n\
         lora = {{ r = 2, alpha = 4.0, dropout = 0.0, targets = [\"q_proj\"] }}\n\
         train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 256 }}\n\
         [finetune]\nn = 6\nregimes = [\"high-harm\"]\nmethods = [\"sft-lora\"]\n\
         train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 256 }}\n\
         [eval]\nsafety_limit = 2\ntask_limit = 2\nsafety_max_new_tokens = 2\ntask_max_new_tokens = 2\nbatch_size = 2\nvariants = false\n",
        model.display()
    );
    std::fs::write(dir.join("spec.toml"), spec).unwrap();
    let spec = safetune_runtime::RunSpec::load(&dir.join("spec.toml")).unwrap();
    let out = dir.join("out");
    let run = |code: CodeKeys| {
        let opts = RunOptions { code, ..RunOptions::new(None, out.clone(), true) };
        safetune_runtime::run(&spec, &opts).unwrap();
        let cell = std::fs::read(out.join("edit/keys/cells/sft-lora__high-harm")).unwrap();
        // Each evaluation keeps its finished parts (one file each) under evalparts/.
        let parts = std::fs::read_dir(cache.join("evalparts")).map(|d| d.filter_map(|e| e.ok()).count()).unwrap_or(0);
        (["aligned", "trained", "evals", "cells"].map(|k| entries(&cache, k)), parts, cell)
    };
    let built = CodeKeys::built();
    let (counts, parts, cell) = run(built.clone());
    assert_eq!(counts, [1, 1, 2, 1], "aligned, trained, evals (base and aligned), cells");
    // Three models (base, aligned, the cell) with the same parts each.
    assert!(parts >= 3 && parts % 3 == 0, "{parts} parts");
    // The same code: everything reused from the run directory.
    assert_eq!(run(built.clone()), (counts, parts, cell.clone()));
    // Evaluation code edited: both evaluations and the cell are made again, every part
    // answered again, training is not.
    let eval_edit = CodeKeys { eval: format!("{}-edited", built.eval), ..built.clone() };
    let (c2, p2, cell2) = run(eval_edit.clone());
    assert_eq!(c2, [1, 1, 4, 2], "an evaluation edit retrained or did not re-evaluate");
    assert_eq!(p2, 2 * parts, "an evaluation edit reused parts answered by the old code");
    assert_ne!(cell2, cell);
    // Training code edited: alignment, fine-tuning and the evaluations of their models, not the base's.
    let (c3, p3, _) = run(CodeKeys { train: format!("{}-edited", built.train), ..eval_edit });
    assert_eq!(c3, [2, 2, 5, 3], "a training edit did not realign and retrain (or re-evaluated the base)");
    assert_eq!(p3, p2 + 2 * parts / 3, "the retrained models' parts, not the base's");
    let _ = std::fs::remove_dir_all(&dir);
}
