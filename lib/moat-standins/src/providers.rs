//! Routing and the providers' wire formats: what each host answers, how it checks the
//! credential, and its error bodies.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

use crate::{Kind, Refresh, Request, State};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 16 << 20;

/// What the handler saw, before the body is answered.
struct Req {
    method: String,
    host: String,
    path: String,
    query: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn query_param(&self, name: &str) -> Option<String> {
        form_param(&self.query, name)
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

pub(crate) async fn handle(state: Arc<State>, mut req: http::Request<Incoming>) -> Response<Body> {
    let at = Instant::now();
    let upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let host = parts
        .uri
        .host()
        .map(str::to_string)
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or("").to_string())
        })
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let sent_path = parts.uri.path().to_string();
    let routed = state
        .opts
        .base_path
        .as_deref()
        .and_then(|b| sent_path.strip_prefix(b))
        .filter(|rest| rest.starts_with('/'))
        .unwrap_or(&sent_path)
        .to_string();
    let r = Req {
        method: parts.method.to_string(),
        host,
        path: routed,
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers.clone(),
        body,
    };
    let resp = match upgrade {
        Some(on) => websocket(&state, &r, on),
        None => route(&state, &r),
    };
    let mut path = sent_path;
    if !r.query.is_empty() {
        path.push('?');
        path.push_str(&r.query);
    }
    state.log.lock().unwrap().push(Request {
        method: r.method.clone(),
        host: r.host.clone(),
        path,
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: r.body.clone(),
        status: resp.status().as_u16(),
        at,
    });
    resp
}

/// The error style of a host.
#[derive(Clone, Copy)]
enum Style {
    Anthropic,
    OpenAi,
    Google,
    GitHub,
}

fn style_of(host: &str) -> Style {
    if host.ends_with("anthropic.com")
        || host.ends_with("claude.com")
        || host.ends_with("claude.ai")
    {
        Style::Anthropic
    } else if host.ends_with("openai.com") || host == "chatgpt.com" {
        Style::OpenAi
    } else if host.ends_with("googleapis.com") {
        Style::Google
    } else {
        Style::GitHub
    }
}

/// A WebSocket upgrade: the Responses API's WebSocket mode on the hosts that serve it,
/// for a client with the right credential; anything else is answered as plain HTTP.
fn websocket(state: &State, r: &Req, on: hyper::upgrade::OnUpgrade) -> Response<Body> {
    let responses = matches!(
        (state.opts.kind, r.host.as_str(), r.path.as_str()),
        (Kind::OpenAiApiKey, "api.openai.com", "/v1/responses")
            | (Kind::ChatGpt, "chatgpt.com", "/backend-api/codex/responses")
    );
    let Some(key) = r.header("sec-websocket-key") else {
        return route(state, r);
    };
    if !responses || r.method != "GET" || !authorized(state, r) {
        return route(state, r);
    }
    let (answer, usage) = (state.opts.answer.clone(), state.opts.usage);
    crate::ws::spawn(on, state.opts.event_delay, move |req| {
        responses_events(&answer, req, usage)
    });
    let mut resp = Response::new(BodyExt::boxed(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&crate::ws::accept_key(key)).unwrap(),
    );
    resp
}

fn route(state: &State, r: &Req) -> Response<Body> {
    let kind = state.opts.kind;
    let style = style_of(&r.host);
    let m = r.method.as_str();
    let p = r.path.as_str();
    if r.host == crate::MCP_HOST {
        return match &state.opts.mcp {
            Some(server) => mcp(server, r),
            None => not_found(style),
        };
    }
    // Token endpoints first: they take no access token.
    match (r.host.as_str(), m, p) {
        ("github.com", "POST", "/login/device/code" | "/login/oauth/access_token")
            if kind == Kind::GitHub && state.opts.device.is_some() =>
        {
            return device_flow(state, r);
        }
        ("console.anthropic.com" | "platform.claude.com", "POST", "/v1/oauth/token")
            if kind == Kind::AnthropicOauth =>
        {
            return refresh(state, r, style);
        }
        ("auth.openai.com", "POST", "/oauth/token") if kind == Kind::ChatGpt => {
            return refresh(state, r, style);
        }
        ("oauth2.googleapis.com", "POST", "/token")
        | ("www.googleapis.com", "POST", "/oauth2/v4/token")
            if kind == Kind::GoogleOauth =>
        {
            return refresh(state, r, style);
        }
        _ => {}
    }
    let served = match kind {
        Kind::AnthropicApiKey | Kind::AnthropicOauth => r.host == "api.anthropic.com",
        Kind::OpenAiApiKey => r.host == "api.openai.com",
        Kind::ChatGpt => r.host == "chatgpt.com",
        Kind::GeminiApiKey => r.host == "generativelanguage.googleapis.com",
        Kind::GoogleOauth => matches!(
            r.host.as_str(),
            "cloudcode-pa.googleapis.com" | "oauth2.googleapis.com" | "www.googleapis.com"
        ),
        Kind::GitHub => r.host == "api.github.com" || r.host == "github.com",
    };
    if !served {
        return not_found(style);
    }
    if !authorized(state, r) {
        return unauthorized(style, kind);
    }
    let opts = &state.opts;
    match style {
        Style::Anthropic => anthropic(opts, r),
        Style::OpenAi => openai(opts, r),
        Style::Google => google(state, r),
        Style::GitHub => {
            let mut resp = github(r);
            if let Some(sc) = opts
                .github_scopes
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok())
            {
                resp.headers_mut().insert("x-oauth-scopes", sc);
            }
            resp
        }
    }
}

fn device_flow(state: &State, r: &Req) -> Response<Body> {
    let flow = state.opts.device.as_ref().expect("device flow configured");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let polls = {
        let mut n = state.device_polls.lock().unwrap();
        let before = *n;
        if r.path == "/login/oauth/access_token" {
            *n += 1;
        }
        before
    };
    let (status, v, issued) = crate::device::answer(flow, &r.path, |k| form_param(&body, k), polls);
    if let Some(t) = issued {
        state.accepted.lock().unwrap().push(t);
    }
    json_resp(StatusCode::from_u16(status).unwrap(), v)
}

fn bearer(r: &Req) -> Option<&str> {
    let v = r.header("authorization")?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

fn authorized(state: &State, r: &Req) -> bool {
    let accepted = state.accepted.lock().unwrap().clone();
    let ok = |c: Option<&str>| c.is_some_and(|c| accepted.iter().any(|a| a == c));
    match state.opts.kind {
        Kind::AnthropicApiKey => ok(r.header("x-api-key")),
        Kind::AnthropicOauth => {
            ok(bearer(r))
                && r.headers
                    .get_all("anthropic-beta")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|b| b.trim() == "oauth-2025-04-20")
        }
        Kind::OpenAiApiKey | Kind::ChatGpt => ok(bearer(r)),
        Kind::GeminiApiKey => ok(r.header("x-goog-api-key")) || ok(r.query_param("key").as_deref()),
        Kind::GoogleOauth => {
            // tokeninfo carries the token as a parameter, not a header.
            if r.host == "oauth2.googleapis.com" && r.path == "/tokeninfo" {
                let from_body = form_param(&String::from_utf8_lossy(&r.body), "access_token");
                ok(bearer(r))
                    || ok(r.query_param("access_token").as_deref())
                    || ok(from_body.as_deref())
            } else {
                ok(bearer(r))
            }
        }
        Kind::GitHub => {
            let v = r.header("authorization").unwrap_or("");
            let (scheme, rest) = v.split_once(' ').unwrap_or(("", ""));
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
                ok(Some(rest.trim()))
            } else if scheme.eq_ignore_ascii_case("basic") {
                let dec = base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                let pass = dec.split_once(':').map(|(_, p)| p);
                ok(pass)
            } else {
                false
            }
        }
    }
}

// ---------------------------------------------------------------- bodies and helpers

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(BodyExt::boxed(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_str(ctype).unwrap());
    resp
}

fn json_resp(status: StatusCode, v: Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

/// A text/event-stream answer whose events leave one by one, `delay` apart.
fn sse(events: Vec<String>, delay: Duration) -> Response<Body> {
    let stream = futures_util::stream::unfold(
        (events.into_iter(), true),
        move |(mut it, first)| async move {
            let e = it.next()?;
            if !first {
                tokio::time::sleep(delay).await;
            }
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(e))),
                (it, false),
            ))
        },
    );
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

fn named_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn data_event(data: &Value) -> String {
    format!("data: {data}\n\n")
}

/// The answer split into three deltas (at word boundaries where it can).
fn pieces(answer: &str) -> Vec<String> {
    let words: Vec<&str> = answer.split_inclusive(' ').collect();
    if words.len() < 3 {
        return vec![answer.to_string()];
    }
    let n = words.len().div_ceil(3);
    words.chunks(n).map(|c| c.concat()).collect()
}

fn form_param(s: &str, name: &str) -> Option<String> {
    s.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn not_found(style: Style) -> Response<Body> {
    match style {
        Style::Anthropic => json_resp(
            StatusCode::NOT_FOUND,
            json!({"type":"error","error":{"type":"not_found_error","message":"Not found"}}),
        ),
        Style::OpenAi => json_resp(
            StatusCode::NOT_FOUND,
            json!({"error":{"message":"Not found","type":"invalid_request_error","param":null,"code":null}}),
        ),
        Style::Google => json_resp(
            StatusCode::NOT_FOUND,
            json!({"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}),
        ),
        Style::GitHub => json_resp(
            StatusCode::NOT_FOUND,
            json!({"message":"Not Found","documentation_url":"https://docs.github.com/rest","status":"404"}),
        ),
    }
}

fn unauthorized(style: Style, kind: Kind) -> Response<Body> {
    match style {
        Style::Anthropic => {
            let msg = if kind == Kind::AnthropicApiKey {
                "invalid x-api-key"
            } else {
                "Invalid bearer token"
            };
            json_resp(
                StatusCode::UNAUTHORIZED,
                json!({"type":"error","error":{"type":"authentication_error","message":msg}}),
            )
        }
        Style::OpenAi => json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}),
        ),
        Style::Google => json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}),
        ),
        Style::GitHub => {
            let mut r = json_resp(
                StatusCode::UNAUTHORIZED,
                json!({"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}),
            );
            r.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Basic realm=\"GitHub\""),
            );
            r
        }
    }
}

/// An unsigned JWT (`alg: none`) with `claims`: clients that only decode id tokens
/// (Codex reads the ChatGPT plan and account from one) accept it.
pub fn fake_jwt(claims: &Value) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        e.encode(json!({"alg":"none","typ":"JWT"}).to_string()),
        e.encode(claims.to_string()),
        e.encode("sig")
    )
}

// ---------------------------------------------------------------- token refresh

fn refresh(state: &State, r: &Req, style: Style) -> Response<Body> {
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let j = r.json();
    let get = |k: &str| -> Option<String> {
        j.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or_else(|| form_param(&body, k))
    };
    let grant = get("grant_type").unwrap_or_default();
    let sent = get("refresh_token").unwrap_or_default();
    let known = state.refresh_tokens.lock().unwrap().contains(&sent);
    if grant != "refresh_token" || !known {
        return match style {
            Style::Google => json_resp(
                StatusCode::BAD_REQUEST,
                json!({"error":"invalid_grant","error_description":"Token has been expired or revoked."}),
            ),
            Style::OpenAi => json_resp(
                StatusCode::UNAUTHORIZED,
                json!({"error":{"message":"Your refresh token has already been used to generate a new access token. Please try signing in again.","type":"invalid_request_error","param":null,"code":"refresh_token_reused"}}),
            ),
            _ => json_resp(
                StatusCode::BAD_REQUEST,
                json!({"error":"invalid_grant","error_description":"Refresh token not found or invalid"}),
            ),
        };
    }
    let n = state.refreshes.lock().unwrap().len() + 1;
    let (access, refresh_tok) = match style {
        Style::Anthropic => (
            format!("sk-ant-oat01-standin-refreshed-{n}-{}", unix_now()),
            format!("sk-ant-ort01-standin-refreshed-{n}-{}", unix_now()),
        ),
        Style::OpenAi => (
            fake_jwt(&json!({"sub":"standin","n":n,"iat":unix_now()})),
            format!("rt_standin_refreshed_{n}_{}", unix_now()),
        ),
        _ => (
            format!("ya29.standin-refreshed-{n}-{}", unix_now()),
            format!("1//standin-refreshed-{n}-{}", unix_now()),
        ),
    };
    state.accepted.lock().unwrap().push(access.clone());
    state
        .refresh_tokens
        .lock()
        .unwrap()
        .push(refresh_tok.clone());
    state.refreshes.lock().unwrap().push(Refresh {
        host: r.host.clone(),
        path: r.path.clone(),
        refresh_token: sent,
        new_access_token: access.clone(),
        new_refresh_token: refresh_tok.clone(),
    });
    let v = match style {
        Style::Anthropic => json!({
            "token_type": "Bearer",
            "access_token": access,
            "refresh_token": refresh_tok,
            "expires_in": 28800,
            "scope": "user:inference user:profile user:sessions:claude_code",
            "organization": {"uuid": "00000000-0000-4000-8000-000000000001", "name": "Moat Stand-in"},
            "account": {"uuid": "00000000-0000-4000-8000-000000000002", "email_address": "standin@example.test"}
        }),
        Style::OpenAi => json!({
            "id_token": chatgpt_id_token(),
            "access_token": access,
            "refresh_token": refresh_tok,
            "expires_in": 864000,
            "token_type": "Bearer"
        }),
        _ => json!({
            "access_token": access,
            "expires_in": 3599,
            "scope": "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email openid",
            "token_type": "Bearer",
            "id_token": fake_jwt(&json!({"iss":"https://accounts.google.com","sub":"1","email":"standin@example.test","exp":unix_now()+3600}))
        }),
    };
    json_resp(StatusCode::OK, v)
}

/// The id token the ChatGPT sign-in carries: the account id and plan Codex reads.
pub fn chatgpt_id_token() -> String {
    fake_jwt(&json!({
        "iss": "https://auth.openai.com",
        "sub": "standin",
        "email": "standin@example.test",
        "exp": unix_now() + 864000,
        "https://api.openai.com/auth": {
            "chatgpt_account_id": "00000000-0000-4000-8000-00000000c0de",
            "chatgpt_plan_type": "pro",
            "chatgpt_user_id": "user-standin"
        }
    }))
}

// ---------------------------------------------------------------- Anthropic

fn anthropic(opts: &crate::Options, r: &Req) -> Response<Body> {
    let p = r.path.as_str();
    match (r.method.as_str(), p) {
        ("POST", "/v1/messages") => {
            let j = r.json();
            let model = j
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("claude-standin");
            let stream = j.get("stream").and_then(Value::as_bool).unwrap_or(false);
            let id = format!("msg_standin{}", unix_now());
            if let Some(tool) = &opts.tool_use
                && offers_tool(&j, tool)
                && !has_tool_result(&j)
            {
                return tool_use(opts, &id, model, tool, stream);
            }
            if !stream {
                return json_resp(
                    StatusCode::OK,
                    json!({"id":id,"type":"message","role":"assistant","model":model,
                        "content":[{"type":"text","text":opts.answer}],
                        "stop_reason":"end_turn","stop_sequence":null,
                        "usage":anthropic_usage(opts, opts.usage.output)}),
                );
            }
            let mut ev = vec![
                named_event(
                    "message_start",
                    &json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant","model":model,"content":[],"stop_reason":null,"stop_sequence":null,"usage":anthropic_usage(opts, 1)}}),
                ),
                named_event(
                    "content_block_start",
                    &json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                ),
                named_event("ping", &json!({"type":"ping"})),
            ];
            for piece in pieces(&opts.answer) {
                ev.push(named_event(
                    "content_block_delta",
                    &json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":piece}}),
                ));
            }
            ev.push(named_event(
                "content_block_stop",
                &json!({"type":"content_block_stop","index":0}),
            ));
            ev.push(named_event(
                "message_delta",
                &json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":opts.usage.output}}),
            ));
            ev.push(named_event("message_stop", &json!({"type":"message_stop"})));
            let mut resp = sse(ev, opts.event_delay);
            resp.headers_mut()
                .insert("request-id", HeaderValue::from_static("req_standin"));
            resp
        }
        ("POST", "/v1/messages/count_tokens") => {
            json_resp(StatusCode::OK, json!({"input_tokens": 12}))
        }
        ("GET", "/api/oauth/profile") => json_resp(
            StatusCode::OK,
            json!({
                "account": {"uuid":"00000000-0000-4000-8000-000000000002","email":"standin@example.test",
                    "full_name":"Moat Stand-in","display_name":"Stand-in","has_claude_max":true,"has_claude_pro":false},
                "organization": {"uuid":"00000000-0000-4000-8000-000000000001","name":"Moat Stand-in",
                    "organization_type":"claude_max","billing_type":"stripe_subscription","rate_limit_tier":"default_claude_max_20x"}
            }),
        ),
        ("GET", "/api/claude_cli_profile") => json_resp(
            StatusCode::OK,
            json!({"account":{"uuid":"00000000-0000-4000-8000-000000000002","email":"standin@example.test"},
                   "organization":{"uuid":"00000000-0000-4000-8000-000000000001","name":"Moat Stand-in"}}),
        ),
        ("GET", "/v1/models") => json_resp(
            StatusCode::OK,
            json!({"data":[{"type":"model","id":"claude-sonnet-4-5","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"}],
                   "has_more":false,"first_id":"claude-sonnet-4-5","last_id":"claude-sonnet-4-5"}),
        ),
        _ => not_found(Style::Anthropic),
    }
}

/// A Messages `usage` object with `output` output tokens.
fn anthropic_usage(opts: &crate::Options, output: u64) -> Value {
    let u = opts.usage;
    json!({"input_tokens":u.input,"cache_creation_input_tokens":u.cache_write,
        "cache_read_input_tokens":u.cache_read,"output_tokens":output})
}

/// Whether a Messages request lists `tool` in `tools`.
fn offers_tool(j: &Value, tool: &str) -> bool {
    j["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["name"] == tool))
}

/// Whether any message carries a `tool_result` block.
fn has_tool_result(j: &Value) -> bool {
    j["messages"].as_array().is_some_and(|ms| {
        ms.iter().any(|m| {
            m["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
        })
    })
}

/// A turn that calls `tool` with no input.
fn tool_use(
    opts: &crate::Options,
    id: &str,
    model: &str,
    tool: &str,
    stream: bool,
) -> Response<Body> {
    let call_id = format!("toolu_standin{}", unix_now());
    if !stream {
        return json_resp(
            StatusCode::OK,
            json!({"id":id,"type":"message","role":"assistant","model":model,
                "content":[{"type":"tool_use","id":call_id,"name":tool,"input":{}}],
                "stop_reason":"tool_use","stop_sequence":null,
                "usage":anthropic_usage(opts, opts.usage.output)}),
        );
    }
    let ev = vec![
        named_event(
            "message_start",
            &json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant","model":model,"content":[],"stop_reason":null,"stop_sequence":null,"usage":anthropic_usage(opts, 1)}}),
        ),
        named_event(
            "content_block_start",
            &json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":call_id,"name":tool,"input":{}}}),
        ),
        named_event(
            "content_block_delta",
            &json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}),
        ),
        named_event(
            "content_block_stop",
            &json!({"type":"content_block_stop","index":0}),
        ),
        named_event(
            "message_delta",
            &json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":opts.usage.output}}),
        ),
        named_event("message_stop", &json!({"type":"message_stop"})),
    ];
    sse(ev, opts.event_delay)
}

// ---------------------------------------------------------------- a remote MCP server

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"result":result})
}

fn mcp(server: &crate::McpServer, r: &Req) -> Response<Body> {
    if r.path != server.path {
        return json_resp(StatusCode::NOT_FOUND, json!({"error":"not found"}));
    }
    if r.header(&server.header) != Some(server.credential.as_str()) {
        return json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"missing or wrong credential"}}),
        );
    }
    if r.method != "POST" {
        // No server-initiated stream, no session to end.
        return full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "");
    }
    let j = r.json();
    let Some(id) = j.get("id").filter(|id| !id.is_null()) else {
        // A notification (or a response): accepted, nothing to say.
        return full(StatusCode::ACCEPTED, "text/plain", "");
    };
    let method = j["method"].as_str().unwrap_or_default();
    let answer = match method {
        "initialize" => rpc_result(
            id,
            json!({
                "protocolVersion": j["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "moat-standin-mcp", "version": "1.0.0"},
            }),
        ),
        "ping" => rpc_result(id, json!({})),
        "tools/list" => rpc_result(
            id,
            json!({"tools": [{
                "name": server.tool,
                "description": "Returns the stand-in's marker text. Call it when asked for the marker.",
                "inputSchema": {"type": "object", "properties": {}},
            }]}),
        ),
        "tools/call" if j["params"]["name"] == server.tool.as_str() => {
            // As an event stream, as servers do for calls that may take a while.
            let msg = rpc_result(
                id,
                json!({"content": [{"type": "text", "text": server.result}], "isError": false}),
            );
            return sse(vec![named_event("message", &msg)], Duration::ZERO);
        }
        _ => {
            json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":format!("method {method:?} not found")}})
        }
    };
    let mut resp = json_resp(StatusCode::OK, answer);
    if method == "initialize" {
        resp.headers_mut().insert(
            "mcp-session-id",
            HeaderValue::from_static("moat-standin-session"),
        );
    }
    resp
}

// ---------------------------------------------------------------- OpenAI

fn openai(opts: &crate::Options, r: &Req) -> Response<Body> {
    let p = r.path.as_str();
    match (r.method.as_str(), p) {
        ("POST", "/v1/responses") | ("POST", "/backend-api/codex/responses") => responses(opts, r),
        ("POST", "/v1/chat/completions") => chat_completions(opts, r),
        ("GET", "/v1/models") => json_resp(
            StatusCode::OK,
            json!({"object":"list","data":[{"id":"gpt-5","object":"model","created":1700000000,"owned_by":"openai"}]}),
        ),
        ("GET", "/backend-api/codex/models") => json_resp(StatusCode::OK, json!({"models": []})),
        // Codex's workspace routing: which ChatGPT accounts the token may act for and
        // where their backend is (no residency constraint here).
        ("GET", "/backend-api/wham/accounts/check") | ("GET", "/api/codex/accounts/check") => {
            let id = r
                .header("chatgpt-account-id")
                .unwrap_or("00000000-0000-4000-8000-00000000c0de")
                .to_string();
            json_resp(
                StatusCode::OK,
                json!({
                    "accounts": [{
                        "id": id, "name": "Moat Stand-in", "structure": "personal",
                        "plan_type": "pro", "is_deactivated": false,
                        "is_fedramp_compliant_workspace": false,
                        "can_access_with_session": true,
                        "workspace_backend_origin": "https://chatgpt.com",
                        "account_routing_override": "NO_CONSTRAINT"
                    }],
                    "account_ordering": [id],
                    "default_account_id": id
                }),
            )
        }
        _ => not_found(Style::OpenAi),
    }
}

fn responses(opts: &crate::Options, r: &Req) -> Response<Body> {
    let j = r.json();
    let stream = j.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let events = responses_events(&opts.answer, &j, opts.usage);
    if !stream {
        let done = events.last().cloned().unwrap_or(Value::Null);
        return json_resp(StatusCode::OK, done["response"].clone());
    }
    let ev = events
        .iter()
        .map(|v| named_event(v["type"].as_str().unwrap_or(""), v))
        .collect();
    sse(ev, opts.event_delay)
}

/// The Responses API's stream events for one answer, each a JSON object with `type`.
fn responses_events(answer: &str, j: &Value, u: crate::Usage) -> Vec<Value> {
    let model = j
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("gpt-standin")
        .to_string();
    let now = unix_now();
    let rid = format!("resp_standin{now}");
    let mid = format!("msg_standin{now}");
    let text = answer.to_string();
    let usage = json!({"input_tokens":u.input + u.cache_read,"input_tokens_details":{"cached_tokens":u.cache_read},
        "output_tokens":u.output,"output_tokens_details":{"reasoning_tokens":0},
        "total_tokens":u.input + u.cache_read + u.output});
    let done_item = json!({"id":mid,"type":"message","status":"completed","role":"assistant",
        "content":[{"type":"output_text","text":text,"annotations":[]}]});
    let resp_obj = |status: &str, output: Value, usage: Value| {
        json!({"id":rid,"object":"response","created_at":now,"status":status,"model":model,
            "output":output,"usage":usage})
    };
    let mut seq = 0u64;
    let mut ev = Vec::new();
    let mut push = |name: &str, mut v: Value| {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        seq += 1;
        ev.push(v);
    };
    push(
        "response.created",
        json!({"response": resp_obj("in_progress", json!([]), Value::Null)}),
    );
    push(
        "response.in_progress",
        json!({"response": resp_obj("in_progress", json!([]), Value::Null)}),
    );
    push(
        "response.output_item.added",
        json!({"output_index":0,"item":{"id":mid,"type":"message","status":"in_progress","role":"assistant","content":[]}}),
    );
    push(
        "response.content_part.added",
        json!({"item_id":mid,"output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}),
    );
    for piece in pieces(&text) {
        push(
            "response.output_text.delta",
            json!({"item_id":mid,"output_index":0,"content_index":0,"delta":piece}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id":mid,"output_index":0,"content_index":0,"text":text}),
    );
    push(
        "response.content_part.done",
        json!({"item_id":mid,"output_index":0,"content_index":0,"part":{"type":"output_text","text":text,"annotations":[]}}),
    );
    push(
        "response.output_item.done",
        json!({"output_index":0,"item":done_item}),
    );
    push(
        "response.completed",
        json!({"response": resp_obj("completed", json!([done_item]), usage)}),
    );
    ev
}

fn chat_completions(opts: &crate::Options, r: &Req) -> Response<Body> {
    let j = r.json();
    let model = j
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("gpt-standin")
        .to_string();
    let now = unix_now();
    let id = format!("chatcmpl-standin{now}");
    let stream = j.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        return json_resp(
            StatusCode::OK,
            json!({"id":id,"object":"chat.completion","created":now,"model":model,
                "choices":[{"index":0,"message":{"role":"assistant","content":opts.answer},"finish_reason":"stop"}],
                "usage":chat_usage(opts.usage)}),
        );
    }
    // `stream_options.include_usage`: every chunk has `"usage":null` and a last chunk,
    // with no choices, carries the usage.
    let with_usage = j["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id":id,"object":"chat.completion.chunk","created":now,"model":model,
            "choices":[{"index":0,"delta":delta,"finish_reason":finish}]});
        if with_usage {
            c["usage"] = Value::Null;
        }
        data_event(&c)
    };
    let mut ev = vec![chunk(json!({"role":"assistant","content":""}), Value::Null)];
    for piece in pieces(&opts.answer) {
        ev.push(chunk(json!({"content":piece}), Value::Null));
    }
    ev.push(chunk(json!({}), json!("stop")));
    if with_usage {
        ev.push(data_event(
            &json!({"id":id,"object":"chat.completion.chunk","created":now,"model":model,
                "choices":[],"usage":chat_usage(opts.usage)}),
        ));
    }
    ev.push("data: [DONE]\n\n".into());
    sse(ev, opts.event_delay)
}

/// A Chat Completions `usage` object (cached input counted inside `prompt_tokens`).
fn chat_usage(u: crate::Usage) -> Value {
    json!({"prompt_tokens":u.input + u.cache_read,"completion_tokens":u.output,
        "total_tokens":u.input + u.cache_read + u.output,
        "prompt_tokens_details":{"cached_tokens":u.cache_read}})
}

// ---------------------------------------------------------------- Google

fn gemini_chunk(text: &str, last: bool, model: &str, u: crate::Usage) -> Value {
    let mut cand = json!({"content":{"parts":[{"text":text}],"role":"model"},"index":0});
    if last {
        cand["finishReason"] = json!("STOP");
    }
    let prompt = u.input + u.cache_read;
    let mut meta = json!({"promptTokenCount":prompt,"candidatesTokenCount":u.output,
        "totalTokenCount":prompt + u.output});
    if u.cache_read > 0 {
        meta["cachedContentTokenCount"] = json!(u.cache_read);
    }
    json!({"candidates":[cand],"usageMetadata":meta,"modelVersion":model})
}

fn google(state: &State, r: &Req) -> Response<Body> {
    let opts = &state.opts;
    let p = r.path.as_str();
    let sse_mode = r.query_param("alt").as_deref() == Some("sse");
    // Code Assist wraps every model answer in {"response": ...}.
    let wrapped = r.host == "cloudcode-pa.googleapis.com";
    let (model, method) = if let Some(rest) = p.strip_prefix("/v1beta/models/") {
        let (m, meth) = rest.split_once(':').unwrap_or((rest, ""));
        (m.to_string(), meth.to_string())
    } else if let Some(meth) = p.strip_prefix("/v1internal:") {
        let m = r
            .json()
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("gemini-standin")
            .to_string();
        (m, meth.to_string())
    } else {
        (String::new(), String::new())
    };
    let wrap = |v: Value| {
        if wrapped {
            json!({"response": v, "traceId": "standin"})
        } else {
            v
        }
    };
    if r.host == "oauth2.googleapis.com" && p == "/tokeninfo" {
        return json_resp(
            StatusCode::OK,
            json!({"azp":"standin.apps.googleusercontent.com","aud":"standin.apps.googleusercontent.com",
                "sub":"1","scope":"https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email openid",
                "exp":(unix_now()+3500).to_string(),"expires_in":"3500","email":"standin@example.test","email_verified":"true","access_type":"offline"}),
        );
    }
    if r.host == "www.googleapis.com" && p.starts_with("/oauth2/") && p.ends_with("/userinfo") {
        return json_resp(
            StatusCode::OK,
            json!({"id":"1","email":"standin@example.test","verified_email":true,"name":"Moat Stand-in"}),
        );
    }
    match (r.method.as_str(), method.as_str()) {
        ("POST", "streamGenerateContent") => {
            let ps = pieces(&opts.answer);
            let last = ps.len() - 1;
            let chunks: Vec<Value> = ps
                .iter()
                .enumerate()
                .map(|(i, t)| wrap(gemini_chunk(t, i == last, &model, opts.usage)))
                .collect();
            if sse_mode {
                let ev = chunks
                    .iter()
                    .map(|c| format!("data: {c}\r\n\r\n"))
                    .collect();
                sse(ev, opts.event_delay)
            } else {
                json_resp(StatusCode::OK, Value::Array(chunks))
            }
        }
        ("POST", "generateContent") => {
            // A JSON-mode request (the CLI's model router, next-speaker checks) gets a
            // value that fits its schema, so the CLI does not retry.
            let j = r.json();
            let cfg = j
                .get("generationConfig")
                .or_else(|| j.get("request").and_then(|q| q.get("generationConfig")))
                .cloned()
                .unwrap_or(Value::Null);
            let schema = cfg
                .get("responseJsonSchema")
                .or_else(|| cfg.get("responseSchema"));
            let text = match schema {
                Some(s) => sample_from_schema(s).to_string(),
                None => opts.answer.clone(),
            };
            json_resp(
                StatusCode::OK,
                wrap(gemini_chunk(&text, true, &model, opts.usage)),
            )
        }
        ("POST", "countTokens") => json_resp(StatusCode::OK, json!({"totalTokens": 12})),
        ("POST", "loadCodeAssist") => json_resp(
            StatusCode::OK,
            json!({"currentTier":{"id":"standard-tier","name":"Gemini Code Assist","description":"stand-in",
                    "userDefinedCloudaicompanionProject":false},
                   "allowedTiers":[{"id":"standard-tier","name":"Gemini Code Assist","isDefault":true,
                    "userDefinedCloudaicompanionProject":false}],
                   "cloudaicompanionProject":"moat-standin-project"}),
        ),
        ("POST", "onboardUser") => json_resp(
            StatusCode::OK,
            json!({"name":"operations/standin","done":true,
                   "response":{"cloudaicompanionProject":{"id":"moat-standin-project","name":"moat-standin-project"}}}),
        ),
        ("POST", m) if !m.is_empty() && wrapped => json_resp(StatusCode::OK, json!({})),
        _ => not_found(Style::Google),
    }
}

/// A small value that satisfies a JSON schema (or Gemini's upper-case schema dialect).
fn sample_from_schema(s: &Value) -> Value {
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    let ty = s
        .get("type")
        .and_then(|t| {
            t.as_str().map(str::to_string).or_else(|| {
                t.as_array()
                    .and_then(|a| a.iter().find_map(Value::as_str).map(str::to_string))
            })
        })
        .unwrap_or_else(|| {
            if s.get("properties").is_some() {
                "object".into()
            } else {
                "string".into()
            }
        })
        .to_ascii_lowercase();
    match ty.as_str() {
        "object" => {
            let mut m = serde_json::Map::new();
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    m.insert(k.clone(), sample_from_schema(v));
                }
            }
            Value::Object(m)
        }
        "array" => json!([]),
        "integer" | "number" => s.get("minimum").cloned().unwrap_or(json!(1)),
        "boolean" => json!(false),
        "null" => Value::Null,
        _ => json!("standin"),
    }
}

// ---------------------------------------------------------------- GitHub

fn github(r: &Req) -> Response<Body> {
    if r.host == "api.github.com" {
        return match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/user") => json_resp(
                StatusCode::OK,
                json!({"login":"moat-standin","id":1,"node_id":"U_standin","type":"User","name":"Moat Stand-in","site_admin":false}),
            ),
            _ => not_found(Style::GitHub),
        };
    }
    // github.com: git smart HTTP, an empty repository for any path ending in
    // /info/refs?service=git-upload-pack.
    if r.method == "GET"
        && r.path.ends_with("/info/refs")
        && r.query_param("service").as_deref() == Some("git-upload-pack")
    {
        let mut body = Vec::new();
        let line = "# service=git-upload-pack\n";
        body.extend(format!("{:04x}{line}", line.len() + 4).as_bytes());
        body.extend(b"0000");
        let caps = format!(
            "{} capabilities^{{}}\0agent=git/moat-standin object-format=sha1\n",
            "0".repeat(40)
        );
        body.extend(format!("{:04x}", caps.len() + 4).as_bytes());
        body.extend(caps.as_bytes());
        body.extend(b"0000");
        return full(
            StatusCode::OK,
            "application/x-git-upload-pack-advertisement",
            body,
        );
    }
    not_found(Style::GitHub)
}
