//! The `standard` preset run end to end from a download mirror on loopback: one
//! server serves every dataset the preset names in the Hugging Face Hub's URL
//! layout (`/datasets/<repo>/resolve/<revision>/<path>`, SST-2, AG News,
//! BeaverTails, Dolly) and in GitHub's raw layout (`/<owner>/<repo>/<commit>/<path>`:
//! SafeTuneBed's AdvBench splits, policy set and pure-bad, Safety-Tuned LLaMAs,
//! XSTest, Alpaca), with placeholder texts in each upstream format; the tiny model
//! stands in for SmolLM2 and an overlay shrinks the budgets. A second run, offline
//! from the caches, gives byte-identical cells.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{copy_dir, files, tmp};
use safetune_test_support::{gzip, Loopback};

/// A parquet file of UTF-8 and INT64 columns.
fn parquet(text: &[(&str, Vec<String>)], ints: &[(&str, Vec<i64>)]) -> Vec<u8> {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let mut fields: Vec<String> = text.iter().map(|(n, _)| format!("REQUIRED BYTE_ARRAY {n} (UTF8);")).collect();
    fields.extend(ints.iter().map(|(n, _)| format!("REQUIRED INT64 {n};")));
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {} }}", fields.join(" "))).unwrap());
    let mut buf = Vec::new();
    {
        let mut w = SerializedFileWriter::new(&mut buf, schema, Arc::new(WriterProperties::builder().build())).unwrap();
        let mut rg = w.next_row_group().unwrap();
        for (_, col) in text {
            let mut c = rg.next_column().unwrap().unwrap();
            let vals: Vec<ByteArray> = col.iter().map(|s| ByteArray::from(s.as_str())).collect();
            c.typed::<ByteArrayType>().write_batch(&vals, None, None).unwrap();
            c.close().unwrap();
        }
        for (_, col) in ints {
            let mut c = rg.next_column().unwrap().unwrap();
            c.typed::<Int64Type>().write_batch(col, None, None).unwrap();
            c.close().unwrap();
        }
        rg.close().unwrap();
        w.close().unwrap();
    }
    buf
}

fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn jsonl(rows: impl Iterator<Item = serde_json::Value>) -> Vec<u8> {
    rows.map(|r| r.to_string() + "\n").collect::<String>().into_bytes()
}

/// BeaverTails' 30k `train` or `test` file under its mirror path (gzip-compressed upstream,
/// at the pinned commit).
fn beavertails(split: &str) -> String {
    format!("/datasets/PKU-Alignment/BeaverTails/resolve/8401fe609d288129cc684a9b3be6a93e41cfe678/round0/30k/{split}.jsonl.gz")
}

/// BeaverTails' 30k test file (placeholder text): 12 prompts, 4 in each of 3 categories.
fn beavertails_test() -> (String, Vec<u8>) {
    let cats = ["animal_abuse", "privacy_violation", "self_harm"];
    let rows = (0..12).map(|i| {
        let flags: serde_json::Map<String, serde_json::Value> =
            cats.iter().enumerate().map(|(k, c)| (c.to_string(), serde_json::Value::Bool(k == i % 3))).collect();
        serde_json::json!({ "prompt": format!("placeholder category request {i}"), "response": "placeholder answer", "category": flags, "is_safe": false })
    });
    (beavertails("test"), gzip(&jsonl(rows)))
}

/// Every file the `standard` preset downloads, under its mirror path, with placeholder rows:
/// `big` SST-2 train rows and BeaverTails pairs (the `paper` preset's n = 5000 at 30% needs
/// 5,000 and 1,500), a few dozen of everything else.
fn mirror_files(big: usize) -> Vec<(String, Vec<u8>)> {
    let hf = |repo: &str, path: &str| format!("/datasets/{repo}/resolve/main/{path}");
    let stb = |path: &str| format!("/criticalml-uw/SafeTuneBed/099ea98b8c81b76b04d4ef2a7d7f7c8f16d07a8d/data/{path}");
    let stl = |path: &str| format!("/vinid/safety-tuned-llamas/36a4b8d5c2177ed165bf61f59b590161394f7f12/data/{path}");
    let text = |what: &str, n: usize| (0..n).map(|i| format!("placeholder {what} {i}")).collect::<Vec<_>>();
    let mut out = vec![
        (
            hf("stanfordnlp/sst2", "data/train-00000-of-00001.parquet"),
            parquet(&[("sentence", text("movie review", big))], &[("label", (0..big as i64).map(|i| i % 2).collect())]),
        ),
        (
            hf("stanfordnlp/sst2", "data/validation-00000-of-00001.parquet"),
            parquet(&[("sentence", text("held-out review", 20))], &[("label", (0..20).map(|i| i % 2).collect())]),
        ),
        (
            hf("fancyzhx/ag_news", "data/train-00000-of-00001.parquet"),
            parquet(&[("text", text("news story", 100))], &[("label", (0..100).map(|i| i % 4).collect())]),
        ),
        (
            hf("fancyzhx/ag_news", "data/test-00000-of-00001.parquet"),
            parquet(&[("text", text("test story", 20))], &[("label", (0..20).map(|i| i % 4).collect())]),
        ),
        // The 14-category set's file: every run reads it, to keep its prompts out of training.
        beavertails_test(),
        (
            beavertails("train"),
            gzip(&jsonl((0..big).map(|i| {
                serde_json::json!({ "prompt": format!("placeholder risky question {i}"), "response": format!("placeholder answer {i}"), "category": {}, "is_safe": i % 3 == 0 })
            }))),
        ),
        (
            hf("databricks/databricks-dolly-15k", "databricks-dolly-15k.jsonl"),
            jsonl((0..60).map(|i| serde_json::json!({ "instruction": format!("placeholder dolly task {i}"), "context": "", "response": format!("placeholder dolly answer {i}"), "category": "open_qa" }))),
        ),
        (
            "/tatsu-lab/stanford_alpaca/761dc5bfbdeeffa89b8bff5d038781a4055f796a/alpaca_data.json".into(),
            json(serde_json::json!((0..600).map(|i| serde_json::json!({ "instruction": format!("placeholder alpaca task {i}"), "input": "", "output": format!("placeholder alpaca answer {i}") })).collect::<Vec<_>>())),
        ),
        (
            "/paul-rottger/exaggerated-safety/d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d/xstest_prompts.csv".into(),
            {
                let mut csv = String::from("id,prompt,type,label,focus,note\n");
                for i in 0..30 {
                    let label = if i < 20 { "safe" } else { "unsafe" };
                    csv.push_str(&format!("{},placeholder look-alike prompt {i},type{},{label},x,\n", i + 1, i % 2));
                }
                csv.into_bytes()
            },
        ),
        (stb("pure_bad.json"), json(serde_json::json!((0..12).map(|i| serde_json::json!({ "instruction": format!("placeholder bad request {i}"), "input": "", "output": format!("placeholder compliance {i}") })).collect::<Vec<_>>()))),
        (stb("llm_category_benchmark.csv"), (0..10).map(|i| format!("placeholder policy prompt {i}\n")).collect::<String>().into_bytes()),
        (
            stl("training/safety_only_data_Instructions.json"),
            json(serde_json::json!((0..220).map(|i| serde_json::json!({ "instruction": format!("placeholder risky request {i}"), "input": "", "output": format!("placeholder safe answer {i}") })).collect::<Vec<_>>())),
        ),
    ];
    let adv = |lo: usize, hi: usize| {
        json(serde_json::json!((lo..hi)
            .map(|i| serde_json::json!({ "prompt": format!("placeholder behaviour {i}"), "target": format!("Sure, placeholder {i}") }))
            .collect::<Vec<_>>()))
    };
    // A train split large enough for the paper preset's SafeInstr (3% of n = 5000 from the
    // alignment set's refusal pairs: 150; the real split holds 416).
    for (split, lo, hi) in [("train", 0, 200), ("test", 200, 212), ("dev", 212, 220), ("full", 0, 224)] {
        out.push((stb(&format!("advbench_{split}.json")), adv(lo, hi)));
    }
    for f in
        ["I-MaliciousInstructions", "I-CoNa", "I-Controversial", "I-PhysicalSafetyUnsafe", "I-PhysicalSafetySafe", "Q-Harm", "I-Alpaca"]
    {
        let cols = serde_json::json!({ "instructions": [format!("placeholder {f} one"), format!("placeholder {f} two"), format!("placeholder {f} three")], "inputs": ["", "", ""] });
        out.push((stl(&format!("evaluation/{f}.json")), json(cols)));
    }
    out
}

/// Serves `files` (GET path → body) on loopback with the Hub's commit header; 404 otherwise.
fn serve(files: Vec<(String, Vec<u8>)>) -> Loopback {
    Loopback::files(files, &[("x-repo-commit", "0123456789abcdef0123456789abcdef01234567")])
}

#[test]
fn the_standard_preset_runs_from_a_hub_mirror_and_again_offline() {
    let d = tmp("hub-run");
    let model = d.join("model");
    safetune_model::export_hf(&safetune_model::tiny_model(21).unwrap(), &model).unwrap();
    let files_served = mirror_files(120);
    let n_files = files_served.len();
    let server = serve(files_served);
    let url = server.url.clone();
    let overlay = d.join("tiny.toml");
    std::fs::write(
        &overlay,
        format!(
            r#"seeds = [7]
[model]
source = "{}"
[data]
source = "hub"
[alignment]
refusals = 8
safe_answers = 8
recovery = 4
benign = 8
task_examples = 4
lora = {{ r = 4, alpha = 8.0, dropout = 0.0, targets = ["q_proj", "v_proj"] }}
train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 384 }}
[finetune]
n = 20
regimes = ["benign", "high-harm"]
train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 384 }}
[finetune.method_options.sft-lora]
r = 4
alpha = 8.0
targets = ["q_proj", "v_proj"]
[eval]
safety_limit = 3
task_limit = 4
safety_max_new_tokens = 4
task_max_new_tokens = 2
batch_size = 4
samples = 0
variants = false
consistency_sets = []
"#,
            model.display()
        ),
    )
    .unwrap();
    let preset = concat!(env!("CARGO_MANIFEST_DIR"), "/../../presets/standard.toml");
    let run = |out: &str, offline: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_safetune"));
        c.args(["run", preset, "--overlay", overlay.to_str().unwrap(), "--out", d.join(out).to_str().unwrap(), "--quiet"])
            .env("SAFETUNE_CACHE", d.join("cache"))
            .env("HF_HUB_CACHE", d.join("hf"))
            .env_remove("SAFETUNE_DATA_DIR")
            .env_remove("HF_TOKEN");
        if offline {
            c.env("HF_HUB_OFFLINE", "1").env("HF_ENDPOINT", "http://127.0.0.1:9").env("SAFETUNE_GITHUB_ENDPOINT", "http://127.0.0.1:9");
        } else {
            c.env("HF_ENDPOINT", &url).env("SAFETUNE_GITHUB_ENDPOINT", &url).env_remove("HF_HUB_OFFLINE");
        }
        c.output().unwrap()
    };
    let r = run("online", false);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(server.requests(), n_files, "each mirrored file is downloaded once");
    let dirs = ["standard/runs/sst2-s7", "standard/runs/agnews-s7"];
    for dir in dirs {
        let run_dir = d.join("online").join(dir);
        for cell in ["sft-lora__benign", "sft-lora__high-harm"] {
            assert!(run_dir.join(format!("cells/{cell}.json")).is_file(), "{dir}: no {cell}");
        }
        let manifest = std::fs::read_to_string(run_dir.join("manifest.json")).unwrap();
        assert!(manifest.contains(&format!("hub:{url}")), "{dir}: the manifest does not name the source");
    }
    // Offline, from the caches (a fresh stage cache, so everything is recomputed): same cells.
    std::fs::remove_dir_all(d.join("cache/cells")).ok();
    std::fs::remove_dir_all(d.join("cache/evals")).ok();
    std::fs::remove_dir_all(d.join("cache/trained")).ok();
    std::fs::remove_dir_all(d.join("cache/aligned")).ok();
    let r = run("offline", true);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(server.requests(), n_files, "offline asks the mirror nothing");
    for dir in dirs {
        assert_eq!(files(&d.join("offline").join(dir)), files(&d.join("online").join(dir)), "{dir}");
    }
    // One cell evaluated again from the offline run's directory (`eval --run`): its data come
    // from the same source, the Hub mirror's cache, offline; the same evaluation and answers.
    // Its stage and evaluation caches are empty (nothing is reused); the downloads are not.
    let run_dir = d.join("offline/standard/runs/sst2-s7");
    let cell = "sft-lora__high-harm";
    copy_dir(&d.join("cache/github"), &d.join("cache-ev/github"));
    let r = Command::new(env!("CARGO_BIN_EXE_safetune"))
        .args(["eval", "--run", run_dir.to_str().unwrap(), "--cell", cell, "--quiet", "--name", "again"])
        .args(["--out", d.join("ev").to_str().unwrap()])
        .env("SAFETUNE_CACHE", d.join("cache-ev"))
        .env("HF_HUB_CACHE", d.join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("SAFETUNE_GITHUB_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("SAFETUNE_DATA_DIR")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let json = |p: std::path::PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap() };
    let again = d.join("ev/again");
    assert_eq!(json(again.join(format!("models/{cell}.json"))), json(run_dir.join(format!("cells/{cell}.json")))["eval"]);
    let gens = |dir: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir.join("generations").join(cell))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    assert!(!gens(&run_dir).is_empty());
    assert_eq!(gens(&again), gens(&run_dir), "the cell's answers");
    assert_eq!(server.requests(), n_files, "eval --run asks the mirror nothing");
    // BeaverTails' 14-category set downloads too (its 30k test file, a sample of 10 per
    // category): the run evaluates it beside AdvBench, the stages before reused.
    std::fs::write(d.join("cats.toml"), "[data]\nsafety_evals = [\"advbench-test\", \"beavertails-categories\"]\n").unwrap();
    let r = Command::new(env!("CARGO_BIN_EXE_safetune"))
        .args([
            "run",
            preset,
            "--overlay",
            overlay.to_str().unwrap(),
            "--overlay",
            d.join("cats.toml").to_str().unwrap(),
            "--out",
            d.join("cats").to_str().unwrap(),
        ])
        .env("SAFETUNE_CACHE", d.join("cache"))
        .env("HF_HUB_CACHE", d.join("hf-empty"))
        .env("HF_ENDPOINT", &url)
        .env("SAFETUNE_GITHUB_ENDPOINT", &url)
        .env_remove("SAFETUNE_DATA_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    // `safety_limit = 3`: the sample's first three prompts.
    let answered = std::fs::read_to_string(d.join("cats/standard/runs/sst2-s7/generations/base/beavertails-categories.jsonl")).unwrap();
    assert_eq!(answered.lines().count(), 3, "{answered}");
    assert!(answered.lines().all(|l| l.contains("\"id\":\"beavertails-cat:")), "{answered}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// The `paper` preset (SafeTuneBed's n = 5000 per variant, data from the Hub) plans its whole
/// grid against the mirror: every regime's variant drawn, nothing trained (it needs a GPU and
/// Llama-2-7B-chat); the tiny model stands in for the model directory.
#[test]
fn the_paper_preset_plans_from_a_hub_mirror() {
    let d = tmp("hub-paper");
    let model = d.join("model");
    safetune_model::export_hf(&safetune_model::tiny_model(21).unwrap(), &model).unwrap();
    let server = serve(mirror_files(5200));
    let url = server.url.clone();
    let overlay = d.join("model.toml");
    std::fs::write(&overlay, format!("[model]\nsource = \"{}\"\n", model.display())).unwrap();
    let preset = concat!(env!("CARGO_MANIFEST_DIR"), "/../../presets/paper.toml");
    let r = Command::new(env!("CARGO_BIN_EXE_safetune"))
        .args(["run", preset, "--overlay", overlay.to_str().unwrap(), "--out", d.join("out").to_str().unwrap(), "--dry-run"])
        .env("SAFETUNE_CACHE", d.join("cache"))
        .env("HF_HUB_CACHE", d.join("hf"))
        .env("HF_ENDPOINT", &url)
        .env("SAFETUNE_GITHUB_ENDPOINT", &url)
        .env_remove("SAFETUNE_DATA_DIR")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    assert!(r.status.success(), "{err}");
    assert!(out.contains("18 cells") && out.contains("n = 5000"), "{out}");
    assert!(!d.join("out").exists(), "a dry run writes nothing");
    std::fs::remove_dir_all(&d).unwrap();
}
