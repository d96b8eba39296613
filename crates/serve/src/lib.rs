//! safetune-serve: an OpenAI-compatible chat-completions server for any
//! checkpoint (optionally with PEFT adapters merged): `POST /v1/chat/completions`
//! and `GET /v1/models`, on axum over hyper and tokio.
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
//!   so a flood cannot grow the queue or the memory.
//!
//! Useful as a local grader for the `remote` judge and for red-teaming an
//! attacked model with outside tools.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::{CausalLm, GenerationParams, Result};
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
    waiting: Semaphore,
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
        let model = self.model.lock().map_err(|_| anyhow!("the model is unavailable after an earlier failure"))?;
        let format = model.info().format;
        let tok = model.tokenizer();
        let prompt = tok.encode(&format.prompt(system.as_deref(), &user))?;
        let params = GenerationParams { max_new_tokens, temperature, top_p, seed: v["seed"].as_u64().unwrap_or(0), batch_size: 1 };
        let out = model.generate(std::slice::from_ref(&prompt), &params)?.remove(0);
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
    let Ok(_place) = s.waiting.try_acquire() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server_busy", "too many requests waiting; retry later");
    };
    let server = s.clone();
    match tokio::task::spawn_blocking(move || server.complete(&body)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e),
    }
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
        let server = Arc::new(Server { model: Mutex::new(model), id, key, limits: limits.clone(), waiting: Semaphore::new(queue) });
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
