//! `safetune serve` on loopback with a tiny model: chat completions, model
//! list, bad requests, API keys, and the `remote` judge talking to it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use safetune_core::judge::Judge;

struct Served {
    child: Child,
    url: String,
    /// The server's log lines after the first, as they come.
    log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(model: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_safetune"));
    cmd.args(["serve", "--model", model.to_str().unwrap(), "--port", "0", "--name", "tiny"]).args(extra).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // The log is read on its own thread, so the server never blocks on a full pipe.
    let (tx, log) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = log.recv_timeout(std::time::Duration::from_secs(60)).expect("the server printed nothing");
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no URL in {line:?}")).to_string();
    Served { child, url, log }
}

fn post(url: &str, body: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut req = agent.post(&format!("{url}/chat/completions")).header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let resp = req.send(body.as_bytes()).unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.into_body().read_to_string().unwrap()).unwrap())
}

/// The tiny model with a 4096-position context, room for a grading prompt
/// in its byte-level tokens.
fn tiny_model_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("safetune-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    safetune_model::export_hf(&safetune_model::tiny_model(3).unwrap(), &d).unwrap();
    let cfg = d.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    c["max_position_embeddings"] = 4096.into();
    std::fs::write(&cfg, c.to_string()).unwrap();
    d
}

#[test]
fn chat_completions_models_and_bad_requests() {
    let dir = tiny_model_dir("chat");
    let s = serve(&dir, &[], &[]);
    let (status, v) =
        post(&s.url, r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}],"max_tokens":5}"#, None);
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert_eq!(v["model"], "tiny");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 5);
    // Greedy decoding: the same request gives the same answer.
    let (_, again) =
        post(&s.url, r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}],"max_tokens":5}"#, None);
    assert_eq!(again["choices"][0]["message"]["content"], v["choices"][0]["message"]["content"]);
    let models: serde_json::Value =
        serde_json::from_str(&ureq::get(&format!("{}/models", s.url)).call().unwrap().into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    // Longer than the context: a clear 400, not a crash.
    let long = format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "word ".repeat(5000));
    let (status, v) = post(&s.url, &long, None);
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("exceeds the model's 4096 positions"), "{v}");
    for (body, needle) in [
        ("not json", "not JSON"),
        (r#"{"messages":[]}"#, "non-empty"),
        (r#"{"messages":[{"role":"robot","content":"x"}]}"#, "unknown role"),
    ] {
        let (status, v) = post(&s.url, body, None);
        assert_eq!(status, 400, "{body}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{v}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The server-sent events of a streaming request, as JSON (`[DONE]` as a string), read
/// until `stop` says so or the stream ends.
fn stream_events(url: &str, body: &str, stop: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let resp = ureq::post(&format!("{url}/chat/completions")).header("Content-Type", "application/json").send(body.as_bytes()).unwrap();
    assert_eq!(resp.headers().get("content-type").unwrap(), "text/event-stream");
    let mut events = Vec::new();
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut line = String::new();
    while !stop(&events) {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else { continue };
        events.push(if data == "[DONE]" { serde_json::json!("[DONE]") } else { serde_json::from_str(data).unwrap() });
    }
    events
}

/// `stream: true` as OpenAI streams: a role chunk, content pieces that concatenate to the
/// whole answer's text, a finish chunk, the usage chunk asked for, `[DONE]`; and a client
/// that goes away stops its generation (the server is free for the next request).
#[test]
fn streaming_matches_the_whole_answer_and_a_gone_client_stops_generation() {
    let dir = tiny_model_dir("stream");
    let s = serve(&dir, &[], &[]);
    let ask = r#""messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":40"#;
    let (status, whole) = post(&s.url, &format!("{{{ask}}}"), None);
    assert_eq!(status, 200, "{whole}");
    let events = stream_events(&s.url, &format!(r#"{{{ask},"stream":true,"stream_options":{{"include_usage":true}}}}"#), |_| false);
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, whole["choices"][0]["message"]["content"].as_str().unwrap());
    let pieces = events.iter().filter(|e| e["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty())).count();
    assert!(pieces > 1, "the answer came in {pieces} piece(s): {events:?}");
    let n = events.len();
    assert_eq!(events[n - 3]["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"]);
    assert_eq!(events[n - 2]["choices"], serde_json::json!([]));
    assert_eq!(events[n - 2]["usage"], whole["usage"]);
    // Without include_usage: no usage chunk.
    let events = stream_events(&s.url, &format!(r#"{{{ask},"stream":true}}"#), |_| false);
    assert!(events.iter().all(|e| e.get("usage").is_none()), "{events:?}");
    // A bad request is refused before any stream starts.
    let (status, v) = post(&s.url, r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, None);
    assert_eq!(status, 400, "{v}");
    // A long answer, abandoned after three events: the generation stops early.
    let long = r#"{"messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":4000,"stream":true}"#;
    let got = stream_events(&s.url, long, |e| e.len() >= 3);
    assert_eq!(got.len(), 3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let stopped = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = s.log.recv_timeout(left).expect("no log line saying the abandoned generation stopped");
        if line.contains("a streaming client went away") {
            break line;
        }
    };
    let n: usize = stopped.split("stopped after ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(n < 4000, "{stopped}");
    let (status, v) = post(&s.url, &format!("{{{ask}}}"), None);
    assert_eq!((status, &v["choices"][0]["message"]["content"]), (200, &whole["choices"][0]["message"]["content"]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn api_key_and_the_remote_judge_end_to_end() {
    let dir = tiny_model_dir("judge");
    let s = serve(&dir, &["--api-key-env", "SERVE_TEST_KEY"], &[("SERVE_TEST_KEY", "s3cret")]);
    let body = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3}"#;
    assert_eq!(post(&s.url, body, None).0, 401);
    assert_eq!(post(&s.url, body, Some("wrong")).0, 401);
    assert_eq!(post(&s.url, body, Some("s3cret")).0, 200);
    // The remote judge without the key: a one-line authentication error.
    let opts = |key_env: &str| serde_json::json!({ "base_url": s.url, "model": "tiny", "api_key_env": key_env, "cache": false, "retries": 0, "timeout_s": 30.0 });
    let build = |v: serde_json::Value| {
        safetune_judge_remote::RemoteJudge::new(safetune_judge_remote::RemoteConfig::from_options(&v, "judge_options").unwrap()).unwrap()
    };
    let judge = build(opts("SAFETUNE_UNSET_KEY_VAR"));
    let err = judge.judge("a request", "an answer").unwrap_err().to_string();
    assert!(err.contains("authentication failed"), "{err}");
    // Unprotected server: the request reaches the tiny model, whose random text is no
    // rubric reply — the judge says so instead of guessing a verdict.
    let open = serve(&dir, &[], &[]);
    let judge = build(serde_json::json!({ "base_url": open.url, "cache": false, "retries": 0 }));
    let err = judge.judge("a request", "an answer").unwrap_err().to_string();
    assert!(err.contains("malformed reply") && err.contains("#score:"), "{err}");
    // A deadline shorter than the server's answer: retried, then one line saying so.
    let judge = build(serde_json::json!({ "base_url": open.url, "cache": false, "retries": 1, "timeout_s": 0.001 }));
    let err = judge.judge("a request", "an answer").unwrap_err().to_string();
    assert!(err.contains("timed out") && err.contains("2 attempts"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Normal requests' latencies in ms, sorted.
fn timed_requests(url: &str, n: usize) -> Vec<f64> {
    let body = r#"{"messages":[{"role":"user","content":"Hello there"}],"max_tokens":8}"#;
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = std::time::Instant::now();
            let (status, reply) = post(url, body, None);
            assert_eq!(status, 200, "{reply}");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A soak on loopback (`SAFETUNE_SOAK_SECS`, default 20 s of hostile traffic): 50 idle
/// sockets, 10 slowloris clients (a header line every 2 s), 5 Content-Length liars and 5
/// clients streaming a never-ending request line, all reconnecting when dropped, while a
/// normal client keeps asking. Every normal request must be answered (200) within 5 s —
/// before, one idle socket stalled the server for 30 s — and the server must stay under
/// 500 MB resident. Latency percentiles are printed (`--nocapture`) for the record.
#[test]
fn hostile_clients_do_not_stall_normal_requests() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let dir = tiny_model_dir("soak");
    let s = serve(&dir, &[], &[]);
    let addr = s.url.trim_start_matches("http://").trim_end_matches("/v1").to_string();
    let quiet = timed_requests(&s.url, 20);
    let stop = Arc::new(AtomicBool::new(false));
    let mut hostile = Vec::new();
    let spawn = |stop: Arc<AtomicBool>, addr: String, kind: u8| {
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut c) = TcpStream::connect(&addr) else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                let started = Instant::now();
                let mut alive = true;
                match kind {
                    // Content-Length lie: 10 of 1000 promised bytes.
                    2 => {
                        alive = c
                            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"messages\"")
                            .is_ok()
                    }
                    // Slowloris: a request line, then a header line every 2 s.
                    1 => alive = c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n").is_ok(),
                    _ => {}
                }
                let mut buf = [0u8; 256];
                let mut last = Instant::now();
                while alive && !stop.load(Ordering::Relaxed) {
                    if kind == 3 {
                        // An endless request line: 64 KB at a time.
                        alive = c.write_all(&[b'a'; 65536]).is_ok();
                        continue;
                    }
                    if kind == 1 && last.elapsed() > Duration::from_secs(2) {
                        alive = c.write_all(b"X-Slow: 1\r\n").is_ok();
                        last = Instant::now();
                    }
                    match c.read(&mut buf) {
                        Ok(0) => alive = false, // closed by the server
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => alive = false,
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        alive = false;
                    }
                }
            }
        })
    };
    for (kind, n) in [(0u8, 50), (1, 10), (2, 5), (3, 5)] {
        for _ in 0..n {
            hostile.push(spawn(stop.clone(), addr.clone(), kind));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let secs: u64 = std::env::var("SAFETUNE_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut under = Vec::new();
    while Instant::now() < until {
        under.extend(timed_requests(&s.url, 5));
    }
    under.sort_by(f64::total_cmp);
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap_or_default();
    let peak_mb =
        status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0)
            / 1024.0;
    stop.store(true, Ordering::Relaxed);
    for h in hostile {
        h.join().unwrap();
    }
    println!(
        "serve soak ({secs} s, 70 hostile clients): normal requests quiet p50 {:.0} ms p95 {:.0} ms max {:.0} ms (n = {}); \
         under attack p50 {:.0} ms p95 {:.0} ms max {:.0} ms (n = {}); server peak RSS {peak_mb:.0} MB",
        pct(&quiet, 0.5),
        pct(&quiet, 0.95),
        quiet[quiet.len() - 1],
        quiet.len(),
        pct(&under, 0.5),
        pct(&under, 0.95),
        under[under.len() - 1],
        under.len()
    );
    assert!(under[under.len() - 1] < 5000.0, "a normal request took {:.0} ms under attack", under[under.len() - 1]);
    assert!(peak_mb < 500.0, "server peak RSS {peak_mb:.0} MB");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The HTTP fuzz target: valid requests with bytes edited, cut or their body swapped for
/// random bytes, sent raw. Whatever arrives, the server answers or closes — never dies —
/// and still answers a normal request afterwards. `SAFETUNE_FUZZ_CASES` (default 64) cases.
#[test]
fn mutated_http_requests_never_bring_the_server_down() {
    use proptest::prelude::*;
    use std::io::{Read, Write};
    use std::time::Duration;
    let dir = tiny_model_dir("httpfuzz");
    let mut s = serve(&dir, &[], &[]);
    let addr = s.url.trim_start_matches("http://").trim_end_matches("/v1").to_string();
    let body = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2}"#;
    let valid = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let cases = std::env::var("SAFETUNE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() });
    let strategy = (
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        proptest::option::of(any::<usize>()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..512)),
    );
    runner
        .run(&strategy, |(edits, cut, junk_body)| {
            let mut req = valid.clone().into_bytes();
            if let Some(junk) = junk_body {
                req.truncate(req.len() - body.len());
                req.extend(junk);
            }
            let n = req.len();
            for (at, v) in edits {
                req[at % n] = v;
            }
            if let Some(c) = cut {
                req.truncate(c % (n + 1));
            }
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let _ = c.write_all(&req);
            let _ = c.shutdown(std::net::Shutdown::Write);
            let mut reply = Vec::new();
            let _ = c.read_to_end(&mut reply);
            prop_assert!(reply.is_empty() || reply.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&reply));
            Ok(())
        })
        .unwrap();
    assert!(s.child.try_wait().unwrap().is_none(), "the server exited");
    assert_eq!(post(&s.url, body, None).0, 200);
    std::fs::remove_dir_all(&dir).unwrap();
}
