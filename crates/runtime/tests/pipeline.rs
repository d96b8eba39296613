//! End-to-end runs of the `safetune` binary on a tiny model and the built-in suite.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("safetune-rt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_spec(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    safetune_model::export_hf(&safetune_model::tiny_model(21).unwrap(), &model).unwrap();
    let spec = format!(
        r#"
name = "tiny"
seed = 7
[model]
source = "{}"
[data]
task = "builtin"
[alignment]
refusals = 8
recovery = 4
benign = 4
lora = {{ r = 4, alpha = 8.0, dropout = 0.0, targets = ["q_proj", "v_proj"] }}
train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 384 }}
[finetune]
n = 8
regimes = ["benign", "high-harm"]
methods = ["sft-lora", "sft-full"]
train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 384 }}
[eval]
safety_limit = 4
task_limit = 6
safety_max_new_tokens = 6
task_max_new_tokens = 3
batch_size = 4
samples = 2
variants = true
consistency_limit = 3
"#,
        model.display()
    );
    let p = dir.join("spec.toml");
    std::fs::write(&p, spec).unwrap();
    p
}

fn safetune(args: &[&str], cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_safetune")).args(args).env("SAFETUNE_CACHE", cache).env_remove("SAFETUNE_DATA_DIR").output().unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for sub in ["cells", "models"] {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            v.push((format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(&p).unwrap()));
        }
    }
    v
}

#[test]
fn same_seed_gives_identical_results_and_reruns_reuse_everything() {
    let d = tmp("det");
    let spec = tiny_spec(&d);
    let spec = spec.to_str().unwrap();
    let out1 = d.join("out1");
    let out2 = d.join("out2");
    let r1 = safetune(&["run", spec, "--out", out1.to_str().unwrap()], &d.join("cache1"));
    assert!(r1.status.success(), "{}", String::from_utf8_lossy(&r1.stderr));
    let log1 = String::from_utf8_lossy(&r1.stderr).to_string();
    assert_eq!(log1.matches("[align] 16 examples (12 refusals)").count(), 1, "{log1}");
    let r2 = safetune(&["run", spec, "--out", out2.to_str().unwrap()], &d.join("cache2"));
    assert!(r2.status.success(), "{}", String::from_utf8_lossy(&r2.stderr));
    let (f1, f2) = (files(&out1.join("tiny")), files(&out2.join("tiny")));
    assert_eq!(f1.len(), 6, "4 cells + base + aligned");
    for ((n1, b1), (n2, b2)) in f1.iter().zip(&f2) {
        assert_eq!(n1, n2);
        assert!(b1 == b2, "{n1} differs between two runs with the same seed");
    }
    // A rerun recomputes nothing: alignment from cache, every cell already done.
    let r3 = safetune(&["run", spec, "--out", out1.to_str().unwrap()], &d.join("cache1"));
    let log3 = String::from_utf8_lossy(&r3.stderr).to_string();
    assert!(r3.status.success(), "{log3}");
    assert_eq!(log3.matches("already done").count(), 4, "{log3}");
    assert!(!log3.contains("fine-tuning on"), "{log3}");
    assert_eq!(files(&out1.join("tiny")), f1);
    let table = String::from_utf8_lossy(&r3.stdout);
    assert!(table.contains("| fine-tuned | sft-full | high-harm |"), "{table}");
    // The report: four table formats and three plots, rebuilt identically by `safetune report`.
    let run1 = out1.join("tiny");
    let csv = std::fs::read_to_string(run1.join("report/table.csv")).unwrap();
    let sets = 1; // the built-in suite has one safety set
                  // Per model: ASR, ASR@K, ASR under any variant and refusal consistency per
                  // safety set, and the task score; per cell also refusal retention per set.
    assert_eq!(csv.lines().count(), 1 + 6 * (4 * sets + 1) + 4 * sets, "{csv}");
    // The first 3 of the 4 harmful prompts (eval.consistency_limit) were asked again in each
    // surface variant and sampled twice.
    let variants = std::fs::read_to_string(run1.join("generations/base/builtin-harmful-eval.variants.jsonl")).unwrap();
    assert_eq!(variants.lines().count(), 3 * safetune_runtime::evaluate::VARIANTS.len());
    let samples = std::fs::read_to_string(run1.join("generations/base/builtin-harmful-eval.samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 3 * 2);
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run1.join("models/base.json")).unwrap()).unwrap();
    assert_eq!(base["safety"][0]["asr"]["n"].as_u64().unwrap() + base["safety"][0]["empty"].as_u64().unwrap(), 4);
    assert!(base["safety"][0]["asr_at_k"]["n"].as_u64().unwrap() <= 3, "{base}");
    assert!(variants.contains("@alpaca-template") && variants.contains("@no-system"));
    let scatter = std::fs::read_to_string(run1.join("report/safety_utility.svg")).unwrap();
    assert_eq!(scatter.matches("<circle").count(), 6 + 4, "6 models and a 4-entry legend");
    assert!(std::fs::read_to_string(run1.join("report/heatmap.svg")).unwrap().contains("high-harm"));
    assert!(std::fs::read_to_string(run1.join("report/table.tex")).unwrap().contains("\\bottomrule"));
    let summary = std::fs::read(run1.join("summary.md")).unwrap();
    let rep = safetune(&["report", run1.to_str().unwrap(), "--json"], &d.join("cache1"));
    assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&rep.stdout).unwrap();
    assert_eq!(rows.as_array().map(|a| a.len()), Some(6));
    assert_eq!(std::fs::read(run1.join("summary.md")).unwrap(), summary);
    // `safetune eval` on the base model plus the cached alignment adapter and a
    // cell's adapter (PEFT directories, merged in order) reproduces that cell's scores exactly.
    let aligned_dir = std::fs::read_dir(d.join("cache1/aligned")).unwrap().next().unwrap().unwrap().path();
    let cell_adapter = run1.join("adapters/sft-lora__high-harm");
    let ev_out = d.join("ev");
    let model_dir = d.join("model");
    let ev = safetune(
        &[
            "eval",
            "--model",
            model_dir.to_str().unwrap(),
            "--adapter",
            aligned_dir.to_str().unwrap(),
            "--adapter",
            cell_adapter.to_str().unwrap(),
            "--task",
            "builtin",
            "--safety-limit",
            "4",
            "--task-limit",
            "6",
            "--safety-tokens",
            "6",
            "--task-tokens",
            "3",
            "--batch-size",
            "4",
            "--samples",
            "2",
            "--variants",
            "--consistency-limit",
            "3",
            "--seed",
            "7",
            "--name",
            "ev",
            "--out",
            ev_out.to_str().unwrap(),
        ],
        &d.join("cache-ev"),
    );
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    let gens = |dir: &Path, label: &str| std::fs::read(dir.join(format!("generations/{label}/builtin-sentiment.jsonl"))).unwrap();
    assert_ne!(gens(&run1, "sft-lora__high-harm"), gens(&run1, "base"), "the adapters must matter");
    assert_eq!(gens(&ev_out.join("ev"), "sft-lora__high-harm"), gens(&run1, "sft-lora__high-harm"));
    let cell: serde_json::Value = serde_json::from_slice(&std::fs::read(run1.join("cells/sft-lora__high-harm.json")).unwrap()).unwrap();
    let evald: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ev_out.join("ev/models/sft-lora__high-harm.json")).unwrap()).unwrap();
    assert_eq!(cell["eval"], evald);
    assert!(ev_out.join("ev/report/table.csv").exists() && ev_out.join("ev/manifest.json").exists());
    let bad = safetune(&["eval", "--model", model_dir.to_str().unwrap(), "--adapter", "/nonexistent"], &d.join("cache-ev"));
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a PEFT adapter"));
    // Re-judging with the run's own judge reproduces every file byte for byte;
    // with another judge the spec records it.
    let rj = safetune(&["rejudge", run1.to_str().unwrap()], &d.join("cache1"));
    assert!(rj.status.success(), "{}", String::from_utf8_lossy(&rj.stderr));
    assert_eq!(files(&run1), f1);
    let rj = safetune(&["rejudge", run1.to_str().unwrap(), "--judge", "keyword-qi2023"], &d.join("cache1"));
    assert!(rj.status.success(), "{}", String::from_utf8_lossy(&rj.stderr));
    assert!(std::fs::read_to_string(run1.join("spec.json")).unwrap().contains("\"keyword-qi2023\""));
    let rj = safetune(&["rejudge", run1.to_str().unwrap(), "--judge", "keyword"], &d.join("cache1"));
    assert!(rj.status.success());
    assert_eq!(files(&run1), f1);
    // --jobs 2: the four cells dealt to two worker processes; the same bytes.
    let outj = d.join("outj");
    let rj = safetune(&["run", spec, "--out", outj.to_str().unwrap(), "--jobs", "2"], &d.join("cachej"));
    let logj = String::from_utf8_lossy(&rj.stderr).to_string();
    assert!(rj.status.success(), "{logj}");
    assert_eq!(logj.matches("[jobs] worker").count(), 2, "{logj}");
    assert_eq!(logj.matches("fine-tuning on").count(), 4, "{logj}");
    assert_eq!(files(&outj.join("tiny")), f1);
    // A new results directory with the same cache restores every stage by content key.
    let out3 = d.join("out3");
    let r4 = safetune(&["run", spec, "--out", out3.to_str().unwrap()], &d.join("cache1"));
    let log4 = String::from_utf8_lossy(&r4.stderr).to_string();
    assert!(r4.status.success(), "{log4}");
    assert_eq!(log4.matches("reusing cached cell").count(), 4, "{log4}");
    assert_eq!(log4.matches("reusing cached evaluation").count(), 2, "{log4}");
    assert!(!log4.contains("fine-tuning on"), "{log4}");
    assert_eq!(files(&out3.join("tiny")), f1);
    assert!(out3.join("tiny/adapters/sft-lora__high-harm/adapter_model.safetensors").exists());
    assert!(out3.join("tiny/generations/sft-full__benign").is_dir());
    // Another evaluation of the same cells: the LoRA cells' trained weights come from
    // the cache (evaluation only), sft-full cells (no weights kept) train again, and
    // every result equals a run that trained everything afresh.
    let spec5 = d.join("spec5.toml");
    std::fs::write(&spec5, std::fs::read_to_string(spec).unwrap().replace("safety_limit = 4", "safety_limit = 3")).unwrap();
    let (out5, out6) = (d.join("out5"), d.join("out6"));
    let r5 = safetune(&["run", spec5.to_str().unwrap(), "--out", out5.to_str().unwrap()], &d.join("cache1"));
    let log5 = String::from_utf8_lossy(&r5.stderr).to_string();
    assert!(r5.status.success(), "{log5}");
    assert_eq!(log5.matches("reusing cached trained weights").count(), 2, "{log5}");
    assert_eq!(log5.matches("fine-tuning on").count(), 2, "{log5}");
    assert!(!log5.contains("[sft-lora__benign] fine-tuning on"), "{log5}");
    let timing = |dir: &Path, cell: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(format!("tiny/timings/{cell}.json"))).unwrap()).unwrap()
    };
    assert_eq!(timing(&out5, "sft-lora__benign")["trained_from_cache"], true);
    assert_eq!(timing(&out5, "sft-full__benign")["trained_from_cache"], false);
    let r6 = safetune(&["run", spec5.to_str().unwrap(), "--out", out6.to_str().unwrap()], &d.join("cache6"));
    assert!(r6.status.success(), "{}", String::from_utf8_lossy(&r6.stderr));
    let f5 = files(&out5.join("tiny"));
    assert!(f5 == files(&out6.join("tiny")), "cached trained weights give other results than training afresh");
    assert!(f5 != f1, "the evaluation changed");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_input_is_one_line_exit_2_and_writes_nothing() {
    let d = tmp("bad");
    let good = std::fs::read_to_string(tiny_spec(&d)).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown key", good.replace("seed = 7", "seed = 7\ncolour = 1"), "colour"),
        ("wrong type", good.replace("n = 8", "n = \"eight\""), "n"),
        ("negative n", good.replace("n = 8", "n = -3"), "n"),
        ("zero n", good.replace("n = 8", "n = 0"), "finetune.n"),
        ("bad regime", good.replace("\"high-harm\"]", "\"1.5\"]"), "finetune.regimes"),
        ("unknown method", good.replace("\"sft-full\"]", "\"sft-magic\"]"), "sft-magic"),
        (
            "bad learning rate",
            good.replace(
                "learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 384 }\n[finetune]",
                "learning_rate = -1.0, epochs = 1, batch_size = 4, max_len = 384 }\n[finetune]",
            ),
            "alignment.train.learning_rate",
        ),
        ("bad lora dropout", good.replace("dropout = 0.0", "dropout = 1.5"), "alignment.lora.dropout"),
        ("unknown judge", good.replace("[eval]\n", "[eval]\njudge = \"oracle\"\n"), "eval.judge"),
        ("unknown task", good.replace("task = \"builtin\"", "task = \"poetry\""), "data.task"),
        (
            "unknown alignment task",
            good.replace("task = \"builtin\"", "task = \"builtin\"\nalign_tasks = [\"poetry\"]"),
            "data.align_tasks",
        ),
        ("task rows from no task", good.replace("benign = 4", "benign = 4\ntask_examples = 3"), "alignment.task_examples"),
        ("missing model", good.replace("source = \"", "source = \"/nonexistent/"), "no such path"),
        ("unknown defense", good.replace("[eval]\n", "defenses = [[\"nope\"]]\n[eval]\n"), "finetune.defenses"),
        (
            "two defenses giving one part",
            good.replace("[eval]\n", "defenses = [[\"bea\", \"safeinstr\"]]\n[eval]\n"),
            "both give the fine-tuning data mix",
        ),
        ("options of an absent defense", format!("{good}\n[defense_options.lisa]\nrho = 2.0\n"), "defense_options.lisa"),
        (
            "unknown defense option",
            format!("{}\n[defense_options.lisa]\ncolour = 2.0\n", good.replace("[eval]\n", "defenses = [[\"lisa\"]]\n[eval]\n")),
            "colour",
        ),
        (
            "zero eval batch",
            good.replace("task_max_new_tokens = 3\nbatch_size = 4", "task_max_new_tokens = 3\nbatch_size = 0"),
            "eval.batch_size",
        ),
        ("zero new tokens", good.replace("task_max_new_tokens = 3", "task_max_new_tokens = 0"), "max_new_tokens"),
        ("name with a slash", good.replace("name = \"tiny\"", "name = \"a/b\""), "name"),
        ("unknown safety set", good.replace("task = \"builtin\"", "task = \"builtin\"\nsafety_evals = [\"nope\"]"), "data.safety_evals"),
        ("zero lora rank", good.replace("r = 4,", "r = 0,"), "alignment.lora.r"),
        ("unknown lora target", good.replace("\"v_proj\"]", "\"x_proj\"]"), "alignment.lora.targets"),
        ("toml syntax", good.replace("seed = 7", "seed = = 7"), "spec.toml:"),
        (
            "method_train of an absent method",
            format!("{good}\n[finetune.method_train.sft-magic]\nlearning_rate = 1e-3\n"),
            "finetune.method_train",
        ),
        (
            "missing data file",
            good.replace(
                "task = \"builtin\"",
                "task = \"mine\"\n[data.custom.mine]\npath = \"/nonexistent/x.csv\"\nprompt = \"{text}\"\nresponse = \"{label}\"",
            ),
            "data.custom.mine.path",
        ),
        (
            "unknown custom metric",
            good.replace(
                "task = \"builtin\"",
                "task = \"mine\"\n[data.custom.mine]\npath = \"/nonexistent/x.csv\"\nprompt = \"{text}\"\nresponse = \"{label}\"\nmetric = \"rougee\"",
            ),
            "data.custom.mine.metric: unknown utility metric `rougee`",
        ),
        ("misspelt section", good.replace("[alignment]", "[alignmnt]"), "alignmnt"),
        ("missing extended file", format!("extends = \"nope.toml\"\n{good}"), "extends"),
        ("negative seed", good.replace("seed = 7", "seed = -7"), "seed"),
        (
            "warmup ratio above 1",
            good.replace("max_len = 384 }\n[eval]", "max_len = 384, warmup_ratio = 2.0 }\n[eval]"),
            "finetune.train.warmup_ratio",
        ),
        ("too many benign", good.replace("benign = 4", "benign = 100000"), "alignment.benign"),
        ("n above the pool", good.replace("n = 8", "n = 10000000"), "finetune.n"),
        ("unknown harmful set", good.replace("task = \"builtin\"", "task = \"builtin\"\nharmful = \"evil\""), "data.harmful"),
        ("unknown data source", good.replace("task = \"builtin\"", "task = \"builtin\"\nsource = \"ftp\""), "ftp"),
    ];
    assert!(cases.len() >= 30);
    for (what, text, needle) in cases {
        let spec = d.join("spec.toml");
        std::fs::write(&spec, &text).unwrap();
        let out = d.join("out-bad");
        let r = safetune(&["run", spec.to_str().unwrap(), "--out", out.to_str().unwrap()], &d.join("cache"));
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
        assert!(err.contains(needle), "{what}: `{needle}` not in {err}");
        assert!(!out.join("tiny").exists(), "{what}: wrote results");
    }
    // sst2 without a data directory names the flag to use.
    std::fs::write(d.join("sst.toml"), good.replace("task = \"builtin\"", "task = \"sst2\"")).unwrap();
    let r = safetune(&["run", d.join("sst.toml").to_str().unwrap(), "--out", d.join("o").to_str().unwrap()], &d.join("cache"));
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--data-dir"));
    for args in [vec!["run"], vec!["frobnicate"], vec!["list", "things"], vec!["model", "fetch", "gpt-9"]] {
        let r = safetune(&args, &d.join("cache"));
        assert_eq!(r.status.code(), Some(2), "{args:?}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn full_parameter_alignment_stores_the_whole_model_and_cells_start_from_it() {
    let d = tmp("full-align");
    let spec = tiny_spec(&d);
    std::fs::write(
        d.join("full.toml"),
        "name = \"tiny-full\"\n[alignment]\nfull = true\n[finetune]\nregimes = [\"benign\"]\nmethods = [\"sft-lora\"]\n[eval]\nvariants = false\n",
    )
    .unwrap();
    let args = |out: &str| {
        vec![
            "run".to_string(),
            spec.display().to_string(),
            "--overlay".into(),
            d.join("full.toml").display().to_string(),
            "--out".into(),
            d.join(out).display().to_string(),
        ]
    };
    let run = |out: &str| {
        let a = args(out);
        safetune(&a.iter().map(String::as_str).collect::<Vec<_>>(), &d.join("cache"))
    };
    let r = run("out");
    let log = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "{log}");
    assert!(log.contains("[align] 16 examples (12 refusals), every weight"), "{log}");
    let aligned = std::fs::read_dir(d.join("cache/aligned")).unwrap().next().unwrap().unwrap().path();
    assert!(aligned.join("model/model.safetensors").exists() && !aligned.join("adapter_model.safetensors").exists());
    let gens = |label: &str| std::fs::read(d.join(format!("out/tiny-full/generations/{label}/builtin-sentiment.jsonl"))).unwrap();
    assert_ne!(gens("aligned"), gens("base"), "full alignment must change the model");
    assert!(d.join("out/tiny-full/cells/sft-lora__benign.json").exists());
    // A second results directory reuses the cached whole model.
    let r = run("out2");
    let log = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success() && log.contains("reusing cached alignment"), "{log}");
    assert_eq!(gens("aligned"), std::fs::read(d.join("out2/tiny-full/generations/aligned/builtin-sentiment.jsonl")).unwrap());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_user_csv_task_runs_through_the_pipeline_with_an_overlay() {
    let d = tmp("custom");
    let spec = tiny_spec(&d);
    std::fs::create_dir_all(d.join("user")).unwrap();
    let mut csv = String::from("text,answer\n");
    for i in 0..40 {
        csv.push_str(&format!("item {i} is {},{}\n", if i % 2 == 0 { "good" } else { "bad" }, if i % 2 == 0 { "yes" } else { "no" }));
    }
    std::fs::write(d.join("user/data.csv"), csv).unwrap();
    std::fs::write(
        d.join("user/overlay.toml"),
        "name = \"tiny-custom\"\n[data]\ntask = \"mine\"\ntemplate = \"alpaca\"\n[data.custom.mine]\npath = \"data.csv\"\nprompt = \"Good? {text}\"\nresponse = \"{answer}\"\nmetric = { labels = [\"yes\", \"no\"] }\nholdout = 10\n",
    )
    .unwrap();
    // The builtin suite supplies safety data; the task is the user's file.
    let r = safetune(
        &[
            "run",
            spec.to_str().unwrap(),
            "--overlay",
            d.join("user/overlay.toml").to_str().unwrap(),
            "--out",
            d.join("out").to_str().unwrap(),
        ],
        &d.join("cache"),
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    let cell: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/tiny-custom/cells/sft-lora__benign.json")).unwrap()).unwrap();
    assert_eq!(cell["eval"]["task"]["task"], "mine");
    assert_eq!(cell["eval"]["task"]["score"]["n"], 6, "task_limit of the base spec");
    assert!(cell["task_ids"].as_array().unwrap().iter().all(|id| id.as_str().unwrap().starts_with("mine/train:")));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn defense_stacks_run_in_a_grid_with_one_alignment_per_alignment_defense() {
    let d = tmp("stack");
    let spec = tiny_spec(&d);
    std::fs::write(
        d.join("stack.toml"),
        "name = \"tiny-stack\"\n[finetune]\nmethods = [\"sft-lora\"]\nregimes = [\"high-harm\"]\n\
         defenses = [[], [\"vaccine\", \"lisa\", \"safelora\"], [\"bea\"], [\"safeinstr\"]]\n\
         [defense_options.lisa]\nalignment_step = 1\nfinetune_step = 2\n\
         [defense_options.bea]\nexamples = 3\n[defense_options.safeinstr]\nfraction = 0.25\n",
    )
    .unwrap();
    let out = d.join("out");
    let r = safetune(
        &["run", spec.to_str().unwrap(), "--overlay", d.join("stack.toml").to_str().unwrap(), "--out", out.to_str().unwrap()],
        &d.join("cache"),
    );
    let log = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "{log}");
    assert_eq!(log.matches("[align] 16 examples").count(), 1, "{log}");
    assert_eq!(log.matches("[align+vaccine] 16 examples").count(), 1, "{log}");
    let cell = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("tiny-stack/cells").join(format!("{name}.json"))).unwrap()).unwrap()
    };
    let plain = cell("sft-lora__high-harm");
    let stacked = cell("sft-lora+vaccine+lisa+safelora__high-harm");
    assert_ne!(plain["aligned_key"], stacked["aligned_key"], "vaccine aligns separately");
    assert_eq!(stacked["defenses"], serde_json::json!(["vaccine", "lisa", "safelora"]));
    assert!(stacked["repaired"].is_array() || stacked.get("repaired").is_none());
    assert_eq!(cell("sft-lora+bea__high-harm")["added_ids"].as_array().unwrap().len(), 3);
    assert_eq!(cell("sft-lora+safeinstr__high-harm")["added_ids"].as_array().unwrap().len(), 2);
    // BEA's trigger was in the prompts at evaluation: answers differ from the plain cell's or not, the
    // generations exist for every set.
    assert!(out.join("tiny-stack/generations/sft-lora+bea__high-harm/builtin-harmful-eval.jsonl").exists());
    let table = String::from_utf8_lossy(&r.stdout);
    assert!(table.contains("| aligned+vaccine |"), "{table}");
    // Two defenses giving the same part of a stack (two data mixes) is an error naming both and the part.
    std::fs::write(d.join("bad.toml"), "[finetune]\ndefenses = [[\"safeinstr\", \"bea\"]]\n").unwrap();
    let r = safetune(
        &["run", spec.to_str().unwrap(), "--overlay", d.join("bad.toml").to_str().unwrap(), "--out", out.to_str().unwrap()],
        &d.join("cache"),
    );
    assert_eq!(r.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("`safeinstr` and `bea` both give the fine-tuning data mix"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn sigkill_mid_run_then_rerun_gives_the_uninterrupted_results_without_recomputing_finished_cells() {
    let d = tmp("kill");
    let spec = tiny_spec(&d);
    let spec = spec.to_str().unwrap();
    let clean = d.join("clean");
    let r = safetune(&["run", spec, "--out", clean.to_str().unwrap()], &d.join("cache-clean"));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    let out = d.join("killed");
    let cells = out.join("tiny/cells");
    let mut child = Command::new(env!("CARGO_BIN_EXE_safetune"))
        .args(["run", spec, "--out", out.to_str().unwrap(), "--quiet"])
        .env("SAFETUNE_CACHE", d.join("cache-killed"))
        // Empty means unset (as `SAFETUNE_DATA_DIR= safetune run ...` in a shell): the built-in suite.
        .env("SAFETUNE_DATA_DIR", "")
        .spawn()
        .unwrap();
    // SIGKILL as soon as the first cell is on disk: the other three are in flight or to come.
    let done_at_kill = loop {
        let n = std::fs::read_dir(&cells)
            .map(|r| r.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "json")).count());
        if let Ok(n @ 1..) = n {
            child.kill().unwrap();
            break n;
        }
        assert!(child.try_wait().unwrap().is_none(), "run finished before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    child.wait().unwrap();
    assert!(done_at_kill < 4, "killed after the last cell");
    assert!(out.join("tiny/.lock").exists(), "a killed runner leaves its lock behind");

    let r = safetune(&["run", spec, "--out", out.to_str().unwrap()], &d.join("cache-killed"));
    let log = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "{log}");
    let finished_now = std::fs::read_dir(&cells).unwrap().count();
    assert_eq!(log.matches("already done").count(), done_at_kill, "{log}");
    assert_eq!(log.matches("fine-tuning on").count(), 4 - done_at_kill, "{log}");
    assert_eq!(finished_now, 4);
    assert_eq!(files(&out.join("tiny")), files(&clean.join("tiny")), "results differ from the uninterrupted run");
    assert!(!out.join("tiny/.lock").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_grid_over_tasks_and_seeds_runs_each_once_and_averages_across_seeds() {
    let d = tmp("seeds");
    let base = std::fs::read_to_string(tiny_spec(&d)).unwrap();
    let text = base
        .replace("seed = 7", "seed = 7\nseeds = [7, 8]")
        .replace("task = \"builtin\"", "task = \"builtin-sentiment\"\ntasks = [\"builtin-sentiment\", \"builtin-arithmetic\"]")
        .replace("regimes = [\"benign\", \"high-harm\"]", "regimes = [\"high-harm\"]")
        .replace("methods = [\"sft-lora\", \"sft-full\"]", "methods = [\"sft-lora\"]");
    let spec = d.join("grid.toml");
    std::fs::write(&spec, text).unwrap();
    let out = d.join("out");
    let r = safetune(&["run", spec.to_str().unwrap(), "--out", out.to_str().unwrap()], &d.join("cache"));
    let log = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "{log}");
    let top = out.join("tiny");
    for sub in ["builtin-sentiment-s7", "builtin-sentiment-s8", "builtin-arithmetic-s7", "builtin-arithmetic-s8"] {
        assert!(top.join("runs").join(sub).join("cells/sft-lora__high-harm.json").exists(), "{sub}");
    }
    // The alignment set does not depend on the task: one alignment per seed, reused by the other task.
    assert_eq!(log.matches("[align] 16 examples").count(), 2, "{log}");
    let summary = std::fs::read_to_string(top.join("summary.md")).unwrap();
    assert!(
        summary.contains("## builtin-sentiment: mean over 2 seeds") && summary.contains("## builtin-arithmetic: mean over 2 seeds"),
        "{summary}"
    );
    // The aggregate is the mean of the two seeds' scores.
    let score = |sub: &str| -> f64 {
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(top.join("runs").join(sub).join("cells/sft-lora__high-harm.json")).unwrap()).unwrap();
        c["eval"]["task"]["score"]["value"].as_f64().unwrap()
    };
    let want = (score("builtin-sentiment-s7") + score("builtin-sentiment-s8")) / 2.0;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(top.join("report/table.json")).unwrap()).unwrap();
    let row = json.as_array().unwrap().iter().find(|r| r["task"] == "builtin-sentiment" && r["row"]["method"] == "sft-lora").unwrap();
    assert!((row["row"]["eval"]["task"]["score"]["value"].as_f64().unwrap() - want).abs() < 1e-12);
    assert_eq!(row["seeds"], serde_json::json!([7, 8]));
    assert!(top.join("report/builtin-arithmetic_safety_utility.svg").exists());
    // `safetune report` on the grid rebuilds the same summary.
    let rep = safetune(&["report", top.to_str().unwrap()], &d.join("cache"));
    assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));
    assert_eq!(std::fs::read_to_string(top.join("summary.md")).unwrap(), summary);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Every preset and every calibration candidate checks out against `../shared/data`
/// (`--dry-run`: data, model, every sub-run's alignment set and variants), so no preset asks
/// for more than the data holds and none fails hours into a grid. `paper` is left out: its
/// model is a Llama-2-7B-chat directory a GPU user brings.
#[test]
fn every_preset_and_calibration_candidate_checks_out_on_the_shared_data() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = std::env::var_os("SAFETUNE_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("../shared/data"));
    let cache = std::env::var_os("SAFETUNE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/safetune"));
    let model = cache.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !data.is_dir() || !model.is_file() {
        assert!(std::env::var_os("CI").is_none(), "CI: needs {} and {}", data.display(), model.display());
        eprintln!("skipped: needs {} and {}", data.display(), model.display());
        return;
    }
    let out = tmp("dry-run");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_safetune"))
            .args(args)
            .args(["--dry-run", "--data-dir", data.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .env("SAFETUNE_CACHE", &cache)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(o.status.success(), "{args:?}: {}{text}", String::from_utf8_lossy(&o.stderr));
        text
    };
    let mut presets: Vec<PathBuf> = std::fs::read_dir(root.join("presets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && !p.ends_with("paper.toml"))
        .collect();
    presets.sort();
    assert!(presets.len() >= 4, "{presets:?}");
    for p in &presets {
        let plan = run(&["run", p.to_str().unwrap()]);
        assert!(plan.contains("alignment on") && plan.contains("cells"), "{}: {plan}", p.display());
    }
    let plan = run(&["calibrate", root.join("presets/calibrate/sweep.toml").to_str().unwrap()]);
    assert!(plan.matches("one run in").count() >= 10, "{plan}");
    // Nothing written.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}
