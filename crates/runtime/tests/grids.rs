//! End-to-end runs of the `safetune` binary: user tasks, defense stacks, grids over
//! tasks and seeds, a kill mid-run, and every preset checked on the shared data.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{files, safetune, tiny_spec, tmp};

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
         defenses = [[], [\"vaccine\", \"lisa\", \"safelora\"], [\"bea\"], [\"safeinstr\"], [\"safeinstr\", \"recovery-mix\"]]\n\
         [defense_options.lisa]\nalignment_step = 1\nfinetune_step = 2\n\
         [defense_options.bea]\nexamples = 3\n[defense_options.safeinstr]\nfraction = 0.25\n\
         [defense_options.recovery-mix]\nfraction = 0.5\n",
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
    // The repaired cell's evaluated weights: its adapter plus the tensors SafeLoRA replaced.
    let replaced: Vec<String> = stacked["repaired"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let saved = candle_core::safetensors::load(
        out.join("tiny-stack/weights/sft-lora+vaccine+lisa+safelora__high-harm.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<String> = saved.keys().cloned().collect();
    names.sort();
    assert!(!replaced.is_empty());
    assert_eq!(names, replaced);
    assert!(!out.join("tiny-stack/weights/sft-lora__high-harm.safetensors").exists(), "an unrepaired LoRA cell is its adapter");
    assert_eq!(cell("sft-lora+bea__high-harm")["added_ids"].as_array().unwrap().len(), 3);
    assert_eq!(cell("sft-lora+safeinstr__high-harm")["added_ids"].as_array().unwrap().len(), 2);
    // Two data defenses stack: SafeInstr's two safety examples and recovery-mix's four, both in the data.
    let both = cell("sft-lora+safeinstr+recovery-mix__high-harm");
    let added: Vec<&str> = both["added_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(added.len(), 6, "{added:?}");
    assert_eq!(added.iter().filter(|id| id.ends_with("#recovery-mix")).count(), 4, "{added:?}");
    // BEA's trigger was in the prompts at evaluation: answers differ from the plain cell's or not, the
    // generations exist for every set.
    assert!(out.join("tiny-stack/generations/sft-lora+bea__high-harm/builtin-harmful-eval.jsonl").exists());
    // `safetune eval --defense bea` asks as the BEA cell did (its trigger before the default system
    // prompt): on the cell's adapters it reproduces the cell's evaluation to the byte; without the
    // flag the same weights answer other prompts; a defense with no inference-time part is refused.
    let run_dir = out.join("tiny-stack");
    let ev = |extra: &[&str], name: &str| {
        let path = |p: PathBuf| p.to_str().unwrap().to_string();
        let mut args: Vec<String> = vec!["eval".into(), "--model".into(), path(d.join("model"))];
        for a in ["aligned", "sft-lora+bea__high-harm"] {
            args.extend(["--adapter".into(), path(run_dir.join("adapters").join(a))]);
        }
        args.extend(common::TINY_EVAL_FLAGS.iter().chain(&["--quiet"]).map(|a| a.to_string()));
        args.extend(["--name".into(), name.into(), "--out".into(), path(d.join("ev"))]);
        args.extend(extra.iter().map(|a| a.to_string()));
        safetune(&args.iter().map(String::as_str).collect::<Vec<_>>(), &d.join("cache-ev"))
    };
    let readme = std::fs::read_to_string(run_dir.join("adapters/README.md")).unwrap();
    assert!(readme.contains("add `--defense <name>`"), "the adapters' README says how to ask as BEA does:\n{readme}");
    assert!(readme.contains("safetune eval --run <this run's directory> --cell <cell>"), "{readme}");
    let with = ev(&["--defense", "bea"], "with");
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    let read = |p: std::path::PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let gens = |dir: &std::path::Path| read(dir.join("generations/sft-lora+bea__high-harm/builtin-harmful-eval.jsonl"));
    assert_eq!(gens(&d.join("ev/with")), gens(&run_dir));
    let evald: serde_json::Value = serde_json::from_slice(&read(d.join("ev/with/models/sft-lora+bea__high-harm.json"))).unwrap();
    assert_eq!(cell("sft-lora+bea__high-harm")["eval"], evald);
    let manifest: serde_json::Value = serde_json::from_slice(&read(d.join("ev/with/manifest.json"))).unwrap();
    assert_eq!(manifest["asked"]["defense"], "bea", "{manifest}");
    let without = ev(&[], "without");
    assert!(without.status.success(), "{}", String::from_utf8_lossy(&without.stderr));
    assert_ne!(gens(&d.join("ev/without")), gens(&run_dir), "the trigger must change the prompts");
    // `--run DIR --cell LABEL` takes all of it from the run: model, adapters, sets, settings, seed
    // and BEA's way of asking; the same evaluation for a cell, the aligned models and the base.
    let from = |cell: &str, name: &str, extra: &[&str]| {
        let mut args = vec!["eval", "--run", run_dir.to_str().unwrap(), "--cell", cell, "--quiet", "--name", name];
        let out = d.join("ev");
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        safetune(&args, &d.join("cache-ev"))
    };
    for (label, models_file) in [
        ("sft-lora+bea__high-harm", None),
        ("sft-lora+vaccine+lisa+safelora__high-harm", None),
        ("aligned+vaccine", Some("aligned+vaccine")),
        ("base", Some("base")),
    ] {
        let name = format!("from-{label}");
        let r = from(label, &name, &[]);
        assert!(r.status.success(), "{label}: {}", String::from_utf8_lossy(&r.stderr));
        let evald: serde_json::Value =
            serde_json::from_slice(&read(d.join("ev").join(&name).join("models").join(format!("{label}.json")))).unwrap();
        let expected = match models_file {
            None => cell(label)["eval"].clone(),
            Some(m) => serde_json::from_slice(&read(run_dir.join("models").join(format!("{m}.json")))).unwrap(),
        };
        assert_eq!(evald, expected, "{label}");
        let g = |dir: &std::path::Path| read(dir.join("generations").join(label).join("builtin-harmful-eval.jsonl"));
        assert_eq!(g(&d.join("ev").join(&name)), g(&run_dir), "{label}");
    }
    let (here, nowhere, grid) = (run_dir.to_str().unwrap(), d.join("nowhere"), d.join("grid"));
    std::fs::create_dir_all(grid.join("runs")).unwrap();
    std::fs::write(grid.join("spec.json"), "{}").unwrap();
    for (args, needle) in [
        (vec!["--run", here, "--cell", "sft-lora__benign"], "--cell sft-lora__benign: not a model of"),
        (vec!["--run", nowhere.to_str().unwrap(), "--cell", "base"], "no spec.json"),
        (vec!["--run", grid.to_str().unwrap(), "--cell", "base"], "a grid of runs"),
        (vec!["--run", here, "--cell", "base", "--model", "x"], "--model"),
        (vec!["--run", here, "--cell", "base", "--defense", "bea"], "--defense"),
        (vec!["--run", here], "--cell"),
    ] {
        let out = d.join("ev");
        let mut all = vec!["eval", "--name", "bad", "--out", out.to_str().unwrap()];
        all.extend(args.iter().copied());
        common::refused(&safetune(&all, &d.join("cache-ev")), needle);
        assert!(!d.join("ev/bad").exists(), "{args:?}: nothing written");
    }
    // Another trigger through the defense's options: other prompts, recorded in the manifest.
    let short = ev(&["--defense", "bea", "--defense-options", "trigger_tokens = 4"], "short");
    assert!(short.status.success(), "{}", String::from_utf8_lossy(&short.stderr));
    assert_ne!(gens(&d.join("ev/short")), gens(&run_dir), "a 4-word trigger is another prompt");
    let manifest: serde_json::Value = serde_json::from_slice(&read(d.join("ev/short/manifest.json"))).unwrap();
    assert_eq!(manifest["asked"]["options"]["trigger_tokens"], 4, "{manifest}");
    for (extra, needle) in [
        (&["--defense", "lisa"][..], "--defense lisa"),
        (&["--defense", "bea", "--defense-options", "trigger_tokens = 0"][..], "--defense-options: defense_options.bea.trigger_tokens"),
        (&["--defense", "bea", "--defense-options", "colour = 1"][..], "colour"),
        (&["--defense", "bea", "--defense-options", "trigger_tokens ="][..], "--defense-options"),
        (&["--defense-options", "trigger_tokens = 4"][..], "--defense"),
    ] {
        let bad = ev(extra, "bad");
        assert_eq!(bad.status.code(), Some(2), "{extra:?}");
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.trim().lines().count() == 1 && err.contains(needle), "{extra:?}: {err}");
        assert!(!d.join("ev/bad").exists(), "{extra:?}: nothing written for a refused flag");
    }
    let table = String::from_utf8_lossy(&r.stdout);
    assert!(table.contains("| aligned+vaccine |"), "{table}");
    // Each defense against the undefended cell, with the wall time of each cell's pipeline:
    // the alignment it started from (its own for Vaccine) is charged to it.
    assert!(table.contains("## Defenses against the undefended cell"), "{table}");
    assert!(table.contains("| builtin-sentiment | vaccine+lisa+safelora | sft-lora | high-harm | 1 |"), "{table}");
    assert!(table.contains("Cut the mean ASR by ≥ 20 points at ≤ 5 points of task score:"), "{table}");
    for label in ["aligned", "aligned+vaccine"] {
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("tiny-stack/timings").join(format!("{label}.json"))).unwrap()).unwrap();
        assert!(t["train"]["seconds"].as_f64().unwrap() > 0.0, "{t}");
    }
    // --jobs 2 with its own cache: the two aligned models are trained (and evaluated) side by
    // side in two workers, once each, then the cells in workers; every result file is the
    // sequential run's, byte for byte.
    let outj = d.join("outj");
    let rj = safetune(
        &[
            "run",
            spec.to_str().unwrap(),
            "--overlay",
            d.join("stack.toml").to_str().unwrap(),
            "--out",
            outj.to_str().unwrap(),
            "--jobs",
            "2",
        ],
        &d.join("cachej"),
    );
    let logj = String::from_utf8_lossy(&rj.stderr).to_string();
    assert!(rj.status.success(), "{logj}");
    assert!(logj.contains("[jobs] worker started: aligned\n"), "{logj}");
    assert!(logj.contains("[jobs] worker started: aligned+vaccine\n"), "{logj}");
    assert_eq!(logj.matches("[align] 16 examples").count(), 1, "{logj}");
    assert_eq!(logj.matches("[align+vaccine] 16 examples").count(), 1, "{logj}");
    assert_eq!(files(&outj.join("tiny-stack")), files(&out.join("tiny-stack")));
    assert!(outj.join("tiny-stack/summary.md").is_file(), "the parent wrote the report");
    // Each aligned model's evaluation time, computed in a worker, stays on record (its cells'
    // workers, which reuse the evaluation, keep it).
    for label in ["aligned", "aligned+vaccine"] {
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(outj.join("tiny-stack/timings").join(format!("{label}.json"))).unwrap()).unwrap();
        assert!(t["train"]["seconds"].as_f64().unwrap() > 0.0 && t["eval"]["seconds"].as_f64().unwrap() > 0.0, "{label}: {t}");
    }
    // Two defenses giving the same part of a stack (two fine-tuning objectives) is an error naming
    // both and the part; data mixes are the one part that stacks.
    std::fs::write(d.join("bad.toml"), "[finetune]\ndefenses = [[\"lisa\", \"ldifs\"]]\n").unwrap();
    let r = safetune(
        &["run", spec.to_str().unwrap(), "--overlay", d.join("bad.toml").to_str().unwrap(), "--out", out.to_str().unwrap()],
        &d.join("cache"),
    );
    common::refused(&r, "`lisa` and `ldifs` both give the fine-tuning objective");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn with_jobs_a_stack_naming_the_alignment_objective_trains_that_aligned_model_once_in_one_worker() {
    // `alignment.objective = "vaccine"` and a stack that names vaccine: both labels' aligned
    // models have one content key, so one worker trains it once and evaluates both labels,
    // beside another worker for Booster's own aligned model.
    let d = tmp("shared-objective");
    let spec = tiny_spec(&d);
    std::fs::write(
        d.join("o.toml"),
        "name = \"tiny-objective\"\n[alignment]\nobjective = \"vaccine\"\n\
         [finetune]\nmethods = [\"sft-lora\"]\nregimes = [\"high-harm\"]\ndefenses = [[], [\"vaccine\"], [\"booster\"]]\n",
    )
    .unwrap();
    let out = d.join("out");
    let r = safetune(
        &["run", spec.to_str().unwrap(), "--overlay", d.join("o.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--jobs", "2"],
        &d.join("cache"),
    );
    let log = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "{log}");
    assert_eq!(log.matches("[jobs] worker started: aligned, aligned+vaccine\n").count(), 1, "{log}");
    assert_eq!(log.matches("[jobs] worker started: aligned+booster\n").count(), 1, "{log}");
    assert_eq!(log.matches("[align+vaccine] 16 examples").count(), 1, "trained once:\n{log}");
    assert_eq!(log.matches("[align] 16 examples").count(), 0, "{log}");
    for label in ["aligned", "aligned+vaccine", "aligned+booster"] {
        assert!(out.join("tiny-objective/models").join(format!("{label}.json")).is_file(), "{label} evaluated");
    }
}

#[test]
fn post_tuning_repairs_reuse_the_undefended_cells_training() {
    // SafeLoRA and Antidote change nothing fine-tuning trains: in one grid with the undefended
    // cell they repair its trained adapter instead of training again, and each repaired cell
    // equals the one a run that trained it afresh gives (every file, byte for byte).
    let d = tmp("repairs");
    let spec = tiny_spec(&d);
    let stacks = |defenses: &str| {
        format!(
            "name = \"tiny-repairs\"\n[finetune]\nmethods = [\"sft-lora\"]\nregimes = [\"high-harm\"]\ndefenses = {defenses}\n\
             [defense_options.safelora]\nmode = \"number\"\nk = 3\n"
        )
    };
    std::fs::write(d.join("all.toml"), stacks(r#"[[], ["safelora"], ["antidote"], ["lisa"]]"#)).unwrap();
    std::fs::write(d.join("one.toml"), stacks(r#"[["safelora"], ["antidote"]]"#)).unwrap();
    let run = |overlay: &str, out: &str, cache: &str, extra: &[&str]| {
        let (overlay, out) = (d.join(overlay), d.join(out));
        let args = ["run", spec.to_str().unwrap(), "--overlay", overlay.to_str().unwrap(), "--out", out.to_str().unwrap()];
        let r = safetune(&[&args[..], extra].concat(), &d.join(cache));
        let log = String::from_utf8_lossy(&r.stderr).to_string();
        assert!(r.status.success(), "{log}");
        log
    };
    let log = run("all.toml", "out", "cache", &[]);
    // The undefended cell and Lisa's (a fine-tuning objective) train; the two repairs do not.
    assert_eq!(log.matches("fine-tuning on").count(), 2, "{log}");
    assert!(log.contains("[sft-lora__high-harm] fine-tuning on") && log.contains("[sft-lora+lisa__high-harm] fine-tuning on"), "{log}");
    for cell in ["sft-lora+safelora__high-harm", "sft-lora+antidote__high-harm"] {
        assert!(log.contains(&format!("[{cell}] reusing cached trained weights")), "{log}");
    }
    let cell = |out: &str, name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(out).join("tiny-repairs/cells").join(format!("{name}.json"))).unwrap())
            .unwrap()
    };
    let safelora = cell("out", "sft-lora+safelora__high-harm");
    assert_eq!(safelora["repaired"].as_array().unwrap().len(), 3, "number mode, k = 3");
    let saved = candle_core::safetensors::load(
        d.join("out/tiny-repairs/weights/sft-lora+safelora__high-harm.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(saved.len(), 3, "the evaluated weights are the repaired ones");
    // `safetune eval --weights` on the cell's adapters and its weights file reproduces the repaired
    // cell's evaluation to the byte; the adapters alone are the unrepaired model.
    let run_dir = d.join("out/tiny-repairs");
    let ev = |cell: &str, extra: &[String], name: &str| {
        let path = |p: PathBuf| p.to_str().unwrap().to_string();
        let mut args: Vec<String> = vec!["eval".into(), "--model".into(), path(d.join("model"))];
        for a in ["aligned", cell] {
            args.extend(["--adapter".into(), path(run_dir.join("adapters").join(a))]);
        }
        args.extend(common::TINY_EVAL_FLAGS.iter().chain(&["--quiet"]).map(|a| a.to_string()));
        args.extend(["--name".into(), name.into(), "--out".into(), path(d.join("ev"))]);
        args.extend(extra.iter().cloned());
        safetune(&args.iter().map(String::as_str).collect::<Vec<_>>(), &d.join("cache-ev"))
    };
    let readme = std::fs::read_to_string(run_dir.join("adapters/README.md")).unwrap();
    assert!(
        readme.contains("add\n`--weights weights/<cell>.safetensors`"),
        "the adapters' README says how to add a cell's weights:\n{readme}"
    );
    let gens =
        |dir: &std::path::Path, label: &str| std::fs::read(dir.join("generations").join(label).join("builtin-harmful-eval.jsonl")).unwrap();
    for name in ["sft-lora+safelora__high-harm", "sft-lora+antidote__high-harm"] {
        let weights = run_dir.join("weights").join(format!("{name}.safetensors"));
        let with = ev(name, &["--weights".into(), weights.to_str().unwrap().into()], &format!("with-{name}"));
        assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
        let dir = d.join("ev").join(format!("with-{name}"));
        // The label defaults to the weights file's name: the cell's.
        let evald: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("models").join(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(cell("out", name)["eval"], evald, "{name}");
        assert_eq!(gens(&dir, name), gens(&run_dir, name), "{name}");
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["weights"]["paths"][0], weights.to_str().unwrap(), "{manifest}");
        let without = ev(name, &[], &format!("without-{name}"));
        assert!(without.status.success(), "{}", String::from_utf8_lossy(&without.stderr));
        let plain: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.join("ev").join(format!("without-{name}")).join("models").join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(plain, cell("out", "sft-lora__high-harm")["eval"], "{name}: its adapter alone is the undefended cell");
        // The tiny model answers alike with and without the repair, so the weights themselves
        // tell: `model export --weights` writes the file's tensors, without it others.
        let export = |extra: &[String], to: &str| {
            let mut args: Vec<String> = vec!["model".into(), "export".into(), "--model".into(), d.join("model").to_str().unwrap().into()];
            for a in ["aligned", name] {
                args.extend(["--adapter".into(), run_dir.join("adapters").join(a).to_str().unwrap().into()]);
            }
            args.extend(extra.iter().cloned());
            args.extend(["--out".into(), d.join(to).to_str().unwrap().into()]);
            let r = safetune(&args.iter().map(String::as_str).collect::<Vec<_>>(), &d.join("cache-ev"));
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
            candle_core::safetensors::load(d.join(to).join("model.safetensors"), &candle_core::Device::Cpu).unwrap()
        };
        let file = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
        let same = |m: &std::collections::HashMap<String, candle_core::Tensor>, n: &str| {
            m[n].flatten_all().unwrap().to_vec1::<f32>().unwrap() == file[n].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let replaced = export(&["--weights".into(), weights.to_str().unwrap().into()], &format!("x-{name}"));
        assert!(file.keys().all(|n| same(&replaced, n)), "{name}: exported with --weights");
        let unrepaired = export(&[], &format!("y-{name}"));
        assert!(file.keys().any(|n| !same(&unrepaired, n)), "{name}: the repair changed no weight");
    }
    // A weights file that is not the model's: one line naming the flag, the file and the tensor;
    // exit 2; nothing written.
    let dev = candle_core::Device::Cpu;
    let bad_shape = d.join("bad-shape.safetensors");
    let t = candle_core::Tensor::zeros((3, 5), candle_core::DType::F32, &dev).unwrap();
    candle_core::safetensors::save(&[("model.norm.weight".to_string(), t.clone())].into_iter().collect(), &bad_shape).unwrap();
    let unknown = d.join("unknown.safetensors");
    candle_core::safetensors::save(&[("model.colour".to_string(), t)].into_iter().collect(), &unknown).unwrap();
    let junk = d.join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    for (file, needle) in
        [(&bad_shape, "`model.norm.weight` has shape [3, 5]"), (&unknown, "`model.colour` is not a weight"), (&junk, "junk.safetensors")]
    {
        let bad = ev("sft-lora+safelora__high-harm", &["--weights".into(), file.to_str().unwrap().into()], "bad");
        assert!(common::refused(&bad, needle).contains("--weights"), "{needle}");
        assert!(!d.join("ev/bad").exists(), "nothing written for a refused weights file");
    }
    // Trained afresh (another cache, no undefended cell in the grid): the same repaired cells.
    let log = run("one.toml", "fresh", "cache-fresh", &[]);
    assert_eq!(log.matches("fine-tuning on").count(), 1, "{log}");
    for name in ["sft-lora+safelora__high-harm", "sft-lora+antidote__high-harm"] {
        let (a, b) = (cell("out", name), cell("fresh", name));
        assert_eq!((&a["eval"], &a["repaired"], &a["train_losses"]), (&b["eval"], &b["repaired"], &b["train_losses"]), "{name}");
        let weights = |out: &str| std::fs::read(d.join(out).join("tiny-repairs/weights").join(format!("{name}.safetensors"))).unwrap();
        assert_eq!(weights("out"), weights("fresh"), "{name}");
        let adapter =
            |out: &str| std::fs::read(d.join(out).join("tiny-repairs/adapters").join(name).join("adapter_model.safetensors")).unwrap();
        assert_eq!(adapter("out"), adapter("fresh"), "{name}");
    }
    // --jobs 2 in a fresh cache: a repair goes to the worker of the cell it repairs, so
    // still two trainings, and the same results.
    let log = run("all.toml", "outj", "cache-jobs", &["--jobs", "2"]);
    assert_eq!(log.matches("fine-tuning on").count(), 2, "{log}");
    assert!(log.contains("sft-lora__high-harm, sft-lora+safelora__high-harm, sft-lora+antidote__high-harm"), "{log}");
    assert_eq!(files(&d.join("outj/tiny-repairs")), files(&d.join("out/tiny-repairs")));
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
        .replace("regimes = [\"benign\", \"high-harm\"]", "regimes = [\"high-harm\", \"pure-bad\"]")
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
    // Nor does the pure-bad cell's training (no task row): trained once per seed, the other
    // task evaluates the same weights.
    assert_eq!(log.matches("[sft-lora__pure-bad] reusing cached trained weights").count(), 2, "{log}");
    assert_eq!(log.matches("[sft-lora__high-harm] reusing cached trained weights").count(), 0, "{log}");
    // The models both tasks of a seed evaluate (base, aligned, the pure-bad weights) answer
    // each safety and over-refusal set once: the second task reuses those answers and asks
    // only its own task. The base model is the same model in both seeds: the second seed
    // reuses its greedy answers and task answers too (greedy decoding draws nothing) and
    // asks only the samples again. A high-harm cell is another model per task: nothing reused.
    let lines = |label: &str, what: &str| log.lines().filter(|l| l.contains(&format!("[eval {label}] ")) && l.contains(what)).count();
    for (label, seeds_answering) in [("base", 1), ("aligned", 2), ("sft-lora__pure-bad", 2)] {
        // A set answered: its greedy ASR line ("<set>: ASR 12.5% of 8") or refusal rate.
        let answered = log
            .lines()
            .filter(|l| {
                l.contains(&format!("[eval {label}] ")) && (l.contains(": ASR ") && l.contains("% of ") || l.contains(": refused "))
            })
            .count();
        // Each set's greedy answers, and a probed set's prompts asked again, are a part each.
        let reused = lines(label, "reusing this model's stored answers");
        let reused_probes = lines(label, "asked again: reusing this model's stored answers");
        assert!(answered >= seeds_answering, "{label}: {log}");
        // A task's answers, reused by the task's second seed (base only).
        let reused_tasks = lines(label, "builtin-sentiment: reusing") + lines(label, "builtin-arithmetic: reusing");
        assert_eq!(reused_tasks, 2 * (2 - seeds_answering), "{label}: {log}");
        // Four sub-runs: each of the other three (base) or the other task of each seed reuses.
        assert_eq!(reused - reused_probes - reused_tasks, answered * (4 - seeds_answering) / seeds_answering, "{label}: {log}");
        assert!(reused_probes >= 1, "{label}: {log}");
        for task in ["builtin-sentiment", "builtin-arithmetic"] {
            assert_eq!(lines(label, &format!("{task}: score")), seeds_answering, "{label} {task}: {log}");
        }
    }
    assert_eq!(lines("sft-lora__high-harm", "reusing this model's stored answers"), 0, "{log}");
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
    // The harmful-share steps pair each task's cells over both seeds' stored answers.
    for task in ["builtin-sentiment", "builtin-arithmetic"] {
        let line = format!("| {task} | sft-lora | high-harm → pure-bad | 2 | ");
        let row = summary.lines().find(|l| l.starts_with(&line)).unwrap_or_else(|| panic!("{line}: {summary}"));
        assert!(!row.contains("| - |") && !row.contains("not measured"), "{row}");
    }
    // `safetune report` on the grid rebuilds the same summary.
    let rep = safetune(&["report", top.to_str().unwrap()], &d.join("cache"));
    assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));
    assert_eq!(std::fs::read_to_string(top.join("summary.md")).unwrap(), summary);
    // --jobs 2 over the grid: the two seeds' alignments train side by side in workers across the
    // sub-runs, then every sub-run's cells in one pool; what two sub-runs share still trains
    // once (one alignment per seed, the pure-bad weights once per seed); every result file is
    // the sequential run's, byte for byte.
    let outj = d.join("outj");
    let rj = safetune(&["run", spec.to_str().unwrap(), "--out", outj.to_str().unwrap(), "--jobs", "2"], &d.join("cachej"));
    let logj = String::from_utf8_lossy(&rj.stderr).to_string();
    assert!(rj.status.success(), "{logj}");
    assert!(logj.contains("[grid] 4 sub-runs: aligned models and cells in up to 2 workers across them"), "{logj}");
    assert!(logj.contains("[jobs] worker started: aligned (builtin-sentiment-s7)"), "{logj}");
    assert!(logj.contains("[jobs] worker started: aligned (builtin-sentiment-s8)"), "{logj}");
    assert_eq!(logj.matches("[align] 16 examples").count(), 2, "{logj}");
    // Four high-harm cells and four pure-bad cells in the pool: the other task's pure-bad cell
    // of each seed starts after the first has trained (and evaluated) and restores its weights.
    assert_eq!(logj.matches("[jobs] worker started: sft-lora__").count(), 8, "{logj}");
    assert_eq!(logj.matches("[sft-lora__pure-bad] reusing cached trained weights").count(), 2, "{logj}");
    // Each item after what it needs, declared and kept: a sub-run's cells after its aligned
    // model's worker (the training, or the evaluation of the model another sub-run trained),
    // the second task's pure-bad cell also after the first task's.
    let at = |line: &str| logj.find(line).unwrap_or_else(|| panic!("no `{line}`:\n{logj}"));
    let started = |what: &str| -> &str {
        let line =
            logj.lines().find(|l| l.contains(&format!("[jobs] worker started: {what}"))).unwrap_or_else(|| panic!("{what}:\n{logj}"));
        line.split_once(", after ").map_or("", |(_, a)| a)
    };
    for sub in ["builtin-sentiment-s7", "builtin-sentiment-s8", "builtin-arithmetic-s7", "builtin-arithmetic-s8"] {
        let aligned = at(&format!("[jobs] worker ended: aligned ({sub})"));
        for cell in ["sft-lora__high-harm", "sft-lora__pure-bad"] {
            let started_at = at(&format!("[jobs] worker started: {cell} ({sub})"));
            assert!(aligned < started_at, "{sub} {cell}:\n{logj}");
            assert!(started(&format!("{cell} ({sub})")).split("; ").any(|a| a == format!("aligned ({sub})")), "{sub} {cell}:\n{logj}");
        }
    }
    for seed in ["s7", "s8"] {
        let (first, second) =
            (format!("sft-lora__pure-bad (builtin-sentiment-{seed})"), format!("sft-lora__pure-bad (builtin-arithmetic-{seed})"));
        assert!(at(&format!("[jobs] worker ended: {first}")) < at(&format!("[jobs] worker started: {second}")), "{seed}:\n{logj}");
        assert!(started(&second).split("; ").any(|a| a == first), "{seed}:\n{logj}");
        assert_eq!(started(&format!("aligned (builtin-arithmetic-{seed})")), format!("aligned (builtin-sentiment-{seed})"), "{logj}");
    }
    // A sub-run whose workers have all ended gets its pass (manifest, report) at once, while the
    // others' workers go on, so a grid stopped later keeps it whole. When the pool's last item
    // starts, at most one other runs (two slots): at least two of the four sub-runs have ended
    // by then, and their passes come first. (Passes only after the whole pool: none would.)
    let last_start = logj.rfind("[jobs] worker started: ").unwrap();
    let early = logj[..last_start].lines().filter(|l| l.contains("[grid] ") && l.contains(" of 4: task ")).count();
    assert!(early >= 2, "{early} sub-run passes before the pool's last worker started:\n{logj}");
    let topj = outj.join("tiny");
    for sub in ["builtin-sentiment-s7", "builtin-sentiment-s8", "builtin-arithmetic-s7", "builtin-arithmetic-s8"] {
        assert_eq!(files(&topj.join("runs").join(sub)), files(&top.join("runs").join(sub)), "{sub}");
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(topj.join("runs").join(sub).join("manifest.json")).unwrap()).unwrap();
        assert!(m["grid_workers_s"].as_f64().is_some_and(|s| s > 0.0), "{sub}: {m}");
    }
    assert_eq!(std::fs::read_to_string(topj.join("summary.md")).unwrap(), summary);
    // Again into a new directory with that cache: every aligned model, its evaluation and every
    // cell is in the cache, so no worker starts (each sub-run restores them in its own pass).
    let outk = d.join("outk");
    let rk = safetune(&["run", spec.to_str().unwrap(), "--out", outk.to_str().unwrap(), "--jobs", "2"], &d.join("cachej"));
    let logk = String::from_utf8_lossy(&rk.stderr).to_string();
    assert!(rk.status.success(), "{logk}");
    assert!(!logk.contains("[jobs] worker started"), "{logk}");
    for sub in ["builtin-sentiment-s7", "builtin-arithmetic-s8"] {
        assert_eq!(files(&outk.join("tiny/runs").join(sub)), files(&top.join("runs").join(sub)), "{sub}");
    }
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
    // A presets directory's files that `keep` accepts, sorted.
    let files = |dir: &str, keep: fn(&PathBuf) -> bool| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).filter(keep).collect();
        v.sort();
        v
    };
    let presets = files("presets", |p| p.extension().is_some_and(|e| e == "toml") && !p.ends_with("paper.toml"));
    assert!(presets.len() >= 4, "{presets:?}");
    for p in &presets {
        let plan = run(&["run", p.to_str().unwrap()]);
        assert!(plan.contains("alignment on") && plan.contains("cells"), "{}: {plan}", p.display());
        // Each run's second line counts what its training stages train on per epoch.
        let runs = plan.matches("alignment on").count();
        assert!(
            plan.matches("per epoch: alignment ").count() == runs && plan.matches("% padding in ").count() > runs,
            "{}: {plan}",
            p.display()
        );
    }
    // SafeLoRA's repair settings (presets/safelora: a validation base, one file per setting, the
    // chosen setting on the test sets): each plans the undefended and the repaired cell.
    let safelora = files("presets/safelora", |_| true);
    assert!(safelora.len() >= 8, "{safelora:?}");
    for p in &safelora {
        let plan = run(&["run", p.to_str().unwrap()]);
        assert!(plan.contains("2 cells (sft-lora × 2 stacks × high-harm)"), "{}: {plan}", p.display());
    }
    let plan = run(&["calibrate", root.join("presets/calibrate/sweep.toml").to_str().unwrap()]);
    assert!(plan.matches("one run in").count() >= 10, "{plan}");
    // The attack searches (the files of presets/search that name a base spec; the others are
    // their overlays).
    let searches = files("presets/search", |p| std::fs::read_to_string(p).unwrap().lines().any(|l| l.starts_with("base = ")));
    assert!(searches.len() >= 3, "{searches:?}");
    for p in &searches {
        let plan = run(&["attack-search", p.to_str().unwrap()]);
        assert!(plan.contains("trial"), "{}: {plan}", p.display());
    }
    // Nothing written.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn grids_run_apart_merge_into_the_report_of_one_run() {
    let d = tmp("merge");
    let base = std::fs::read_to_string(tiny_spec(&d))
        .unwrap()
        .replace("regimes = [\"benign\", \"high-harm\"]", "regimes = [\"high-harm\"]")
        .replace("methods = [\"sft-lora\", \"sft-full\"]", "methods = [\"sft-lora\"]");
    let cache = d.join("cache");
    let run = |seeds: &str, extra: &str, out: &str| {
        let spec = d.join(format!("{out}.toml"));
        std::fs::write(&spec, base.replace("seed = 7", &format!("seed = 7\nseeds = {seeds}")) + extra).unwrap();
        let r = safetune(&["run", spec.to_str().unwrap(), "--out", d.join(out).to_str().unwrap()], &cache);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        d.join(out).join("tiny")
    };
    let (one, two, both) = (run("[7]", "", "one"), run("[8]", "", "two"), run("[7, 8]", "", "both"));
    let merged = d.join("merged");
    let report = |out: &std::path::Path, from: &[&std::path::Path]| {
        let mut args = vec!["report".to_string(), out.display().to_string()];
        for f in from {
            args.extend(["--from".to_string(), f.display().to_string()]);
        }
        safetune(&args.iter().map(String::as_str).collect::<Vec<_>>(), &cache)
    };
    let r = report(&merged, &[&one, &two]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The same report as the run over both seeds (same cache: the same results).
    let summary = std::fs::read_to_string(merged.join("summary.md")).unwrap();
    assert!(summary.contains("mean over 2 seeds"), "{summary}");
    assert_eq!(summary, std::fs::read_to_string(both.join("summary.md")).unwrap());
    assert_eq!(std::fs::read(merged.join("report/table.json")).unwrap(), std::fs::read(both.join("report/table.json")).unwrap());

    // --scores-only: the same report, without one answer's text or trained weight.
    let scores = d.join("scores");
    let mut args = vec!["report".to_string(), scores.display().to_string(), "--scores-only".into()];
    for f in [&one, &two] {
        args.extend(["--from".to_string(), f.display().to_string()]);
    }
    let r = safetune(&args.iter().map(String::as_str).collect::<Vec<_>>(), &cache);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read_to_string(scores.join("summary.md")).unwrap(), summary);
    assert_eq!(std::fs::read(scores.join("report/table.json")).unwrap(), std::fs::read(both.join("report/table.json")).unwrap());
    let sub = scores.join("runs/builtin-s7");
    assert!(one.join("runs/builtin-s7/adapters").is_dir() && !sub.join("adapters").exists());
    assert!(sub.join("scores-only.txt").is_file());
    let (mut records, mut answered) = (0, 0);
    let gen = one.join("runs/builtin-s7/generations");
    let sets: Vec<std::path::PathBuf> = std::fs::read_dir(&gen)
        .unwrap()
        .flat_map(|m| std::fs::read_dir(m.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path().strip_prefix(&gen).unwrap().to_path_buf())
        .collect();
    for set in sets {
        let full = std::fs::read_to_string(one.join("runs/builtin-s7/generations").join(&set)).unwrap();
        let kept = std::fs::read_to_string(sub.join("generations").join(&set)).unwrap();
        for (a, b) in full.lines().zip(kept.lines()) {
            let (a, b): (serde_json::Value, serde_json::Value) = (serde_json::from_str(a).unwrap(), serde_json::from_str(b).unwrap());
            assert_eq!((&a["id"], &a["verdict"], &a["category"]), (&b["id"], &b["verdict"], &b["category"]));
            assert_eq!(b["response"], "");
            records += 1;
            answered += usize::from(a["response"] != "");
        }
        assert_eq!(full.lines().count(), kept.lines().count(), "{}", set.display());
    }
    assert!(records > 0 && answered > 0, "{records} records, {answered} answered");
    let r = safetune(&["rejudge", sub.to_str().unwrap()], &cache);
    common::refused(&r, "a scores-only copy");

    // Bad input: one line, exit code 2, nothing written.
    let fails = |r: std::process::Output, want: &str| {
        let err = String::from_utf8_lossy(&r.stderr).to_string();
        assert_eq!(r.status.code(), Some(2), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{want}: {err}");
    };
    fails(report(&merged, &[&one]), "already exists");
    let lr = run("[9]", "", "lr");
    let lr_spec = lr.join("spec.json");
    let text = std::fs::read_to_string(&lr_spec).unwrap().replacen("\"learning_rate\": 0.001", "\"learning_rate\": 0.002", 1);
    std::fs::write(&lr_spec, text).unwrap();
    fails(report(&d.join("m2"), &[&one, &lr]), "at `alignment.train.learning_rate`");
    fails(report(&d.join("m3"), &[&one, &one]), "given twice");
    fails(report(&d.join("m4"), &[&one, &d]), "not a grid over seeds or tasks");
    for m in ["m2", "m3", "m4"] {
        assert!(!d.join(m).exists(), "{m} half-written");
    }
    assert!(std::fs::read_dir(&d).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".partial-")));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_run_cut_into_pieces_with_cells_merges_into_the_whole_run() {
    let d = tmp("pieces");
    let spec = tiny_spec(&d);
    let overlay = d.join("pieces.toml");
    std::fs::write(
        &overlay,
        "seeds = [7]\n[finetune]\nmethods = [\"sft-lora\"]\nregimes = [\"high-harm\"]\ndefenses = [[], [\"vaccine\"], [\"safelora\"]]\n",
    )
    .unwrap();
    // Each piece with its own stage cache, as on two machines: both evaluate the base model.
    // (`--jobs 2`: a worker, too, leaves the other cells' aligned models alone.)
    let run = |out: &str, cells: &str, cache: &str| {
        let dir = d.join(out);
        let spec = spec.to_str().unwrap();
        let args = ["run", spec, "--overlay", overlay.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--cells", cells, "--jobs", "2"];
        let r = safetune(&args, &d.join(cache));
        let log = String::from_utf8_lossy(&r.stderr).to_string();
        (r, log, d.join(out).join("tiny"))
    };
    let plain = "sft-lora__high-harm,sft-lora+safelora__high-harm";
    let (r, log, a) = run("a", plain, "cache-a");
    assert!(r.status.success(), "{log}");
    assert!(log.contains("[align] ") && !log.contains("[align+vaccine]"), "piece a trains only the plain aligned model: {log}");
    // Piece b from a directory outside the repository: its manifest still names the commit
    // the binary was built from.
    let dir_b = d.join("b");
    let r = Command::new(env!("CARGO_BIN_EXE_safetune"))
        .args(["run", spec.to_str().unwrap(), "--overlay", overlay.to_str().unwrap(), "--out", dir_b.to_str().unwrap()])
        .args(["--cells", "sft-lora+vaccine__high-harm", "--jobs", "2"])
        .current_dir(&d)
        .env("SAFETUNE_CACHE", d.join("cache-b"))
        .env_remove("SAFETUNE_DATA_DIR")
        .output()
        .unwrap();
    let (log, b) = (String::from_utf8_lossy(&r.stderr).to_string(), dir_b.join("tiny"));
    assert!(r.status.success(), "{log}");
    assert!(log.contains("[align+vaccine]") && !log.contains("[align] "), "piece b trains only Vaccine's aligned model: {log}");
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let (sa, sb) = (a.join("runs/builtin-s7"), b.join("runs/builtin-s7"));
    assert_eq!(names(&sa.join("models")), ["aligned.json", "base.json"]);
    assert_eq!(names(&sb.join("models")), ["aligned+vaccine.json", "base.json"]);
    assert_eq!(names(&sb.join("cells")), ["sft-lora+vaccine__high-harm.json"]);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(sb.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["cells_selected"], serde_json::json!(["sft-lora+vaccine__high-harm"]));
    let head = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    let built = manifest["git_revision"].as_str().unwrap();
    match head {
        Ok(h) if h.status.success() => assert!(built.starts_with(String::from_utf8_lossy(&h.stdout).trim()), "{built}"),
        _ => assert_eq!(built, "unknown"),
    }

    // The whole run, for comparison (its own cache: everything computed again).
    let whole_out = d.join("whole");
    let r = safetune(
        &["run", spec.to_str().unwrap(), "--overlay", overlay.to_str().unwrap(), "--out", whole_out.to_str().unwrap()],
        &d.join("cache-w"),
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let whole = whole_out.join("tiny/runs/builtin-s7");

    let report = |out: &std::path::Path, from: &[&std::path::Path], extra: &[&str]| {
        let mut args = vec!["report".to_string(), out.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        for f in from {
            args.extend(["--from".to_string(), f.display().to_string()]);
        }
        safetune(&args.iter().map(String::as_str).collect::<Vec<_>>(), &d.join("cache-a"))
    };
    let merged = d.join("merged");
    let r = report(&merged, &[&a, &b], &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let sub = merged.join("runs/builtin-s7");
    assert_eq!(names(&sub.join("models")), names(&whole.join("models")));
    assert_eq!(names(&sub.join("cells")), names(&whole.join("cells")));
    assert_eq!(names(&sub.join("cells")).len(), 3);
    for f in ["models/base.json", "models/aligned.json", "models/aligned+vaccine.json", "report/table.json"] {
        assert_eq!(std::fs::read(sub.join(f)).unwrap(), std::fs::read(whole.join(f)).unwrap(), "{f}");
    }
    assert_eq!(std::fs::read(merged.join("report/table.json")).unwrap(), std::fs::read(whole_out.join("tiny/report/table.json")).unwrap());
    assert!(sub.join("adapters/aligned").is_dir() && sub.join("adapters/aligned+vaccine").is_dir());
    let readme = std::fs::read_to_string(sub.join("adapters/README.md")).unwrap();
    assert!(readme.contains("`aligned/`") && readme.contains("`aligned+vaccine/`"), "{readme}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(sub.join("manifest.json")).unwrap()).unwrap();
    let pieces = manifest["pieces"].as_array().unwrap();
    assert_eq!(pieces.len(), 2);
    assert_eq!(pieces[1]["cells_selected"], serde_json::json!(["sft-lora+vaccine__high-harm"]));
    assert!(manifest["alignment"]["keys"]["aligned"].is_string() && manifest["alignment"]["keys"]["aligned+vaccine"].is_string());
    assert!(manifest.get("cells_selected").is_none());

    // A piece under --scores-only joins a whole one only under --scores-only, with the same table.
    let scores_a = d.join("scores-a");
    assert!(report(&scores_a, &[&a], &["--scores-only"]).status.success());
    let fails = |r: std::process::Output, want: &str| {
        let err = String::from_utf8_lossy(&r.stderr).to_string();
        assert_eq!(r.status.code(), Some(2), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{want}: {err}");
    };
    fails(report(&d.join("m1"), &[&scores_a, &b], &[]), "joins other pieces of its sub-run only under --scores-only");
    let r = report(&d.join("m2"), &[&scores_a, &b], &["--scores-only"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(d.join("m2/report/table.json")).unwrap(), std::fs::read(merged.join("report/table.json")).unwrap());

    // Two pieces that computed the same thing differently: refused, naming the file.
    let b2 = d.join("b2");
    common::copy_dir(&b, &b2);
    let base = b2.join("runs/builtin-s7/models/base.json");
    let text = std::fs::read_to_string(&base).unwrap().replacen("\"n\": ", "\"n\": 1", 1);
    std::fs::write(&base, text).unwrap();
    fails(report(&d.join("m3"), &[&a, &b2], &[]), "models/base.json: differs from");
    // --cells naming no cell of the run: one line, exit 2, nothing written.
    let (r, _, c) = run("c", "sft-lora__benign", "cache-a");
    fails(r, "--cells: `sft-lora__benign` is not a cell of this run (its cells: sft-lora__high-harm,");
    assert!(!c.exists());
    for m in ["m1", "m3"] {
        assert!(!d.join(m).exists(), "{m} half-written");
    }
    // The plan of a piece says so.
    let r = safetune(
        &["run", spec.to_str().unwrap(), "--overlay", overlay.to_str().unwrap(), "--cells", "sft-lora+vaccine__high-harm", "--dry-run"],
        &d.join("cache-a"),
    );
    assert!(String::from_utf8_lossy(&r.stdout).contains("1 of its 3 cells (--cells)"), "{}", String::from_utf8_lossy(&r.stdout));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_alignment_objective_trains_the_runs_own_aligned_model_with_a_defense() {
    // `alignment.objective = "booster"`: the run's aligned model is Booster's, the very model a
    // stack naming Booster aligns with (one content key, trained once); a defense without an
    // alignment objective is refused by name.
    let d = tmp("objective");
    let spec = tiny_spec(&d);
    let overlay = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let booster = overlay(
        "booster.toml",
        "name = \"tiny-objective\"\n[alignment]\nobjective = \"booster\"\n[finetune]\nmethods = [\"sft-lora\"]\nregimes = [\"high-harm\"]\ndefenses = [[], [\"booster\"]]\n",
    );
    let out = d.join("out");
    let r = safetune(
        &["run", spec.to_str().unwrap(), "--overlay", booster.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &d.join("cache"),
    );
    let log = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "{log}");
    assert_eq!(log.matches("[align+booster] 16 examples").count(), 1, "trained once:\n{log}");
    assert!(log.contains("reusing cached alignment"), "{log}");
    let cell = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("tiny-objective/cells").join(format!("{name}.json"))).unwrap()).unwrap()
    };
    assert_eq!(cell("sft-lora__high-harm")["aligned_key"], cell("sft-lora+booster__high-harm")["aligned_key"]);
    // With --jobs 2 (another cache) the two labels go to one worker: still one training, the
    // same results.
    let outj = d.join("outj");
    let r = safetune(
        &["run", spec.to_str().unwrap(), "--overlay", booster.to_str().unwrap(), "--out", outj.to_str().unwrap(), "--jobs", "2"],
        &d.join("cachej"),
    );
    let log = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "{log}");
    assert_eq!(log.matches("[align+booster] 16 examples").count(), 1, "trained once:\n{log}");
    assert_eq!(files(&outj.join("tiny-objective")), files(&out.join("tiny-objective")));
    // Plain alignment is another model.
    let plain = overlay("plain.toml", "name = \"tiny-plain\"\n[finetune]\nmethods = [\"sft-lora\"]\nregimes = [\"high-harm\"]\n");
    let r =
        safetune(&["run", spec.to_str().unwrap(), "--overlay", plain.to_str().unwrap(), "--out", out.to_str().unwrap()], &d.join("cache"));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let plain_key: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out.join("tiny-plain/cells/sft-lora__high-harm.json")).unwrap())
            .unwrap()["aligned_key"]
            .clone();
    assert_ne!(plain_key, cell("sft-lora__high-harm")["aligned_key"]);
    let lisa = overlay("lisa.toml", "name = \"tiny-lisa\"\n[alignment]\nobjective = \"lisa\"\n");
    let r =
        safetune(&["run", spec.to_str().unwrap(), "--overlay", lisa.to_str().unwrap(), "--out", out.to_str().unwrap()], &d.join("cache"));
    common::refused(&r, "alignment.objective: `lisa` has no alignment objective");
    assert!(!out.join("tiny-lisa").exists());
    std::fs::remove_dir_all(&d).unwrap();
}
