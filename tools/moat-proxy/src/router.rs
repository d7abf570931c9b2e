//! The hostname router: a reverse proxy on a loopback port that sends
//! `[ENDPOINT.]NAME.localhost:PORT` to the container port of a running agent's endpoint.
//! One port serves TLS and plain HTTP (a first byte of 0x16 is a TLS handshake); TLS leaves
//! come from the routing CA, which is name-constrained to localhost. Routes are the files
//! under `MOAT_HOME/routes/`, read on every request and honoured only while their run is
//! running; nothing else is ever dialled, so the router is no open proxy.

use crate::ca::Ca;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use moat_core::{MoatHome, routes};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// From accept to a complete TLS handshake (or, for plain HTTP, the first byte); then the
/// request headers have HEADER_TIMEOUT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a host name asks for.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Target {
    /// `localhost`, `127.0.0.1`, `[::1]`: the index of running agents.
    Index,
    /// `NAME.localhost` or `ENDPOINT.NAME.localhost`.
    Agent {
        name: String,
        endpoint: Option<String>,
    },
}

/// Parse a `Host` header value (or a TLS server name): an optional port, case-insensitive,
/// one trailing dot allowed. Returns why it is refused otherwise.
pub fn parse_host(h: &str) -> Result<Target, String> {
    if h.is_empty() {
        return Err("the Host is empty".into());
    }
    if h.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(format!(
            "the Host {h:?} holds spaces or non-ASCII characters"
        ));
    }
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("the Host {h:?} has an unclosed '['"))?;
        if !after.is_empty() && !after.starts_with(':') {
            return Err(format!("the Host {h:?} has junk after ']'"));
        }
        (format!("[{ip}]"), after.strip_prefix(':'))
    } else {
        match h.split_once(':') {
            Some((a, p)) => (a.to_string(), Some(p)),
            None => (h.to_string(), None),
        }
    };
    if let Some(p) = port
        && (p.is_empty()
            || p.len() > 5
            || !p.bytes().all(|b| b.is_ascii_digit())
            || !matches!(p.parse::<u32>(), Ok(1..=65535)))
    {
        return Err(format!("the Host {h:?} has a bad port {p:?}"));
    }
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
        return Ok(Target::Index);
    }
    let Some(prefix) = host.strip_suffix(".localhost") else {
        return Err(format!("{host:?} is not a .localhost host"));
    };
    let labels: Vec<&str> = prefix.split('.').collect();
    for l in &labels {
        routes::check_label(l).map_err(|m| format!("in the Host {h:?}: {m}"))?;
    }
    match labels.as_slice() {
        [name] => Ok(Target::Agent {
            name: name.to_string(),
            endpoint: None,
        }),
        [ep, name] => Ok(Target::Agent {
            name: name.to_string(),
            endpoint: Some(ep.to_string()),
        }),
        _ => Err(format!(
            "{host:?} has too many labels: use ENDPOINT.NAME.localhost or NAME.localhost"
        )),
    }
}

pub struct State {
    pub home: MoatHome,
    pub ca: Ca,
    pub port: u16,
}

struct Conn {
    tls: bool,
    /// The target the TLS server name asked for; the Host must agree.
    sni: Option<Target>,
    peer: SocketAddr,
}

fn log(line: &str) {
    eprintln!("{} {line}", moat_core::timefmt::now_rfc3339());
}

/// Serve one accepted connection until it is done, or until, before its first request,
/// it is closed to make room for a newer connection (see `admit`).
pub async fn serve_conn(
    st: Arc<State>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: crate::admit::Slot,
) {
    let slot = Arc::new(slot);
    tokio::select! {
        _ = serve_tcp(st, tcp, peer, slot.clone()) => {}
        _ = slot.evicted() => {}
    }
}

/// TLS or plain HTTP, told apart by the first byte.
async fn serve_tcp(
    st: Arc<State>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Arc<crate::admit::Slot>,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    if first[0] == 0x16 {
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let Ok(Ok(start)) = tokio::time::timeout_at(deadline, acceptor).await else {
            return;
        };
        let (name, sni) = match start.client_hello().server_name() {
            None => ("127.0.0.1".to_string(), None),
            Some(s) => match parse_host(s) {
                Ok(t) => (
                    s.to_ascii_lowercase().trim_end_matches('.').to_string(),
                    Some(t),
                ),
                Err(m) => {
                    log(&format!("TLS from {peer} refused: {m}"));
                    return;
                }
            },
        };
        let cfg = match st.ca.server_config(&name) {
            Ok(c) => {
                let mut c = (*c).clone();
                c.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(c)
            }
            Err(e) => {
                log(&format!("minting a certificate for {name}: {}", e.msg));
                return;
            }
        };
        let Ok(Ok(tls)) = tokio::time::timeout_at(deadline, start.into_stream(cfg)).await else {
            return;
        };
        let c = Arc::new(Conn {
            tls: true,
            sni,
            peer,
        });
        serve_http(st, TokioIo::new(tls), c, slot).await
    } else {
        let c = Arc::new(Conn {
            tls: false,
            sni: None,
            peer,
        });
        serve_http(st, TokioIo::new(tcp), c, slot).await
    }
}

async fn serve_http<I>(st: Arc<State>, io: I, c: Arc<Conn>, slot: Arc<crate::admit::Slot>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        slot.productive();
        let st = st.clone();
        let c = c.clone();
        async move { Ok::<_, Infallible>(handle(req, st, c).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, svc)
        .with_upgrades()
        .await;
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

fn wants_json(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("application/json")))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(
    status: StatusCode,
    json: bool,
    j: serde_json::Value,
    title: &str,
    html: &str,
) -> Response<Body> {
    let (ct, body) = if json {
        ("application/json", format!("{j}\n"))
    } else {
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body>\n<h1>{t}</h1>\n{html}</body></html>\n",
                t = esc(title)
            ),
        )
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, json: bool, msg: &str, extra: &str) -> Response<Body> {
    page(
        status,
        json,
        serde_json::json!({"error": msg}),
        &format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
        &format!("<p>{}</p>\n{extra}", esc(msg)),
    )
}

fn url(scheme: &str, ep: Option<&str>, name: &str, port: u16) -> String {
    match ep {
        Some(e) => format!("{scheme}://{e}.{name}.localhost:{port}/"),
        None => format!("{scheme}://{name}.localhost:{port}/"),
    }
}

/// The running agents and their endpoints (JSON form).
fn listing(st: &State, scheme: &str, rs: &[routes::Route]) -> serde_json::Value {
    let agents: Vec<_> = rs
        .iter()
        .map(|r| {
            let eps: serde_json::Map<_, _> = r
                .endpoints
                .keys()
                .map(|e| {
                    (
                        e.clone(),
                        serde_json::json!({"url": url(scheme, Some(e), &r.name, st.port)}),
                    )
                })
                .collect();
            serde_json::json!({"name": r.name, "run_id": r.run_id, "endpoints": eps})
        })
        .collect();
    serde_json::json!({"agents": agents})
}

fn listing_html(st: &State, scheme: &str, rs: &[routes::Route]) -> String {
    if rs.is_empty() {
        return "<p>No running agent has endpoints. Runs with <code>ports:</code> in their moat.yaml appear here.</p>\n".into();
    }
    let mut h = String::from("<ul>\n");
    for r in rs {
        h.push_str(&format!(
            "<li><b>{}</b> <small>({})</small><ul>\n",
            esc(&r.name),
            esc(&r.run_id)
        ));
        for e in r.endpoints.keys() {
            let u = url(scheme, Some(e), &r.name, st.port);
            h.push_str(&format!(
                "<li>{}: <a href=\"{u}\">{u}</a></li>\n",
                esc(e),
                u = esc(&u)
            ));
        }
        h.push_str("</ul></li>\n");
    }
    h.push_str("</ul>\n");
    h
}

async fn handle(req: Request<Incoming>, st: Arc<State>, c: Arc<Conn>) -> Response<Body> {
    let json = wants_json(req.headers());
    let scheme = if c.tls { "https" } else { "http" };
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    let resp = route(req, &st, &c, json, scheme, host.as_deref()).await;
    log(&format!(
        "{} {scheme} {} -> {}",
        c.peer.ip(),
        host.as_deref().unwrap_or("-"),
        resp.status().as_u16()
    ));
    resp
}

async fn route(
    req: Request<Incoming>,
    st: &State,
    c: &Conn,
    json: bool,
    scheme: &str,
    host: Option<&str>,
) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            json,
            "this is moat's hostname router, not a forward proxy",
            "",
        );
    }
    if req.uri().scheme().is_some_and(|s| s.as_str() != scheme) {
        return error(
            StatusCode::BAD_REQUEST,
            json,
            "the request's URL scheme does not match the connection",
            "",
        );
    }
    let Some(host) = host else {
        return error(StatusCode::BAD_REQUEST, json, "the request has no Host", "");
    };
    let target = match parse_host(host) {
        Ok(t) => t,
        Err(m) => return error(StatusCode::BAD_REQUEST, json, &m, ""),
    };
    if let Some(s) = &c.sni
        && *s != target
    {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            json,
            "the Host does not match the TLS server name",
            "",
        );
    }
    let live = routes::live(&st.home);
    let (name, endpoint) = match target {
        Target::Index => {
            return page(
                StatusCode::OK,
                json,
                listing(st, scheme, &live),
                "moat: running agents",
                &listing_html(st, scheme, &live),
            );
        }
        Target::Agent { name, endpoint } => (name, endpoint),
    };
    let Some(r) = live.iter().find(|r| r.name == name) else {
        let names: Vec<&str> = live.iter().map(|r| r.name.as_str()).collect();
        let msg = if names.is_empty() {
            format!("no running agent is named {name:?}; no agent with endpoints is running")
        } else {
            format!(
                "no running agent is named {name:?}; running: {}",
                names.join(", ")
            )
        };
        let mut j = listing(st, scheme, &live);
        j["error"] = msg.clone().into();
        return page(
            StatusCode::NOT_FOUND,
            json,
            j,
            "404 Not Found",
            &format!("<p>{}</p>\n{}", esc(&msg), listing_html(st, scheme, &live)),
        );
    };
    let one = std::slice::from_ref(r);
    let addr = match endpoint {
        Some(e) => match r.endpoints.get(&e) {
            Some(a) => *a,
            None => {
                let eps: Vec<&str> = r.endpoints.keys().map(String::as_str).collect();
                let msg = format!(
                    "agent {name:?} has no endpoint {e:?}; its endpoints: {}",
                    eps.join(", ")
                );
                let mut j = listing(st, scheme, one);
                j["error"] = msg.clone().into();
                return page(
                    StatusCode::NOT_FOUND,
                    json,
                    j,
                    "404 Not Found",
                    &format!("<p>{}</p>\n{}", esc(&msg), listing_html(st, scheme, one)),
                );
            }
        },
        None if r.endpoints.len() == 1 => *r.endpoints.values().next().expect("one"),
        None => {
            return page(
                StatusCode::OK,
                json,
                listing(st, scheme, one),
                &format!("moat: {name}"),
                &listing_html(st, scheme, one),
            );
        }
    };
    forward(req, addr, scheme, host, c.peer, json).await
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and those `Connection` names.
fn strip_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

async fn forward(
    mut req: Request<Incoming>,
    addr: SocketAddr,
    scheme: &str,
    host: &str,
    peer: SocketAddr,
    json: bool,
) -> Response<Body> {
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let client_up = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_GATEWAY,
                json,
                &format!(
                    "nothing answers on the agent's port ({addr}): {}; is the server in the container running and listening on 0.0.0.0?",
                    moat_core::error::io_msg(&e)
                ),
                "",
            );
        }
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                json,
                &format!("the agent's port ({addr}) did not answer in time"),
                "",
            );
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                json,
                &format!("talking to the agent's port ({addr}): {e}"),
                "",
            );
        }
    };
    tokio::spawn(conn.with_upgrades());
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = pq.parse().unwrap_or_else(|_| hyper::Uri::from_static("/"));
    let h = req.headers_mut();
    strip_hop(h);
    if let Some(u) = &upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u.clone());
    }
    if let Ok(v) = HeaderValue::from_str(host) {
        h.insert(header::HOST, v.clone());
        h.insert("x-forwarded-host", v);
    }
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if scheme == "https" { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        h.insert("x-forwarded-for", v);
    }
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                json,
                &format!("the agent's port ({addr}) failed: {e}"),
                "",
            );
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(cu) = client_up else {
            return error(
                StatusCode::BAD_GATEWAY,
                json,
                "the agent switched protocols unasked",
                "",
            );
        };
        let su = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(s)) = tokio::join!(cu, su) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(s)).await;
            }
        });
        return resp.map(|b| b.boxed());
    }
    strip_hop(resp.headers_mut());
    resp.map(|b| b.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, ep: Option<&str>) -> Target {
        Target::Agent {
            name: name.into(),
            endpoint: ep.map(str::to_string),
        }
    }

    #[test]
    fn hosts_parse() {
        assert_eq!(parse_host("localhost"), Ok(Target::Index));
        assert_eq!(parse_host("localhost:8080"), Ok(Target::Index));
        assert_eq!(parse_host("LOCALHOST."), Ok(Target::Index));
        assert_eq!(parse_host("127.0.0.1:8080"), Ok(Target::Index));
        assert_eq!(parse_host("[::1]:8080"), Ok(Target::Index));
        assert_eq!(
            parse_host("dark-mode.localhost"),
            Ok(agent("dark-mode", None))
        );
        assert_eq!(
            parse_host("web.dark-mode.localhost:8080"),
            Ok(agent("dark-mode", Some("web")))
        );
        // Case-insensitive, one trailing dot.
        assert_eq!(
            parse_host("WEB.Dark-Mode.LocalHost.:8080"),
            Ok(agent("dark-mode", Some("web")))
        );
        assert_eq!(parse_host("web.a.localhost."), Ok(agent("a", Some("web"))));
    }

    #[test]
    fn bad_hosts_are_refused_with_a_reason() {
        for (h, want) in [
            ("", "empty"),
            ("example.com", "not a .localhost host"),
            ("web.a.localhost.evil.com", "not a .localhost host"),
            ("localhost.evil", "not a .localhost host"),
            ("evil-localhost", "not a .localhost host"),
            ("10.0.0.1:80", "not a .localhost host"),
            ("a.b.c.localhost", "too many labels"),
            (".localhost", "1-63"),
            ("web..localhost", "1-63"),
            ("a.localhost..", "not a .localhost host"),
            ("web.a.localhost:", "bad port"),
            ("web.a.localhost:0", "bad port"),
            ("web.a.localhost:65536", "bad port"),
            ("web.a.localhost:80x", "bad port"),
            ("web.a.localhost:+80", "bad port"),
            ("web.a.localhost:80:80", "bad port"),
            ("web a.localhost", "spaces"),
            ("wéb.a.localhost", "non-ASCII"),
            ("we_b.a.localhost", "lowercase letters"),
            ("-web.a.localhost", "start or end"),
            ("[::1", "unclosed"),
            ("[::1]x", "junk"),
            ("user@a.localhost", "lowercase letters"),
        ] {
            let e = parse_host(h).expect_err(h);
            assert!(e.contains(want), "{h:?}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("1"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }
}
