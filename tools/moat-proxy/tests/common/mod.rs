//! Test support for moat-proxy's CLI tests: a test CA and certificates made at test time,
//! local upstream servers (TLS with chosen ALPN, or plain HTTP) that record every request
//! they receive, and a handle on the real `moat-proxy serve` process with its stdout
//! events, stderr and trace file, so every scenario can be grepped for the canary.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use moat_testkit::TestEnv;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

pub fn canary() -> String {
    format!("CANARY{}", moat_core::hex(&moat_core::random_bytes::<12>()))
}

pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    pub der: CertificateDer<'static>,
}

pub fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        Ca::from_params(ca_params(cn))
    }
    pub fn from_params(p: CertificateParams) -> Ca {
        let k = KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        Ca {
            pem: c.pem(),
            der: c.der().clone(),
            issuer: Issuer::new(p, k),
        }
    }
    /// A CA signed by this one.
    pub fn sub(&self, p: CertificateParams) -> Ca {
        let k = KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &self.issuer).unwrap();
        Ca {
            pem: c.pem(),
            der: c.der().clone(),
            issuer: Issuer::new(p, k),
        }
    }
    pub fn leaf(&self, p: CertificateParams) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let k = KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &self.issuer).unwrap();
        (
            c.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der())),
        )
    }
    pub fn write(&self, path: &std::path::Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_path_buf()
    }
}

pub fn leaf_params(names: &[&str]) -> CertificateParams {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// A request recorded without its body (upgrades, streams, drained uploads).
    fn bodiless(
        method: String,
        target: String,
        version: String,
        headers: Vec<(String, String)>,
    ) -> Seen {
        Seen {
            method,
            target,
            version,
            headers,
            body: vec![],
        }
    }
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn raw(&self) -> String {
        format!(
            "{} {} {:?} {:?}",
            self.method,
            self.target,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

#[derive(Clone, Default)]
pub struct Upstream {
    pub addr: Option<SocketAddr>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted at the TCP level.
    pub conns: Arc<Mutex<usize>>,
    pub basic_required: Option<String>,
    pub git_root: Option<PathBuf>,
}

impl Upstream {
    pub fn port(&self) -> u16 {
        self.addr.unwrap().port()
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

/// A 200 whose body is `data` compressed by gzip(1), with `Content-Encoding: gzip`.
async fn gzipped(data: &[u8]) -> Response<Body> {
    let mut child = tokio::process::Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(data).await.unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let mut r = Response::new(full(out.stdout));
    r.headers_mut()
        .insert("content-encoding", HeaderValue::from_static("gzip"));
    r
}

/// The upstream's 101 answer to a WebSocket upgrade.
fn switching_to_websocket() -> Response<Body> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert("upgrade", HeaderValue::from_static("websocket"));
    r.headers_mut()
        .insert("connection", HeaderValue::from_static("upgrade"));
    r.headers_mut()
        .insert("sec-websocket-accept", HeaderValue::from_static("test"));
    r
}

async fn handle(up: Upstream, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let target = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = req.uri().path().to_string();
    if path == "/ws-auth" {
        // A WebSocket server that echoes the request's Authorization in its 101 and in
        // frames: a text message split across fragments (a ping between them), and a close.
        let auth = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        up.seen
            .lock()
            .unwrap()
            .push(Seen::bodiless(method, target, version, headers));
        let on = hyper::upgrade::on(&mut req);
        let a2 = auth.clone();
        tokio::spawn(async move {
            if let Ok(u) = on.await {
                use tokio::io::AsyncWriteExt;
                let mut io = TokioIo::new(u);
                let frame = |fin: bool, op: u8, p: &[u8]| {
                    let mut f = vec![if fin { 0x80 } else { 0 } | op, p.len() as u8];
                    f.extend_from_slice(p);
                    f
                };
                let msg = format!("you sent {a2} ok");
                let (x, y) = msg.as_bytes().split_at(msg.len() / 2);
                for f in [
                    frame(false, 1, x),
                    frame(true, 9, a2.as_bytes()),
                    frame(true, 0, y),
                    frame(true, 8, b"\x03\xe8bye"),
                ] {
                    let _ = io.write_all(&f).await;
                    let _ = io.flush().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = io.shutdown().await;
            }
        });
        let mut r = switching_to_websocket();
        if let Ok(v) = HeaderValue::from_str(&auth) {
            r.headers_mut().insert("x-echo", v);
        }
        return Ok(r);
    }
    if path == "/ws" {
        up.seen
            .lock()
            .unwrap()
            .push(Seen::bodiless(method, target, version, headers));
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(u) = on.await {
                let mut io = TokioIo::new(u);
                let mut buf = [0u8; 1024];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(switching_to_websocket());
    }
    if path == "/discard" {
        // Drain without keeping: for large uploads.
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(Ok(f)) = body.frame().await {
            n += f.data_ref().map(|d| d.len() as u64).unwrap_or(0);
        }
        up.seen
            .lock()
            .unwrap()
            .push(Seen::bodiless(method, target, version, headers));
        return Ok(Response::new(full(format!("{n}\n"))));
    }
    if let Some(mb) = path.strip_prefix("/stream/") {
        let mb: usize = mb.parse().unwrap_or(1);
        up.seen
            .lock()
            .unwrap()
            .push(Seen::bodiless(method, target, version, headers));
        let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
        let s = futures_util::stream::iter(
            (0..mb * 16).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        return Ok(Response::new(StreamBody::new(s).boxed_unsync()));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let seen = Seen {
        method,
        target,
        version,
        headers,
        body,
    };
    up.seen.lock().unwrap().push(seen.clone());
    if let Some(want) = &up.basic_required
        && !seen.header_all("authorization").iter().any(|v| v == want)
    {
        {
            let mut r = Response::new(full("auth required\n"));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Basic realm=\"git\""),
            );
            return Ok(r);
        }
    }
    if let Some(root) = &up.git_root {
        return Ok(git_cgi(root, &seen).await);
    }
    Ok(match path.as_str() {
        "/sse" => {
            let s = futures_util::stream::unfold(0u8, |i| async move {
                match i {
                    0 => Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from("data: first\n\n"))),
                        1,
                    )),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        Some((Ok(Frame::data(Bytes::from("data: second\n\n"))), 2))
                    }
                    _ => None,
                }
            });
            let mut r = Response::new(StreamBody::new(s).boxed_unsync());
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        "/grpc" => {
            let s = futures_util::stream::unfold(0u8, |i| async move {
                match i {
                    0 => Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                        1,
                    )),
                    1 => {
                        let mut t = HeaderMap::new();
                        t.insert("grpc-status", HeaderValue::from_static("0"));
                        t.insert("grpc-message", HeaderValue::from_static("ok-trailer"));
                        Some((Ok(Frame::trailers(t)), 2))
                    }
                    _ => None,
                }
            });
            let mut r = Response::new(StreamBody::new(s).boxed_unsync());
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            r
        }
        "/big" => Response::new(full(vec![b'x'; 1 << 20])),
        "/echo-gzip" => {
            // An echo that compresses (with gzip(1)) whenever the request allows it.
            let raw = seen.raw();
            let gzip_ok = seen
                .header_all("accept-encoding")
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("gzip"));
            if !gzip_ok {
                return Ok(Response::new(full(raw)));
            }
            gzipped(raw.as_bytes()).await
        }
        "/gzip-anyway" => {
            // An echo that ignores Accept-Encoding and always answers in gzip.
            gzipped(seen.raw().as_bytes()).await
        }
        "/trailer-echo" => {
            // A streamed body whose trailer (and a header) echo the request's Authorization.
            let auth = seen
                .header_all("authorization")
                .first()
                .cloned()
                .unwrap_or_default();
            let value = HeaderValue::from_str(&auth).unwrap();
            let v2 = value.clone();
            let s = futures_util::stream::unfold(0u8, move |i| {
                let value = value.clone();
                async move {
                    match i {
                        0 => Some((Ok::<_, Infallible>(Frame::data(Bytes::from("body\n"))), 1)),
                        1 => {
                            let mut t = HeaderMap::new();
                            t.insert("x-echo", value);
                            Some((Ok(Frame::trailers(t)), 2))
                        }
                        _ => None,
                    }
                }
            });
            let mut r = Response::new(StreamBody::new(s).boxed_unsync());
            r.headers_mut().insert("x-echo-head", v2);
            r.headers_mut()
                .insert("trailer", HeaderValue::from_static("x-echo"));
            r
        }
        "/redirect" => {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut().insert(
                "location",
                HeaderValue::from_static("https://other.example/landed"),
            );
            r
        }
        _ => {
            let mut r = Response::new(full(format!("{}\n", seen.raw())));
            r.headers_mut().insert(
                "x-upstream-version",
                HeaderValue::from_str(&seen.version).unwrap(),
            );
            r
        }
    })
}

async fn git_cgi(root: &std::path::Path, seen: &Seen) -> Response<Body> {
    let (path, query) = match seen.target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (seen.target.clone(), String::new()),
    };
    let path = if let Some(i) = path.find("://") {
        path[i + 3..]
            .find('/')
            .map(|j| path[i + 3 + j..].to_string())
            .unwrap_or_default()
    } else {
        path
    };
    let ct = seen
        .header_all("content-type")
        .first()
        .cloned()
        .unwrap_or_default();
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", &query)
        .env("REQUEST_METHOD", &seen.method)
        .env("CONTENT_TYPE", ct)
        .env("CONTENT_LENGTH", seen.body.len().to_string())
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = seen.body.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .unwrap();
    let head = String::from_utf8_lossy(&raw[..split.0]).to_string();
    let mut r = Response::new(full(raw[split.0 + split.1..].to_vec()));
    for line in head.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("status") {
                let code: u16 = v.trim()[..3].parse().unwrap();
                *r.status_mut() = StatusCode::from_u16(code).unwrap();
            } else {
                r.headers_mut().append(
                    http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                    HeaderValue::from_str(v.trim()).unwrap(),
                );
            }
        }
    }
    r
}

/// Start a TLS upstream on 127.0.0.1 with this certificate chain and ALPN list.
pub fn tls_upstream(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Upstream {
    tls_upstream_with(Upstream::default(), chain, key, alpn)
}

pub fn tls_upstream_with(
    mut up: Upstream,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Upstream {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = rt()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    up.addr = Some(listener.local_addr().unwrap());
    let up2 = up.clone();
    rt().spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            *up2.conns.lock().unwrap() += 1;
            let acceptor = acceptor.clone();
            let up = up2.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let svc = service_fn(move |req| handle(up.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    up
}

/// A plain-HTTP/1.1 upstream on 127.0.0.1.
pub fn plain_upstream() -> Upstream {
    let mut up = Upstream::default();
    let listener = rt()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    up.addr = Some(listener.local_addr().unwrap());
    let up2 = up.clone();
    rt().spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            *up2.conns.lock().unwrap() += 1;
            let up = up2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(up.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    up
}

/// A running `moat-proxy serve`.
pub struct Proxy {
    pub child: Child,
    pub addr: String,
    pub ca: PathBuf,
    pub token: String,
    pub trace: PathBuf,
    pub events: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<String>>,
    /// The rules pipe, kept open when the rules ended with a `rules_end` record.
    pub stdin: Option<std::process::ChildStdin>,
}

pub fn inject_rule(grant: &str, hosts: &[&str], header: &str, value: &str) -> String {
    serde_json::json!({"v":1,"type":"inject","grant":grant,"hosts":hosts,"header":header,"value":value,"placeholder":"ghp_placeholder"}).to_string() + "\n"
}

impl Proxy {
    /// Start with the rules, sending `host:443` to a test upstream on loopback `port` and
    /// trusting `ca` for it: the set-up nearly every HTTPS scenario needs.
    pub fn to_upstream(env: &TestEnv, rules: &str, host: &str, port: u16, ca: &Path) -> Proxy {
        let ct = format!("{host}:443:127.0.0.1:{port}");
        Proxy::start(
            env,
            rules,
            &["--connect-to", &ct, "--extra-ca", ca.to_str().unwrap()],
        )
    }

    /// Start with a token, the given rules on stdin and extra args.
    pub fn start(env: &TestEnv, rules: &str, args: &[&str]) -> Proxy {
        Proxy::start_with(env, None, rules, args)
    }

    /// Start under a wrapper program (e.g. `prlimit --nofile=64:64 --`).
    pub fn start_with(
        env: &TestEnv,
        wrapper: Option<&[&str]>,
        rules: &str,
        args: &[&str],
    ) -> Proxy {
        let token = format!("tok{}", moat_core::hex(&moat_core::random_bytes::<16>()));
        let tf = env.path().join(format!(
            "token-{}",
            moat_core::hex(&moat_core::random_bytes::<4>())
        ));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tf)
                .unwrap();
            f.write_all(token.as_bytes()).unwrap();
        }
        let trace = env.path().join(format!(
            "trace-{}.jsonl",
            moat_core::hex(&moat_core::random_bytes::<4>())
        ));
        let mut all: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--rules".into(),
            "-".into(),
        ];
        all.extend([
            "--token-file".into(),
            tf.display().to_string(),
            "--trace".into(),
            trace.display().to_string(),
        ]);
        all.extend(args.iter().map(|s| s.to_string()));
        let cmd = match wrapper {
            None => env.cmd("moat-proxy"),
            Some(w) => {
                let mut c = env.program(w[0]);
                c.args(&w[1..]).arg(moat_testkit::bin("moat-proxy"));
                c
            }
        };
        Proxy::spawn(cmd, rules, &all, token, trace)
    }

    pub fn spawn(
        mut cmd: Command,
        rules: &str,
        args: &[String],
        token: String,
        trace: PathBuf,
    ) -> Proxy {
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(rules.as_bytes()).unwrap();
        let stdin = rules.contains("\"rules_end\"").then_some(stdin);
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev2 = events.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = true;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if first {
                    let _ = tx.send(line.clone());
                    first = false;
                }
                ev2.lock().unwrap().push(line);
            }
        });
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let se2 = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                se2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(200));
                panic!("no listening record; stderr: {}", stderr.lock().unwrap());
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "listening", "{line}");
        Proxy {
            child,
            addr: v["addr"].as_str().unwrap().to_string(),
            ca: PathBuf::from(v["ca"].as_str().unwrap()),
            token,
            trace,
            events,
            stderr,
            stdin,
        }
    }

    pub fn url(&self) -> String {
        format!("http://moat:{}@{}", self.token, self.addr)
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn trace(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait until the trace has at least `n` records (they are written when requests end).
    pub fn wait_trace(&self, n: usize) -> Vec<serde_json::Value> {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let t = self.trace();
            if t.len() >= n || Instant::now() > end {
                return t;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The canary appears in none of the proxy's artifacts (trace, events, stderr), raw or base64.
    pub fn assert_no_leak(&self, secret: &str) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let hay = format!(
            "{}\n{}\n{}",
            std::fs::read_to_string(&self.trace).unwrap_or_default(),
            self.events.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap()
        );
        assert!(
            !hay.contains(secret),
            "canary leaked into proxy artifacts:\n{hay}"
        );
        assert!(
            !hay.contains(&b64[..b64.len() - 4]),
            "base64 canary leaked:\n{hay}"
        );
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(35);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("proxy did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct CurlOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run curl with a time bound.
pub fn curl(env: &TestEnv, args: &[&str]) -> CurlOut {
    let out = env
        .program("curl")
        .args(["-sS", "--max-time", "15", "--noproxy", ""])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    CurlOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The usual set-up: a test CA, a TLS upstream for `name` offering `alpn`, and the CA file.
pub fn granted_upstream(env: &TestEnv, name: &str, alpn: &[&[u8]]) -> (Upstream, PathBuf) {
    let ca = Ca::new("test root");
    let (leaf, key) = ca.leaf(leaf_params(&[name]));
    let up = tls_upstream(vec![leaf], key, alpn);
    let f = ca.write(&env.path().join(format!(
        "test-ca-{}.pem",
        moat_core::hex(&moat_core::random_bytes::<4>())
    )));
    (up, f)
}

/// An inject rule that sends `Authorization: Bearer <secret>` to `hosts` under `grant`.
pub fn bearer_rule(grant: &str, hosts: &[&str], secret: &str) -> String {
    inject_rule(grant, hosts, "Authorization", &format!("Bearer {secret}"))
}

impl Proxy {
    /// Start with the rules, sending each `host:port` of `routes` to a test upstream on that
    /// loopback port and trusting every CA file in `cas`.
    pub fn routed(env: &TestEnv, rules: &str, routes: &[(&str, u16)], cas: &[&Path]) -> Proxy {
        let mut args: Vec<String> = Vec::new();
        for (hp, port) in routes {
            args.extend(["--connect-to".into(), format!("{hp}:127.0.0.1:{port}")]);
        }
        for ca in cas {
            args.extend(["--extra-ca".into(), ca.to_str().unwrap().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start(env, rules, &args)
    }
}

/// The client side of an HTTPS tunnel: `CONNECT host:443` through the proxy at `addr` with
/// its token (the answer must be 200), then TLS offering ALPN h2 and trusting only the moat
/// CA `moat_ca` (PEM).
pub async fn connect_tls(
    addr: &str,
    token: &str,
    moat_ca: &[u8],
    host: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use base64::Engine;
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("moat:{token}"));
    tcp.write_all(
        format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(moat_ca).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(host.to_string().try_into().unwrap(), tcp)
        .await
        .unwrap()
}

impl Proxy {
    /// An HTTP/2 client for `host` through this proxy ([`connect_tls`], then the h2
    /// handshake; the connection is driven on the runtime it is awaited on).
    pub fn h2_client(
        &self,
        host: &str,
    ) -> impl std::future::Future<Output = hyper::client::conn::http2::SendRequest<Full<Bytes>>>
    + Send
    + 'static {
        let (addr, token, host) = (self.addr.clone(), self.token.clone(), host.to_string());
        let moat_ca = std::fs::read(&self.ca).unwrap();
        async move {
            let tls = connect_tls(&addr, &token, &moat_ca, &host).await;
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send
        }
    }
}

impl Seen {
    /// The request carried the credential: exactly one `Authorization: Bearer <secret>`.
    #[track_caller]
    pub fn assert_bearer(&self, secret: &str) {
        assert_eq!(
            self.header_all("authorization"),
            vec![format!("Bearer {secret}")]
        );
    }
}

/// The usual scenario: a fresh environment, a canary, a TLS upstream for api.github.com
/// offering `alpn`, and a proxy that injects `Authorization: Bearer <canary>` for it and
/// sends api.github.com:443 to that upstream (plus `extra` arguments). Returns the
/// environment, the upstream, the proxy and the canary.
pub fn setup(alpn: &[&[u8]], extra: &[&str]) -> (TestEnv, Upstream, Proxy, String) {
    let env = TestEnv::new();
    let secret = canary();
    let (up, ca) = granted_upstream(&env, "api.github.com", alpn);
    let rules = bearer_rule("github", &["api.github.com"], &secret);
    let ct = format!("api.github.com:443:127.0.0.1:{}", up.port());
    let mut args = vec!["--connect-to", &ct, "--extra-ca", ca.to_str().unwrap()];
    args.extend_from_slice(extra);
    let p = Proxy::start(&env, &rules, &args);
    (env, up, p, secret)
}
