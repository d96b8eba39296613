//! Test helpers shared by safetune's crates; a dev-dependency only, never linked into
//! the binary. [`Loopback`] is the one HTTP server the tests that download (the Hub and
//! GitHub mirrors) or call an OpenAI-compatible endpoint (the remote judge and grader)
//! run against: plain `std::net`, a thread per connection, `Connection: close`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// 0-based, in the order connections were accepted.
    pub index: usize,
    pub method: String,
    /// The request target, e.g. `/v1/chat/completions`.
    pub path: String,
    pub body: Vec<u8>,
}

impl Request {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the server sends back.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self { status, headers: Vec::new(), body: body.into() }
    }

    /// A JSON body with its content type.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, body).header("Content-Type", "application/json")
    }

    pub fn not_found() -> Self {
        Self::new(404, "not found")
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What the server does with each request: a response, or `None` to never answer it
/// (the connection stays open until the client gives up).
pub type Handler = dyn Fn(&Request) -> Option<Response> + Send + Sync;

/// An HTTP server on 127.0.0.1 (an ephemeral port) that answers with a handler until
/// the test process ends; counts the connections it accepted.
pub struct Loopback {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    accepted: Arc<AtomicUsize>,
}

impl Loopback {
    pub fn start(handler: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("the bound address"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let index = count.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let Some(request) = read_request(&mut stream, index) else { return };
                    match handler(&request) {
                        Some(r) => {
                            let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", r.status, r.body.len());
                            for (k, v) in &r.headers {
                                head.push_str(&format!("{k}: {v}\r\n"));
                            }
                            head.push_str("\r\n");
                            let _ = stream.write_all(head.as_bytes());
                            let _ = stream.write_all(&r.body);
                        }
                        None => std::thread::sleep(std::time::Duration::from_secs(30)),
                    }
                });
            }
        });
        Self { url, accepted }
    }

    /// Serves GET `path` → body from `files` (200, with `headers`), anything else 404.
    pub fn files(files: Vec<(String, Vec<u8>)>, headers: &[(&str, &str)]) -> Self {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start(move |r| Some(file_response(&files, r, &headers)))
    }

    /// Connections accepted so far (one per request: every response closes its connection).
    pub fn requests(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The response to a GET of one of `files` (200 with `headers`), else 404.
pub fn file_response(files: &[(String, Vec<u8>)], r: &Request, headers: &[(String, String)]) -> Response {
    match files.iter().find(|(p, _)| *p == r.path) {
        Some((_, body)) if r.method == "GET" => headers.iter().fold(Response::new(200, body.clone()), |resp, (k, v)| resp.header(k, v)),
        _ => Response::not_found(),
    }
}

fn read_request(stream: &mut std::net::TcpStream, index: usize) -> Option<Request> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Request { index, method, path, body })
}

/// `bytes` gzip-compressed (a mirrored upstream file that is `.gz`).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("writing to memory");
    enc.finish().expect("writing to memory")
}
