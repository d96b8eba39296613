//! MT-Bench end to end through `safetune eval`: the questions, FastChat's grading
//! prompts and reference answers downloaded from a loopback server in GitHub's raw
//! layout (placeholder texts in FastChat's formats), both turns answered by the tiny
//! model, each turn graded by an OpenAI-compatible grader on the same server, the
//! ratings read as FastChat reads them; a rerun asks the grader nothing.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use common::tmp;
use safetune_test_support::{file_response, Loopback, Response};

const COMMIT: &str = "0e6d3e4beaab66f4d3f93db72541a4abab8af28d";

/// Serves GETs of `files` and answers POST /v1/chat/completions with `grade(user prompt)`;
/// records every grading request body.
fn server(files: Vec<(String, String)>, grade: fn(&str) -> String) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let files: Vec<(String, Vec<u8>)> = files.into_iter().map(|(p, b)| (p, b.into_bytes())).collect();
    let server = Loopback::start(move |r| {
        if r.method == "POST" && r.path == "/v1/chat/completions" {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let user = v["messages"][1]["content"].as_str().unwrap_or("").to_string();
            log.lock().unwrap().push(v);
            let reply = serde_json::json!({ "choices": [{ "index": 0, "message": { "role": "assistant", "content": grade(&user) } }] });
            return Some(Response::json(200, reply.to_string()));
        }
        Some(file_response(&files, r, &[]))
    });
    (server.url, seen)
}

fn jsonl(rows: &[serde_json::Value]) -> String {
    rows.iter().map(|r| r.to_string() + "\n").collect()
}

/// FastChat's files under its raw GitHub paths, with placeholder texts: three questions
/// (writing, math, roleplay), the four single-answer prompts (each marks which it is),
/// a reference answer for the math question.
fn fastchat_files() -> Vec<(String, String)> {
    let base = format!("/lm-sys/FastChat/{COMMIT}/fastchat/llm_judge/data");
    let q = |id: u64, cat: &str| serde_json::json!({ "question_id": id, "category": cat, "turns": [format!("placeholder question {id} one"), format!("placeholder question {id} two")] });
    let p = |name: &str, template: &str| serde_json::json!({ "name": name, "type": "single", "system_prompt": format!("system of {name}"), "prompt_template": template, "description": "", "category": "general", "output_format": "[[rating]]" });
    let prompts = [
        p("pair-v2", "pairwise prompts are not used {question}"),
        p("single-v1", "T1 [Question] {question} [Answer] {answer} say \"[[rating]]\""),
        p("single-v1-multi-turn", "T2 {question_1} | {answer_1} | {question_2} | {answer_2}"),
        p("single-math-v1", "M1 {question} [Ref] {ref_answer_1} [Answer] {answer}"),
        p("single-math-v1-multi-turn", "M2 {question_1} {ref_answer_1} {question_2} {ref_answer_2} {answer_1} {answer_2}"),
    ];
    let refs = [
        serde_json::json!({ "question_id": 111, "model_id": "gpt-4", "choices": [{ "index": 0, "turns": ["reference one", "reference two"] }] }),
    ];
    vec![
        (format!("{base}/mt_bench/question.jsonl"), jsonl(&[q(81, "writing"), q(111, "math"), q(91, "roleplay")])),
        (format!("{base}/judge_prompts.jsonl"), jsonl(&prompts)),
        (format!("{base}/mt_bench/reference_answer/gpt-4.jsonl"), jsonl(&refs)),
    ]
}

/// General first turns get 8, second turns 6, the math first turn 3; the math second turn's
/// reply holds no rating.
fn grade(user: &str) -> String {
    match &user[..2] {
        "T1" => "A fine answer. Rating: [[8]]".into(),
        "T2" => "Weaker. Rating: [6]".into(),
        "M1" => "Wrong against the reference. Rating: [[3]]".into(),
        _ => "I cannot decide.".into(),
    }
}

#[test]
fn mt_bench_is_answered_in_two_turns_and_graded_with_fastchat_prompts() {
    let d = tmp("mt-bench");
    let model = d.join("model");
    safetune_model::export_hf(&safetune_model::tiny_model(21).unwrap(), &model).unwrap();
    let (url, seen) = server(fastchat_files(), grade);
    let out = d.join("out");
    let args = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "builtin",
        "--safety-limit",
        "2",
        "--task-limit",
        "2",
        "--safety-tokens",
        "3",
        "--task-tokens",
        "2",
        "--mt-bench",
        "0",
        "--grader-url",
        &format!("{url}/v1"),
        "--grader-model",
        "judge-x",
        "--mt-bench-tokens",
        "6",
        "--out",
        out.to_str().unwrap(),
        "--label",
        "tiny",
    ];
    let run = |cache: &str| {
        Command::new(env!("CARGO_BIN_EXE_safetune"))
            .args(args)
            .env("SAFETUNE_CACHE", d.join(cache))
            .env("SAFETUNE_GITHUB_ENDPOINT", &url)
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("SAFETUNE_DATA_DIR")
            .output()
            .unwrap()
    };
    let r = run("cache");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(stdout.contains("MT-Bench (1-10)"), "{stdout}");

    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval-tiny/models/tiny.json")).unwrap()).unwrap();
    let m = &eval["mt_bench"];
    // Rated turns: 8, 6 (writing), 3 (math, first turn), 8, 6 (roleplay); math's second is unrated.
    assert_eq!(m["unrated"], 1);
    assert_eq!(m["score"]["n"], 5);
    assert!((m["score"]["value"].as_f64().unwrap() - 31.0 / 5.0).abs() < 1e-9, "{m}");
    assert!((m["turn1"]["value"].as_f64().unwrap() - 19.0 / 3.0).abs() < 1e-9, "{m}");
    assert_eq!(m["turn2"]["value"].as_f64().unwrap(), 6.0);
    let by: Vec<(String, f64)> = m["by_category"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["estimate"]["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(by, [("math".to_string(), 3.0), ("roleplay".into(), 7.0), ("writing".into(), 7.0)]);
    assert!(m["grader"].as_str().unwrap().contains("judge-x"));

    // Six grading requests, FastChat's way: the prompt's system message, temperature 0,
    // 2048 tokens; the math turns with the reference; the second turn with the first
    // exchange — the model's own first answer, as stored in the generations.
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.len(), 6);
    let gens = std::fs::read_to_string(out.join("eval-tiny/generations/tiny/mt-bench.jsonl")).unwrap();
    let answers: Vec<serde_json::Value> = gens.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 6);
    let answer = |id: &str| answers.iter().find(|a| a["id"] == id).unwrap()["response"].as_str().unwrap().to_string();
    for q in &reqs {
        assert_eq!((q["model"].as_str(), q["temperature"].as_f64(), q["max_tokens"].as_u64()), (Some("judge-x"), Some(0.0), Some(2048)));
        let (system, user) = (q["messages"][0]["content"].as_str().unwrap(), q["messages"][1]["content"].as_str().unwrap());
        match &user[..2] {
            "T1" => assert_eq!(system, "system of single-v1"),
            "T2" => assert_eq!(system, "system of single-v1-multi-turn"),
            "M1" => {
                assert!(system == "system of single-math-v1" && user.contains("[Ref] reference one") && user.contains("question 111 one"))
            }
            "M2" => assert!(user.contains("reference one") && user.contains("reference two") && user.contains("question 111 two")),
            other => panic!("unexpected prompt {other}"),
        }
    }
    let t2_of_81 =
        reqs.iter().map(|q| q["messages"][1]["content"].as_str().unwrap()).find(|u| u.starts_with("T2 placeholder question 81")).unwrap();
    let (a1, a2) = (answer("mt-bench:1/turn1"), answer("mt-bench:1/turn2"));
    assert_eq!(t2_of_81, format!("T2 placeholder question 81 one | {a1} | placeholder question 81 two | {a2}"));
    let grades = std::fs::read_to_string(out.join("eval-tiny/generations/tiny/mt-bench-grades.jsonl")).unwrap();
    assert!(grades.contains("Rating: [[8]]") && grades.contains("\"unrated\""));
    let csv = std::fs::read_to_string(out.join("eval-tiny/report/table.csv")).unwrap();
    assert!(csv.contains("mt-bench-rating,mt-bench,6.2"), "{csv}");

    // Again with the same cache: the evaluation is reused, the grader not asked.
    std::fs::remove_dir_all(&out).unwrap();
    let r = run("cache");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(seen.lock().unwrap().len(), 6);
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval-tiny/models/tiny.json")).unwrap()).unwrap();
    assert_eq!(again, eval);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn mt_bench_without_a_grader_is_a_one_line_spec_error() {
    let d = tmp("mt-bench-spec");
    let spec = common::tiny_spec(&d);
    let overlay = d.join("o.toml");
    let run = |overlay_text: &str| {
        std::fs::write(&overlay, overlay_text).unwrap();
        let r = common::safetune(&["run", spec.to_str().unwrap(), "--overlay", overlay.to_str().unwrap(), "--dry-run"], &d.join("cache"));
        (r.status.code(), String::from_utf8_lossy(&r.stderr).to_string())
    };
    let (code, err) = run("[data]\nutility_evals = [\"mt-bench\"]\n");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("eval.mt_bench") && err.contains("grader_options"), "{err}");
    let (code, err) = run("[eval.mt_bench]\nquestions = 4\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not name `mt-bench`"), "{err}");
    let (code, err) = run("[data]\nutility_evals = [\"mt-bench\"]\n[eval.mt_bench]\ngrader = \"oracle\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("eval.mt_bench.grader") && err.contains("unknown grader `oracle`"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
