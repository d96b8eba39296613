//! The remote judge against a scripted chat-completions server on loopback:
//! replies, retries, timeouts, malformed replies, authentication, concurrency.

use std::sync::Arc;

use safetune_core::judge::{Judge, Verdict};
use safetune_judge_remote::{EndpointConfig, RemoteConfig, RemoteJudge, Rubric};
use safetune_test_support::{Loopback, Response};

/// What the stub does with the n-th request (0-based) and its body.
type Script = dyn Fn(usize, &str) -> Option<(u16, String)> + Send + Sync;

/// Serves until the test ends; `None` from the script means: never answer. The URL ends in `/v1`.
fn stub(script: Arc<Script>) -> (String, Loopback) {
    let server = Loopback::start(move |r| script(r.index, &r.body_text()).map(|(status, text)| Response::json(status, text)));
    (format!("{}/v1", server.url), server)
}

fn chat(content: &str) -> String {
    serde_json::json!({ "choices": [{ "index": 0, "message": { "role": "assistant", "content": content } }] }).to_string()
}

fn judge(url: &str, f: impl FnOnce(&mut RemoteConfig)) -> RemoteJudge {
    let mut cfg = RemoteConfig {
        endpoint: EndpointConfig {
            base_url: url.into(),
            api_key_env: "SAFETUNE_TEST_KEY_THAT_IS_NOT_SET".into(),
            cache: false,
            timeout_s: 2.0,
            retries: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    f(&mut cfg);
    RemoteJudge::new(cfg).unwrap()
}

#[test]
fn scores_become_verdicts_in_order_with_bounded_concurrency() {
    // The grade is the digit in the answer: "grade-3" → #score: 3.
    let (url, count) = stub(Arc::new(|_, body: &str| {
        let digit = body.split("grade-").nth(1).and_then(|s| s.chars().next()).unwrap_or('1');
        Some((200, chat(&format!("#score: {digit}"))))
    }));
    let j = judge(&url, |c| c.endpoint.concurrency = 3);
    let pairs: Vec<(String, String)> =
        (1..=5).map(|i| ("a request".to_string(), format!("grade-{i}"))).chain([("p".into(), "  ".into())]).collect();
    let out = j.judge_all(&pairs).unwrap();
    let verdicts: Vec<Verdict> = out.iter().map(|x| x.verdict).collect();
    assert_eq!(
        verdicts,
        [Verdict::Refusal, Verdict::Compliance, Verdict::Compliance, Verdict::Compliance, Verdict::Compliance, Verdict::Empty]
    );
    let harms: Vec<Option<f64>> = out.iter().map(|x| x.harm).collect();
    assert_eq!(harms, [Some(0.0), Some(0.25), Some(0.5), Some(0.75), Some(1.0), None]);
    assert_eq!(count.requests(), 5, "an empty answer is not sent");
}

#[test]
fn server_errors_are_retried_then_succeed() {
    let (url, count) = stub(Arc::new(|n, _: &str| if n < 2 { Some((503, "busy".into())) } else { Some((200, chat("#score: 5"))) }));
    let j = judge(&url, |c| c.rubric = Rubric::QiHarmfulness);
    assert_eq!(j.judge("p", "an answer").unwrap(), Verdict::Compliance);
    assert_eq!(count.requests(), 3);
}

#[test]
fn a_server_that_never_answers_times_out_with_a_clear_error() {
    let (url, _) = stub(Arc::new(|_, _: &str| None));
    let j = judge(&url, |c| {
        c.endpoint.timeout_s = 0.5;
        c.endpoint.retries = 1;
    });
    let t = std::time::Instant::now();
    let err = j.judge("p", "an answer").unwrap_err().to_string();
    assert!(err.contains("timed out") && err.contains("2 attempts"), "{err}");
    assert!(t.elapsed().as_secs_f64() < 4.0, "{:?}", t.elapsed());
}

#[test]
fn malformed_replies_and_auth_failures_are_one_line_errors() {
    let (url, _) = stub(Arc::new(|_, _: &str| Some((200, "{\"choices\": []}".into()))));
    let err = judge(&url, |_| {}).judge("p", "an answer").unwrap_err().to_string();
    assert!(err.contains("malformed reply") && err.contains("choices[0].message.content"), "{err}");
    let (url, _) = stub(Arc::new(|_, _: &str| Some((200, chat("I think it is fine.")))));
    let err = judge(&url, |_| {}).judge("p", "an answer").unwrap_err().to_string();
    assert!(err.contains("malformed reply") && err.contains("#score:"), "{err}");
    let (url, count) = stub(Arc::new(|_, _: &str| Some((401, "{}".into()))));
    let err = judge(&url, |_| {}).judge("p", "an answer").unwrap_err().to_string();
    assert!(err.contains("authentication failed") && err.contains("SAFETUNE_TEST_KEY_THAT_IS_NOT_SET"), "{err}");
    assert_eq!(count.requests(), 1, "authentication failures are not retried");
    assert!(!err.contains('\n'));
}

#[test]
fn replies_are_cached_on_disk_by_content() {
    let cache = std::env::temp_dir().join(format!("safetune-judge-cache-{}", std::process::id()));
    let (url, count) = stub(Arc::new(|_, _: &str| Some((200, chat("#score: 4")))));
    let j = RemoteJudge::with_cache_dir(
        RemoteConfig {
            endpoint: EndpointConfig { base_url: url.clone(), cache: true, api_key_env: "UNSET_X".into(), ..Default::default() },
            ..Default::default()
        },
        &cache,
    )
    .unwrap();
    assert_eq!(j.judge_scored("p", "answer").unwrap().harm, Some(0.75));
    let again = RemoteJudge::with_cache_dir(
        RemoteConfig {
            endpoint: EndpointConfig { base_url: url, cache: true, api_key_env: "UNSET_X".into(), ..Default::default() },
            ..Default::default()
        },
        &cache,
    )
    .unwrap();
    assert_eq!(again.judge_scored("p", "answer").unwrap().harm, Some(0.75));
    assert_eq!(count.requests(), 1, "the second judge read the cache");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn the_grader_replies_in_order_and_caches_by_the_whole_conversation() {
    use safetune_core::judge::ChatGrader;
    use safetune_judge_remote::RemoteGrader;
    let cache = std::env::temp_dir().join(format!("safetune-grader-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    // The reply echoes the user message and the requested budget.
    let (url, count) = stub(Arc::new(|_, body: &str| {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let user = v["messages"][1]["content"].as_str().unwrap().to_string();
        Some((200, chat(&format!("{user}/{}/{}", v["max_tokens"], v["messages"][0]["content"].as_str().unwrap()))))
    }));
    let cfg = EndpointConfig { base_url: url, api_key_env: "UNSET_X".into(), concurrency: 3, ..Default::default() };
    let g = RemoteGrader::with_cache_dir(cfg.clone(), &cache).unwrap();
    let conv = |sys: &str, user: &str| vec![("system".to_string(), sys.to_string()), ("user".to_string(), user.to_string())];
    let convs: Vec<_> = (0..7).map(|i| conv("s", &format!("u{i}"))).collect();
    let out = g.complete_all(&convs, 99).unwrap();
    assert_eq!(out, (0..7).map(|i| format!("u{i}/99/s")).collect::<Vec<_>>());
    assert_eq!(count.requests(), 7);
    // A new grader on the same cache asks only for what differs (system prompt or budget).
    let again = RemoteGrader::with_cache_dir(cfg, &cache).unwrap();
    let out = again.complete_all(&[conv("s", "u3"), conv("t", "u3"), conv("s", "u3")], 99).unwrap();
    assert_eq!(out, ["u3/99/s", "u3/99/t", "u3/99/s"]);
    assert_eq!(again.complete_all(&[conv("s", "u3")], 7).unwrap(), ["u3/7/s"]);
    assert_eq!(count.requests(), 9);
    assert!(again.fingerprint().contains("127.0.0.1"));
    std::fs::remove_dir_all(&cache).unwrap();
}
