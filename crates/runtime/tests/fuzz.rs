//! Structured mutations of the untrusted inputs besides model weights files
//! (those: crates/model/tests/fuzz.rs): PEFT adapter directories, a model's
//! tokenizer.json, and TOML specs. Every case ends in a value or an error, never
//! a panic, and the process's peak resident set stays under `RSS_MB` (an
//! allocation sized from a few bytes shows there, or aborts the test binary).
//! Bounded: 64 cases per target per `cargo test` (`SAFETUNE_FUZZ_CASES`).

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use proptest::prelude::*;
use safetune_core::config::LoraConfig;
use safetune_runtime::resources::peak_rss_mb;
use safetune_runtime::spec::RunSpec;

mod common;

/// Cases per target; `SAFETUNE_FUZZ_CASES=N` for a longer hunt.
fn cases() -> u32 {
    std::env::var("SAFETUNE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}
/// The test binary's peak resident set: a tiny model, its adapters and the
/// parsers' working memory need well under 100 MB.
const RSS_MB: f64 = 1024.0;

fn within_memory(what: &str) {
    if let Some(mb) = peak_rss_mb() {
        assert!(mb < RSS_MB, "{what}: peak resident set {mb:.0} MB ≥ {RSS_MB} MB");
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("safetune-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A PEFT adapter of the tiny model (LoRA r4 on every linear layer): config JSON and weights bytes.
fn peft() -> &'static (serde_json::Value, Vec<u8>) {
    static P: OnceLock<(serde_json::Value, Vec<u8>)> = OnceLock::new();
    P.get_or_init(|| {
        let mut m = safetune_model::tiny_model(3).unwrap();
        let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: vec!["all-linear".into()] };
        safetune_lora::attach_lora(&mut m, &cfg, 1).unwrap();
        let d = scratch("peft-base");
        safetune_lora::save_peft(&m, &cfg, &d).unwrap();
        let config = serde_json::from_str(&std::fs::read_to_string(d.join("adapter_config.json")).unwrap()).unwrap();
        (config, std::fs::read(d.join("adapter_model.safetensors")).unwrap())
    })
}

/// The tiny model as a Hugging Face directory: (config.json, model.safetensors, tokenizer.json) bytes.
fn hf() -> &'static (Vec<u8>, Vec<u8>, String) {
    static H: OnceLock<(Vec<u8>, Vec<u8>, String)> = OnceLock::new();
    H.get_or_init(|| {
        let d = scratch("hf-base");
        safetune_model::export_hf(&safetune_model::tiny_model(5).unwrap(), &d).unwrap();
        let read = |f: &str| std::fs::read(d.join(f)).unwrap();
        (read("config.json"), read("model.safetensors"), std::fs::read_to_string(d.join("tokenizer.json")).unwrap())
    })
}

/// Any JSON value a hostile file could hold where a number, string or list is expected.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[a-z_.*|()]{0,12}".prop_map(serde_json::Value::from),
        proptest::collection::vec("[a-z_]{0,8}", 0..4).prop_map(|v| serde_json::json!(v)),
        proptest::collection::btree_map("[a-z_.0-9]{1,24}", any::<i32>(), 0..3).prop_map(|m| serde_json::json!(m)),
    ]
}

/// Edits `bytes[..limit]` at the given positions, then optionally cuts the whole.
fn mutate(bytes: &mut Vec<u8>, limit: usize, edits: &[(usize, u8)], cut: Option<usize>) {
    for (at, v) in edits {
        bytes[at % limit.max(1)] = *v;
    }
    if let Some(c) = cut {
        bytes.truncate(c % (bytes.len() + 1));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// adapter_config.json keys set to any JSON value (or removed), the safetensors header
    /// mutated or the file cut: checking and loading onto the model error, never panic,
    /// and an adapter that loads passed the check.
    #[test]
    fn mutated_peft_adapters_never_panic(key in 0usize..10, value in json_value(), drop_key in any::<bool>(),
                                         edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                                         cut in proptest::option::of(any::<usize>())) {
        let keys = ["r", "lora_alpha", "target_modules", "lora_dropout", "use_rslora", "rank_pattern",
                    "alpha_pattern", "fan_in_fan_out", "peft_type", "use_dora"];
        let (config, weights) = peft();
        let mut c = config.clone();
        if drop_key {
            c.as_object_mut().unwrap().remove(keys[key]);
        } else {
            c[keys[key]] = value;
        }
        let mut w = weights.clone();
        let header = 8 + u64::from_le_bytes(w[..8].try_into().unwrap()) as usize;
        mutate(&mut w, header, &edits, cut);
        let d = scratch("peft");
        std::fs::write(d.join("adapter_config.json"), c.to_string()).unwrap();
        std::fs::write(d.join("adapter_model.safetensors"), &w).unwrap();
        let checked = safetune_lora::check_peft(&d);
        let mut m = safetune_model::tiny_model(3).unwrap();
        let loaded = safetune_lora::load_peft(&mut m, &d, &Device::Cpu);
        if loaded.is_ok() {
            prop_assert!(checked.is_ok(), "loaded but the check refused: {:?}", checked.err());
        }
        within_memory("peft adapter");
    }

    /// tokenizer.json with a value replaced anywhere in its JSON tree (vocabulary ids, merges,
    /// added tokens, pre-tokenizer settings), or its text edited or cut.
    #[test]
    fn mutated_tokenizers_never_panic(pick in any::<usize>(), value in json_value(),
                                      edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                                      cut in proptest::option::of(any::<usize>())) {
        let (config, weights, tok) = hf();
        let mut t: serde_json::Value = serde_json::from_str(tok).unwrap();
        let mut slots = Vec::new();
        paths(&t, String::new(), &mut slots);
        let slot = &slots[pick % slots.len()];
        if let Some(v) = t.pointer_mut(slot) {
            *v = value;
        }
        let mut text = t.to_string().into_bytes();
        let len = text.len();
        mutate(&mut text, len, &edits, cut);
        let d = scratch("tok");
        std::fs::write(d.join("config.json"), config).unwrap();
        std::fs::write(d.join("model.safetensors"), weights).unwrap();
        std::fs::write(d.join("tokenizer.json"), &text).unwrap();
        let checked = safetune_model::check_model(&d);
        let loaded = safetune_model::load_model(&d, &Device::Cpu);
        if let Ok(m) = &loaded {
            prop_assert!(checked.is_ok(), "loaded but the check refused: {:?}", checked.err());
            // A loaded tokenizer encodes and decodes without panicking.
            let ids = safetune_core::CausalLm::tokenizer(m).encode("fuzz <|im_end|> 42").unwrap_or_default();
            let _ = safetune_core::CausalLm::tokenizer(m).decode(&ids);
        }
        within_memory("tokenizer.json");
    }

    /// A valid spec's text with bytes edited, a line dropped or repeated, or a number
    /// replaced by any other: loading (parse, `extends`, validation) errors, never panics.
    #[test]
    fn mutated_specs_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
                                 line in any::<usize>(), how in 0u8..3, number in any::<i64>(), real in any::<f64>()) {
        let base = spec_text();
        let mut lines: Vec<String> = base.lines().map(String::from).collect();
        let i = line % lines.len();
        match how {
            0 => { lines.remove(i); }
            1 => { let l = lines[i].clone(); lines.insert(i, l); }
            _ => {
                // The first number on the line becomes an arbitrary integer or float.
                let l = &lines[i];
                if let Some(start) = l.find(|c: char| c.is_ascii_digit()) {
                    let end = l[start..].find(|c: char| !c.is_ascii_digit() && c != '.' && c != 'e' && c != '-').map_or(l.len(), |e| start + e);
                    let v = if number % 2 == 0 { number.to_string() } else { format!("{real:?}") };
                    lines[i] = format!("{}{v}{}", &l[..start], &l[end..]);
                }
            }
        }
        let mut text = lines.join("\n").into_bytes();
        let len = text.len();
        mutate(&mut text, len, &edits, None);
        let d = scratch("spec");
        let path = d.join("spec.toml");
        std::fs::write(&path, &text).unwrap();
        if let Ok(spec) = RunSpec::load(&path) {
            let _ = spec.expand();
        }
        within_memory("spec");
    }
}

/// JSON pointers to every scalar and array element of `v` (at most a few thousand).
fn paths(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    if out.len() > 5000 {
        return;
    }
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                paths(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                paths(x, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// The end-to-end tests' tiny spec with every table a user fills in added
/// (seeds, a defense stack, method options, a method's own training settings).
fn spec_text() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| {
        let base = std::fs::read_to_string(common::tiny_spec(&scratch("spec-model"))).unwrap();
        let text = base.replace("seed = 7\n", "seed = 7\nseeds = [7, 8]\n").replace(
            "methods = [\"sft-lora\", \"sft-full\"]\n",
            "methods = [\"sft-lora\", \"sft-full\"]\ndefenses = [[], [\"lisa\"]]\n",
        );
        assert!(text.contains("seeds =") && text.contains("defenses ="), "the tiny spec changed: {text}");
        format!("{text}\n[finetune.method_options.sft-lora]\nr = 4\nalpha = 8.0\n[finetune.method_train.sft-full]\nlearning_rate = 2e-5\n[defense_options.lisa]\nrho = 1.0\n")
    })
}

/// The mutations start from inputs that are valid: otherwise every case would be an error
/// for the same reason and the targets would test nothing.
#[test]
fn the_unmutated_inputs_are_accepted() {
    let spec = scratch("spec-valid").join("spec.toml");
    std::fs::write(&spec, spec_text()).unwrap();
    let s = RunSpec::load(&spec).unwrap();
    assert_eq!(s.expand().len(), 2);
    let (config, weights) = peft();
    let d = scratch("peft-valid");
    std::fs::write(d.join("adapter_config.json"), config.to_string()).unwrap();
    std::fs::write(d.join("adapter_model.safetensors"), weights).unwrap();
    assert_eq!(safetune_lora::check_peft(&d).unwrap().r, 4);
    safetune_lora::load_peft(&mut safetune_model::tiny_model(3).unwrap(), &d, &Device::Cpu).unwrap();
    let (config, weights, tok) = hf();
    let d = scratch("hf-valid");
    std::fs::write(d.join("config.json"), config).unwrap();
    std::fs::write(d.join("model.safetensors"), weights).unwrap();
    std::fs::write(d.join("tokenizer.json"), tok).unwrap();
    safetune_model::load_model(&d, &Device::Cpu).unwrap();
    within_memory("valid inputs");
}
