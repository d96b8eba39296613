//! `safetune attack-search` on the tiny model and the built-in suite: successive halving
//! over drawn attacks (4 trials at 1 epoch, the best 2 at 2 epochs), the best attack and
//! the spec's recipe on the test sets, the history, table and plot; a rerun reuses every
//! trial from the stage cache and writes the same files; bad searches are one-line errors.

mod common;

use common::{safetune, tiny_spec, tmp};

const SEARCH: &str = r#"
base = "spec.toml"
defenses = [[], ["lisa"]]
trials = 4
eta = 2
rungs = [1, 2]
seed = 3
utility_budget = 1.0
objective_set = "builtin-harmful-eval"
[space]
learning_rate = [1e-4, 3e-3]
methods = ["sft-lora"]
lora_r = [2, 4]
targets = [["q_proj", "v_proj"], ["all-linear"]]
poison_ratio = [0.0, 0.5, 1.0]
n = [8]
[defense_options.lisa]
rho = 0.5
"#;

/// The test-set run of a model's best attack: `best-t<id>-e<epochs>` (from its search.json).
fn best_run(top: &std::path::Path) -> String {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(top.join("search.json")).unwrap()).unwrap();
    format!("best-t{:02}-e{}", json["best"]["id"].as_u64().unwrap(), json["best"]["epochs"].as_u64().unwrap())
}

#[test]
fn successive_halving_finds_an_attack_and_a_rerun_reuses_every_trial() {
    let d = tmp("attack-search");
    tiny_spec(&d);
    let search = d.join("s.toml");
    std::fs::write(&search, SEARCH).unwrap();
    let out = d.join("out");
    let args = ["attack-search", search.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"];

    let dry = safetune(&[&args[..], &["--dry-run"]].concat(), &d.join("cache"));
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(plan.matches("  t0").count(), 4, "{plan}");
    assert!(!out.exists(), "a dry run writes nothing");

    let r = safetune(&args, &d.join("cache"));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The combined table names the best attack per defended model; each model's search is in its own directory.
    let summary = std::fs::read_to_string(out.join("s/search.md")).unwrap();
    assert!(summary.contains("| undefended | t") && summary.contains("| lisa | t"), "{summary}");
    let both: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("s/search.json")).unwrap()).unwrap();
    assert!(both["undefended"]["best"].is_object() && both["lisa"]["best"].is_object());
    assert!(
        out.join("s/lisa/search.csv").is_file() && out.join("s/lisa/test").join(best_run(&out.join("s/lisa"))).join("summary.md").is_file()
    );
    let top = out.join("s/undefended");
    let csv = std::fs::read_to_string(top.join("search.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(lines.len(), 6, "4 trials at rung 0, 2 at rung 1:\n{csv}");
    assert_eq!(lines.iter().filter(|l| l.contains(",0,1,")).count(), 4);
    assert_eq!(lines.iter().filter(|l| l.contains(",1,2,")).count(), 2);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(top.join("search.json")).unwrap()).unwrap();
    let best = &json["best"];
    // The best is the trial with the highest validation ASR at any rung (every trial is
    // within the budget here).
    let all: Vec<f64> = json["trials"].as_array().unwrap().iter().map(|t| t["asr"]["value"].as_f64().unwrap()).collect();
    assert_eq!(best["asr"]["value"].as_f64().unwrap(), all.iter().cloned().fold(f64::MIN, f64::max));
    // The rung-1 trials are the best two of rung 0.
    let mut rung0: Vec<(f64, u64)> = json["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["rung"] == 0)
        .map(|t| (t["asr"]["value"].as_f64().unwrap(), t["id"].as_u64().unwrap()))
        .collect();
    rung0.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    let promoted: Vec<u64> =
        json["trials"].as_array().unwrap().iter().filter(|t| t["rung"] == 1).map(|t| t["id"].as_u64().unwrap()).collect();
    let mut want: Vec<u64> = rung0.iter().take(2).map(|x| x.1).collect();
    let mut got = promoted.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let best_summary = format!("test/{}/summary.md", best_run(&top));
    for f in ["search.md", "search_asr_utility.svg", "search_asr_utility.png", &best_summary, "test/recipe/summary.md"] {
        assert!(top.join(f).is_file(), "{f}");
    }
    let md = std::fs::read_to_string(top.join("search.md")).unwrap();
    assert!(md.contains("**Best attack**") && md.contains("the spec's recipe") && md.contains("best found"), "{md}");

    // Again: nothing is trained (the stage cache holds every trial), the same files come out.
    let trained = std::fs::read_dir(d.join("cache/trained")).unwrap().count();
    let before = std::fs::read(top.join("search.json")).unwrap();
    let r = safetune(&args, &d.join("cache"));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read_dir(d.join("cache/trained")).unwrap().count(), trained);
    assert_eq!(std::fs::read(top.join("search.json")).unwrap(), before);
    assert_eq!(std::fs::read_to_string(top.join("search.csv")).unwrap(), csv);

    // With --jobs 2 on a fresh cache the trials of a rung run in parallel processes: the same search.
    let par = d.join("out-par");
    let r = safetune(
        &["attack-search", search.to_str().unwrap(), "--out", par.to_str().unwrap(), "--quiet", "--jobs", "2"],
        &d.join("cache-par"),
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read_to_string(par.join("s/undefended/search.csv")).unwrap(), csv);
    let lisa = |o: &std::path::Path| std::fs::read_to_string(o.join("s/lisa/search.csv")).unwrap();
    assert_eq!(lisa(&par), lisa(&out));
    assert_eq!(
        std::fs::read_dir(par.join("s/undefended/specs")).unwrap().count(),
        4 + 2 + 2,
        "every run's resolved spec: 4 + 2 trials, best and recipe"
    );
    // The search's defense options reach its stack's runs only.
    let options = |stack: &str, run: &str| -> serde_json::Value {
        let f = par.join(format!("s/{stack}/specs/{run}.json"));
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&f).unwrap()).unwrap()["defense_options"].clone()
    };
    assert_eq!(options("lisa", "recipe")["lisa"]["rho"], 0.5);
    assert_eq!(options("lisa", &best_run(&par.join("s/lisa")))["lisa"]["rho"], 0.5);
    assert!(options("undefended", "recipe").get("lisa").is_none());

    // A bad search is one line naming the field, exit 2.
    for (bad, needle) in [
        (SEARCH.replace("rungs = [1, 2]", "rungs = [2, 1]"), "rungs"),
        (SEARCH.replace("poison_ratio = [0.0, 0.5, 1.0]", "poison_ratio = [1.5]"), "space.poison_ratio"),
        (SEARCH.replace("methods = [\"sft-lora\"]", "methods = [\"sft-magic\"]"), "space.methods"),
        (SEARCH.replace("trials = 4", "trials = 4\nbogus = 1"), "bogus"),
        (SEARCH.replace("[defense_options.lisa]", "[defense_options.vaccine]"), "defense_options.vaccine"),
        (SEARCH.replace("rho = 0.5", "rhoo = 0.5"), "defense_options.lisa.rhoo"),
    ] {
        std::fs::write(&search, bad).unwrap();
        let r = safetune(&args, &d.join("cache"));
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "`{needle}` not in {err}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
