//! Structured mutations of valid model files (a tiny model as a GGUF file and as a
//! Hugging Face directory): loading and checking them returns a model or an error,
//! never panics. Header bytes, lengths and config values are the targets, since
//! those are what sizes allocations and loops. Bounded: `CASES` per target, and the
//! process's peak resident set stays under `RSS_MB`.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::Device;
use proptest::prelude::*;
use safetune_model::{check_model, export_hf, load_model, tiny_model};

mod crafted;

const CASES: u32 = 96;

/// The tiny model's GGUF bytes, and where its tensor data starts (the header is before it).
fn gguf() -> &'static (Vec<u8>, usize) {
    static G: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    G.get_or_init(|| {
        let path = crafted::tiny_gguf("fuzz-base", |_| {});
        let bytes = std::fs::read(&path).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let data = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap().tensor_data_offset as usize;
        (bytes, data)
    })
}

/// The tiny model's Hugging Face directory files: config.json and model.safetensors bytes.
fn hf() -> &'static (serde_json::Value, Vec<u8>, Vec<u8>) {
    static H: OnceLock<(serde_json::Value, Vec<u8>, Vec<u8>)> = OnceLock::new();
    H.get_or_init(|| {
        let d = crafted::dir("fuzz-hf-base");
        export_hf(&tiny_model(5).unwrap(), &d).unwrap();
        let config = serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
        (config, std::fs::read(d.join("model.safetensors")).unwrap(), std::fs::read(d.join("tokenizer.json")).unwrap())
    })
}

/// The test binary's peak resident set: the tiny model and its files need well under 100 MB;
/// a size read from a mutated header that allocates shows here (or aborts the binary).
const RSS_MB: f64 = 1024.0;

/// Check and load: either may fail, neither may panic; a model that loads passed the check;
/// memory stays bounded.
fn check_then_load(path: &Path) {
    let checked = check_model(path);
    let loaded = load_model(path, &Device::Cpu);
    if loaded.is_ok() {
        assert!(checked.is_ok(), "loaded but the check refused: {:?}", checked.err());
    }
    if let Some(mb) = safetune_model::memory::peak_rss_mb() {
        assert!(mb < RSS_MB, "peak resident set {mb:.0} MB ≥ {RSS_MB} MB");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes written over the GGUF header (metadata, tensor infos), optionally truncated.
    #[test]
    fn mutated_gguf_headers_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                        wide in proptest::option::of((any::<usize>(), any::<u64>())),
                                        cut in proptest::option::of(any::<usize>())) {
        let (base, data) = gguf();
        let mut b = base.clone();
        for (at, v) in edits {
            b[at % data] = v;
        }
        // A whole u64 (a count, a length, a dimension, an offset) set to any value.
        if let Some((at, v)) = wide {
            let at = (at % (data - 8)) & !7;
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        let path = std::env::temp_dir().join(format!("safetune-fuzz-{}.gguf", std::process::id()));
        std::fs::write(&path, &b).unwrap();
        check_then_load(&path);
    }

    /// A config.json key set to an arbitrary number (or removed), and the safetensors header mutated.
    #[test]
    fn mutated_hf_directories_never_panic(key in 0usize..9, value in prop_oneof![
                                              Just(serde_json::Value::Null),
                                              any::<i64>().prop_map(serde_json::Value::from),
                                              any::<u64>().prop_map(serde_json::Value::from),
                                              any::<f64>().prop_map(|f| serde_json::json!(f)),
                                          ],
                                          edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6)) {
        let keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps"];
        let (config, st, tok) = hf();
        let mut c = config.clone();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(keys[key]);
        } else {
            c[keys[key]] = value;
        }
        let mut st = st.clone();
        let header = 8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
        for (at, v) in edits {
            st[at % header] = v;
        }
        let d = std::env::temp_dir().join(format!("safetune-fuzz-hf-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), c.to_string()).unwrap();
        std::fs::write(d.join("model.safetensors"), &st).unwrap();
        std::fs::write(d.join("tokenizer.json"), tok).unwrap();
        check_then_load(&d);
    }
}
