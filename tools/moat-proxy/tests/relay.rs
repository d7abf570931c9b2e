//! Relay endpoints: clients that cannot use a proxy call /relay/TOKEN/NAME/... and
//! /mcp/TOKEN/NAME; the proxy forwards with injection and never records the token.

mod common;
use common::*;
use moat_testkit::TestEnv;

#[test]
fn anthropic_and_mcp_relays_inject_and_need_the_token() {
    let env = TestEnv::new();
    let secret = canary();
    let (up, ca) = granted_upstream(&env, "api.anthropic.com", &[b"h2", b"http/1.1"]);
    let (mcp, ca2) = granted_upstream(&env, "mcp.example", &[b"http/1.1"]);
    let mut rules = inject_rule("anthropic", &["api.anthropic.com"], "x-api-key", &secret);
    rules += &bearer_rule("mcp:docs", &["mcp.example"], &secret);
    rules += "{\"v\":1,\"type\":\"relay\",\"name\":\"docs\",\"url\":\"https://mcp.example/mcp\",\"kind\":\"mcp\"}\n";
    let ct1 = format!("api.anthropic.com:443:127.0.0.1:{}", up.port());
    let ct2 = format!("mcp.example:443:127.0.0.1:{}", mcp.port());
    let p = Proxy::start(
        &env,
        &rules,
        &[
            "--connect-to",
            &ct1,
            "--connect-to",
            &ct2,
            "--extra-ca",
            ca.to_str().unwrap(),
            "--extra-ca",
            ca2.to_str().unwrap(),
        ],
    );
    let base = format!("http://{}", p.addr);
    let r = curl(
        &env,
        &[
            "-H",
            "x-api-key: moat-proxy-injected",
            "--data",
            "{}",
            &format!("{base}/relay/{}/anthropic/v1/messages?beta=true", p.token),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = &up.seen()[0];
    assert!(
        s.target == "/v1/messages?beta=true"
            || s.target == "https://api.anthropic.com/v1/messages?beta=true",
        "{}",
        s.target
    );
    assert_eq!(s.header_all("x-api-key"), vec![secret.clone()]);
    assert!(!s.raw().contains(&p.token));
    // SSE streams through the relay too.
    let r = curl(
        &env,
        &["-N", &format!("{base}/relay/{}/anthropic/sse", p.token)],
    );
    assert!(r.stdout.contains("data: first") && r.stdout.contains("data: second"));
    let r = curl(
        &env,
        &[
            "--data",
            "{\"jsonrpc\":\"2.0\"}",
            &format!("{base}/mcp/{}/docs", p.token),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mcp.seen()[0].target, "/mcp");
    mcp.seen()[0].assert_bearer(&secret);
    for bad in [
        format!("{base}/relay/wrong-token/anthropic/v1/messages"),
        format!("{base}/mcp/{}x/docs", p.token),
        format!("{base}/mcp/{}/nope", p.token),
        // The two kinds never answer for each other.
        format!("{base}/relay/{}/docs", p.token),
        format!("{base}/mcp/{}/anthropic/v1/messages", p.token),
    ] {
        let r = curl(&env, &["-o", "/dev/null", "-w", "%{http_code}", &bad]);
        assert!(
            r.stdout == "403" || r.stdout == "404",
            "{bad}: {}",
            r.stdout
        );
    }
    assert_eq!(up.seen().len(), 2);
    assert_eq!(mcp.seen().len(), 1);
    let t = p.wait_trace(8);
    assert!(t.iter().any(
        |r| r["url"] == "https://api.anthropic.com/v1/messages?beta=true"
            && r["grant"] == "anthropic"
    ));
    p.assert_no_leak(&secret);
    p.assert_no_leak(&p.token);
}

/// A remote MCP server's grant (`stub_only`): the relay swaps the stub its entry carries for
/// the credential, passes any other value (or none) as sent, and streams the server's
/// event stream as it comes.
#[test]
fn mcp_relay_swaps_only_the_stub_and_streams_events_as_they_come() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let env = TestEnv::new();
    let secret = canary();
    let (mcp, ca) = granted_upstream(&env, "mcp.example", &[b"http/1.1"]);
    let mut rules = serde_json::json!({"v":1,"type":"inject","grant":"mcp:docs",
        "hosts":["mcp.example"],"header":"X-Docs-Key","value":secret,
        "placeholder":"moat-stub-mcp:docs","stub_only":true})
    .to_string();
    rules += "\n{\"v\":1,\"type\":\"relay\",\"name\":\"docs\",\"url\":\"https://mcp.example\",\"kind\":\"mcp\"}\n";
    let p = Proxy::to_upstream(&env, &rules, "mcp.example", mcp.port(), &ca);
    let url = format!("http://{}/mcp/{}/docs", p.addr, p.token);
    for sent in [
        Some("moat-stub-mcp:docs"),
        Some("the-users-own-key"),
        None,
        Some("moat-stub-mcp:other"),
    ] {
        let mut args = vec![
            "--data",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
        ];
        let h = sent.map(|v| format!("X-Docs-Key: {v}"));
        if let Some(h) = &h {
            args.extend(["-H", h]);
        }
        args.push(&url);
        let r = curl(&env, &args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let seen = mcp.seen().pop().unwrap();
        assert_eq!(seen.target, "/");
        let want: Vec<String> = match sent {
            Some("moat-stub-mcp:docs") => vec![secret.clone()],
            Some(v) => vec![v.to_string()],
            None => vec![],
        };
        assert_eq!(seen.header_all("x-docs-key"), want, "sent {sent:?}");
        assert!(!seen.raw().contains(&p.token));
    }
    // The event stream: the first event arrives long before the second (1.5 s later).
    let mut s = std::net::TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /mcp/{}/docs/sse HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nX-Docs-Key: moat-stub-mcp:docs\r\n\r\n",
        p.token, p.addr
    )
    .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut first_at = None;
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(10) {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if first_at.is_none() && text.contains("data: first") {
            first_at = Some(t0.elapsed());
        }
        if text.contains("data: second") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("data: second"), "{text}");
    let first_at = first_at.unwrap();
    assert!(
        first_at < Duration::from_millis(1000),
        "the first event waited for the second: {first_at:?}"
    );
    assert_eq!(
        mcp.seen().pop().unwrap().header_all("x-docs-key"),
        vec![secret.clone()]
    );
    let t = p.wait_trace(5);
    assert_eq!(
        t.iter().filter(|r| r["grant"] == "mcp:docs").count(),
        2,
        "{t:?}"
    );
    p.assert_no_leak(&secret);
    p.assert_no_leak(&p.token);
}
