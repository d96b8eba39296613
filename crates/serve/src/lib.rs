//! safetune-serve: an OpenAI-compatible chat-completions server for any
//! checkpoint (optionally with PEFT adapters merged), on std's TCP listener
//! with no HTTP dependency. Serves `POST /v1/chat/completions` and
//! `GET /v1/models`, one request at a time. Useful as a local grader for the
//! `remote` judge and for red-teaming an attacked model with outside tools.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::{CausalLm, GenerationParams, Result};

struct Server {
    model: Box<dyn CausalLm>,
    id: String,
    key: Option<String>,
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> Result<Request> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    if len > 16 << 20 {
        bail!("request body over 16 MiB");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Request { method, path, headers, body })
}

fn respond(stream: &mut TcpStream, status: u16, body: &serde_json::Value) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let text = body.to_string();
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(msg.as_bytes());
}

fn error(kind: &str, msg: impl std::fmt::Display) -> serde_json::Value {
    // candle errors carry a backtrace after the first line.
    let msg = msg.to_string();
    let first = msg.lines().next().unwrap_or("").to_string();
    serde_json::json!({ "error": { "message": first, "type": kind } })
}

impl Server {
    fn handle(&self, stream: &mut TcpStream) -> (u16, serde_json::Value) {
        let req = match read_request(stream) {
            Ok(r) => r,
            Err(e) => return (400, error("invalid_request_error", e)),
        };
        if let Some(key) = &self.key {
            let given = req.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.as_str());
            if given != Some(&format!("Bearer {key}")) {
                return (401, error("authentication_error", "missing or wrong API key"));
            }
        }
        match (req.method.as_str(), req.path.trim_end_matches('/')) {
            ("GET", "/v1/models") => {
                (200, serde_json::json!({ "object": "list", "data": [{ "id": self.id, "object": "model", "owned_by": "safetune" }] }))
            }
            ("POST", "/v1/chat/completions") => match self.complete(&req.body) {
                Ok(v) => (200, v),
                Err(e) => (400, error("invalid_request_error", e)),
            },
            _ => (404, error("not_found", format!("no route {} {}", req.method, req.path))),
        }
    }

    /// One chat completion: the system message and the turns, in the model's
    /// own chat template (earlier turns are folded into the last user turn).
    fn complete(&self, body: &[u8]) -> Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| anyhow!("body is not JSON: {e}"))?;
        let messages = v["messages"].as_array().filter(|m| !m.is_empty()).ok_or_else(|| anyhow!("`messages` must be a non-empty list"))?;
        let mut system = None;
        let mut turns = Vec::new();
        for m in messages {
            let role = m["role"].as_str().ok_or_else(|| anyhow!("each message needs a `role`"))?;
            let content = m["content"].as_str().ok_or_else(|| anyhow!("each message needs text `content`"))?;
            match role {
                "system" => system = Some(content.to_string()),
                "user" | "assistant" => turns.push((role, content)),
                other => bail!("unknown role `{other}`"),
            }
        }
        let Some((last_role, last)) = turns.last().copied() else { bail!("no user message") };
        if last_role != "user" {
            bail!("the last message must be the user's");
        }
        let mut user = String::new();
        for (role, content) in &turns[..turns.len() - 1] {
            user.push_str(&format!("{}: {content}\n\n", if *role == "user" { "User" } else { "Assistant" }));
        }
        user.push_str(last);
        if v["n"].as_u64().is_some_and(|n| n != 1) {
            bail!("only n = 1 is supported");
        }
        let max_new_tokens = v["max_tokens"].as_u64().or(v["max_completion_tokens"].as_u64()).unwrap_or(256).clamp(1, 4096) as usize;
        let temperature = v["temperature"].as_f64().unwrap_or(0.0);
        let top_p = v["top_p"].as_f64().unwrap_or(1.0);
        let top_p_ok = top_p > 0.0 && top_p <= 1.0;
        if !(0.0..=2.0).contains(&temperature) || !top_p_ok {
            bail!("temperature must be in [0, 2] and top_p in (0, 1]");
        }
        let format = self.model.info().format;
        let tok = self.model.tokenizer();
        let prompt = tok.encode(&format.prompt(system.as_deref(), &user))?;
        let params = GenerationParams { max_new_tokens, temperature, top_p, seed: v["seed"].as_u64().unwrap_or(0), batch_size: 1 };
        let out = self.model.generate(std::slice::from_ref(&prompt), &params)?.remove(0);
        let text = tok.decode(&out)?.trim().to_string();
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(serde_json::json!({
            "id": format!("chatcmpl-{created}"), "object": "chat.completion", "created": created, "model": self.id,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text },
                          "finish_reason": if out.len() >= max_new_tokens { "length" } else { "stop" } }],
            "usage": { "prompt_tokens": prompt.len(), "completion_tokens": out.len(), "total_tokens": prompt.len() + out.len() },
        }))
    }
}

/// Serves chat completions with `model` on `listener` until the process ends: `id` is the
/// model name clients see, `key` the bearer key requests must carry (none: open).
pub fn serve(model: Box<dyn CausalLm>, id: String, key: Option<String>, listener: TcpListener) -> Result<()> {
    let addr = listener.local_addr()?;
    eprintln!("[serve] listening on http://{addr}/v1 (model `{id}`)");
    let server = Server { model, id, key };
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let (status, body) = server.handle(&mut stream);
        respond(&mut stream, status, &body);
    }
    Ok(())
}
