//! Token usage and budgets (issue #21) against the real moat-proxy process and the
//! provider stand-ins speaking each API's wire format, streamed and not: the `usage` event
//! carries the counts the upstream reported, an event stream reaches the client byte for
//! byte as the upstream sent it, and once a token budget is spent the next model request
//! gets 429 in the API's own error format and never reaches the upstream.
//!
//! THREATS: these are guardrails on spend, not on secrets; the budget's refusal is checked
//! as an attack on the budget (a request past the limit must not reach the provider).

mod common;

use common::*;
use moat_standins::{Kind, Options, Standin, Usage};
use moat_testkit::TestEnv;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const END: &str = "{\"v\":1,\"type\":\"rules_end\"}\n";

#[derive(Clone, Copy)]
enum Api {
    Anthropic,
    Chat,
    Responses,
    Gemini,
    /// The ChatGPT sign-in's Codex backend (the Responses API on chatgpt.com).
    Codex,
    /// Code Assist (the Google sign-in): Gemini answers wrapped in `{"response": ...}`.
    CodeAssist,
}

const USAGE: Usage = Usage {
    input: 100,
    output: 50,
    cache_read: 7,
    cache_write: 3,
};

impl Api {
    fn kind(self) -> Kind {
        match self {
            Api::Anthropic => Kind::AnthropicApiKey,
            Api::Chat | Api::Responses => Kind::OpenAiApiKey,
            Api::Gemini => Kind::GeminiApiKey,
            Api::Codex => Kind::ChatGpt,
            Api::CodeAssist => Kind::GoogleOauth,
        }
    }
    fn host(self) -> &'static str {
        match self {
            Api::Anthropic => "api.anthropic.com",
            Api::Chat | Api::Responses => "api.openai.com",
            Api::Gemini => "generativelanguage.googleapis.com",
            Api::Codex => "chatgpt.com",
            Api::CodeAssist => "cloudcode-pa.googleapis.com",
        }
    }
    fn header(self, key: &str) -> (String, String) {
        match self {
            Api::Anthropic => ("x-api-key".into(), key.into()),
            Api::Chat | Api::Responses | Api::Codex | Api::CodeAssist => {
                ("Authorization".into(), format!("Bearer {key}"))
            }
            Api::Gemini => ("x-goog-api-key".into(), key.into()),
        }
    }
    fn path(self, stream: bool) -> &'static str {
        match (self, stream) {
            (Api::Anthropic, _) => "/v1/messages",
            (Api::Chat, _) => "/v1/chat/completions",
            (Api::Responses, _) => "/v1/responses",
            (Api::Gemini, true) => "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            (Api::Gemini, false) => "/v1beta/models/gemini-2.5-pro:generateContent",
            (Api::Codex, _) => "/backend-api/codex/responses",
            (Api::CodeAssist, true) => "/v1internal:streamGenerateContent?alt=sse",
            (Api::CodeAssist, false) => "/v1internal:generateContent",
        }
    }
    fn body(self, stream: bool) -> String {
        let mut b = match self {
            Api::Anthropic => json!({"model":"claude-sonnet-4-5","max_tokens":64,
                "messages":[{"role":"user","content":"hi"}]}),
            Api::Chat => json!({"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}),
            Api::Responses | Api::Codex => json!({"model":"gpt-5","input":"hi"}),
            Api::CodeAssist => json!({"model":"gemini-2.5-pro","project":"p",
                "request":{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}}),
            Api::Gemini => json!({"contents":[{"role":"user","parts":[{"text":"hi"}]}]}),
        };
        if stream && !matches!(self, Api::Gemini | Api::CodeAssist) {
            b["stream"] = json!(true);
        }
        if stream && matches!(self, Api::Chat) {
            b["stream_options"] = json!({"include_usage": true});
        }
        b.to_string()
    }
    /// What the proxy should record: (input, output, cache_read, cache_write).
    fn expect(self) -> (u64, u64, u64, u64) {
        match self {
            Api::Anthropic => (100, 50, 7, 3),
            // OpenAI and Gemini count cached input inside the input and have no cache writes.
            _ => (100, 50, 7, 0),
        }
    }
    fn provider(self) -> &'static str {
        match self {
            Api::Anthropic => "anthropic",
            Api::Chat | Api::Responses | Api::Codex => "openai",
            Api::Gemini | Api::CodeAssist => "google",
        }
    }
    /// The 429 body has the API's own error shape.
    fn check_error(self, v: &Value) -> String {
        match self {
            Api::Anthropic => {
                assert_eq!(v["type"], "error", "{v}");
                assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
                v["error"]["message"].as_str().unwrap().to_string()
            }
            Api::Chat | Api::Responses | Api::Codex => {
                assert_eq!(v["error"]["type"], "insufficient_quota", "{v}");
                assert_eq!(v["error"]["code"], "insufficient_quota", "{v}");
                v["error"]["message"].as_str().unwrap().to_string()
            }
            Api::Gemini | Api::CodeAssist => {
                assert_eq!(v["error"]["code"], 429, "{v}");
                assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");
                v["error"]["message"].as_str().unwrap().to_string()
            }
        }
    }
}

fn usage_rules(budget: Value) -> String {
    json!({"v":1,"type":"usage_rules","budget":budget,"prices":[
        {"model":"claude-sonnet-4*","input":3.0,"output":15.0,"cache_read":0.3,"cache_write":3.75},
        {"model":"gpt-5*","input":1.25,"output":10.0,"cache_read":0.125}
    ]})
    .to_string()
        + "\n"
}

struct Setup {
    env: TestEnv,
    standin: Standin,
    proxy: Proxy,
    key: String,
}

fn setup(api: Api, budget: Value) -> Setup {
    let env = TestEnv::new();
    let key = canary();
    let mut o = Options::new(api.kind(), &key);
    o.usage = USAGE;
    o.event_delay = Duration::from_millis(2);
    let standin = Standin::start_with(o);
    let (h, v) = api.header(&key);
    let rules = inject_rule("model", &[api.host()], &h, &v) + &usage_rules(budget) + END;
    let proxy = Proxy::to_upstream(
        &env,
        &rules,
        api.host(),
        standin.port(),
        standin.ca_pem_path(),
    );
    Setup {
        env,
        standin,
        proxy,
        key,
    }
}

/// POST through the proxy with a placeholder credential; (status, body).
fn call(s: &Setup, api: Api, stream: bool) -> (u16, String) {
    let (status, body, _) = call_h(s, api, stream);
    (status, body)
}

/// [`call`], also returning the answer's `x-should-retry` header.
fn call_h(s: &Setup, api: Api, stream: bool) -> (u16, String, String) {
    let (h, _) = api.header("placeholder");
    let url = format!("https://{}{}", api.host(), api.path(stream));
    let r = curl(
        &s.env,
        &[
            "--proxy",
            &s.proxy.url(),
            "--cacert",
            s.proxy.ca.to_str().unwrap(),
            "-H",
            &format!("{h}: placeholder"),
            "-H",
            "content-type: application/json",
            "--data-binary",
            &api.body(stream),
            "-w",
            "\n@@%{http_code} %header{x-should-retry}",
            &url,
        ],
    );
    assert_eq!(
        r.code,
        0,
        "{} {} {:?}",
        r.stderr,
        r.stdout,
        s.proxy.events()
    );
    let (body, tail) = r.stdout.rsplit_once("\n@@").unwrap();
    let (code, retry) = tail.split_once(' ').unwrap_or((tail, ""));
    (
        code.parse().unwrap(),
        body.to_string(),
        retry.trim().to_string(),
    )
}

/// The same request straight to the stand-in, with the real credential.
fn direct(s: &Setup, api: Api, stream: bool) -> String {
    let (h, v) = api.header(&s.key);
    let url = format!("https://{}{}", api.host(), api.path(stream));
    let ct = format!("{}:443:127.0.0.1:{}", api.host(), s.standin.port());
    let r = curl(
        &s.env,
        &[
            "--connect-to",
            &ct,
            "--cacert",
            s.standin.ca_pem_path().to_str().unwrap(),
            "-H",
            &format!("{h}: {v}"),
            "-H",
            "content-type: application/json",
            "--data-binary",
            &api.body(stream),
            &url,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
}

/// Unix times (ids, `created`) differ between two answers; everything else must not.
fn normalize(s: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for c in s.chars().chain(std::iter::once('\u{0}')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 9 {
            out.push('#');
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        if c != '\u{0}' {
            out.push(c);
        }
    }
    out
}

fn events_of(p: &Proxy, kind: &str, n: usize) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let v: Vec<Value> = p
            .events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect();
        if v.len() >= n || Instant::now() > end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn model_requests(s: &Setup, api: Api) -> usize {
    let want = api.path(false).split(':').next().unwrap().to_string();
    s.standin
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with(&want))
        .count()
}

fn scenario(api: Api, stream: bool) {
    let s = setup(api, json!({"tokens": 100}));
    let (status, body) = call(&s, api, stream);
    assert_eq!(status, 200, "{body}");
    let first = body;
    let u = events_of(&s.proxy, "usage", 1);
    assert_eq!(u.len(), 1, "{:?}", s.proxy.events());
    let u = &u[0];
    let (i, o, cr, cw) = api.expect();
    assert_eq!(u["input_tokens"], i, "{u}");
    assert_eq!(u["output_tokens"], o, "{u}");
    assert_eq!(u["cache_read_tokens"], cr, "{u}");
    assert_eq!(u["cache_write_tokens"], cw, "{u}");
    assert_eq!(u["provider"], api.provider(), "{u}");
    assert_eq!(u["run_tokens"], i + o + cr + cw, "{u}");
    let trace = s.proxy.wait_trace(1);
    assert_eq!(
        u["request_id"], trace[0]["request_id"],
        "the usage event names the request's trace id"
    );
    match api {
        // 100×3 + 50×15 + 7×0.3 + 3×3.75 micro-dollars, rounded.
        Api::Anthropic => assert_eq!(u["cost_micro_usd"], 1063, "{u}"),
        // 100×1.25 + 50×10 + 7×0.125.
        Api::Chat | Api::Responses | Api::Codex => {
            assert_eq!(u["model"], "gpt-5");
            assert_eq!(u["cost_micro_usd"], 626, "{u}");
        }
        // Not in the table: priced at its highest rates (3, 15, 0.3).
        Api::Gemini | Api::CodeAssist => {
            assert_eq!(u["model"], "gemini-2.5-pro");
            assert!(u["priced_as"].as_str().unwrap().starts_with("highest"));
            assert_eq!(u["cost_micro_usd"], 300 + 750 + 2, "{u}");
        }
    }
    assert_eq!(model_requests(&s, api), 1);

    // The first answer crossed the budget of 100 tokens: the next request is refused.
    for _ in 0..2 {
        let (status, body, retry) = call_h(&s, api, stream);
        assert_eq!(status, 429, "{body}");
        // The SDKs retry a 429 unless told not to; a spent budget stays spent.
        assert_eq!(retry, "false");
        let v: Value = serde_json::from_str(&body).unwrap();
        let msg = api.check_error(&v);
        assert!(
            msg.contains("token budget") && (msg.contains("157") || msg.contains("160")),
            "{msg}"
        );
        assert!(
            msg.contains("of 100 tokens") && msg.contains("--budget tokens="),
            "{msg}"
        );
    }
    assert_eq!(
        model_requests(&s, api),
        1,
        "a request past the budget reached the provider: {}",
        s.standin.request_lines()
    );
    // Events are written before the answer leaves the proxy: both 429s are answered.
    let b = events_of(&s.proxy, "budget_exceeded", 0);
    assert_eq!(b.len(), 1, "budget_exceeded once per budget: {b:?}");
    assert_eq!(b[0]["budget"], "tokens");
    assert_eq!(b[0]["limit"], 100);
    assert_eq!(events_of(&s.proxy, "usage", 0).len(), 1);
    let t = s.proxy.wait_trace(3);
    assert!(
        t.iter()
            .any(|r| r["policy"] == "budget:tokens" && r["status"] == 429),
        "{t:?}"
    );
    s.proxy.assert_no_leak(&s.key);
    if stream {
        assert!(first.contains("data:"), "not an event stream: {first}");
        let d = direct(&s, api, stream);
        assert_eq!(
            normalize(&first),
            normalize(&d),
            "the client's event stream differs from the upstream's"
        );
    }
}

#[test]
fn anthropic_streamed() {
    scenario(Api::Anthropic, true);
}

#[test]
fn anthropic_json() {
    scenario(Api::Anthropic, false);
}

#[test]
fn openai_chat_streamed() {
    scenario(Api::Chat, true);
}

#[test]
fn openai_chat_json() {
    scenario(Api::Chat, false);
}

#[test]
fn openai_responses_streamed() {
    scenario(Api::Responses, true);
}

#[test]
fn openai_responses_json() {
    scenario(Api::Responses, false);
}

#[test]
fn gemini_streamed() {
    scenario(Api::Gemini, true);
}

#[test]
fn gemini_json() {
    scenario(Api::Gemini, false);
}

#[test]
fn codex_backend_streamed() {
    scenario(Api::Codex, true);
}

#[test]
fn code_assist_streamed() {
    scenario(Api::CodeAssist, true);
}

#[test]
fn code_assist_json() {
    scenario(Api::CodeAssist, false);
}

/// requests_per_minute: the request past the limit gets 429 (Retry-After) without reaching
/// the provider; model requests that are not POSTs do not count.
#[test]
fn requests_per_minute() {
    let api = Api::Anthropic;
    let s = setup(api, json!({"requests_per_minute": 2}));
    assert_eq!(call(&s, api, false).0, 200);
    assert_eq!(call(&s, api, false).0, 200);
    let (status, body) = call(&s, api, false);
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let msg = api.check_error(&v);
    assert!(msg.contains("2 model requests per minute") && msg.contains("--budget rpm="));
    assert_eq!(model_requests(&s, api), 2);
    let b = events_of(&s.proxy, "budget_exceeded", 1);
    assert_eq!(b[0]["budget"], "rpm", "{b:?}");
}

/// A cost budget: the request after the run's cost reaches it is refused.
#[test]
fn cost_budget() {
    let api = Api::Chat;
    let s = setup(api, json!({"cost_micro_usd": 1000}));
    assert_eq!(call(&s, api, false).0, 200); // 626 micro-dollars
    assert_eq!(call(&s, api, false).0, 200); // 1252: crosses
    let (status, body) = call(&s, api, false);
    assert_eq!(status, 429, "{body}");
    let msg = api.check_error(&serde_json::from_str(&body).unwrap());
    assert!(
        msg.contains("cost budget") && msg.contains("$0.001252 of $0.001"),
        "{msg}"
    );
    assert_eq!(model_requests(&s, api), 2);
    // Every request to a model host is refused once a budget is spent, not only POSTs.
    let r = curl(
        &s.env,
        &[
            "--proxy",
            &s.proxy.url(),
            "--cacert",
            s.proxy.ca.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://api.openai.com/v1/models",
        ],
    );
    assert_eq!(r.stdout, "429", "{}", r.stderr);
    assert!(!s.standin.request_lines().contains("/v1/models"));
}

/// A bad usage_rules record is refused at start, naming the line, not the values.
#[test]
fn a_bad_budget_record_is_refused() {
    let env = TestEnv::new();
    let out = env
        .cmd("moat-proxy")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-auth",
            "--rules",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(usage_rules(json!({"tokens": 0})).as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("line 1") && e.contains("above 0"), "{e}");
}
