//! One small HTTPS client for the AWS calls: hyper-util's pooled client over a connector that
//! speaks plain TCP for `http://` endpoints (a loopback test server, a private endpoint) and
//! rustls (ring) for `https://`, verified against the OS store plus `AWS_CA_BUNDLE`. Every
//! request has a connect timeout and an overall deadline; responses are capped in size.

use crate::env::Env;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Responses larger than this are refused (AWS answers here are a few KiB).
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid endpoint {0}: expected http://host[:port] or https://host[:port]")]
    Endpoint(String),
    #[error("reading AWS_CA_BUNDLE {path}: {msg}")]
    CaBundle { path: String, msg: String },
    #[error("connecting to {endpoint}: {msg}")]
    Connect { endpoint: String, msg: String },
    #[error("{endpoint} did not answer within {secs} s")]
    Timeout { endpoint: String, secs: u64 },
    #[error("reading the response from {endpoint}: {msg}")]
    Body { endpoint: String, msg: String },
}

impl HttpError {
    pub fn exit_code(&self) -> i32 {
        use moat_core::exit;
        match self {
            HttpError::Endpoint(_) | HttpError::CaBundle { .. } => exit::CONFIG,
            _ => exit::UNAVAILABLE,
        }
    }
}

impl From<HttpError> for moat_core::Error {
    fn from(e: HttpError) -> Self {
        moat_core::Error::new(e.exit_code(), e.to_string())
    }
}

/// A response read in full.
#[derive(Debug)]
pub struct Response {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpClient {
    /// Trust: the OS store (honouring `SSL_CERT_FILE`) plus the PEM bundle in `AWS_CA_BUNDLE`.
    /// Overall deadline per request: 30 s; connect timeout 10 s.
    pub fn new(env: &Env) -> Result<Self, HttpError> {
        Self::with_timeouts(env, Duration::from_secs(10), Duration::from_secs(30))
    }

    pub fn with_timeouts(
        env: &Env,
        connect: Duration,
        overall: Duration,
    ) -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable entries in the system store are skipped: one bad file must not stop
        // every AWS call.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = env.get("AWS_CA_BUNDLE") {
            let err = |msg: String| HttpError::CaBundle {
                path: path.to_string(),
                msg,
            };
            let mut n = 0;
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                roots.add(cert).map_err(|e| err(e.to_string()))?;
                n += 1;
            }
            if n == 0 {
                return Err(err("no certificates in the file".into()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Connect {
                endpoint: "tls".into(),
                msg: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = Connector {
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout: connect,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(HttpClient {
            client,
            timeout: overall,
        })
    }

    /// Send `req` and read the whole response, within the overall deadline.
    pub async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<Response, HttpError> {
        let endpoint = origin(req.uri());
        let secs = self.timeout.as_secs();
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HttpError::Connect {
                    endpoint: endpoint.clone(),
                    msg: error_chain(&e),
                })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Body {
                    endpoint: endpoint.clone(),
                    msg: e.to_string(),
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout { endpoint, secs }),
        }
    }
}

/// `scheme://authority`, for messages (never the path or query).
pub fn origin(uri: &http::Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    )
}

/// The innermost causes too: hyper's outer message alone ("client error (Connect)") says
/// nothing useful.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[derive(Clone)]
struct Connector {
    tls: TlsConnector,
    connect_timeout: Duration,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let limit = self.connect_timeout;
        Box::pin(async move {
            let https = match uri.scheme_str() {
                Some("https") => true,
                Some("http") => false,
                _ => return Err(io::Error::other("unsupported scheme")),
            };
            let host = uri
                .host()
                .ok_or_else(|| io::Error::other("no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tcp = tokio::time::timeout(limit, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = tcp.set_nodelay(true);
            if !https {
                return Ok(Conn::Plain(TokioIo::new(tcp)));
            }
            let name = ServerName::try_from(host).map_err(io::Error::other)?;
            let tls = tokio::time::timeout(limit, tls.connect(name, tcp))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(Conn::Tls(Box::new(TokioIo::new(tls))))
        })
    }
}

enum Conn {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
