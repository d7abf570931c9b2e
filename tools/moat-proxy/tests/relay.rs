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
    rules += &inject_rule(
        "mcp:docs",
        &["mcp.example"],
        "Authorization",
        &format!("Bearer {secret}"),
    );
    rules += "{\"v\":1,\"type\":\"relay\",\"name\":\"docs\",\"url\":\"https://mcp.example/mcp\"}\n";
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
    assert_eq!(
        mcp.seen()[0].header_all("authorization"),
        vec![format!("Bearer {secret}")]
    );
    for bad in [
        format!("{base}/relay/wrong-token/anthropic/v1/messages"),
        format!("{base}/mcp/{}x/docs", p.token),
        format!("{base}/mcp/{}/nope", p.token),
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
    let t = p.wait_trace(6);
    assert!(t.iter().any(
        |r| r["url"] == "https://api.anthropic.com/v1/messages?beta=true"
            && r["grant"] == "anthropic"
    ));
    p.assert_no_leak(&secret);
    p.assert_no_leak(&p.token);
}
