//! The proxy itself: the accept loop, proxy authentication, CONNECT interception (TLS with
//! a leaf for the CONNECT host, HTTP/1.1 or HTTP/2 by ALPN), the authority checks (CONNECT
//! authority, SNI and every inner Host/:authority name one host, else 421), policy,
//! injection and forwarding. Errors are labelled by the side that failed: the client (400),
//! the upstream (502) or the proxy (500); denials are readable 403s.

use crate::admit::Slot;
use crate::ca::Ca;
use crate::h2guard::{Guarded, Tripped};
use crate::inject::{Injector, is_hop_by_hop};
use crate::policy::{Decision, Policy, display_host};
use crate::trace::{ReqCtx, Sinks, trace_url};
use crate::upstream::{Connector, DialError};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use moat_core::host::{canonical_authority, canonical_host};
use serde_json::json;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long an abusive HTTP/2 connection has to take its GOAWAY before it is dropped.
const ABUSE_GRACE: Duration = Duration::from_secs(1);
/// Request headers larger than this get 431 from the proxy itself.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Buffer per direction of a raw `--tunnel` connection.
const TUNNEL_BUF: usize = 64 * 1024;
/// What hyper buffers before refusing on its own (then without a readable response).
const MAX_BUF_BYTES: usize = 256 * 1024;
/// Encrypted bytes rustls queues per connection before a write waits for the socket
/// (rustls' default is 64 KiB: a large body then leaves in ~55 KiB writes, each waking
/// the reader). Drained as the socket takes it, so only a client that stops reading
/// holds this much.
pub const TLS_SEND_BUF: usize = 256 * 1024;

/// The rules in force: replaced as a whole when a new rule set arrives on the rules pipe.
/// A request takes one snapshot and keeps it to the end.
pub struct Live {
    pub injector: Injector,
    pub policy: Policy,
    pub relays: Vec<crate::relay::Relay>,
    /// Decoy credentials (decoy.rs): None when the run has none (nothing is scanned).
    pub decoys: Option<Arc<crate::decoy::Decoys>>,
}

pub struct State {
    pub token: Option<String>,
    pub live: std::sync::RwLock<Arc<Live>>,
    pub ca: Ca,
    pub sinks: Arc<Sinks>,
    pub client: Client<Connector, Body>,
    pub client_h1: Client<Connector, Body>,
    pub header_timeout: Duration,
    /// From accept to the first byte, and from a CONNECT's 200 to the end of the TLS
    /// handshake inside it.
    pub handshake_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// `--tunnel` targets: CONNECT passes through as raw bytes.
    pub tunnels: Vec<(String, u16)>,
    pub dial: Arc<crate::upstream::DialPolicy>,
    /// Token usage and budgets for the model APIs (usage.rs).
    pub usage: Arc<crate::usage::Meter>,
}

impl State {
    pub fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(msg.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn server_builder(st: &State, http1_only: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(st.header_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .max_headers(128);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(MAX_BUF_BYTES as u32)
        .max_pending_accept_reset_streams(32)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    if http1_only { b.http1_only() } else { b }
}

/// Serve one accepted client connection.
pub async fn serve_client(st: Arc<State>, tcp: tokio::net::TcpStream, permit: Slot) {
    let _ = tcp.set_nodelay(true);
    let permit = Arc::new(permit);
    // hyper times out slow headers once a byte has arrived; a client that sends nothing
    // at all would hold its connection slot forever.
    let mut first = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(st.handshake_timeout, tcp.peek(&mut first)) => match r {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        },
        _ = permit.evicted() => return,
    }
    let b = server_builder(&st, true);
    let st2 = st.clone();
    let evicted = permit.clone();
    let svc = service_fn(move |req| {
        let st = st2.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(outer(req, st, permit).await) }
    });
    let conn = b.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown_signal(st.shutdown.clone()) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        _ = evicted.evicted() => {}
    }
}

async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.is_ok();
}

fn proxy_token(h: &HeaderMap) -> Option<Vec<u8>> {
    use base64::Engine;
    for v in h.get_all(header::PROXY_AUTHORIZATION) {
        let s = v.to_str().ok()?.trim();
        let (scheme, rest) = s.split_once(' ')?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let dec = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let i = dec.iter().position(|b| *b == b':')?;
            return Some(dec[i + 1..].to_vec());
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.as_bytes().to_vec());
        }
    }
    None
}

fn authorized(st: &State, h: &HeaderMap) -> bool {
    let Some(want) = &st.token else { return true };
    match proxy_token(h) {
        // Length is not secret (tokens have a fixed format); the bytes are compared in constant time.
        Some(got) => got.len() == want.len() && bool::from(got.ct_eq(want.as_bytes())),
        None => false,
    }
}

fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

fn too_large(st: &State, req: &Request<Incoming>) -> Option<Response<Body>> {
    (header_bytes(req.headers()) > MAX_HEADER_BYTES).then(|| {
        client_error(
            st,
            req,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "moat-proxy: request headers are too large\n",
        )
    })
}

async fn outer(req: Request<Incoming>, st: Arc<State>, permit: Arc<Slot>) -> Response<Body> {
    if let Some(r) = too_large(&st, &req) {
        return r;
    }
    if req.uri().scheme_str().is_none()
        && req.method() != Method::CONNECT
        && (req.uri().path().starts_with("/relay/") || req.uri().path().starts_with("/mcp/"))
    {
        permit.productive();
        return relay(req, st).await;
    }
    if !authorized(&st, req.headers()) {
        let ctx = ReqCtx::new(
            st.sinks.clone(),
            &crate::decoy::traced_method(st.live().decoys.as_ref(), req.method().as_str()),
            target_for_trace(&st, &req),
        );
        ctx.set_status(407);
        ctx.set_error("client", "missing or wrong proxy credentials".into());
        let mut r = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "moat-proxy: proxy authentication required\n",
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"moat\""),
        );
        return r;
    }
    if req.method() == Method::CONNECT {
        return connect(req, st, permit).await;
    }
    permit.productive();
    match req.uri().scheme_str() {
        Some("http") => {}
        Some(_) => {
            return client_error(
                &st,
                &req,
                StatusCode::BAD_REQUEST,
                "moat-proxy: use CONNECT for https:// URLs\n",
            );
        }
        None => {
            return client_error(
                &st,
                &req,
                StatusCode::BAD_REQUEST,
                "moat-proxy: this is a proxy; send absolute-form requests (http://host/path) or CONNECT\n",
            );
        }
    }
    let Some(auth) = req.uri().authority().map(|a| a.as_str().to_string()) else {
        return client_error(
            &st,
            &req,
            StatusCode::BAD_REQUEST,
            "moat-proxy: request target has no host\n",
        );
    };
    let Ok((host, port)) = canonical_authority(&auth, 80) else {
        return client_error(
            &st,
            &req,
            StatusCode::BAD_REQUEST,
            "moat-proxy: bad host in request target\n",
        );
    };
    // The request target wins (RFC 9112); a Host naming anything else is refused, not ignored.
    if let Err(r) = check_host_headers(&st, &req, &host, port, 80) {
        return r;
    }
    forward(
        req,
        st,
        Target {
            tls: false,
            host,
            port,
        },
    )
    .await
}

/// A relay request: the token is in the path, not in `Proxy-Authorization`.
async fn relay(mut req: Request<Incoming>, st: Arc<State>) -> Response<Body> {
    let refuse = |st: &State, status: StatusCode, msg: &str| {
        let ctx = ReqCtx::new(st.sinks.clone(), req.method().as_str(), "relay".into());
        ctx.set_status(status.as_u16());
        ctx.set_error(
            "client",
            msg.trim().trim_start_matches("moat-proxy: ").to_string(),
        );
        text(status, msg.to_string())
    };
    let path = req.uri().path().to_string();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let Some(crate::relay::RelayPath {
        mcp,
        token,
        name,
        tail,
    }) = crate::relay::split_path(&path)
    else {
        return refuse(
            &st,
            StatusCode::NOT_FOUND,
            "moat-proxy: relay paths are /relay/TOKEN/NAME/... or /mcp/TOKEN/NAME\n",
        );
    };
    if let Some(want) = &st.token
        && !(token.len() == want.len() && bool::from(token.as_bytes().ct_eq(want.as_bytes())))
    {
        return refuse(
            &st,
            StatusCode::FORBIDDEN,
            "moat-proxy: wrong relay token\n",
        );
    }
    let Some(r) = st
        .live()
        .relays
        .iter()
        .rev()
        .find(|r| r.name == name && r.mcp == mcp)
        .cloned()
    else {
        let what = if mcp { "MCP server" } else { "relay" };
        return refuse(
            &st,
            StatusCode::NOT_FOUND,
            &format!("moat-proxy: no {what} named {name:?}\n"),
        );
    };
    let mut pq = format!("{}{tail}{query}", r.base);
    if !pq.starts_with('/') {
        pq.insert(0, '/');
    }
    match pq.parse::<http::Uri>() {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => return refuse(&st, StatusCode::BAD_REQUEST, "moat-proxy: bad relay path\n"),
    }
    forward(
        req,
        st,
        Target {
            tls: r.tls,
            host: r.host,
            port: r.port,
        },
    )
    .await
}

/// The target of a request refused before `forward` (never sent upstream), as the trace
/// records it: a path or query carrying a decoy is `[decoy]` here too.
fn target_for_trace(st: &State, req: &Request<Incoming>) -> String {
    let live = st.live();
    let a = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    match canonical_authority(
        a,
        if req.method() == Method::CONNECT {
            443
        } else {
            80
        },
    ) {
        Ok((h, p)) if req.method() == Method::CONNECT => display_host(&h, p),
        Ok((h, p)) => trace_url(
            "http",
            &h,
            p,
            &crate::decoy::traced(
                live.decoys.as_ref(),
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
            ),
        ),
        Err(_) => "-".into(),
    }
}

fn client_error(
    st: &State,
    req: &Request<Incoming>,
    status: StatusCode,
    msg: &str,
) -> Response<Body> {
    let ctx = ReqCtx::new(
        st.sinks.clone(),
        &crate::decoy::traced_method(st.live().decoys.as_ref(), req.method().as_str()),
        target_for_trace(st, req),
    );
    ctx.set_status(status.as_u16());
    ctx.set_error(
        "client",
        msg.trim().trim_start_matches("moat-proxy: ").to_string(),
    );
    text(status, msg)
}

#[allow(clippy::result_large_err)]
fn check_host_headers(
    st: &State,
    req: &Request<Incoming>,
    host: &str,
    port: u16,
    default_port: u16,
) -> Result<(), Response<Body>> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err(client_error(
            st,
            req,
            StatusCode::BAD_REQUEST,
            "moat-proxy: more than one Host header\n",
        ));
    }
    for h in hosts {
        let ok = h
            .to_str()
            .ok()
            .and_then(|s| canonical_authority(s, default_port).ok())
            .is_some_and(|(h2, p2)| h2 == host && p2 == port);
        if !ok {
            return Err(misdirected(st, req));
        }
    }
    Ok(())
}

fn misdirected(st: &State, req: &Request<Incoming>) -> Response<Body> {
    client_error(
        st,
        req,
        StatusCode::MISDIRECTED_REQUEST,
        "moat-proxy: the request names a different host than the connection (CONNECT authority, TLS server name and Host must agree)\n",
    )
}

async fn connect(req: Request<Incoming>, st: Arc<State>, permit: Arc<Slot>) -> Response<Body> {
    let Some(auth) = req.uri().authority().map(|a| a.as_str().to_string()) else {
        return client_error(
            &st,
            &req,
            StatusCode::BAD_REQUEST,
            "moat-proxy: CONNECT needs host:port\n",
        );
    };
    let Ok((host, port)) = canonical_authority(&auth, 443) else {
        return client_error(
            &st,
            &req,
            StatusCode::BAD_REQUEST,
            "moat-proxy: bad host in CONNECT\n",
        );
    };
    let on_upgrade = hyper::upgrade::on(req);
    if st.tunnels.iter().any(|(h, p)| *h == host && *p == port) {
        return raw_tunnel(on_upgrade, host, port, st, permit).await;
    }
    tokio::spawn(async move {
        let tunnel = async {
            if let Ok(up) = on_upgrade.await {
                intercept(up, host, port, st, &permit).await;
            }
        };
        tokio::select! {
            _ = tunnel => {}
            _ = permit.evicted() => {}
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::OK;
    r
}

/// A `--tunnel` target (SSH to a granted host): dialed under the same address checks as
/// any upstream before the client hears 200, then bytes pass through both ways uninspected;
/// one trace record with the byte counts when it closes.
async fn raw_tunnel(
    on_upgrade: hyper::upgrade::OnUpgrade,
    host: String,
    port: u16,
    st: Arc<State>,
    permit: Arc<Slot>,
) -> Response<Body> {
    let ctx = ReqCtx::new(
        st.sinks.clone(),
        "CONNECT",
        format!("tcp://{}", display_host(&host, port)),
    );
    ctx.set_policy("tunnel".into());
    let dialed = async {
        let addrs = crate::upstream::resolve(&st.dial, &host, port).await?;
        crate::upstream::dial_tcp(&addrs, &host).await
    }
    .await;
    let mut up = match dialed {
        Ok(s) => s,
        Err(e) => {
            let msg = e.to_string();
            ctx.set_status(502);
            ctx.set_error("upstream", msg.clone());
            return text(StatusCode::BAD_GATEWAY, format!("moat-proxy: {msg}\n"));
        }
    };
    ctx.set_status(200);
    permit.productive();
    let mut shutdown = st.shutdown.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let Ok(client) = on_upgrade.await else {
            return;
        };
        let mut client = TokioIo::new(client);
        // 64 KiB each way, not tokio's 8 KiB: a bulk transfer (a clone over SSH) makes an
        // eighth of the system calls.
        let copy =
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, TUNNEL_BUF, TUNNEL_BUF);
        tokio::select! {
            r = copy => match r {
                Ok((to_up, to_client)) => {
                    ctx.add_in(to_up);
                    ctx.add_out(to_client);
                }
                Err(e) => ctx.set_error("tunnel", moat_core::error::io_msg(&e)),
            },
            _ = shutdown.wait_for(|s| *s) => {}
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::OK;
    r
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
}

async fn intercept(
    up: hyper::upgrade::Upgraded,
    host: String,
    port: u16,
    st: Arc<State>,
    slot: &Slot,
) {
    let fail = |msg: String| {
        let ctx = ReqCtx::new(st.sinks.clone(), "CONNECT", display_host(&host, port));
        ctx.set_error("client", msg);
    };
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(
        rustls::server::Acceptor::default(),
        TokioIo::new(up),
    );
    // The whole handshake (ClientHello included) has `handshake_timeout`: a tunnel that
    // never starts TLS holds a connection slot for that long at most.
    let deadline = tokio::time::Instant::now() + st.handshake_timeout;
    let start = match tokio::time::timeout_at(deadline, acceptor).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return fail(format!(
                "TLS from the client failed: {}",
                moat_core::error::io_msg(&e)
            ));
        }
        Err(_) => return fail("the client sent no TLS ClientHello in time".into()),
    };
    let sni = start.client_hello().server_name().map(str::to_string);
    let sni_mismatch =
        sni.is_some_and(|s| canonical_host(&s).ok().as_deref() != Some(host.as_str()));
    let cfg = match st.ca.server_config(&host) {
        Ok(c) => c,
        Err(e) => return fail(format!("minting a certificate: {}", e.msg)),
    };
    let mut tls = match tokio::time::timeout_at(deadline, start.into_stream(cfg)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return fail(format!(
                "TLS from the client failed: {}",
                moat_core::error::io_msg(&e)
            ));
        }
        Err(_) => return fail("TLS handshake with the client timed out".into()),
    };
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUF));
    slot.productive();
    let t_host = host.clone();
    let tunnel = Arc::new(Tunnel {
        host,
        port,
        sni_mismatch,
    });
    let b = server_builder(&st, false);
    let st2 = st.clone();
    let svc = service_fn(move |req| {
        let st = st2.clone();
        let t = tunnel.clone();
        async move { Ok::<_, Infallible>(inner(req, st, t).await) }
    });
    let tripped = Arc::new(Tripped::default());
    let io = Guarded::new(tls, tripped.clone());
    let conn = b.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown_signal(st.shutdown.clone()) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        _ = tripped.wait() => {
            // HTTP/2 control-frame flood: GOAWAY, then close whatever is left shortly after
            // (the guard has stopped reading, so in-flight streams get no more input).
            let ctx = ReqCtx::new(st.sinks.clone(), "CONNECT", display_host(&t_host, port));
            ctx.set_error(
                "client",
                "HTTP/2 control-frame flood (PING, SETTINGS, RST_STREAM, PRIORITY or empty DATA); connection closed".into(),
            );
            drop(ctx);
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(ABUSE_GRACE, conn).await;
        }
    }
}

struct Tunnel {
    host: String,
    port: u16,
    sni_mismatch: bool,
}

async fn inner(req: Request<Incoming>, st: Arc<State>, t: Arc<Tunnel>) -> Response<Body> {
    if let Some(r) = too_large(&st, &req) {
        return r;
    }
    if t.sni_mismatch {
        return misdirected(&st, &req);
    }
    if let Some(s) = req.uri().scheme_str()
        && s != "https"
    {
        return misdirected(&st, &req);
    }
    let mut names = 0;
    if let Some(a) = req.uri().authority() {
        names += 1;
        match canonical_authority(a.as_str(), 443) {
            Ok((h, p)) if h == t.host && p == t.port => {}
            _ => return misdirected(&st, &req),
        }
    }
    if let Err(r) = check_host_headers(&st, &req, &t.host, t.port, 443) {
        return r;
    }
    names += req.headers().get_all(header::HOST).iter().count();
    if names == 0 {
        return client_error(
            &st,
            &req,
            StatusCode::BAD_REQUEST,
            "moat-proxy: request has no Host\n",
        );
    }
    forward(
        req,
        st,
        Target {
            tls: true,
            host: t.host.clone(),
            port: t.port,
        },
    )
    .await
}

fn connection_tokens(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Remove hop-by-hop headers, everything `Connection` names and every `Proxy-*` header.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    for t in connection_tokens(h) {
        if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
            h.remove(n);
        }
    }
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|n| is_hop_by_hop(n) || n.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}

async fn forward(mut req: Request<Incoming>, st: Arc<State>, t: Target) -> Response<Body> {
    let live = st.live();
    let scheme = if t.tls { "https" } else { "http" };
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let method = req.method().clone();
    let ctx = ReqCtx::new(
        st.sinks.clone(),
        &crate::decoy::traced_method(live.decoys.as_ref(), method.as_str()),
        trace_url(
            scheme,
            &t.host,
            t.port,
            &crate::decoy::traced(live.decoys.as_ref(), &pq),
        ),
    );
    let path = pq.split('?').next().unwrap_or("/").to_string();
    let trip = |action| crate::decoy::Trip {
        sinks: st.sinks.clone(),
        host: display_host(&t.host, t.port),
        method: crate::decoy::traced_method(live.decoys.as_ref(), method.as_str()).into_owned(),
        request_id: ctx.id.clone(),
        action,
    };
    if let Some(r) = crate::decoy::check_head(
        live.decoys.as_ref(),
        trip,
        &ctx,
        method.as_str(),
        &pq,
        req.headers(),
    ) {
        return r;
    }

    if let Decision::Deny {
        rule,
        kind,
        message,
    } = live.policy.check(&t.host, t.port, method.as_str(), &pq)
    {
        return deny(&st, ctx, &t, &method, &path, rule, kind, message);
    }
    // Issue #21: a spent budget refuses model requests before anything is sent.
    let model_api = crate::usage::model_host(&t.host);
    if let Some(p) = model_api
        && let Err(r) = st.usage.admit(method == Method::POST)
    {
        ctx.set_policy(format!("budget:{}", r.which()));
        crate::usage::drain(req.into_body()).await;
        let host = display_host(&t.host, t.port);
        return finish(
            ctx.clone(),
            st.usage.refuse(&r, p, &st.sinks, &host, &ctx.id),
        );
    }

    // THREATS A6: a credential never crosses the network in clear unless its grant was
    // stored for `http://`. A plain-HTTP request that would get one over HTTPS is refused.
    if !t.tls {
        let refused = live.injector.https_only(req.headers(), &t.host, t.port);
        if !refused.is_empty() {
            let g = refused.join(", ");
            let shown = display_host(&t.host, t.port);
            return deny(
                &st,
                ctx,
                &t,
                &method,
                &path,
                format!("https-only: {g}"),
                "https-only",
                format!(
                    "Moat: plain-HTTP request refused.\nThe grant {g} for {shown} is injected only over HTTPS; use https:// or re-grant with an explicit http:// host.\n"
                ),
            );
        }
    }

    // Upgrades: WebSocket only (h2c and anything else would turn the request into a tunnel
    // the proxy cannot see into).
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .map(|v| v.as_bytes().to_ascii_lowercase());
    let is_ws = match upgrade.as_deref() {
        None => false,
        Some(b"websocket")
            if connection_tokens(req.headers())
                .iter()
                .any(|t| t == "upgrade") =>
        {
            true
        }
        Some(_) => {
            return finish(
                ctx.clone(),
                client_error_ctx(
                    &ctx,
                    StatusCode::BAD_REQUEST,
                    "moat-proxy: only WebSocket upgrades are supported\n",
                ),
            );
        }
    };
    let client_upgrade = if is_ws {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let mut body: Body = body.map_err(box_hyper_err).boxed_unsync();
    body = crate::decoy::scan_body(body, live.decoys.as_ref(), trip);
    let mut aws_grant = None;
    if let Some(signer) = live.injector.aws.as_ref()
        && signer.covers(&t.host, t.port, t.tls)
    {
        // Issue #23: verify the placeholder's SigV4 signature, then sign with the real key.
        let client_host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| display_host(&t.host, t.port));
        let out_host = display_host(&t.host, t.port);
        match crate::awssign::apply(
            signer,
            method.as_str(),
            &pq,
            &client_host,
            &out_host,
            &mut headers,
            body,
        )
        .await
        {
            Ok((b, signed)) => {
                body = b;
                if let Some(s) = signed {
                    if let Decision::Deny {
                        rule,
                        kind,
                        message,
                    } = live
                        .policy
                        .check_aws(&t.host, t.port, &s.service, s.action.as_deref())
                    {
                        ctx.set_aws(format!(
                            "{}:{}",
                            s.service,
                            s.action.as_deref().unwrap_or("?")
                        ));
                        return deny(&st, ctx, &t, &method, &path, rule, kind, message);
                    }
                    ctx.set_aws(format!(
                        "{}:{}",
                        s.service,
                        s.action.as_deref().unwrap_or("?")
                    ));
                    aws_grant = Some(signer.grant.clone());
                }
            }
            Err(m) => {
                return deny(
                    &st,
                    ctx,
                    &t,
                    &method,
                    &path,
                    "aws-sign".into(),
                    "aws-signature",
                    format!("Moat: AWS request refused.\n{m}.\n"),
                );
            }
        }
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|s| {
            s.split(',')
                .any(|x| x.trim().eq_ignore_ascii_case("trailers"))
        });
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if is_ws {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let mut grants = live.injector.apply(&mut headers, &t.host, t.port, t.tls);
    grants.extend(aws_grant);
    if is_ws && (!grants.is_empty() || live.decoys.is_some()) {
        // The upstream's frames are masked as they stream (THREATS D3), which needs them
        // uncompressed: no extension is offered.
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    if model_api.is_some() && method == Method::POST {
        // Usage is read from the answer as it passes; a compressed one could not be.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    if !grants.is_empty() {
        // Masking reads response bodies as they pass; a compressed body would carry an
        // echoed credential where masking cannot see it and the client's decoder can.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        ctx.set_grant(grants.join(","));
        #[derive(serde::Serialize)]
        struct CredentialUsed<'a> {
            grant: &'a str,
            host: &'a str,
            method: &'a str,
            request_id: &'a str,
        }
        let host = display_host(&t.host, t.port);
        for g in &grants {
            st.sinks.event(
                "credential_used",
                &CredentialUsed {
                    grant: g,
                    host: &host,
                    method: method.as_str(),
                    request_id: &ctx.id,
                },
            );
        }
    }
    let host_part = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let default = if t.tls { 443 } else { 80 };
    let authority = if t.port == default {
        host_part
    } else {
        format!("{host_part}:{}", t.port)
    };
    let uri = match format!("{scheme}://{authority}{pq}").parse::<http::Uri>() {
        Ok(u) => u,
        Err(_) => {
            return finish(
                ctx.clone(),
                client_error_ctx(
                    &ctx,
                    StatusCode::BAD_REQUEST,
                    "moat-proxy: bad request target\n",
                ),
            );
        }
    };
    let body = Counted {
        inner: body,
        ctx: Some(ctx.clone()),
        outbound: false,
    }
    .boxed_unsync();
    let mut out = Request::new(body);
    *out.method_mut() = method.clone();
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;

    let client = if is_ws { &st.client_h1 } else { &st.client };
    let res = match tokio::time::timeout(RESPONSE_HEADER_TIMEOUT, client.request(out)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return upstream_error(&st, ctx, &t, &method, &path, &e),
        Err(_) => {
            ctx.set_error("upstream", "no response headers in time".into());
            return finish(
                ctx,
                text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "moat-proxy: the upstream sent no response in time\n",
                ),
            );
        }
    };
    let mut res = res;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_up) = client_upgrade else {
            ctx.set_error("upstream", "unexpected 101 response".into());
            return finish(
                ctx,
                text(
                    StatusCode::BAD_GATEWAY,
                    "moat-proxy: the upstream switched protocols unasked\n",
                ),
            );
        };
        let upstream_up = hyper::upgrade::on(&mut res);
        let (mut parts, _) = res.into_parts();
        let keep_upgrade = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if !grants.is_empty() {
            let secrets = live.injector.secrets(&t.host, t.port, t.tls);
            crate::redact::mask_headers(&secrets, &mut parts.headers);
            // hyper writes a non-standard reason phrase back as received; it may echo one.
            parts.extensions.remove::<hyper::ext::ReasonPhrase>();
        }
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = keep_upgrade {
            parts.headers.insert(header::UPGRADE, u);
        }
        ctx.set_status(101);
        let c2 = ctx.clone();
        let masker = (!grants.is_empty())
            .then(|| crate::wsmask::WsMasker::new(live.injector.secrets(&t.host, t.port, t.tls)));
        let scan = live
            .decoys
            .clone()
            .map(|d| (trip(d.action), crate::decoy::WsScan::new(d)));
        tokio::spawn(async move {
            let (Ok(a), Ok(b)) = (client_up.await, upstream_up.await) else {
                return;
            };
            let (mut ar, mut aw) = tokio::io::split(TokioIo::new(a));
            let (mut br, mut bw) = tokio::io::split(TokioIo::new(b));
            let up = async {
                match scan {
                    Some((tr, s)) => crate::decoy::pump_scanned(&mut ar, &mut bw, s, tr).await,
                    None => pump(&mut ar, &mut bw, None).await,
                }
            };
            let (i, o) = tokio::join!(up, pump(&mut br, &mut aw, masker));
            c2.add_in(i);
            c2.add_out(o);
        });
        let mut r = Response::from_parts(parts, full(Bytes::new()));
        r.headers_mut().insert(
            "x-moat-request-id",
            HeaderValue::from_str(&ctx.id).unwrap_or(HeaderValue::from_static("-")),
        );
        return r;
    }
    let (mut parts, body) = res.into_parts();
    if !grants.is_empty()
        && method != Method::HEAD
        && !matches!(parts.status.as_u16(), 204 | 304)
        && let Some(coding) = crate::redact::unmaskable_coding(&parts.headers)
    {
        // THREATS B4: masking cannot see into a compressed body, and the agent can decode it.
        ctx.set_error(
            "upstream",
            format!("response to a credentialed request in {coding}; refused, it cannot be masked"),
        );
        return finish(
            ctx,
            text(
                StatusCode::BAD_GATEWAY,
                format!(
                    "moat-proxy: the upstream answered a request that carried a credential with a compressed body ({coding}) although it was asked for identity; moat cannot mask it, so the response is refused\n"
                ),
            ),
        );
    }
    strip_hop_by_hop(&mut parts.headers);
    let body = Counted {
        inner: body,
        ctx: Some(ctx.clone()),
        outbound: true,
    };
    let body: Body = match model_api {
        Some(p) if method == Method::POST => {
            let host = display_host(&t.host, t.port);
            crate::usage::tap(&st.usage, &st.sinks, p, &host, &ctx.id, &parts, body).boxed_unsync()
        }
        _ => body.boxed_unsync(),
    };
    let body = if grants.is_empty() {
        body
    } else {
        // The request carried a credential: mask it wherever the response reflects it.
        let secrets = live.injector.secrets(&t.host, t.port, t.tls);
        crate::redact::mask_headers(&secrets, &mut parts.headers);
        // hyper writes a non-standard reason phrase back as received; it may echo one.
        parts.extensions.remove::<hyper::ext::ReasonPhrase>();
        crate::redact::Redact::new(body, secrets).boxed_unsync()
    };
    finish(ctx, Response::from_parts(parts, body))
}

fn box_hyper_err(e: hyper::Error) -> BoxError {
    Box::new(e)
}

fn client_error_ctx(ctx: &Arc<ReqCtx>, status: StatusCode, msg: &str) -> Response<Body> {
    ctx.set_error(
        "client",
        msg.trim().trim_start_matches("moat-proxy: ").to_string(),
    );
    text(status, msg)
}

/// Copy one direction of an upgraded connection until EOF or error; returns the bytes copied.
/// With a masker (the upstream's side of a WebSocket that carried a credential), its frames
/// are masked on the way, and an unreadable frame ends the copy.
async fn pump<R, W>(r: &mut R, w: &mut W, mut masker: Option<crate::wsmask::WsMasker>) -> u64
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if let Some(m) = masker.as_mut() {
                    let rest = m.finish();
                    if w.write_all(&rest).await.is_ok() {
                        n += rest.len() as u64;
                    }
                }
                break;
            }
            Ok(k) => {
                let masked;
                let out = match masker.as_mut() {
                    Some(m) => {
                        let Ok(o) = m.push(&buf[..k]) else { break };
                        masked = o;
                        &masked[..]
                    }
                    None => &buf[..k],
                };
                if w.write_all(out).await.is_err() {
                    break;
                }
                n += out.len() as u64;
            }
        }
    }
    let _ = w.shutdown().await;
    n
}

fn finish(ctx: Arc<ReqCtx>, mut r: Response<Body>) -> Response<Body> {
    ctx.set_status(r.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        r.headers_mut().insert("x-moat-request-id", v);
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn deny(
    st: &State,
    ctx: Arc<ReqCtx>,
    t: &Target,
    method: &Method,
    path: &str,
    rule: String,
    kind: &'static str,
    message: String,
) -> Response<Body> {
    st.sinks.event(
        "policy_denied",
        &json!({"host": display_host(&t.host, t.port), "method": crate::decoy::traced_method(st.live().decoys.as_ref(), method.as_str()), "path": crate::decoy::traced(st.live().decoys.as_ref(), path), "rule": rule, "request_id": ctx.id}),
    );
    ctx.set_policy(rule);
    let mut r = text(StatusCode::FORBIDDEN, message);
    r.headers_mut()
        .insert("x-moat-blocked", HeaderValue::from_static(kind));
    finish(ctx, r)
}

fn upstream_error(
    st: &State,
    ctx: Arc<ReqCtx>,
    t: &Target,
    method: &Method,
    path: &str,
    e: &hyper_util::client::legacy::Error,
) -> Response<Body> {
    if let Some(d) = crate::decoy::tripped_in(e) {
        return crate::decoy::refused(&ctx, "body", Some(&d));
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(d) = s.downcast_ref::<DialError>() {
            if let DialError::Forbidden { .. } = d {
                let msg = format!("Moat: request blocked by network policy.\n{d}.\n");
                return deny(
                    st,
                    ctx,
                    t,
                    method,
                    path,
                    "private-address".into(),
                    "private-address",
                    msg,
                );
            }
            ctx.set_error("upstream", d.to_string());
            return finish(
                ctx,
                text(StatusCode::BAD_GATEWAY, format!("moat-proxy: {d}\n")),
            );
        }
        src = s.source();
    }
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    ctx.set_error("upstream", msg.clone());
    finish(
        ctx,
        text(
            StatusCode::BAD_GATEWAY,
            format!("moat-proxy: upstream request failed: {msg}\n"),
        ),
    )
}

/// A body that counts bytes into its request's trace record and lets go of the record
/// when it ends, so the record is written once both bodies are done.
struct Counted<B> {
    inner: B,
    ctx: Option<Arc<ReqCtx>>,
    outbound: bool,
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(c)) = (f.data_ref(), &this.ctx) {
                    if this.outbound {
                        c.add_out(d.len() as u64)
                    } else {
                        c.add_in(d.len() as u64)
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                if let Some(c) = this.ctx.take() {
                    let side = if this.outbound { "upstream" } else { "client" };
                    c.set_error(side, format!("body: {e}"));
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ctx.take();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
