//! Token usage and spend budgets for the model APIs the proxy relays (issue #21).
//!
//! Responses to POST requests on the model API hosts (Anthropic, OpenAI and the ChatGPT
//! Codex backend, Gemini and Code Assist) are read as they pass, never held back: an event
//! stream line by line (a bounded line buffer), a JSON body into a buffer capped at
//! [`JSON_CAP`]. The usage fields the API reports (Anthropic `message_start` and
//! `message_delta`; OpenAI Chat Completions' `usage`, the Responses API's
//! `response.completed`; Gemini's `usageMetadata`) become one `usage` event per response,
//! priced from the table on the rules pipe, and add to the run's totals.
//!
//! Budgets (`usage_rules` on the rules pipe) are checked before a request is sent: once a
//! total has reached its limit, requests to the model hosts get 429 in the API's own error
//! format, and a `budget_exceeded` event is written once per budget. The request that
//! crosses a limit is not cut off: its answer arrives and is counted.

use crate::trace::Sinks;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use moat_core::{Error, Result, jsonl};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The rules-pipe record that carries budgets and prices.
pub const TYPE_USAGE_RULES: &str = "usage_rules";
/// A JSON (not streamed) answer is parsed for usage from at most this many bytes; the rest
/// passes uncounted, and the `usage` event says so.
pub const JSON_CAP: usize = 4 << 20;
/// An event-stream line longer than this is passed on but not parsed.
pub const LINE_CAP: usize = 4 << 20;
const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Anthropic,
    OpenAi,
    Google,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
            Provider::Google => "google",
        }
    }
}

/// The provider whose model API `host` (canonical, lower case) is, if it is one.
pub fn model_host(host: &str) -> Option<Provider> {
    match host {
        "api.anthropic.com" => Some(Provider::Anthropic),
        "api.openai.com" | "chatgpt.com" => Some(Provider::OpenAi),
        "generativelanguage.googleapis.com" | "cloudcode-pa.googleapis.com" => {
            Some(Provider::Google)
        }
        _ => None,
    }
}

/// USD per million tokens for the models whose name matches `model` (exact, or a prefix
/// ending in `*`; case-insensitive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub model: String,
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_write: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micro_usd: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
}

/// `{"v":1,"type":"usage_rules","budget":{...},"prices":[...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub budget: Budget,
    #[serde(default)]
    pub prices: Vec<Price>,
}

impl Settings {
    /// The last `usage_rules` record of a rule set (none: no budget, no prices).
    pub fn from_rules(text: &str, src: &str) -> Result<Settings> {
        let mut out = Settings::default();
        for (i, line) in text.lines().enumerate() {
            let Ok(Some(rec)) = jsonl::parse(line) else {
                continue;
            };
            if rec.kind != TYPE_USAGE_RULES {
                continue;
            }
            let s: Settings = rec.decode().map_err(|_| {
                Error::data(format!(
                    "rules {src} line {}: bad usage_rules record",
                    i + 1
                ))
            })?;
            s.check()
                .map_err(|m| Error::data(format!("rules {src} line {}: {m}", i + 1)))?;
            out = s;
        }
        Ok(out)
    }

    fn check(&self) -> std::result::Result<(), String> {
        for p in &self.prices {
            let ok = |x: f64| x.is_finite() && (0.0..=1e6).contains(&x);
            if p.model.is_empty()
                || !(ok(p.input) && ok(p.output) && ok(p.cache_read) && ok(p.cache_write))
            {
                return Err(format!("bad price for model {:?}", p.model));
            }
        }
        let b = &self.budget;
        if [b.tokens, b.cost_micro_usd, b.requests_per_minute].contains(&Some(0)) {
            return Err("a budget limit must be above 0".into());
        }
        Ok(())
    }

    /// The price for `model` and the table entry it came from. A model the table does not
    /// name is priced at the table's highest rates, so a cost budget never undercounts.
    fn price(&self, model: &str) -> (Price, String) {
        let m = model.to_ascii_lowercase();
        let mut best: Option<(&Price, usize)> = None;
        for p in &self.prices {
            let pat = p.model.to_ascii_lowercase();
            let score = match pat.strip_suffix('*') {
                Some(pre) if m.starts_with(pre) => pre.len(),
                None if pat == m => usize::MAX,
                _ => continue,
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((p, score));
            }
        }
        if let Some((p, _)) = best {
            return (p.clone(), p.model.clone());
        }
        let mut top = Price {
            model: String::new(),
            input: 0.0,
            output: 0.0,
            cache_read: 0.0,
            cache_write: 0.0,
        };
        for p in &self.prices {
            top.input = top.input.max(p.input);
            top.output = top.output.max(p.output);
            top.cache_read = top.cache_read.max(p.cache_read);
            top.cache_write = top.cache_write.max(p.cache_write);
        }
        (top, "highest (model not in the price table)".into())
    }
}

/// Token counts of one response: `input` excludes the cached input (`cache_read`) and
/// the input written to a cache (`cache_write`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.input
            .saturating_add(self.output)
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }
}

fn cost_micro(p: &Price, c: &Counts) -> u64 {
    // USD per million tokens times tokens is micro-dollars.
    let v = p.input * c.input as f64
        + p.output * c.output as f64
        + p.cache_read * c.cache_read as f64
        + p.cache_write * c.cache_write as f64;
    if v.is_finite() && v > 0.0 {
        v.round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

#[derive(Default)]
struct Totals {
    tokens: u64,
    cost: u64,
    recent: VecDeque<Instant>,
    announced: [bool; 3],
}

/// The run's totals and the rules they are held to.
pub struct Meter {
    settings: RwLock<Arc<Settings>>,
    totals: Mutex<Totals>,
}

/// Which budget refused a request, with what was used and the limit.
pub struct Refusal {
    which: usize,
    used: u64,
    limit: u64,
    retry_after: Option<u64>,
}

const NAMES: [&str; 3] = ["tokens", "cost", "rpm"];

/// Micro-dollars as dollars: at least two decimals, no trailing zeros beyond them.
fn money(micro: u64) -> String {
    let frac = format!("{:06}", micro % 1_000_000);
    let frac = frac.trim_end_matches('0');
    format!("${}.{frac:0<2}", micro / 1_000_000)
}

impl Refusal {
    pub fn message(&self) -> String {
        match self.which {
            0 => format!(
                "moat: this run's token budget is used up ({} of {} tokens). Raise it for a new run with --budget tokens=N or `budget: {{tokens: N}}` in moat.yaml.",
                self.used, self.limit
            ),
            1 => format!(
                "moat: this run's cost budget is used up ({} of {}). Raise it for a new run with --budget cost=USD or `budget: {{cost: \"$USD\"}}` in moat.yaml.",
                money(self.used),
                money(self.limit)
            ),
            _ => format!(
                "moat: this run's request budget allows {} model requests per minute and they are used; wait or raise it with --budget rpm=N or `budget: {{requests_per_minute: N}}` in moat.yaml.",
                self.limit
            ),
        }
    }

    pub fn which(&self) -> &'static str {
        NAMES[self.which]
    }
}

impl Meter {
    pub fn new(s: Settings) -> Meter {
        Meter {
            settings: RwLock::new(Arc::new(s)),
            totals: Mutex::new(Totals::default()),
        }
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A replacement rule set with a `usage_rules` record replaces budget and prices; the
    /// totals so far stay.
    pub fn replace(&self, text: &str) -> Result<()> {
        if !text.contains(TYPE_USAGE_RULES) {
            return Ok(());
        }
        let s = Settings::from_rules(text, "stdin")?;
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(s);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Check a request to a model host against the budgets; a POST that passes counts
    /// towards requests per minute.
    pub fn admit(&self, post: bool) -> std::result::Result<(), Refusal> {
        let b = self.settings().budget.clone();
        let mut t = self.lock();
        if let Some(l) = b.tokens
            && t.tokens >= l
        {
            return Err(Refusal {
                which: 0,
                used: t.tokens,
                limit: l,
                retry_after: None,
            });
        }
        if let Some(l) = b.cost_micro_usd
            && t.cost >= l
        {
            return Err(Refusal {
                which: 1,
                used: t.cost,
                limit: l,
                retry_after: None,
            });
        }
        if post && let Some(l) = b.requests_per_minute {
            let now = Instant::now();
            while t.recent.front().is_some_and(|a| now - *a >= MINUTE) {
                t.recent.pop_front();
            }
            if t.recent.len() as u64 >= l {
                let wait = t
                    .recent
                    .front()
                    .map(|a| MINUTE.saturating_sub(now - *a).as_secs() + 1);
                return Err(Refusal {
                    which: 2,
                    used: t.recent.len() as u64,
                    limit: l,
                    retry_after: wait,
                });
            }
            t.recent.push_back(now);
        }
        Ok(())
    }

    /// The refusal as the API's own 429, and the `budget_exceeded` event (once per budget).
    pub fn refuse(
        &self,
        r: &Refusal,
        p: Provider,
        sinks: &Sinks,
        host: &str,
        request_id: &str,
    ) -> Response<crate::proxy::Body> {
        let first = {
            let mut t = self.lock();
            !std::mem::replace(&mut t.announced[r.which], true)
        };
        if first {
            sinks.event(
                "budget_exceeded",
                &json!({"budget": r.which(), "used": r.used, "limit": r.limit,
                    "host": host, "provider": p.as_str(), "request_id": request_id}),
            );
        }
        error_response(p, r)
    }

    fn add(&self, c: &Counts, cost: u64) -> (u64, u64) {
        let mut t = self.lock();
        t.tokens = t.tokens.saturating_add(c.total());
        t.cost = t.cost.saturating_add(cost);
        (t.tokens, t.cost)
    }
}

/// Read and drop (a bounded part of) a refused request's body before the answer: an
/// HTTP/2 client whose upload is cut off by a reset takes that as a failed stream and never
/// shows the answer.
pub async fn drain(mut b: hyper::body::Incoming) {
    let read = async {
        let mut n = 0usize;
        while let Some(Ok(f)) = b.frame().await {
            n += f.data_ref().map_or(0, |d| d.len());
            if n > JSON_CAP * 4 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
}

/// A 429 in the format of `p`'s API, saying which budget ran out and how to raise it.
pub fn error_response(p: Provider, r: &Refusal) -> Response<crate::proxy::Body> {
    let msg = r.message();
    let permanent = r.which != 2;
    let body = match p {
        Provider::Anthropic => {
            json!({"type":"error","error":{"type":"rate_limit_error","message":msg}})
        }
        Provider::OpenAi => {
            let (ty, code) = if permanent {
                ("insufficient_quota", "insufficient_quota")
            } else {
                ("requests", "rate_limit_exceeded")
            };
            json!({"error":{"message":msg,"type":ty,"param":null,"code":code}})
        }
        Provider::Google => {
            json!({"error":{"code":429,"message":msg,"status":"RESOURCE_EXHAUSTED"}})
        }
    };
    let mut res = Response::new(
        Full::new(Bytes::from(body.to_string() + "\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-moat-blocked", HeaderValue::from_static("budget"));
    if permanent {
        // The providers' SDKs retry a 429 unless told not to; a spent budget stays spent.
        h.insert("x-should-retry", HeaderValue::from_static("false"));
    } else if let Some(s) = r.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    res
}

// ---------------------------------------------------------------- reading usage

/// What one response told about its usage so far.
#[derive(Default)]
struct Seen {
    counts: Counts,
    model: Option<String>,
    found: bool,
}

fn num(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

impl Seen {
    fn model_from(&mut self, v: &Value, key: &str) {
        if let Some(m) = v.get(key).and_then(Value::as_str) {
            self.model = Some(m.to_string());
        }
    }

    /// Anthropic's `usage` object: fields present replace what was seen (message_delta
    /// carries cumulative counts).
    fn anthropic_usage(&mut self, u: &Value) {
        if !u.is_object() {
            return;
        }
        self.found = true;
        let c = &mut self.counts;
        if let Some(n) = num(u, "input_tokens") {
            c.input = n;
        }
        if let Some(n) = num(u, "output_tokens") {
            c.output = n;
        }
        if let Some(n) = num(u, "cache_read_input_tokens") {
            c.cache_read = n;
        }
        if let Some(n) = num(u, "cache_creation_input_tokens") {
            c.cache_write = n;
        }
    }

    /// OpenAI's `usage`, in the Chat Completions (`prompt_tokens`) or the Responses
    /// (`input_tokens`) shape; both count cached input inside the input.
    fn openai_usage(&mut self, u: &Value) {
        let (inp, out, det) = if u.get("prompt_tokens").is_some() {
            (
                num(u, "prompt_tokens"),
                num(u, "completion_tokens"),
                "prompt_tokens_details",
            )
        } else if u.get("input_tokens").is_some() {
            (
                num(u, "input_tokens"),
                num(u, "output_tokens"),
                "input_tokens_details",
            )
        } else {
            return;
        };
        let cached = u
            .get(det)
            .and_then(|d| num(d, "cached_tokens"))
            .unwrap_or(0);
        let inp = inp.unwrap_or(0);
        self.found = true;
        self.counts = Counts {
            input: inp.saturating_sub(cached),
            output: out.unwrap_or(0),
            cache_read: cached.min(inp),
            cache_write: 0,
        };
    }

    /// Gemini's `usageMetadata` (cumulative: the last one seen wins); the prompt count
    /// includes the cached content, the output is the candidates plus thinking.
    fn gemini(&mut self, v: &Value) {
        let v = match v.get("response") {
            Some(r) if r.is_object() => r,
            _ => v,
        };
        self.model_from(v, "modelVersion");
        let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) else {
            return;
        };
        let prompt = num(u, "promptTokenCount")
            .unwrap_or(0)
            .saturating_add(num(u, "toolUsePromptTokenCount").unwrap_or(0));
        let cached = num(u, "cachedContentTokenCount").unwrap_or(0).min(prompt);
        self.found = true;
        self.counts = Counts {
            input: prompt - cached,
            output: num(u, "candidatesTokenCount")
                .unwrap_or(0)
                .saturating_add(num(u, "thoughtsTokenCount").unwrap_or(0)),
            cache_read: cached,
            cache_write: 0,
        };
    }

    /// One JSON value: an event's data or a whole answer.
    fn value(&mut self, p: Provider, v: &Value) {
        match p {
            Provider::Anthropic => match v.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    if let Some(m) = v.get("message") {
                        self.model_from(m, "model");
                        if let Some(u) = m.get("usage") {
                            self.anthropic_usage(u);
                        }
                    }
                }
                Some("message_delta") | Some("message") => {
                    self.model_from(v, "model");
                    if let Some(u) = v.get("usage") {
                        self.anthropic_usage(u);
                    }
                }
                _ => {}
            },
            Provider::OpenAi => {
                // Responses events wrap the response object; answers carry it bare.
                let r = match v.get("type").and_then(Value::as_str) {
                    Some("response.completed" | "response.incomplete" | "response.failed") => {
                        match v.get("response") {
                            Some(r) => r,
                            None => return,
                        }
                    }
                    _ => v,
                };
                self.model_from(r, "model");
                if let Some(u) = r.get("usage").filter(|u| u.is_object()) {
                    self.openai_usage(u);
                }
            }
            Provider::Google => match v {
                Value::Array(items) => {
                    for i in items {
                        self.gemini(i);
                    }
                }
                _ => self.gemini(v),
            },
        }
    }
}

fn usage_finder() -> &'static memchr::memmem::Finder<'static> {
    static F: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memchr::memmem::Finder::new(b"usage"))
}

enum Mode {
    /// `text/event-stream`: `data:` lines, split across chunks by a bounded buffer.
    Sse { line: Vec<u8>, skipping: bool },
    /// Anything else: the body, up to [`JSON_CAP`].
    Json { buf: Vec<u8>, over: bool },
}

/// Reads one response's usage as its chunks pass.
struct Reader {
    provider: Provider,
    mode: Mode,
    seen: Seen,
    note: Option<&'static str>,
}

impl Reader {
    fn new(provider: Provider, sse: bool) -> Reader {
        Reader {
            provider,
            mode: if sse {
                Mode::Sse {
                    line: Vec::new(),
                    skipping: false,
                }
            } else {
                Mode::Json {
                    buf: Vec::new(),
                    over: false,
                }
            },
            seen: Seen::default(),
            note: None,
        }
    }

    fn line(&mut self, l: &[u8]) {
        // Only a data line that mentions usage is parsed; the rest only passes.
        let Some(rest) = l.strip_prefix(b"data:") else {
            return;
        };
        if usage_finder().find(rest).is_none() {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(rest.trim_ascii()) {
            self.seen.value(self.provider, &v);
        }
    }

    fn push(&mut self, d: &[u8]) {
        match &mut self.mode {
            Mode::Json { buf, over } => {
                if *over {
                    return;
                }
                if buf.len() + d.len() > JSON_CAP {
                    *over = true;
                    buf.clear();
                    buf.shrink_to_fit();
                    self.note = Some("answer over 4 MiB: not counted");
                    return;
                }
                buf.extend_from_slice(d);
            }
            Mode::Sse { line, skipping } => {
                let (mut carry, mut skip) = (std::mem::take(line), *skipping);
                self.push_sse(d, &mut carry, &mut skip);
                if let Mode::Sse { line, skipping } = &mut self.mode {
                    *line = carry;
                    *skipping = skip;
                }
            }
        }
    }

    /// One chunk of an event stream: only lines that mention `usage` are looked at, found
    /// with one scan of the chunk; a line cut by the chunk's end waits in `carry`.
    fn push_sse(&mut self, d: &[u8], carry: &mut Vec<u8>, skip: &mut bool) {
        let mut rest = d;
        if !carry.is_empty() || *skip {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.keep(carry, skip, rest);
                return;
            };
            if !*skip {
                carry.extend_from_slice(&rest[..i]);
                self.line(carry.strip_suffix(b"\r").unwrap_or(carry));
            }
            carry.clear();
            *skip = false;
            rest = &rest[i + 1..];
        }
        let (lines, tail) = match memchr::memrchr(b'\n', rest) {
            Some(i) => (&rest[..=i], &rest[i + 1..]),
            None => (&rest[..0], rest),
        };
        let mut at = 0;
        while let Some(j) = usage_finder().find(&lines[at..]) {
            let pos = at + j;
            let start = memchr::memrchr(b'\n', &lines[..pos]).map_or(0, |k| k + 1);
            let end = pos + memchr::memchr(b'\n', &lines[pos..]).unwrap_or(lines.len() - pos);
            let l = &lines[start..end];
            self.line(l.strip_suffix(b"\r").unwrap_or(l));
            at = end + 1;
            if at >= lines.len() {
                break;
            }
        }
        self.keep(carry, skip, tail);
    }

    /// Keep the start of an unfinished line, up to [`LINE_CAP`].
    fn keep(&mut self, carry: &mut Vec<u8>, skip: &mut bool, part: &[u8]) {
        if *skip {
            return;
        }
        if carry.len() + part.len() > LINE_CAP {
            *skip = true;
            carry.clear();
            carry.shrink_to_fit();
            self.note = Some("an event over 4 MiB was not read");
        } else {
            carry.extend_from_slice(part);
        }
    }

    fn finish(&mut self) {
        match &mut self.mode {
            Mode::Json { buf, over: false } if !buf.is_empty() => {
                let b = std::mem::take(buf);
                if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                    self.seen.value(self.provider, &v);
                }
            }
            Mode::Sse { line, skipping } if !*skipping && !line.is_empty() => {
                let l = std::mem::take(line);
                self.line(&l);
            }
            _ => {}
        }
    }
}

/// A model name as it may be shown: printable ASCII of a model name, at most 128 bytes.
fn clean_model(m: Option<&str>) -> String {
    let m = m.unwrap_or("unknown");
    let s: String = m
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-:/@+".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if s.is_empty() { "unknown".into() } else { s }
}

#[derive(Serialize)]
struct UsageEvent<'a> {
    request_id: &'a str,
    host: &'a str,
    provider: &'a str,
    model: &'a str,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    cost_micro_usd: u64,
    priced_as: &'a str,
    /// The run's totals after this response.
    run_tokens: u64,
    run_cost_micro_usd: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
}

struct Acc {
    meter: Arc<Meter>,
    sinks: Arc<Sinks>,
    request_id: String,
    host: String,
    reader: Reader,
}

impl Acc {
    fn done(mut self, cut: bool) {
        self.reader.finish();
        let seen = &self.reader.seen;
        let note = match (cut, self.reader.note) {
            (_, Some(n)) => Some(n),
            (true, None) => Some("the answer was cut short; counted as far as it came"),
            (false, None) => None,
        };
        if !seen.found && note.is_none() {
            // Not a model answer (a token count, a model list, an error).
            return;
        }
        if !seen.found && cut {
            return;
        }
        let s = self.meter.settings();
        let model = clean_model(seen.model.as_deref());
        let (price, priced_as) = s.price(&model);
        let c = seen.counts;
        let cost = cost_micro(&price, &c);
        let (run_tokens, run_cost) = self.meter.add(&c, cost);
        self.sinks.event(
            "usage",
            &UsageEvent {
                request_id: &self.request_id,
                host: &self.host,
                provider: self.reader.provider.as_str(),
                model: &model,
                input_tokens: c.input,
                output_tokens: c.output,
                cache_read_tokens: c.cache_read,
                cache_write_tokens: c.cache_write,
                cost_micro_usd: cost,
                priced_as: &priced_as,
                run_tokens,
                run_cost_micro_usd: run_cost,
                note,
            },
        );
    }
}

/// A response body whose bytes pass unchanged while its usage is read on the side.
pub struct Tap<B> {
    inner: B,
    acc: Option<Acc>,
}

/// Wrap the answer to a model request (2xx, uncompressed) in a [`Tap`]; a compressed
/// answer passes uncounted, with a `usage` event that says so.
pub fn tap<B>(
    meter: &Arc<Meter>,
    sinks: &Arc<Sinks>,
    provider: Provider,
    host: &str,
    request_id: &str,
    parts: &http::response::Parts,
    body: B,
) -> Tap<B> {
    let ok = parts.status.is_success();
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let coded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
    let mut reader = Reader::new(provider, ctype.starts_with("text/event-stream"));
    if coded {
        reader.mode = Mode::Json {
            buf: Vec::new(),
            over: true,
        };
        reader.note = Some("compressed answer: not counted");
    }
    let acc = ok.then(|| Acc {
        meter: meter.clone(),
        sinks: sinks.clone(),
        request_id: request_id.to_string(),
        host: host.to_string(),
        reader,
    });
    Tap { inner: body, acc }
}

impl<B> HttpBody for Tap<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(a)) = (f.data_ref(), this.acc.as_mut()) {
                    a.reader.push(d);
                }
                // A body of known length may not be polled again after its last byte.
                if this.inner.is_end_stream()
                    && let Some(a) = this.acc.take()
                {
                    a.done(false);
                }
            }
            Poll::Ready(None) => {
                if let Some(a) = this.acc.take() {
                    a.done(false);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(a) = this.acc.take() {
                    a.done(true);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tap<B> {
    fn drop(&mut self) {
        if let Some(a) = self.acc.take() {
            a.done(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: Provider, sse: bool, chunks: &[&[u8]]) -> Seen {
        let mut r = Reader::new(p, sse);
        for c in chunks {
            r.push(c);
        }
        r.finish();
        r.seen
    }

    #[test]
    fn anthropic_stream_split_anywhere() {
        let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":100,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n";
        for cut in 1..body.len() {
            let (a, b) = body.as_bytes().split_at(cut);
            let s = read(Provider::Anthropic, true, &[a, b]);
            assert_eq!(
                s.counts,
                Counts {
                    input: 100,
                    output: 42,
                    cache_read: 7,
                    cache_write: 3
                },
                "cut at {cut}"
            );
            assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-5"));
        }
    }

    #[test]
    fn gemini_stream_with_crlf_byte_by_byte() {
        let mut body = String::new();
        for i in 1..=5 {
            body.push_str(&format!(
                "data: {{\"candidates\":[],\"usageMetadata\":{{\"promptTokenCount\":{},\"candidatesTokenCount\":{i}}},\"modelVersion\":\"gemini-2.5-flash\"}}\r\n\r\n",
                10 * i
            ));
        }
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(1).collect();
        let s = read(Provider::Google, true, &chunks);
        assert_eq!((s.counts.input, s.counts.output), (50, 5));
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(7).collect();
        let s = read(Provider::Google, true, &chunks);
        assert_eq!((s.counts.input, s.counts.output), (50, 5));
        assert_eq!(s.model.as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn openai_and_gemini_shapes() {
        let chat = br#"{"model":"gpt-5","usage":{"prompt_tokens":50,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":20}}}"#;
        let s = read(Provider::OpenAi, false, &[chat]);
        assert_eq!(
            s.counts,
            Counts {
                input: 30,
                output: 5,
                cache_read: 20,
                cache_write: 0
            }
        );
        let ev = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5-codex\",\"usage\":{\"input_tokens\":9,\"output_tokens\":4}}}\n\n";
        let s = read(Provider::OpenAi, true, &[ev]);
        assert_eq!((s.counts.input, s.counts.output), (9, 4));
        assert_eq!(s.model.as_deref(), Some("gpt-5-codex"));
        let g = br#"[{"usageMetadata":{"promptTokenCount":3}},{"response":{"modelVersion":"gemini-2.5-pro","usageMetadata":{"promptTokenCount":30,"cachedContentTokenCount":10,"candidatesTokenCount":6,"thoughtsTokenCount":2}}}]"#;
        let s = read(Provider::Google, false, &[g]);
        assert_eq!(
            s.counts,
            Counts {
                input: 20,
                output: 8,
                cache_read: 10,
                cache_write: 0
            }
        );
        assert_eq!(s.model.as_deref(), Some("gemini-2.5-pro"));
    }

    #[test]
    fn a_json_answer_over_the_cap_is_not_counted_and_says_so() {
        let mut r = Reader::new(Provider::OpenAi, false);
        let pad = vec![b' '; JSON_CAP];
        r.push(br#"{"model":"gpt-5","usage":{"prompt_tokens":5,"completion_tokens":5}"#);
        r.push(&pad);
        r.push(b"}");
        r.finish();
        assert!(!r.seen.found);
        assert_eq!(r.note, Some("answer over 4 MiB: not counted"));
        // Just under the cap: counted.
        let mut r = Reader::new(Provider::OpenAi, false);
        r.push(br#"{"model":"gpt-5","usage":{"prompt_tokens":5,"completion_tokens":5}"#);
        r.push(&pad[..JSON_CAP - 200]);
        r.push(b"}");
        r.finish();
        assert_eq!(r.seen.counts.output, 5);
    }

    #[test]
    fn prices_longest_prefix_then_highest() {
        let s = Settings {
            budget: Budget::default(),
            prices: vec![
                Price {
                    model: "claude-*".into(),
                    input: 1.0,
                    output: 2.0,
                    cache_read: 0.0,
                    cache_write: 0.0,
                },
                Price {
                    model: "claude-opus-4*".into(),
                    input: 15.0,
                    output: 75.0,
                    cache_read: 1.5,
                    cache_write: 18.75,
                },
            ],
        };
        assert_eq!(s.price("claude-opus-4-1-2025").1, "claude-opus-4*");
        assert_eq!(s.price("Claude-haiku").1, "claude-*");
        let (p, why) = s.price("gpt-9");
        assert!(why.starts_with("highest"));
        assert_eq!((p.input, p.output), (15.0, 75.0));
        let c = Counts {
            input: 1_000_000,
            output: 1000,
            cache_read: 0,
            cache_write: 0,
        };
        assert_eq!(cost_micro(&p, &c), 15_075_000);
        assert_eq!(money(1_500_000), "$1.50");
        assert_eq!(money(12_300), "$0.0123");
    }
}
