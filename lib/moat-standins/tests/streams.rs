//! The stand-ins on their own (wire formats, 401s, refresh, GitHub) and their event
//! streams through the real moat-proxy, timed at the client.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use moat_standins::{Kind, Options, Standin};

/// curl straight to the stand-in (no proxy), `host` routed to its port.
fn curl_direct(s: &Standin, host: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(s.ca_pem_path())
        .arg("--connect-to")
        .arg(format!("{host}:443:127.0.0.1:{}", s.port()))
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn each_standin_refuses_a_missing_or_wrong_credential_in_its_providers_format() {
    let cases: &[(Kind, &str, &str, &str)] = &[
        (
            Kind::AnthropicApiKey,
            "api.anthropic.com",
            "/v1/messages",
            "authentication_error",
        ),
        (
            Kind::AnthropicOauth,
            "api.anthropic.com",
            "/v1/messages",
            "authentication_error",
        ),
        (
            Kind::OpenAiApiKey,
            "api.openai.com",
            "/v1/responses",
            "invalid_api_key",
        ),
        (
            Kind::ChatGpt,
            "chatgpt.com",
            "/backend-api/codex/responses",
            "invalid_api_key",
        ),
        (
            Kind::GeminiApiKey,
            "generativelanguage.googleapis.com",
            "/v1beta/models/g:generateContent",
            "UNAUTHENTICATED",
        ),
        (
            Kind::GoogleOauth,
            "cloudcode-pa.googleapis.com",
            "/v1internal:generateContent",
            "UNAUTHENTICATED",
        ),
        (Kind::GitHub, "api.github.com", "/user", "Bad credentials"),
    ];
    for (kind, host, path, marker) in cases {
        let s = Standin::start(*kind, "the-real-one");
        let url = format!("https://{host}{path}");
        for hdr in [
            None,
            Some("Authorization: Bearer wrong"),
            Some("x-api-key: wrong"),
        ] {
            let mut args = vec![
                "-X",
                if *path == "/user" { "GET" } else { "POST" },
                "-d",
                "{}",
            ];
            if *path == "/user" {
                args = vec![];
            }
            if let Some(h) = hdr {
                args.extend(["-H", h]);
            }
            args.push(&url);
            let (code, body) = curl_direct(&s, host, &args);
            assert_eq!(code, 401, "{kind:?} {hdr:?}: {body}");
            assert!(body.contains(marker), "{kind:?}: {body}");
        }
        assert_eq!(s.requests().len(), 3);
    }
}

#[test]
fn anthropic_oauth_needs_the_beta_header_and_refresh_issues_a_token_it_then_accepts() {
    let mut o = Options::new(Kind::AnthropicOauth, "sk-ant-oat01-real");
    o.refresh_token = Some("sk-ant-ort01-real".into());
    let s = Standin::start_with(o);
    let msg = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let url = "https://api.anthropic.com/v1/messages";
    let (code, _) = curl_direct(
        &s,
        "api.anthropic.com",
        &[
            "-H",
            "Authorization: Bearer sk-ant-oat01-real",
            "-d",
            msg,
            url,
        ],
    );
    assert_eq!(
        code, 401,
        "a subscription token without anthropic-beta is refused"
    );
    let beta = ["-H", "anthropic-beta: oauth-2025-04-20"];
    let (code, body) = curl_direct(
        &s,
        "api.anthropic.com",
        &[
            beta[0],
            beta[1],
            "-H",
            "Authorization: Bearer sk-ant-oat01-real",
            "-d",
            msg,
            url,
        ],
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0]["text"],
        Options::new(Kind::AnthropicOauth, "").answer
    );

    let token_url = "https://platform.claude.com/v1/oauth/token";
    let (code, _) = curl_direct(
        &s,
        "platform.claude.com",
        &[
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"grant_type":"refresh_token","refresh_token":"wrong"}"#,
            token_url,
        ],
    );
    assert_eq!(code, 400);
    let (code, body) = curl_direct(
        &s,
        "platform.claude.com",
        &[
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"grant_type":"refresh_token","refresh_token":"sk-ant-ort01-real","client_id":"x"}"#,
            token_url,
        ],
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let new_access = v["access_token"].as_str().unwrap();
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    assert_eq!(s.refreshes().len(), 1);
    assert_eq!(s.refreshes()[0].new_access_token, new_access);
    let auth = format!("Authorization: Bearer {new_access}");
    let (code, _) = curl_direct(
        &s,
        "api.anthropic.com",
        &[beta[0], beta[1], "-H", &auth, "-d", msg, url],
    );
    assert_eq!(code, 200);
    // The new refresh token works once more; Google's form-encoded refresh works too.
    let mut g = Options::new(Kind::GoogleOauth, "ya29.real");
    g.refresh_token = Some("1//real".into());
    let gs = Standin::start_with(g);
    let (code, body) = curl_direct(
        &gs,
        "oauth2.googleapis.com",
        &[
            "-d",
            "grant_type=refresh_token&refresh_token=1%2F%2Freal&client_id=x",
            "https://oauth2.googleapis.com/token",
        ],
    );
    assert_eq!(code, 200, "{body}");
}

#[test]
fn github_answers_user_with_bearer_and_git_smart_http_with_basic() {
    let s = Standin::start(Kind::GitHub, "ghp_real");
    let (code, body) = curl_direct(
        &s,
        "api.github.com",
        &[
            "-H",
            "Authorization: Bearer ghp_real",
            "https://api.github.com/user",
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"login\""));
    let (code, body) = curl_direct(
        &s,
        "github.com",
        &[
            "-u",
            "x-access-token:ghp_real",
            "https://github.com/o/r.git/info/refs?service=git-upload-pack",
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("001e# service=git-upload-pack\n0000"));
    let (code, _) = curl_direct(
        &s,
        "github.com",
        &[
            "-u",
            "x-access-token:wrong",
            "https://github.com/o/r.git/info/refs?service=git-upload-pack",
        ],
    );
    assert_eq!(code, 401);
}

/// POST `body` to `url` through the proxy with curl (no credential: the proxy adds it),
/// and return each output line with the time it arrived.
fn stream_through_proxy(p: &Proxy, url: &str, body: &str, http2: bool) -> Vec<(Duration, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "--max-time", "30"])
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .arg("--proxy")
        .arg(p.url())
        .arg("--cacert")
        .arg(&p.ca)
        .args(["-H", "content-type: application/json", "-d", body, url])
        .stdout(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("curl");
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for l in out.lines() {
        let l = l.unwrap();
        if !l.trim().is_empty() {
            lines.push((start.elapsed(), l));
        }
    }
    child.wait().unwrap();
    lines
}

fn assert_streams(
    kind: Kind,
    cred: &str,
    rules: &str,
    host: &str,
    url: &str,
    body: &str,
    (first, last): (&str, &str),
) {
    let mut o = Options::new(kind, cred);
    o.event_delay = Duration::from_millis(150);
    let standin = Standin::start_with(o);
    let env = moat_testkit::TestEnv::new();
    let proxy = Proxy::start(env.path(), rules, &standin);
    for http2 in [true, false] {
        let lines = stream_through_proxy(&proxy, url, body, http2);
        let at = |needle: &str| {
            lines
                .iter()
                .find(|(_, l)| l.contains(needle))
                .unwrap_or_else(|| {
                    panic!(
                        "{kind:?}: no {needle:?} in {lines:#?}\n{}",
                        proxy.all_output()
                    )
                })
                .0
        };
        let (t_first, t_last) = (at(first), at(last));
        // At least five pauses of 150 ms separate the first event from the last one; a
        // buffering proxy would deliver them together.
        assert!(
            t_last >= t_first + Duration::from_millis(600),
            "{kind:?} http2={http2}: first event at {t_first:?}, last at {t_last:?}: not streamed"
        );
        let req = standin.requests().into_iter().last().unwrap();
        assert_eq!(req.host, host);
        assert_eq!(req.status, 200, "{}", standin.request_lines());
        assert_eq!(
            req.version, "HTTP/2.0",
            "the proxy speaks HTTP/2 to an upstream that offers it"
        );
    }
    assert!(!proxy.all_output().contains(cred));
}

#[test]
fn anthropic_sse_arrives_event_by_event_through_the_proxy() {
    let real = canary("sk-ant-oat01-");
    assert_streams(
        Kind::AnthropicOauth,
        &real,
        &inject(
            "claude",
            &["api.anthropic.com"],
            "Authorization",
            &format!("Bearer {real}"),
            &[("anthropic-beta", "oauth-2025-04-20")],
        ),
        "api.anthropic.com",
        "https://api.anthropic.com/v1/messages",
        r#"{"model":"claude-x","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ("event: message_start", "event: message_stop"),
    );
}

#[test]
fn openai_responses_sse_arrives_event_by_event_through_the_proxy() {
    let real = canary("sk-proj-");
    assert_streams(
        Kind::OpenAiApiKey,
        &real,
        &inject(
            "openai",
            &["api.openai.com"],
            "Authorization",
            &format!("Bearer {real}"),
            &[],
        ),
        "api.openai.com",
        "https://api.openai.com/v1/responses",
        r#"{"model":"gpt-x","stream":true,"input":"hi"}"#,
        ("event: response.created", "event: response.completed"),
    );
}

#[test]
fn gemini_sse_arrives_event_by_event_through_the_proxy() {
    let real = canary("AIza");
    // Three chunks, 400 ms apart: 800 ms between the first and the last.
    let mut o = Options::new(Kind::GeminiApiKey, &real);
    o.event_delay = Duration::from_millis(400);
    let standin = Standin::start_with(o);
    let env = moat_testkit::TestEnv::new();
    let proxy = Proxy::start(
        env.path(),
        &inject(
            "gemini",
            &["generativelanguage.googleapis.com"],
            "x-goog-api-key",
            &real,
            &[],
        ),
        &standin,
    );
    let lines = stream_through_proxy(
        &proxy,
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-x:streamGenerateContent?alt=sse",
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        true,
    );
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[2].1.contains("\"finishReason\":\"STOP\""));
    assert!(
        lines[2].0 >= lines[0].0 + Duration::from_millis(600),
        "{lines:?}"
    );
}

#[test]
fn github_token_reaches_the_api_as_bearer_and_git_as_basic_through_the_proxy() {
    use base64::Engine;
    let real = canary("ghp_");
    let standin = Standin::start(Kind::GitHub, &real);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{real}"));
    let rules = format!(
        "{}{}",
        inject(
            "github",
            &["api.github.com"],
            "Authorization",
            &format!("Bearer {real}"),
            &[]
        ),
        inject(
            "github",
            &["github.com"],
            "Authorization",
            &format!("Basic {basic}"),
            &[]
        )
    );
    let env = moat_testkit::TestEnv::new();
    let proxy = Proxy::start(env.path(), &rules, &standin);
    let out = env
        .program("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--proxy",
            &proxy.url(),
            "--cacert",
        ])
        .arg(&proxy.ca)
        .args([
            "-H",
            "Authorization: Bearer ghp_moatProxyInjectedPlaceholder000000000000",
        ])
        .arg("https://api.github.com/user")
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("\"login\""),
        "{body}\n{}",
        standin.request_lines()
    );
    let out = env
        .program("git")
        .args(["-c", &format!("http.proxy={}", proxy.url())])
        .args(["-c", "http.proxyAuthMethod=basic"])
        .args(["ls-remote", "https://github.com/moat/standin.git"])
        .env("GIT_SSL_CAINFO", &proxy.ca)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git ls-remote: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        standin.request_lines()
    );
    let reqs = standin.requests();
    assert!(
        reqs.iter()
            .any(|r| r.host == "github.com" && r.status == 200)
    );
    for r in &reqs {
        assert!(!r.contains("Placeholder"), "{}", r.line());
    }
    assert!(!proxy.all_output().contains(&real));
}

#[test]
fn chatgpt_refresh_on_auth_openai_issues_tokens_the_backend_then_accepts() {
    let mut o = Options::new(Kind::ChatGpt, "access-real");
    o.refresh_token = Some("rt_real".into());
    let s = Standin::start_with(o);
    let url = "https://chatgpt.com/backend-api/codex/responses";
    let req = r#"{"model":"m","stream":false,"input":"hi"}"#;
    let (code, body) = curl_direct(
        &s,
        "auth.openai.com",
        &[
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"client_id":"x","grant_type":"refresh_token","refresh_token":"rt_real","scope":"openid"}"#,
            "https://auth.openai.com/oauth/token",
        ],
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let access = v["access_token"].as_str().unwrap();
    assert_eq!(v["id_token"].as_str().unwrap().split('.').count(), 3);
    assert_eq!(s.refreshes()[0].refresh_token, "rt_real");
    let auth = format!("Authorization: Bearer {access}");
    let (code, body) = curl_direct(
        &s,
        "chatgpt.com",
        &[
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-d",
            req,
            url,
        ],
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "completed");
    // A refresh token it never issued is refused, in OpenAI's error format.
    let (code, _) = curl_direct(
        &s,
        "auth.openai.com",
        &[
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"grant_type":"refresh_token","refresh_token":"rt_wrong"}"#,
            "https://auth.openai.com/oauth/token",
        ],
    );
    assert_eq!(code, 401);
}

/// Seconds from starting curl to the first line of the event stream on its stdout (so
/// connection setup included), the best of `n` tries.
fn best_time_to_first_event(n: usize, args: &[String]) -> f64 {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            let mut child = Command::new("curl")
                .args(["-sS", "-N", "--max-time", "20"])
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
                .expect("curl");
            let mut first = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut first)
                .unwrap();
            let t = start.elapsed().as_secs_f64();
            let _ = child.kill();
            let _ = child.wait();
            assert!(first.starts_with("event: message_start"), "{first:?}");
            t
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn time_to_first_event_through_the_proxy_is_close_to_direct() {
    let real = canary("sk-ant-api03-");
    let standin = Standin::start(Kind::AnthropicApiKey, &real);
    let env = moat_testkit::TestEnv::new();
    let proxy = Proxy::start(
        env.path(),
        &inject("anthropic", &["api.anthropic.com"], "x-api-key", &real, &[]),
        &standin,
    );
    let body =
        r#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let common: Vec<String> = [
        "-H",
        "content-type: application/json",
        "-d",
        body,
        "https://api.anthropic.com/v1/messages",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut direct = vec![
        "--cacert".to_string(),
        standin.ca_pem_path().display().to_string(),
        "--connect-to".into(),
        format!("api.anthropic.com:443:127.0.0.1:{}", standin.port()),
        "-H".into(),
        format!("x-api-key: {real}"),
    ];
    direct.extend(common.iter().cloned());
    let mut proxied = vec![
        "--proxy".to_string(),
        proxy.url(),
        "--cacert".into(),
        proxy.ca.display().to_string(),
    ];
    proxied.extend(common);
    let d = best_time_to_first_event(5, &direct);
    let p = best_time_to_first_event(5, &proxied);
    eprintln!(
        "time to first event: direct {:.1} ms, through moat-proxy {:.1} ms",
        d * 1e3,
        p * 1e3
    );
    // Through the proxy there are two more handshakes (CONNECT + TLS to the proxy, TLS
    // from the proxy to the upstream); allow for them on a loaded CI machine. Buffering
    // would cost the whole stream (over 600 ms here).
    assert!(p - d < 0.1, "direct {d:.4}s, proxied {p:.4}s");
    assert!(standin.requests().iter().all(|r| r.status == 200));
}

/// The remote MCP server: 401 without its credential; `initialize`, the `initialized`
/// notification (202), `tools/list` and a `tools/call` answered as an event stream; and
/// the Anthropic stand-in's `tool_use` turn for a request that offers the tool.
#[test]
fn the_mcp_server_speaks_streamable_http_and_the_model_calls_its_tool() {
    let mut o = Options::new(Kind::AnthropicApiKey, "sk-ant-key");
    o.mcp = Some(moat_standins::McpServer {
        path: "/mcp".into(),
        header: "X-Docs-Key".into(),
        credential: "mcp-secret".into(),
        tool: "marker".into(),
        result: "MARKER-123".into(),
    });
    o.tool_use = Some("mcp__docs__marker".into());
    let s = Standin::start_with(o);
    let h = moat_standins::MCP_HOST;
    let url = format!("https://{h}/mcp");
    let post = |auth: Option<&str>, body: &str| {
        let hdr = auth.map(|a| format!("X-Docs-Key: {a}"));
        let mut args = vec![
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "--data",
            body,
        ];
        if let Some(hdr) = &hdr {
            args.extend(["-H", hdr]);
        }
        args.push(&url);
        curl_direct(&s, h, &args)
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    assert_eq!(post(None, init).0, 401);
    assert_eq!(post(Some("moat-stub-mcp:docs"), init).0, 401);
    let (code, body) = post(Some("mcp-secret"), init);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18");
    assert!(v["result"]["capabilities"]["tools"].is_object());
    assert_eq!(
        post(
            Some("mcp-secret"),
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
        )
        .0,
        202
    );
    let (_, body) = post(
        Some("mcp-secret"),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
    assert!(body.contains("\"name\":\"marker\""), "{body}");
    let (code, body) = post(
        Some("mcp-secret"),
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"marker","arguments":{}}}"#,
    );
    assert_eq!(code, 200);
    assert!(
        body.starts_with("event: message\ndata: ") && body.contains("MARKER-123"),
        "{body}"
    );
    // The model: a request offering the tool gets a tool_use turn; with the result, text.
    let msg = |body: &str| {
        curl_direct(
            &s,
            "api.anthropic.com",
            &[
                "-H",
                "x-api-key: sk-ant-key",
                "--data",
                body,
                "https://api.anthropic.com/v1/messages",
            ],
        )
    };
    let (_, body) = msg(
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"name":"mcp__docs__marker"}]}"#,
    );
    assert!(
        body.contains("\"type\":\"tool_use\"") && body.contains("mcp__docs__marker"),
        "{body}"
    );
    let (_, body) = msg(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"MARKER-123"}]}],"tools":[{"name":"mcp__docs__marker"}]}"#,
    );
    assert!(body.contains("streamed in pieces"), "{body}");
}
