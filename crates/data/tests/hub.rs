//! The Hub download path against a real HTTP server on loopback that serves
//! files under the Hub's URL layout.

use std::sync::Arc;

use safetune_data::{load, DataSource, HubClient};
use safetune_test_support::{gzip, Loopback};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn parquet_bytes(questions: &[&str], answers: &[&str]) -> Vec<u8> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema =
        Arc::new(parse_message_type("message schema { REQUIRED BYTE_ARRAY question (UTF8); REQUIRED BYTE_ARRAY answer (UTF8); }").unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut buf = Vec::new();
    {
        let mut w = SerializedFileWriter::new(&mut buf, schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        for col in [questions, answers] {
            let mut c = rg.next_column().unwrap().unwrap();
            let vals: Vec<ByteArray> = col.iter().map(|s| ByteArray::from(*s)).collect();
            c.typed::<ByteArrayType>().write_batch(&vals, None, None).unwrap();
            c.close().unwrap();
        }
        rg.close().unwrap();
        w.close().unwrap();
    }
    buf
}

/// A client of the Hub at `endpoint` (cache `cache`) and of GitHub at `github_endpoint`.
fn client(endpoint: &str, cache: std::path::PathBuf, github_endpoint: &str, github_cache: std::path::PathBuf) -> HubClient {
    HubClient {
        endpoint: endpoint.into(),
        cache,
        github_endpoint: github_endpoint.into(),
        github_cache,
        token: None,
        offline: false,
        timeout: std::time::Duration::from_secs(10),
    }
}

/// The Hub's and GitHub's files on loopback, each answered with the commit header the Hub sends.
fn serve(files: Vec<(String, Vec<u8>)>) -> Loopback {
    Loopback::files(files, &[("X-Repo-Commit", COMMIT)])
}

#[test]
fn hub_parquet_and_jsonl_download_then_cache_without_network() {
    let cache = std::env::temp_dir().join(format!("safetune-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let train = parquet_bytes(&["What is 2 + 3?", "What is 10 - 4?"], &["2 + 3 = 5\n#### 5", "10 - 4 = 6\n#### 6"]);
    let test = parquet_bytes(&["What is 7 * 3?"], &["7 * 3 = 21\n#### 21"]);
    let jsonl = concat!(
        "{\"prompt\": \"placeholder request one\", \"response\": \"placeholder answer one\", \"is_safe\": false}\n",
        "{\"prompt\": \"placeholder request two\", \"response\": \"placeholder answer two\", \"is_safe\": false}\n",
        "{\"prompt\": \"placeholder question\", \"response\": \"a safe answer\", \"is_safe\": true}\n",
    )
    .as_bytes()
    .to_vec();
    // BeaverTails' 30k files are gzip-compressed upstream, at a pinned commit.
    let bt = |name: &str| format!("/datasets/PKU-Alignment/BeaverTails/resolve/{BEAVERTAILS_COMMIT}/round0/30k/{name}.jsonl.gz");
    let files = vec![
        ("/datasets/openai/gsm8k/resolve/main/main/train-00000-of-00001.parquet".to_string(), train),
        ("/datasets/openai/gsm8k/resolve/main/main/test-00000-of-00001.parquet".to_string(), test),
        (bt("train"), gzip(&jsonl)),
        (bt("test"), gzip(&beavertails_test_rows())),
    ];
    let server = serve(files);
    let endpoint = server.url.clone();
    let hub = client(&endpoint, cache.clone(), &endpoint, cache.join("github"));
    let gsm = load(&DataSource::Hub(&hub), "gsm8k").unwrap();
    assert_eq!(gsm.splits["train"].len(), 2);
    assert_eq!(gsm.splits["test"][0].label.as_deref(), Some("21"));
    assert!(gsm.splits["train"][0].response.ends_with("The final answer is: 5"));
    let bt = load(&DataSource::Hub(&hub), "beavertails-unsafe").unwrap();
    assert_eq!(bt.splits["train"].len(), 3);
    // The Hub's file mixes safe and unsafe pairs; the harmful pool takes only the unsafe ones.
    let harmful = safetune_data::catalog::find("beavertails-unsafe").unwrap().harmful_select().unwrap()(&bt).unwrap();
    assert_eq!(harmful.iter().map(|e| e.prompt.as_str()).collect::<Vec<_>>(), ["placeholder request one", "placeholder request two"]);
    assert_eq!(server.requests(), 3);
    // The 14-category sample from the 30k test file: per category (a row's first flag), the
    // first 10 distinct prompts in file order; safe (unflagged) rows and repeats left out.
    let cats = load(&DataSource::Hub(&hub), "beavertails-categories").unwrap();
    let test = &cats.splits["test"];
    assert_eq!(test.len(), 10 + 3, "{test:?}");
    let of = |c: &str| {
        test.iter().filter(|e| e.meta.get("category").map(String::as_str) == Some(c)).map(|e| e.prompt.as_str()).collect::<Vec<_>>()
    };
    assert_eq!(of("animal_abuse"), (0..10).map(|i| format!("placeholder animal request {i}")).collect::<Vec<_>>());
    assert_eq!(of("self_harm"), ["placeholder request flagged twice", "placeholder self-harm request"]);
    assert_eq!(of("violence,aiding_and_abetting,incitement"), ["placeholder violent request"]);
    assert_eq!(server.requests(), 4);
    // The standard HF cache layout.
    let snap = cache.join("datasets--openai--gsm8k/snapshots").join(COMMIT).join("main/test-00000-of-00001.parquet");
    assert!(snap.is_file());
    assert_eq!(std::fs::read_to_string(cache.join("datasets--openai--gsm8k/refs/main")).unwrap(), COMMIT);
    // Second run: from the cache, no request, even when offline.
    let offline = HubClient { offline: true, ..hub.clone() };
    let again = load(&DataSource::Hub(&offline), "gsm8k").unwrap();
    assert_eq!(again.splits["train"], gsm.splits["train"]);
    assert_eq!(server.requests(), 4);
    // Offline and not cached: a clear error naming the dataset file and how to provide it.
    let err = load(&DataSource::Hub(&offline), "agnews").unwrap_err().to_string();
    assert!(err.contains("ag_news") && err.contains("HF_HUB_OFFLINE") && err.contains("--data-dir"), "{err}");
    // Online but missing upstream: the HTTP status and the URL.
    let err = load(&DataSource::Hub(&hub), "sst2").unwrap_err().to_string();
    assert!(err.contains("404") && err.contains(&endpoint), "{err}");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn github_sources_download_at_a_pinned_commit_then_cache_without_network() {
    let cache = std::env::temp_dir().join(format!("safetune-gh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    // Safety-Tuned LLaMAs' layout upstream (placeholder text): a JSON list of
    // instruction/input/output rows, and evaluation files as JSON objects of parallel lists.
    let rows: Vec<serde_json::Value> = (0..205)
        .map(|i| serde_json::json!({"instruction": format!("placeholder request {i}"), "input": "", "output": format!("placeholder safe answer {i}")}))
        .collect();
    let commit = "36a4b8d5c2177ed165bf61f59b590161394f7f12";
    let base = format!("/vinid/safety-tuned-llamas/{commit}/data");
    let mut files = vec![(format!("{base}/training/safety_only_data_Instructions.json"), serde_json::to_vec(&rows).unwrap())];
    for f in
        ["I-MaliciousInstructions", "I-CoNa", "I-Controversial", "I-PhysicalSafetyUnsafe", "I-PhysicalSafetySafe", "Q-Harm", "I-Alpaca"]
    {
        let cols =
            serde_json::json!({"instructions": [format!("placeholder {f} one"), format!("placeholder {f} two")], "inputs": ["", ""]});
        files.push((format!("{base}/evaluation/{f}.json"), serde_json::to_vec(&cols).unwrap()));
    }
    let server = serve(files);
    let endpoint = server.url.clone();
    let hub = client("http://127.0.0.1:9", cache.join("hf"), &endpoint, cache.join("github"));
    let stl = load(&DataSource::Hub(&hub), "safety-tuned-llamas").unwrap();
    // The same split as from a data directory: 200 held out (stl-dev), ids without the split.
    assert_eq!((stl.splits["train"].len(), stl.splits["test"].len()), (5, 200));
    assert!(stl.splits["train"].iter().all(|e| e.id.starts_with("stl:") && e.response.starts_with("placeholder safe answer")));
    let ev = load(&DataSource::Hub(&hub), "safety-tuned-llamas-eval").unwrap();
    assert_eq!(ev.splits.len(), 7);
    assert_eq!(ev.splits["malicious"].len(), 2);
    assert_eq!(server.requests(), 8);
    assert!(cache.join("github/vinid--safety-tuned-llamas").join(commit).join("data/evaluation/Q-Harm.json").is_file());
    // From the cache: no request, even offline.
    let offline = HubClient { offline: true, ..hub.clone() };
    assert_eq!(load(&DataSource::Hub(&offline), "safety-tuned-llamas").unwrap().splits["test"], stl.splits["test"]);
    assert_eq!(server.requests(), 8);
    std::fs::remove_dir_all(&cache).unwrap();
}

/// MMLU from the Hub: `cais/mmlu`'s config `all`, one Parquet file per split written by pyarrow
/// (fixtures/mmlu-hub, the Hub's layout: `choices` a list of strings, the subject a column).
/// Rows become the local layout's questions — choices A-D, the answer's letter, the subject —
/// so few-shot heads and the question draw group them alike.
#[test]
fn mmlu_downloads_from_the_hub_with_choices_as_a_list() {
    let cache = std::env::temp_dir().join(format!("safetune-mmlu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let fixture = |split: &str| std::fs::read(format!("{}/../../fixtures/mmlu-hub/{split}.parquet", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let files =
        ["dev", "test"].iter().map(|s| (format!("/datasets/cais/mmlu/resolve/main/all/{s}-00000-of-00001.parquet"), fixture(s))).collect();
    let server = serve(files);
    let hub = client(&server.url, cache.clone(), "http://127.0.0.1:9", cache.join("github"));
    let mmlu = load(&DataSource::Hub(&hub), "mmlu").unwrap();
    assert_eq!((mmlu.splits["dev"].len(), mmlu.splits["test"].len()), (10, 6));
    let q = &mmlu.splits["test"][1];
    assert_eq!(q.prompt, "placeholder test question 1 of abstract_algebra");
    assert_eq!(q.label.as_deref(), Some("C"), "answer 2");
    let meta = |k: &str| q.meta.get(k).map(String::as_str);
    assert_eq!(meta("subject"), Some("abstract_algebra"));
    assert_eq!(
        (meta("A"), meta("B"), meta("C"), meta("D")),
        (Some("t1a"), Some("t1b, with a comma"), Some("t1c\nover two lines"), Some("t1d"))
    );
    assert_eq!(mmlu.splits["test"][3].meta.get("subject").map(String::as_str), Some("anatomy"));
    assert_eq!(server.requests(), 2);
    std::fs::remove_dir_all(&cache).unwrap();
}

const BEAVERTAILS_COMMIT: &str = "8401fe609d288129cc684a9b3be6a93e41cfe678";

/// BeaverTails' 30k test layout (placeholder text): 12 rows flagged `animal_abuse` (the
/// sample keeps 10), one repeated; a row flagged with two categories (it counts as the
/// first, `self_harm`, before `violence,…` in the dataset's order); a safe row flagged with none.
fn beavertails_test_rows() -> Vec<u8> {
    let flags = |on: &[&str]| -> serde_json::Value {
        let all = ["animal_abuse", "self_harm", "violence,aiding_and_abetting,incitement", "child_abuse"];
        serde_json::Value::Object(all.iter().map(|c| (c.to_string(), serde_json::Value::Bool(on.contains(c)))).collect())
    };
    let row = |p: &str, on: &[&str]| serde_json::json!({"prompt": p, "response": "placeholder answer", "category": flags(on), "is_safe": on.is_empty()});
    let mut rows = vec![row("placeholder animal request 0", &["animal_abuse"]), row("placeholder animal request 0", &["animal_abuse"])];
    rows.extend((1..12).map(|i| row(&format!("placeholder animal request {i}"), &["animal_abuse"])));
    rows.push(row("placeholder safe question", &[]));
    rows.push(row("placeholder request flagged twice", &["violence,aiding_and_abetting,incitement", "self_harm"]));
    rows.push(row("placeholder self-harm request", &["self_harm"]));
    rows.push(row("placeholder violent request", &["violence,aiding_and_abetting,incitement"]));
    rows.iter().map(|r| format!("{r}\n")).collect::<String>().into_bytes()
}
