//! Stand-ins for the providers' APIs, for tests: one HTTPS server on 127.0.0.1 (HTTP/1.1
//! and HTTP/2 by ALPN) with a CA made at start, speaking the wire format of Anthropic's
//! Messages API, OpenAI's Responses and Chat Completions APIs (and the ChatGPT sign-in
//! path Codex uses), Gemini's API and Code Assist, Google's and the providers' OAuth token
//! endpoints and GitHub's `/user`.
//!
//! A stand-in answers only when it receives the credential it was started with, in the
//! place the provider expects it for the stand-in's [`Kind`]; anything else gets 401 in the
//! provider's error format. Every request is recorded (method, host, path, headers, body)
//! so tests can assert what reached the "provider" and what never did.
#![forbid(unsafe_code)]

mod device;
mod providers;
mod tls;
mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub use device::DeviceFlow;
pub use providers::{chatgpt_id_token, fake_jwt};
pub use tls::HOSTS;

/// Which provider and which way of signing in a stand-in expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anthropic API key: `x-api-key: KEY` on api.anthropic.com.
    AnthropicApiKey,
    /// Claude subscription: `Authorization: Bearer TOKEN` plus `anthropic-beta:
    /// oauth-2025-04-20` on api.anthropic.com; refresh on the OAuth token endpoint.
    AnthropicOauth,
    /// OpenAI API key: `Authorization: Bearer KEY` on api.openai.com.
    OpenAiApiKey,
    /// ChatGPT sign-in: `Authorization: Bearer ACCESS` on chatgpt.com/backend-api/codex;
    /// refresh on auth.openai.com.
    ChatGpt,
    /// Gemini API key: `x-goog-api-key: KEY` (or `?key=`) on generativelanguage.googleapis.com.
    GeminiApiKey,
    /// Google sign-in: `Authorization: Bearer ACCESS` on cloudcode-pa.googleapis.com;
    /// refresh and tokeninfo on oauth2.googleapis.com.
    GoogleOauth,
    /// GitHub: `Authorization: Bearer|token TOKEN` on api.github.com, Basic
    /// `x-access-token:TOKEN` on github.com.
    GitHub,
}

/// The host a stand-in serves a remote MCP server on (with [`Options::mcp`]).
pub const MCP_HOST: &str = "mcp.standin.test";

/// A remote MCP server (Streamable HTTP: JSON-RPC 2.0 over POST) on [`MCP_HOST`]: it
/// answers `initialize`, `tools/list` (one tool) and `tools/call` (as an event stream),
/// takes notifications with 202, and answers 401 unless `header` carries `credential`.
#[derive(Debug, Clone)]
pub struct McpServer {
    /// The path it serves (e.g. `/mcp`); every other path is 404.
    pub path: String,
    pub header: String,
    pub credential: String,
    /// The one tool it lists.
    pub tool: String,
    /// The text a call of the tool returns.
    pub result: String,
}

/// How a stand-in behaves; [`Options::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub kind: Kind,
    /// The one credential the stand-in accepts (plus the access tokens it issued on refresh).
    pub credential: String,
    /// The refresh token its token endpoint accepts; `None` refuses every refresh.
    pub refresh_token: Option<String>,
    /// The text every model answer carries, split into several deltas.
    pub answer: String,
    /// Pause between two streamed events.
    pub event_delay: Duration,
    /// Also serve a remote MCP server on [`MCP_HOST`].
    pub mcp: Option<McpServer>,
    /// Anthropic: a Messages request that offers this tool (in `tools`) and carries no
    /// `tool_result` yet is answered with a `tool_use` block calling it (no input); the
    /// request that carries the result gets the text answer.
    pub tool_use: Option<String>,
    /// Also serve every route under this path prefix (e.g. `/gateway`), as an API gateway
    /// in front of the provider would; requests are recorded with the path as sent.
    pub base_path: Option<String>,
    /// The token usage every model answer reports, in each API's own fields.
    pub usage: Usage,
    /// GitHub: serve the OAuth device flow on github.com (see `device.rs`).
    pub device: Option<DeviceFlow>,
    /// GitHub: the `X-OAuth-Scopes` header of API answers (a classic token's scopes).
    pub github_scopes: Option<String>,
}

/// Token counts a stand-in reports for each model answer. `input` is the uncached input;
/// the APIs that count cached input inside the input (OpenAI, Gemini) report
/// `input + cache_read` there, with `cache_read` as the cached part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    /// Anthropic only (`cache_creation_input_tokens`).
    pub cache_write: u64,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            input: 12,
            output: 9,
            cache_read: 0,
            cache_write: 0,
        }
    }
}

impl Options {
    pub fn new(kind: Kind, credential: &str) -> Self {
        Options {
            kind,
            credential: credential.into(),
            refresh_token: None,
            answer: "Hello from the moat stand-in, streamed in pieces.".into(),
            event_delay: Duration::from_millis(80),
            mcp: None,
            tool_use: None,
            base_path: None,
            usage: Usage::default(),
            device: None,
            github_scopes: None,
        }
    }
}

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The Host header or `:authority`, without the port.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the stand-in answered with.
    pub status: u16,
    pub at: Instant,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    /// Whether `needle` occurs anywhere in the request: path, header values or body.
    pub fn contains(&self, needle: &str) -> bool {
        self.path.contains(needle)
            || self.headers.iter().any(|(_, v)| v.contains(needle))
            || String::from_utf8_lossy(&self.body).contains(needle)
    }

    /// `METHOD host/path -> status`, for failure messages.
    pub fn line(&self) -> String {
        format!(
            "{} {}{} -> {}",
            self.method, self.host, self.path, self.status
        )
    }
}

/// A token refresh the stand-in granted.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub host: String,
    pub path: String,
    /// The refresh token the client sent (the one in [`Options::refresh_token`]).
    pub refresh_token: String,
    pub new_access_token: String,
    pub new_refresh_token: String,
}

pub(crate) struct State {
    pub opts: Options,
    pub accepted: Mutex<Vec<String>>,
    pub refresh_tokens: Mutex<Vec<String>>,
    pub log: Mutex<Vec<Request>>,
    pub refreshes: Mutex<Vec<Refresh>>,
    /// Device-flow token polls answered so far.
    pub device_polls: Mutex<usize>,
}

/// A running stand-in; stops when dropped.
pub struct Standin {
    addr: SocketAddr,
    ca_pem_path: PathBuf,
    ca_pem: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Standin {
    /// Start a stand-in of `kind` that accepts only `credential`.
    pub fn start(kind: Kind, credential: &str) -> Standin {
        Self::start_with(Options::new(kind, credential))
    }

    pub fn start_with(opts: Options) -> Standin {
        let certs = tls::make();
        let dir = tempfile::Builder::new()
            .prefix("moat-standin-")
            .tempdir()
            .expect("tempdir");
        let ca_pem_path = dir.path().join("standin-ca.pem");
        std::fs::write(&ca_pem_path, &certs.ca_pem).expect("write ca");
        let state = Arc::new(State {
            accepted: Mutex::new(vec![opts.credential.clone()]),
            refresh_tokens: Mutex::new(opts.refresh_token.iter().cloned().collect()),
            opts,
            log: Mutex::new(Vec::new()),
            refreshes: Mutex::new(Vec::new()),
            device_polls: Mutex::new(0),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let server_config = certs.server_config.clone();
        let thread = std::thread::Builder::new()
            .name("moat-standin".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(std_listener, server_config, st, stop_rx));
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .expect("spawn stand-in thread");
        Standin {
            addr,
            ca_pem_path,
            ca_pem: certs.ca_pem,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The PEM file of the stand-in's CA (for `moat-proxy --extra-ca`).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn kind(&self) -> Kind {
        self.state.opts.kind
    }

    /// `HOST:443:127.0.0.1:PORT` for every host the stand-in serves, for `--connect-to`.
    pub fn connect_to(&self) -> Vec<String> {
        HOSTS
            .iter()
            .map(|h| format!("{h}:443:127.0.0.1:{}", self.port()))
            .collect()
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }

    /// Every refresh granted so far.
    pub fn refreshes(&self) -> Vec<Refresh> {
        self.state.refreshes.lock().unwrap().clone()
    }

    /// The credentials the stand-in accepts now: the one it was started with and every
    /// access token it issued.
    pub fn accepted_credentials(&self) -> Vec<String> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// The requests listed one per line, for failure messages.
    pub fn request_lines(&self) -> String {
        self.requests()
            .iter()
            .map(|r| r.line())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(providers::handle(state, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await;
        });
    }
}
