//! safetune-serve: an OpenAI-compatible chat-completions server for any
//! checkpoint (optionally with PEFT adapters merged): `POST /v1/chat/completions`
//! (whole answers, or `stream: true` as OpenAI's server-sent events: one
//! `chat.completion.chunk` per decoded piece, a usage chunk with
//! `stream_options.include_usage`, then `data: [DONE]`) and `GET /v1/models`,
//! on axum over hyper and tokio.
//!
//! One client cannot stall or bloat it (the limits below are its invariants):
//! - connections: at most [`Limits::connections`] open at once (more wait in the
//!   kernel's backlog); each must send its request head within
//!   [`Limits::head_timeout`] (slowloris, idle sockets) and its body within
//!   [`Limits::body_timeout`] (a Content-Length lie) — then 408 or close;
//! - sizes: the request head is bounded by hyper's buffer ([`Limits::head_bytes`]),
//!   the body by [`Limits::body_bytes`] (413);
//! - generation: one at a time on the model (it uses every core), at most
//!   [`Limits::queue`] requests waiting; more get 503 at once (back-pressure),
//!   so a flood cannot grow the queue or the memory; a streaming client that
//!   goes away stops its generation at the next token (the model is free again).
//!
//! Useful as a local grader for the `remote` judge and for red-teaming an
//! attacked model with outside tools.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::{CausalLm, GenerationParams, Result};
use tokio::sync::mpsc;
use tokio::sync::Semaphore;

/// The server's bounds (see the crate docs).
#[derive(Debug, Clone)]
pub struct Limits {
    pub connections: usize,
    pub head_timeout: Duration,
    pub head_bytes: usize,
    pub body_timeout: Duration,
    pub body_bytes: usize,
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 256,
            head_timeout: Duration::from_secs(10),
            head_bytes: 64 << 10,
            body_timeout: Duration::from_secs(10),
            body_bytes: 4 << 20,
            queue: 16,
        }
    }
}

struct Server {
    model: Mutex<Box<dyn CausalLm>>,
    id: String,
    key: Option<String>,
    limits: Limits,
    waiting: Arc<Semaphore>,
}

fn error(status: StatusCode, kind: &str, msg: impl std::fmt::Display) -> Response {
    // candle errors carry a backtrace after the first line.
    let msg = msg.to_string();
    let first = msg.lines().next().unwrap_or("").to_string();
    (status, Json(serde_json::json!({ "error": { "message": first, "type": kind } }))).into_response()
}

impl Server {
    fn authorised(&self, req: &Request) -> bool {
        let Some(key) = &self.key else { return true };
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {key}"))
    }

    /// A request's prompt and settings: the system message and the turns, in the
    /// model's own chat template (earlier turns are folded into the last user turn).
    fn parse(&self, body: &[u8]) -> Result<Chat> {
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
        let flag = |v: &serde_json::Value, name: &str| match v {
            serde_json::Value::Null => Ok(false),
            serde_json::Value::Bool(b) => Ok(*b),
            _ => Err(anyhow!("`{name}` must be true or false")),
        };
        let stream = flag(&v["stream"], "stream")?;
        let include_usage = flag(&v["stream_options"]["include_usage"], "stream_options.include_usage")?;
        let model = self.model.lock().map_err(|_| anyhow!("the model is unavailable after an earlier failure"))?;
        let prompt = model.tokenizer().encode(&model.info().format.prompt(system.as_deref(), &user))?;
        let params = GenerationParams { max_new_tokens, temperature, top_p, seed: v["seed"].as_u64().unwrap_or(0), batch_size: 1 };
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(Chat { prompt, params, stream, include_usage, created })
    }

    /// Generates `chat`'s answer and its text; `on_token(text so far)` after each new
    /// token (whole characters only, see [`Incremental`]; holding the model: it must not
    /// call back into the server) ends the generation early when it returns false.
    fn generate(&self, chat: &Chat, on_token: Option<&OnToken<'_>>) -> Result<(Vec<u32>, String)> {
        let model = self.model.lock().map_err(|_| anyhow!("the model is unavailable after an earlier failure"))?;
        let tok = model.tokenizer();
        let prompts = std::slice::from_ref(&chat.prompt);
        let out = match on_token {
            None => model.generate(prompts, &chat.params)?,
            Some(on_token) => {
                let text = Mutex::new(Incremental::default());
                let settled = |_: usize, ids: &[u32]| {
                    let Ok(mut text) = text.lock() else { return true };
                    text.advance(tok, ids).is_ok_and(|t| !on_token(t))
                };
                model.generate_until(prompts, &chat.params, &settled)?
            }
        }
        .remove(0);
        let text = tok.decode(&out)?;
        Ok((out, text))
    }

    /// One whole chat completion.
    fn complete(&self, chat: &Chat) -> Result<serde_json::Value> {
        let (out, text) = self.generate(chat, None)?;
        let text = text.trim().to_string();
        Ok(serde_json::json!({
            "id": format!("chatcmpl-{}", chat.created), "object": "chat.completion", "created": chat.created, "model": self.id,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text },
                          "finish_reason": chat.finish_reason(out.len()) }],
            "usage": chat.usage(out.len()),
        }))
    }

    /// One chat completion as OpenAI's stream of chunks, sent on `tx` as they
    /// are decoded. The pieces concatenate to the whole completion's text (leading
    /// and trailing whitespace held back, a split UTF-8 character sent whole).
    /// A closed `tx` (the client went away) stops the generation at the next token.
    fn stream(&self, chat: &Chat, tx: &mpsc::Sender<Event>) -> Result<()> {
        // Every chunk: its choices, and with include_usage a `usage` (null until the last).
        let event = |choices: serde_json::Value, usage: serde_json::Value| {
            let mut c = serde_json::json!({
                "id": format!("chatcmpl-{}", chat.created), "object": "chat.completion.chunk", "created": chat.created,
                "model": self.id, "choices": choices,
            });
            if chat.include_usage {
                c["usage"] = usage;
            }
            Event::default().data(c.to_string())
        };
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            event(serde_json::json!([{ "index": 0, "delta": delta, "finish_reason": finish }]), serde_json::Value::Null)
        };
        if tx.blocking_send(chunk(serde_json::json!({ "role": "assistant", "content": "" }), None)).is_err() {
            return Ok(());
        }
        let sent = Mutex::new(String::new());
        let send_new = |text: &str| -> bool {
            let Ok(mut sent) = sent.lock() else { return false };
            let Some(piece) = text.strip_prefix(sent.as_str()).filter(|p| !p.is_empty()).map(str::to_string) else { return true };
            *sent = text.to_string();
            tx.blocking_send(chunk(serde_json::json!({ "content": piece }), None)).is_ok()
        };
        let (out, text) = self.generate(chat, Some(&|text: &str| send_new(text.trim())))?;
        if tx.is_closed() {
            // The generation ends at the token whose piece found the client gone.
            safetune_core::tracing::info!(
                "[serve] a streaming client went away; its generation stopped after {} of at most {} tokens",
                out.len(),
                chat.params.max_new_tokens
            );
            return Ok(());
        }
        send_new(text.trim());
        let _ = tx.blocking_send(chunk(serde_json::json!({}), Some(chat.finish_reason(out.len()))));
        if chat.include_usage {
            let _ = tx.blocking_send(event(serde_json::json!([]), chat.usage(out.len())));
        }
        let _ = tx.blocking_send(Event::default().data("[DONE]"));
        Ok(())
    }
}

/// Called after each new token with the text so far; false ends the generation.
type OnToken<'a> = dyn Fn(&str) -> bool + Sync + 'a;

/// The text of a growing answer, decoded a few tokens at a time instead of whole after
/// every token (quadratic in its length). Each step decodes the tokens since `prefix`
/// twice — up to `read` and to the end — and appends the difference once it ends in a
/// whole character: both decodes start at the same token, so a tokenizer that drops a
/// leading space at the start of a decode drops it from both. Should the shorter decode
/// ever not start the longer one, the whole answer is decoded instead.
#[derive(Default)]
struct Incremental {
    prefix: usize,
    read: usize,
    text: String,
}

impl Incremental {
    fn advance(&mut self, tok: &dyn safetune_core::Tokenize, ids: &[u32]) -> Result<&str> {
        let before = tok.decode(&ids[self.prefix..self.read])?;
        let now = tok.decode(&ids[self.prefix..])?;
        if now.ends_with('\u{FFFD}') {
            return Ok(&self.text);
        }
        match now.strip_prefix(before.as_str()) {
            Some(new) => self.text.push_str(new),
            None => self.text = tok.decode(ids)?,
        }
        (self.prefix, self.read) = (self.read, ids.len());
        Ok(&self.text)
    }
}

/// A parsed chat-completion request.
struct Chat {
    prompt: Vec<u32>,
    params: GenerationParams,
    stream: bool,
    include_usage: bool,
    created: u64,
}

impl Chat {
    fn finish_reason(&self, new_tokens: usize) -> &'static str {
        if new_tokens >= self.params.max_new_tokens {
            "length"
        } else {
            "stop"
        }
    }

    fn usage(&self, new_tokens: usize) -> serde_json::Value {
        let p = self.prompt.len();
        serde_json::json!({ "prompt_tokens": p, "completion_tokens": new_tokens, "total_tokens": p + new_tokens })
    }
}

async fn models(State(s): State<Arc<Server>>, req: Request) -> Response {
    if !s.authorised(&req) {
        return error(StatusCode::UNAUTHORIZED, "authentication_error", "missing or wrong API key");
    }
    Json(serde_json::json!({ "object": "list", "data": [{ "id": s.id, "object": "model", "owned_by": "safetune" }] })).into_response()
}

async fn chat(State(s): State<Arc<Server>>, req: Request) -> Response {
    if !s.authorised(&req) {
        return error(StatusCode::UNAUTHORIZED, "authentication_error", "missing or wrong API key");
    }
    let limit = s.limits.body_bytes;
    let body = match tokio::time::timeout(s.limits.body_timeout, axum::body::to_bytes(req.into_body(), limit)).await {
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", "request body not received in time"),
        Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("request body over {limit} bytes")),
        Ok(Ok(b)) => b,
    };
    // Back-pressure: a place in the queue, or 503 now.
    let Ok(place) = s.waiting.clone().try_acquire_owned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server_busy", "too many requests waiting; retry later");
    };
    let server = s.clone();
    let chat = match tokio::task::spawn_blocking(move || server.parse(&body)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e),
    };
    let server = s.clone();
    if !chat.stream {
        return match tokio::task::spawn_blocking(move || server.complete(&chat)).await {
            Ok(Ok(v)) => Json(v).into_response(),
            Ok(Err(e)) => error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e),
        };
    }
    // The answer streams while it is generated; the place in the queue is held until it ends.
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = server.stream(&chat, &tx) {
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            let err = serde_json::json!({ "error": { "message": first, "type": "server_error" } });
            let _ = tx.blocking_send(Event::default().data(err.to_string()));
        }
        drop(place);
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Sse::new(events).into_response()
}

async fn not_found(req: Request) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", format!("no route {} {}", req.method(), req.uri().path()))
}

/// Serves chat completions with `model` on `listener` until the process ends: `id` is the
/// model name clients see, `key` the bearer key requests must carry (none: open).
pub fn serve(model: Box<dyn CausalLm>, id: String, key: Option<String>, listener: std::net::TcpListener) -> Result<()> {
    serve_with(model, id, key, listener, Limits::default())
}

/// [`serve`] with other bounds.
pub fn serve_with(
    model: Box<dyn CausalLm>,
    id: String,
    key: Option<String>,
    listener: std::net::TcpListener,
    limits: Limits,
) -> Result<()> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        safetune_core::tracing::info!("[serve] listening on http://{addr}/v1 (model `{id}`)");
        let queue = limits.queue;
        let server =
            Arc::new(Server { model: Mutex::new(model), id, key, limits: limits.clone(), waiting: Arc::new(Semaphore::new(queue)) });
        let app = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/models/", get(models))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/chat/completions/", post(chat))
            .fallback(not_found)
            .layer(axum::extract::DefaultBodyLimit::max(limits.body_bytes))
            .with_state(server);
        let open = Arc::new(Semaphore::new(limits.connections));
        loop {
            // At most `connections` at once: the next accept waits for a free place.
            let permit = open.clone().acquire_owned().await.map_err(|e| anyhow!("{e}"))?;
            let Ok((stream, _)) = listener.accept().await else { continue };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let limits = limits.clone();
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.head_timeout)
                    .max_buf_size(limits.head_bytes)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = conn.await;
                drop(permit);
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::Incremental;
    use safetune_core::{Result, Tokenize};

    /// One token per byte, decoded lossily (a split character shows as U+FFFD, as byte-level
    /// BPE does); `strip` drops a leading space at the start of every decode, as SentencePiece
    /// tokenizers do.
    struct Bytes {
        strip: bool,
    }

    impl Tokenize for Bytes {
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            Ok(if self.strip { text.strip_prefix(' ').unwrap_or(&text).to_string() } else { text })
        }
        fn stop_ids(&self) -> &[u32] {
            &[]
        }
        fn pad_id(&self) -> u32 {
            0
        }
    }

    #[test]
    fn incremental_text_is_the_whole_decode_without_a_split_character() {
        for strip in [false, true] {
            let tok = Bytes { strip };
            let ids = tok.encode(" héllo wörld ✓ done").unwrap();
            let whole = tok.decode(&ids).unwrap();
            let mut inc = Incremental::default();
            for n in 1..=ids.len() {
                let text = inc.advance(&tok, &ids[..n]).unwrap().to_string();
                assert!(!text.contains('\u{FFFD}'), "{text:?}");
                assert!(whole.starts_with(&text), "{text:?} is not a prefix of {whole:?}");
                // Every whole character so far is there.
                let so_far = tok.decode(&ids[..n]).unwrap();
                assert_eq!(text, so_far.trim_end_matches('\u{FFFD}'), "after {n} tokens");
            }
            assert_eq!(inc.text, whole);
        }
    }
}
