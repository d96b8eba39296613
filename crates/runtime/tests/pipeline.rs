//! End-to-end runs of the `safetune` binary on a tiny model and the built-in suite:
//! reproducibility, bad input, full-parameter alignment (grids and presets: `grids.rs`).

mod common;
use common::{files, safetune, tiny_spec, tmp};
use std::path::Path;

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
    // Progress lines go through `tracing`: RUST_LOG=warn keeps them off, the table still printed;
    // a filter that does not parse is bad input.
    let r4 = common::safetune_logged(&["run", spec, "--out", out1.to_str().unwrap()], &d.join("cache1"), "warn");
    let log4 = String::from_utf8_lossy(&r4.stderr).to_string();
    assert!(r4.status.success() && !log4.contains("already done") && !log4.contains("[eval"), "{log4}");
    assert_eq!(r4.stdout, r3.stdout);
    let r5 = common::safetune_logged(&["run", spec, "--out", out1.to_str().unwrap()], &d.join("cache1"), "safetune=loud");
    let log5 = String::from_utf8_lossy(&r5.stderr).to_string();
    assert_eq!(r5.status.code(), Some(2), "{log5}");
    assert!(log5.starts_with("error: RUST_LOG: `safetune=loud` is not a log filter") && log5.trim_end().lines().count() == 1, "{log5}");
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
    for plot in ["safety_utility", "asr_vs_poison", "heatmap"] {
        let png = std::fs::read(run1.join(format!("report/{plot}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "{plot}.png: {} bytes", png.len());
    }
    assert!(std::fs::read_to_string(run1.join("report/table.tex")).unwrap().contains("\\bottomrule"));
    let summary = std::fs::read(run1.join("summary.md")).unwrap();
    let rep = safetune(&["report", run1.to_str().unwrap(), "--json"], &d.join("cache1"));
    assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&rep.stdout).unwrap();
    assert_eq!(rows.as_array().map(|a| a.len()), Some(6));
    assert_eq!(std::fs::read(run1.join("summary.md")).unwrap(), summary);
    // `safetune eval` on the base model plus the alignment adapter and a cell's adapter
    // (PEFT directories from the results directory, merged in order) reproduces that
    // cell's scores exactly; the aligned adapter in the results is the cached one.
    let cached = std::fs::read_dir(d.join("cache1/aligned")).unwrap().next().unwrap().unwrap().path();
    let aligned_dir = run1.join("adapters/aligned");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert_eq!(std::fs::read(aligned_dir.join(f)).unwrap(), std::fs::read(cached.join(f)).unwrap(), "{f}");
    }
    let cell_adapter = run1.join("adapters/sft-lora__high-harm");
    let ev_out = d.join("ev");
    let model_dir = d.join("model");
    // Each adapter names its base as the spec does; the README says how to stack them.
    for a in [&aligned_dir, &cell_adapter] {
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(cfg["base_model_name_or_path"].as_str(), model_dir.to_str(), "{}", a.display());
    }
    let readme = std::fs::read_to_string(run1.join("adapters/README.md")).unwrap();
    assert!(
        readme.contains("--adapter adapters/aligned --adapter adapters/<cell>") && readme.contains(model_dir.to_str().unwrap()),
        "{readme}"
    );
    let mut args = vec!["eval", "--model", model_dir.to_str().unwrap()];
    args.extend(["--adapter", aligned_dir.to_str().unwrap(), "--adapter", cell_adapter.to_str().unwrap()]);
    args.extend(common::TINY_EVAL_FLAGS);
    args.extend(["--name", "ev", "--out", ev_out.to_str().unwrap()]);
    let ev = safetune(&args, &d.join("cache-ev"));
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
    // An answer cut once the run's judge had settled it (eval.stop_at_verdict) is whole to that
    // judge only: another judge is refused before anything is rewritten, the same judge is not.
    let gen_file = run1.join("generations/aligned/builtin-harmful-eval.jsonl");
    let original = std::fs::read_to_string(&gen_file).unwrap();
    let first_end = original.find('\n').unwrap();
    let marked = format!("{},\"cut\":true}}{}", &original[..first_end - 1], &original[first_end..]);
    std::fs::write(&gen_file, &marked).unwrap();
    let before = files(&run1);
    let rj = safetune(&["rejudge", run1.to_str().unwrap(), "--judge", "keyword-qi2023"], &d.join("cache1"));
    let err = String::from_utf8_lossy(&rj.stderr);
    assert_eq!(rj.status.code(), Some(2), "{err}");
    assert!(err.contains("builtin-harmful-eval.jsonl: answers were cut once the `keyword` judge's verdict was settled"), "{err}");
    assert_eq!(files(&run1), before, "nothing rewritten");
    assert_eq!(std::fs::read_to_string(&gen_file).unwrap(), marked);
    let rj = safetune(&["rejudge", run1.to_str().unwrap()], &d.join("cache1"));
    assert!(rj.status.success(), "{}", String::from_utf8_lossy(&rj.stderr));
    std::fs::write(&gen_file, original).unwrap();
    assert_eq!(files(&run1), f1);
    // --jobs 2: the aligned model in a worker of its own (the only item that can run: every
    // core), then the four cells in worker processes, two at a time, one process each; the
    // same bytes.
    let outj = d.join("outj");
    let rj = safetune(&["run", spec, "--out", outj.to_str().unwrap(), "--jobs", "2"], &d.join("cachej"));
    let logj = String::from_utf8_lossy(&rj.stderr).to_string();
    assert!(rj.status.success(), "{logj}");
    assert_eq!(logj.matches("[jobs] worker started: ").count(), 5, "{logj}");
    assert!(logj.find("[jobs] worker started: aligned\n") < logj.find("[jobs] worker started: sft"), "{logj}");
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
    // Model files that would fail to load: refused before the results directory exists.
    let model = d.join("model").display().to_string();
    let crafted = d.join("crafted");
    std::fs::create_dir_all(&crafted).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(d.join("model").join(f), crafted.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(d.join("model/config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["num_attention_heads"] = 0.into();
    std::fs::write(crafted.join("config.json"), config.to_string()).unwrap();
    std::fs::write(d.join("junk.gguf"), b"GGUF\x03\x00\x00\x00 not really").unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("crafted model config", good.replace(&model, &crafted.display().to_string()), "num_attention_heads"),
        ("junk gguf", good.replace(&model, &d.join("junk.gguf").display().to_string()), "not a readable GGUF file"),
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
            good.replace("[eval]\n", "defenses = [[\"lisa\", \"constrained-sft\"]]\n[eval]\n"),
            "both give the fine-tuning objective",
        ),
        ("options of an absent defense", format!("{good}\n[defense_options.lisa]\nrho = 2.0\n"), "defense_options.lisa"),
        (
            "unknown defense option",
            format!("{}\n[defense_options.lisa]\ncolour = 2.0\n", good.replace("[eval]\n", "defenses = [[\"lisa\"]]\n[eval]\n")),
            "colour",
        ),
        // A data mix whose pool cannot give what it asks, named before the alignment trains.
        (
            "safeinstr demonstrations from a source without them",
            format!("{}\n[defense_options.safeinstr]\npool = \"demonstrations\"\nfraction = 0.5\n", good.replace("[eval]\n", "defenses = [[\"safeinstr\"]]\n[eval]\n")),
            "finetune.defenses [\"safeinstr\"], regime `benign`: defense_options.safeinstr: 4 safety examples asked for (fraction), the curated demonstrations",
        ),
        (
            "bea examples above the safety pool",
            format!("{}\n[defense_options.bea]\nexamples = 100000\n", good.replace("[eval]\n", "defenses = [[\"bea\"]]\n[eval]\n")),
            "defense_options.bea.examples: 100000 asked for",
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
        ("huge lora rank", good.replace("r = 4,", "r = 1000000000,"), "alignment.lora.r"),
        ("repeated regime", good.replace("regimes = [\"benign\",", "regimes = [\"benign\", \"benign\","), "finetune.regimes: `benign` appears twice"),
        ("repeated method", good.replace("\"sft-full\"]", "\"sft-full\", \"sft-lora\"]"), "finetune.methods: `sft-lora` appears twice"),
        ("nan lora alpha", good.replace("alpha = 8.0,", "alpha = nan,"), "alignment.lora.alpha"),
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
        // Bounded by the model (checked against its config before anything is written).
        ("lora rank above the model's", good.replace("r = 4,", "r = 1000,"), "alignment.lora.r: 1000 exceeds the rank of `model.layers.0."),
        (
            "method lora rank above the model's",
            format!("{good}\n[finetune.method_options.sft-lora]\nr = 1000\n"),
            "finetune.method_options.sft-lora.r: 1000 exceeds the rank",
        ),
        (
            "max_len above the model's positions",
            good.replace("max_len = 384 }\n[eval]", "max_len = 4096 }\n[eval]"),
            "finetune.train.max_len: 4096 exceeds the model's 512 positions",
        ),
        ("name of 10 MB", good.replace("name = \"tiny\"", &format!("name = \"{}\"", "x".repeat(10_000_000))), "name: 10000000 bytes"),
        (
            "a 10 MB string where a number belongs",
            good.replace("n = 8", &format!("n = \"{}\"", "y".repeat(10_000_000))),
            "characters left out",
        ),
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
        assert!(err.len() < 600, "{what}: {} bytes (a backtrace?): {err}", err.len());
        assert!(err.contains(needle), "{what}: `{needle}` not in {err}");
        assert!(!out.join("tiny").exists(), "{what}: wrote results");
    }
    // An adapter whose weights file is not safetensors: candle's error (which carries a
    // backtrace under RUST_BACKTRACE=1) stays one short line, and eval writes nothing.
    let adapter = d.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4.0, "lora_dropout": 0.0, "target_modules": ["q_proj"]}"#,
    )
    .unwrap();
    std::fs::write(adapter.join("adapter_model.safetensors"), b"not safetensors").unwrap();
    let out = d.join("out-eval");
    let args = ["eval", "--task", "builtin", "--model", &model, "--adapter", adapter.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let r = safetune(&args, &d.join("cache"));
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("adapter_model.safetensors") && err.len() < 600, "{} bytes: {err}", err.len());
    assert!(!out.exists(), "eval wrote results");
    // A model whose weights are all NaN passes the header checks; loading it fails after
    // the results directory was opened, and the directory goes again, for eval and run.
    let nan = d.join("nan-model");
    std::fs::create_dir_all(&nan).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(Path::new(&model).join(f), nan.join(f)).unwrap();
    }
    let mut st = std::fs::read(Path::new(&model).join("model.safetensors")).unwrap();
    let start = 8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    for w in st[start..].chunks_exact_mut(4) {
        w.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(nan.join("model.safetensors"), st).unwrap();
    let out = d.join("out-nan");
    let r = safetune(&["eval", "--task", "builtin", "--model", nan.to_str().unwrap(), "--out", out.to_str().unwrap()], &d.join("cache"));
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("nan-model: weight `model.embed_tokens.weight` has non-finite values"), "{err}");
    assert!(!out.join("eval-model").exists(), "eval of a NaN model left its directory");
    std::fs::write(d.join("nan.toml"), good.replace(&model, nan.to_str().unwrap())).unwrap();
    let r = safetune(&["run", d.join("nan.toml").to_str().unwrap(), "--out", out.to_str().unwrap()], &d.join("cache"));
    assert_eq!(r.status.code(), Some(2), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!out.join("tiny").exists(), "a run on a NaN model left its directory");
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
    // `eval --run --cell` finds the whole aligned model in the stage cache (the results hold no
    // adapter for it): the aligned model and the cell on top of it evaluate as the run did.
    let run_dir = d.join("out/tiny-full");
    for label in ["aligned", "sft-lora__benign"] {
        let ev = d.join("ev");
        let args = ["eval", "--run", run_dir.to_str().unwrap(), "--cell", label, "--quiet", "--out", ev.to_str().unwrap(), "--name", label];
        let r = safetune(&args, &d.join("cache"));
        assert!(r.status.success(), "{label}: {}", String::from_utf8_lossy(&r.stderr));
        let again = std::fs::read(ev.join(label).join("generations").join(label).join("builtin-sentiment.jsonl")).unwrap();
        assert_eq!(again, gens(label), "{label}");
    }
    // Without the cache, the message says where the whole model was expected.
    let r = safetune(
        &["eval", "--run", run_dir.to_str().unwrap(), "--cell", "aligned", "--out", d.join("ev2").to_str().unwrap()],
        &d.join("empty-cache"),
    );
    common::refused(&r, "aligned in full and its model is not in the stage cache");
    assert!(!d.join("ev2").exists());
    std::fs::remove_dir_all(&d).unwrap();
}
